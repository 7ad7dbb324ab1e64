"""Loading the frozen base from real checkpoints: CLIP's vision tower, CLAP's audio tower, a Llama.

Each loader takes a hub name or a local directory and a revision, loads through the transformers
class of that checkpoint family, and accounts for every tensor with ``output_loading_info=True``:
a tensor the model expects but the checkpoint lacks (missing), a checkpoint tensor the model has
no place for (unexpected) or one of another shape (mismatched) raises :class:`CheckpointError`
naming them. Never a randomly initialised weight or a half-loaded model, where transformers itself
only logs a warning (missing, unexpected) or raises an error that points at a logged table
(mismatched).

Decisions made here:

* CLIP: ``CLIPVisionModel.from_pretrained`` of a ``CLIPModel`` checkpoint (``openai/clip-vit-*``)
  loads its ``vision_model.*`` tensors; the text tower, both projections and ``logit_scale`` are the
  only checkpoint tensors allowed to stay unused (:data:`CLIP_UNUSED`).
* CLAP: ``ClapAudioModel.from_pretrained`` of a ``ClapModel`` checkpoint (LAION's layout, keys
  ``audio_model.audio_encoder.*``) loads NONE of them (transformers maps no prefix for it). So the
  loader goes through ``ClapAudioModelWithProjection``, whose keys are the checkpoint's own
  ``audio_model.*`` and ``audio_projection.*``, and returns its ``audio_model``; the text side
  (:data:`CLAP_UNUSED`) is the only part allowed to stay unused, so every ``audio_model.*`` tensor
  of the checkpoint lands in the model or the load fails. Fusion checkpoints are refused (the
  encoder here runs on consecutive 10-s windows, see :mod:`meerkat_core.encoders`).
* The shapes are the checkpoint's (its ``config.json``): a compatible checkpoint of another width
  or depth works. What the data pipeline and the token budget read from the model config must
  agree with it, and is checked (:func:`check_image_config`, :func:`check_audio_config`): image
  size and patch size (the patch grid of the box masks); audio mel bins, spectrogram size, patch
  size and number of stages (tokens per window).
* Tokenizer (:func:`check_tokenizer`): "wrong" for a Llama means one whose ids the LLM cannot
  embed (any token other than the media placeholders at an id >= the LLM's vocabulary), without
  BOS or EOS (the chat format starts with BOS and answers end with EOS), or whose BOS / EOS ids
  differ from the LLM config's (a tokenizer of another model family, e.g. GPT-2's).
* dtype: weights are loaded directly in the requested dtype (``dtype=`` of ``from_pretrained``;
  transformers 5 would otherwise keep the checkpoint's own).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    ClapAudioModel,
    ClapAudioModelWithProjection,
    CLIPVisionModel,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from meerkat_core import config as cfgmod
from meerkat_core import prompts

CLIP_UNUSED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
"""Tensors of a ``CLIPModel`` checkpoint that the vision tower legitimately leaves unused."""
CLAP_UNUSED = ("text_model.", "text_projection.", "logit_scale_a", "logit_scale_t")
"""Tensors of a ``ClapModel`` checkpoint that the audio tower legitimately leaves unused."""
_SHOWN = 8
"""Keys listed per kind in an error (the count is always given)."""


class CheckpointError(ValueError):
    """A checkpoint (or tokenizer) that does not fit the model: names what is wrong."""


def _where(name_or_path: str, revision: str | None) -> str:
    return f"{name_or_path}" + (f" (revision {revision})" if revision else "")


def _listing(kind: str, keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return f"{kind}: {', '.join(keys[:_SHOWN])}{more}"


def _from_pretrained(
    cls: type, name_or_path: str, revision: str | None, dtype: torch.dtype, unused: tuple[str, ...], what: str
) -> Any:
    """``cls.from_pretrained`` that fails on any tensor not accounted for (see the module docstring)."""
    model, info = cls.from_pretrained(
        name_or_path,
        revision=revision,
        dtype=dtype,
        output_loading_info=True,
        ignore_mismatched_sizes=True,  # reported below, by name and shape, instead of a bare RuntimeError
    )
    missing = sorted(info["missing_keys"])
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(unused))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(a)} vs model {tuple(b)})" for k, a, b in info["mismatched_keys"]
    )
    problems = [
        _listing(kind, keys)
        for kind, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
            ("errors", list(info["error_msgs"])),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{what} checkpoint {_where(name_or_path, revision)} does not fit {cls.__name__}: "
            + "; ".join(problems)
        )
    return model


def _check_fields(what: str, name_or_path: str, pairs: list[tuple[str, Any, Any]]) -> None:
    """Raise CheckpointError for every ``(field, checkpoint value, config value)`` that differs."""
    bad = [
        f"{field}: checkpoint {theirs!r}, config {ours!r}" for field, theirs, ours in pairs if theirs != ours
    ]
    if bad:
        raise CheckpointError(
            f"{what} checkpoint {name_or_path} disagrees with the model config on what the data pipeline "
            f"reads (set these fields to the checkpoint's): {'; '.join(bad)}"
        )


def check_image_config(ckpt: PretrainedConfig, cfg: cfgmod.ImageEncoderConfig) -> None:
    """The checkpoint's image and patch size must be the config's (they fix the patch grid)."""
    _check_fields(
        "image",
        str(cfg.name_or_path),
        [("image_size", ckpt.image_size, cfg.image_size), ("patch_size", ckpt.patch_size, cfg.patch_size)],
    )


def check_audio_config(ckpt: PretrainedConfig, cfg: cfgmod.AudioEncoderConfig) -> None:
    """Mel bins, spectrogram size, patch size and stage count fix the input and tokens per window."""
    if ckpt.enable_fusion:
        raise CheckpointError(
            f"audio checkpoint {cfg.name_or_path} is a fusion CLAP (enable_fusion=true); this model encodes "
            "consecutive 10-s windows with the non-fusion HTSAT: use an unfused checkpoint"
        )
    _check_fields(
        "audio",
        str(cfg.name_or_path),
        [
            ("num_mel_bins", ckpt.num_mel_bins, cfg.num_mel_bins),
            ("spec_size", ckpt.spec_size, cfg.spec_size),
            ("patch_size", ckpt.patch_size, cfg.patch_size),
            ("len(depths)", len(ckpt.depths), len(cfg.depths)),
        ],
    )


def load_clip_vision(cfg: cfgmod.ImageEncoderConfig, dtype: torch.dtype) -> CLIPVisionModel:
    """CLIP's vision tower from a ``CLIPModel`` (or ``CLIPVisionModel``) checkpoint, in ``dtype``."""
    if not cfg.name_or_path:
        raise ValueError("image.name_or_path is not set")
    model = _from_pretrained(CLIPVisionModel, cfg.name_or_path, cfg.revision, dtype, CLIP_UNUSED, "image")
    check_image_config(model.config, cfg)
    return model


