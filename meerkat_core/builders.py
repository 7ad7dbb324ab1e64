"""Building a :class:`~meerkat_core.model.MeerkatModel`: from a config (:func:`build_model`) or from a
model directory (:func:`load_model`).

The parts come from Hugging Face ``transformers``: CLIP's vision tower, CLAP's HTSAT audio tower and
a Llama causal LM, each loaded from its ``name_or_path`` through :mod:`meerkat_core.pretrained` or
built with the config's shapes and random weights (the ``tiny`` preset, never touching the
network). The LLM is wrapped with LoRA by ``peft`` (or trains whole when ``lora.r == 0``).

Decisions made here:

- **Precision.** The frozen base (both encoders and the LLM's base weights) is in
  ``config.base_dtype``; every trainable parameter is float32. A module trained in full inside a
  lower-precision LLM (``lora.modules_to_save``) computes in float32 and hands the base dtype on,
  through forward hooks defined at module level so that the model still pickles.
- **Reproducible random weights.** Every random initialisation is seeded by ``seed`` in a forked
  RNG, so the frozen random base of a ``tiny`` model is rebuilt exactly when its model directory,
  which holds only the trainable tensors, is loaded.
- **Smooth number rows.** A randomly initialised LLM gets rows for its whole-number tokens that
  are a smooth function of the value (:func:`_smooth_number_rows`), standing in for the ordering of
  numbers that a pretrained LLM already knows.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn as nn
from transformers import (
    ClapAudioConfig,
    ClapAudioModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from meerkat_core import checkpoint
from meerkat_core import config as cfgmod
from meerkat_core.attention import AVACE
from meerkat_core.config import ModelConfig
from meerkat_core.encoders import AudioEncoder, ImageEncoder
from meerkat_core.model import MeerkatModel, base_dtype
from meerkat_core.pretrained import check_tokenizer, load_clap_audio, load_clip_vision, load_llama
from meerkat_core.tokenizer import load_tokenizer, number_tokens


def _clip(cfg: cfgmod.ImageEncoderConfig, pretrained: bool, dtype: torch.dtype) -> CLIPVisionModel:
    if pretrained and cfg.name_or_path:
        return load_clip_vision(cfg, dtype)
    return CLIPVisionModel(
        CLIPVisionConfig(
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
        )
    ).to(dtype)


def _clap(cfg: cfgmod.AudioEncoderConfig, pretrained: bool, dtype: torch.dtype) -> ClapAudioModel:
    if pretrained and cfg.name_or_path:
        return load_clap_audio(cfg, dtype)
    return ClapAudioModel(
        ClapAudioConfig(
            spec_size=cfg.spec_size,
            patch_size=cfg.patch_size,
            patch_stride=[cfg.patch_size, cfg.patch_size],
            patch_embeds_hidden_size=cfg.patch_embeds_hidden_size,
            depths=list(cfg.depths),
            num_attention_heads=list(cfg.num_attention_heads),
            window_size=cfg.window_size,
            hidden_size=cfg.hidden_size,
            num_mel_bins=cfg.num_mel_bins,
            enable_fusion=False,
        )
    ).to(dtype)


def llama_config(
    cfg: cfgmod.LLMConfig, tokenizer: PreTrainedTokenizerBase, *, vocab_size: int | None = None
) -> LlamaConfig:
    """``cfg``'s shapes as a ``LlamaConfig`` with ``tokenizer``'s special ids: the LLM a random
    build makes, and the layout a test writes as a stand-in checkpoint. ``vocab_size``: default
    ``cfg.vocab_size``."""
    return LlamaConfig(
        vocab_size=cfg.vocab_size if vocab_size is None else vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _llama(
    cfg: cfgmod.LLMConfig,
    tokenizer: PreTrainedTokenizerBase,
    pretrained: bool,
    dtype: torch.dtype,
    *,
    octave_times: bool = False,
) -> LlamaForCausalLM:
    if pretrained and cfg.name_or_path:
        llm = load_llama(cfg, dtype)
        check_tokenizer(tokenizer, llm.config, f"for {cfg.name_or_path}")
    else:
        vocab = max(cfg.vocab_size, len(tokenizer))
        llm = LlamaForCausalLM(llama_config(cfg, tokenizer, vocab_size=vocab)).to(dtype)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        # the media placeholders of a pretrained tokenizer; their rows are never read (the
        # placeholders are replaced by media tokens before the LLM)
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if not (pretrained and cfg.name_or_path):
        _smooth_number_rows(llm, tokenizer, octave_times=octave_times)
    return llm


NUMBER_FREQUENCIES = 8
"""Harmonics of the smooth number rows (see :func:`_smooth_number_rows`)."""


@torch.no_grad()
def _smooth_number_rows(
    llm: nn.Module, tokenizer: PreTrainedTokenizerBase, *, octave_times: bool = False
) -> None:
    """Random-init LLM only: the whole-number tokens' input and output rows become a smooth
    function of their value.

    A pretrained LLM knows that 0.41 lies between 0.40 and 0.42; a randomly initialised one sees
    101 unrelated box tokens, from which a tiny model learns no order of the values. So each number
    ``v`` (rescaled to [0, 1] within its kind, box or time) gets the row
    ``R · [cos(πkv), sin(πkv)]_{k=1..K} + R · c``: Fourier features of the value, a shared "this is
    a number" component ``c``, and a random orthonormal ``R`` per kind, scaled to the norm of the
    other rows. Nearby values then start with nearby embeddings, and the output logits over the
    numbers start as a smooth function of the value that the trained ``lm_head`` sharpens. A no-op
    for a tokenizer without whole-number tokens.

    ``octave_times`` (with ``ModelConfig.audio_time_stamps``): the time tokens get the octaves
    ``cos(π 2^(k-1) v), sin(π 2^(k-1) v)`` instead of the harmonics ``k``. Times run 0..60 s while a
    clip is 10 s long, so with harmonics two stamps 0.3 s apart (neighbouring audio tokens) have
    cosine 0.997 and 2 s apart still 0.97; with octaves the finest period is 60/64 s and
    neighbouring tokens differ as much as neighbouring box values do.
    """
    emb = llm.get_input_embeddings().weight  # [V, D]
    head = llm.get_output_embeddings().weight  # [V, D]
    dim = emb.shape[1]
    k = torch.arange(1, NUMBER_FREQUENCIES + 1, dtype=torch.float32)
    for kind, pairs in number_tokens(tokenizer).items():
        if len(pairs) < 2:
            continue
        ids = torch.tensor([i for i, _ in pairs])
        v = torch.tensor([x for _, x in pairs], dtype=torch.float32)
        v = (v - v.min()) / (v.max() - v.min())  # [n] in [0, 1]
        freqs = 2.0 ** (k - 1) if octave_times and kind == "time" else k  # [K]
        feats = torch.cat(
            [
                torch.cos(math.pi * freqs * v[:, None]),
                torch.sin(math.pi * freqs * v[:, None]),
                torch.ones(len(v), 1),
            ],
            dim=1,
        )  # [n, 2K+1], every row of norm sqrt(K+1)
        basis, _ = torch.linalg.qr(torch.randn(dim, feats.shape[1]))  # [D, 2K+1] orthonormal columns
        rows = feats @ basis.T / math.sqrt(NUMBER_FREQUENCIES + 1)  # [n, D] unit rows
        for weight in (emb, head):
            norm = weight.float().norm(dim=1).mean()
            weight[ids] = (rows * norm).to(weight.dtype)


def _inputs_to_param_dtype(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # the parameters' dtype at call time: float32, or FSDP's compute dtype while it is gathered
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to(dtype: torch.dtype, _module: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
    return out.to(dtype) if torch.is_tensor(out) and out.is_floating_point() else out


def _compute_in_float32(module: nn.Module, out_dtype: torch.dtype) -> None:
    """A float32 module inside a lower-precision base: cast its floating inputs to float32 and its
    floating output back to ``out_dtype``, so that its neighbours see the base dtype. (Module-level
    hooks, so that the model still pickles.)"""
    module.register_forward_pre_hook(_inputs_to_param_dtype)
    module.register_forward_hook(functools.partial(_output_to, out_dtype))


def build_model(
    config: ModelConfig,
    *,
    pretrained: bool,
    device: str | torch.device = "cpu",
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> MeerkatModel:
    """Build the model from a config.

    Precision: the frozen base (both encoders and the LLM's base weights) is built or loaded in
    ``config.base_dtype``; every trainable parameter (LoRA, ``modules_to_save``, AVACE, the
    projections, the region projections; the whole LLM when ``lora.r == 0``) is float32. A module
    trained in full inside a bfloat16 LLM (``modules_to_save``) computes in float32 and hands
    bfloat16 on. AVACE, and so the OT and AC terms, run in float32 on the encoders' tokens cast up.

    Args:
        config: a preset from :data:`~meerkat_core.config.PRESETS` or any :class:`ModelConfig`.
        pretrained: load encoder and LLM weights from their ``name_or_path`` (hub or directory, at
            their ``revision``) through :mod:`meerkat_core.pretrained`, which fails on any missing,
            unexpected or mismatched tensor; ``False`` builds the config's shapes with random
            weights and never touches the network.
        device: where to build; ``"meta"`` allocates nothing (shape checks of the paper preset).
        seed: seeds every random initialisation, so the frozen random weights of a ``tiny`` model
            are reproduced exactly when a checkpoint is loaded.
        tokenizer: use this tokenizer (a checkpoint's own) instead of loading one.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer(
            config.tokenizer if pretrained else None, config.tokenizer_revision if pretrained else None
        )
    frozen_dtype = getattr(torch, config.base_dtype)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        image = ImageEncoder(_clip(config.image, pretrained, frozen_dtype), freeze=config.freeze_encoders)
        audio = AudioEncoder(_clap(config.audio, pretrained, frozen_dtype), freeze=config.freeze_encoders)
        llm = _llama(
            config.llm, tokenizer, pretrained, base_dtype(config), octave_times=config.audio_time_stamps
        )
        for p in llm.parameters():
            p.requires_grad_(False)
        if config.lora.full_finetune:
            for p in llm.parameters():
                p.requires_grad_(True)
        else:
            llm = peft.get_peft_model(
                llm,
                peft.LoraConfig(
                    r=config.lora.r,
                    lora_alpha=config.lora.alpha,
                    lora_dropout=config.lora.dropout,
                    target_modules=list(config.lora.target_modules),
                    modules_to_save=list(config.lora.modules_to_save) or None,
                    task_type="CAUSAL_LM",
                ),
            )
        avace = AVACE(
            image.dim,
            audio.dim,
            config.avace.dim,
            config.avace.num_heads,
            image.grid,
            config.avace.dropout,
            map_tokens=config.avace.map_tokens,
            map_box_tokens=config.avace.map_box_tokens,
        )
        model = MeerkatModel(config, image, audio, avace, llm, tokenizer)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    compute = base_dtype(config)
    if compute != torch.float32:
        for module in model.llm.modules():
            if isinstance(module, peft.utils.ModulesToSaveWrapper):
                for trained in module.modules_to_save.values():
                    _compute_in_float32(trained, compute)
    return model


def load_model(
    directory: str | Path, *, device: str | torch.device = "cpu", **overrides: Any
) -> MeerkatModel:
    """Rebuild the model of a model directory or training checkpoint and load its trained state.

    The trainable tensors are checked against the rebuilt model before any is copied
    (:func:`meerkat_core.checkpoint.load_trainable`).
    """
    spec = checkpoint.read_model_spec(directory)
    model = build_model(
        spec.config,
        pretrained=spec.pretrained,
        device="cpu",
        seed=spec.seed,
        tokenizer=checkpoint.read_tokenizer(directory),
        **overrides,
    )
    checkpoint.load_trainable(directory, model)
    return model.to(device).eval()