def load_clap_audio(cfg: cfgmod.AudioEncoderConfig, dtype: torch.dtype) -> ClapAudioModel:
    """CLAP's audio tower (HTSAT) from a ``ClapModel`` checkpoint, in ``dtype``."""
    if not cfg.name_or_path:
        raise ValueError("audio.name_or_path is not set")
    model = _from_pretrained(
        ClapAudioModelWithProjection, cfg.name_or_path, cfg.revision, dtype, CLAP_UNUSED, "audio"
    )
    check_audio_config(model.config, cfg)
    return model.audio_model


def load_llama(cfg: cfgmod.LLMConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    """A Llama causal LM (Llama-2-7B-Chat in the paper preset), in ``dtype``."""
    if not cfg.name_or_path:
        raise ValueError("llm.name_or_path is not set")
    return _from_pretrained(LlamaForCausalLM, cfg.name_or_path, cfg.revision, dtype, (), "LLM")


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, llm_config: PretrainedConfig, where: str) -> None:
    """Raise CheckpointError when ``tokenizer`` does not belong with an LLM of ``llm_config``.

    The media placeholders (``prompts.SPECIAL_TOKENS``), which
    :func:`~meerkat_core.tokenizer.ensure_special_tokens` adds above the base vocabulary, are
    exempt from the vocabulary check: the model makes room for them.
    """
    problems = []
    for name in ("bos", "eos"):
        tok_id = getattr(tokenizer, f"{name}_token_id")
        llm_id = getattr(llm_config, f"{name}_token_id", None)
        if tok_id is None:
            problems.append(f"no {name.upper()} token")
        elif llm_id is not None and tok_id != llm_id:
            problems.append(f"{name.upper()} id {tok_id} but the LLM's {name}_token_id is {llm_id}")
    placeholders = set(tokenizer.convert_tokens_to_ids(list(prompts.SPECIAL_TOKENS)))
    vocab = llm_config.vocab_size
    beyond = sorted((i, t) for t, i in tokenizer.get_vocab().items() if i >= vocab and i not in placeholders)
    if beyond:
        shown = ", ".join(f"{t!r}={i}" for i, t in beyond[:_SHOWN])
        problems.append(
            f"{len(beyond)} tokens at ids >= the LLM's vocab_size {vocab} (e.g. {shown}): ids it cannot embed"
        )
    if problems:
        raise CheckpointError(f"tokenizer {where} does not belong with this LLM: " + "; ".join(problems))
