"""MeerkatModel: frozen encoders -> AVACE -> projections -> LoRA-tuned LLM, composed.

The parts are built by :mod:`meerkat_core.builders` (``build_model``, ``load_model``); this module
composes them. ``forward(batch)`` returns the four terms of Eq. 4::

    loss = loss_ce + λ_OT · loss_ot + λ_AC · loss_ac

* ``loss_ce``: next-token cross-entropy averaged over the answer tokens of *every* sample in the
  batch (labels are -100 elsewhere; see :mod:`meerkat_core.batching`), with soft labels on
  whole-number tokens when ``loss.number_label_sigma > 0`` (:mod:`meerkat_core.losses`). Logits are
  computed only from the position before the batch's first answer token on: the prompt's logits
  are never scored, and projecting every position onto the vocabulary would be the largest matmul
  of a small model's step.
* ``loss_ot``: :func:`~meerkat_core.alignment.ot_loss` between AVACE's trainable image and audio
  projections, averaged over the samples whose image and audio really belong together
  (``ot_pair``); mismatched fact-check negatives are left out, since aligning them would teach the
  wrong correspondence.
* ``loss_ac``: :func:`~meerkat_core.attention.attention_consistency_loss` of AVACE's map against the
  box mask, averaged over the samples that carry a box (``has_box``); exactly 0 when none does.

Terms whose weight is 0 are still computed, without gradient, so that ablation runs log them too.

Batch contract (tensors; built by :mod:`meerkat_core.batching` and :mod:`meerkat_core.media`)::

    pixel_values    [B, 3, S, S]      CLIP-normalised images
    audio_features  [B, W, 1, T, F]   log-mel windows (W windows of 10 s)
    input_ids       [B, L]            chat tokens; <image> and <audio> appear once each
    attention_mask  [B, L]
    labels          [B, L]            answer tokens, -100 elsewhere         (training only)
    box_mask        [B, h, w]         sounding object's box on the patch grid (optional)
    has_box         [B] bool                                                  (optional)
    ot_pair         [B] bool          image and audio belong together         (optional, default all)
    region_box, region_pos, segment_feat, segment_pos
                                      region prompts (optional, :mod:`meerkat_core.regions`)

The ``<image>`` placeholder is replaced by the LLM-side image tokens (AVACE-fused patches, pooled
``llm_image_pool``²) and ``<audio>`` by the audio tokens: the paper's ``z_AVT = z̃_I ‖ z̃_A ‖ z_T``
with the chat template's system prompt in front.

With ``audio_time_stamps`` (on in ``tiny``), each audio token also carries the LLM's embedding of
the time token at the centre of the stretch it covers, times a learned gain (:meth:`encode_media`).

With ``audio_time_map`` (on in ``tiny``), the temporal counterpart of AVACE's box map: a linear
head ``time_head`` scores each fused audio token "inside the sound"; each audio token gets its
score times a learned vector (``time_embed``), and every audio token the window the scores imply
(:func:`time_map_window`: first to last time slot scored above 0.5) as sin/cos features through ``time_where`` (zero at init), as AVACE's
``map_box_tokens`` does for the box. The head is trained by ``loss_time`` (:func:`time_map_loss`,
weight ``loss.lambda_time``): per-token cross-entropy against the window that the answer itself
writes (igatl's ``[2.3, 5.1]``, read off the labels' time tokens by :func:`answer_windows`), so no
extra batch column is needed; the loss is then ``loss + λ_time · loss_time`` and ``forward``
returns ``loss_time`` too.

With ``av_match`` (on in ``tiny``), every audio token also gets how well anything in the picture
matches the sound (:mod:`meerkat_core.correspondence`) through ``av_match_proj`` (zero at init), and
``forward`` returns ``loss_match`` (:func:`~meerkat_core.correspondence.match_loss` over every
(image, sound) pair of the batch that :func:`~meerkat_core.correspondence.match_labels` labels, from
the optional columns ``image_classes``, ``sound_classes`` [B, K] and ``classes_known`` [B], or else
from ``ot_pair`` on the diagonal); the loss is then ``... + λ_match · loss_match``.

Trainable: LoRA (or the whole LLM when ``lora.r == 0``), AVACE, the two projections, the region
projections, the time stamps' gain, the time map's head, vector and projection, ``av_match_proj``
and the match loss's scale and bias (``match_scale_bias``).
Frozen: both encoders and the LLM's base weights. Saving writes only the trainable tensors, in the
format :mod:`meerkat_core.checkpoint` owns.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from meerkat_core import checkpoint, prompts
from meerkat_core.alignment import ot_loss
from meerkat_core.attention import AVACE, WHERE_FREQUENCIES, attention_consistency_loss, fourier_features
from meerkat_core.batching import IGNORE_INDEX
from meerkat_core.config import ModelConfig
from meerkat_core.correspondence import (
    MATCH_BIAS_INIT,
    MATCH_VALUES,
    match_labels,
    match_loss,
    match_values,
    pair_scores,
)
from meerkat_core.encoders import (
    AudioEncoder,
    ImageEncoder,
    audio_token_layout,
    audio_token_times,
    time_stamp_ids,
)
from meerkat_core.losses import answer_cross_entropy, number_label_targets
from meerkat_core.regions import MATCH_FEATURES, add_region_features, region_features, zero_linear
from meerkat_core.tokenizer import number_tokens


@dataclass
class MediaTokens:
    img: torch.Tensor
    """``[B, M', D_T]`` image tokens for the LLM."""
    aud: torch.Tensor
    """``[B, N, D_T]`` audio tokens for the LLM."""
    attn_map: torch.Tensor
    """``[B, h, w]`` AVACE map in [0, 1]."""
    map_box: torch.Tensor
    """``[B, 4]`` the box AVACE's map implies (``AVACEOutput.map_box``)."""
    img_proj: torch.Tensor
    aud_proj: torch.Tensor
    time_logits: torch.Tensor | None = None
    """``[B, N]`` the time map's per-audio-token logits (``audio_time_map``), else None."""


class MeerkatModel(nn.Module):
    """The audio-visual LLM, composed from parts built by :func:`~meerkat_core.builders.build_model`."""

    def __init__(
        self,
        config: ModelConfig,
        image_encoder: ImageEncoder,
        audio_encoder: AudioEncoder,
        avace: AVACE,
        llm: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.audio_encoder = audio_encoder
        self.avace = avace
        llm_dim = llm.get_input_embeddings().embedding_dim
        self.img_to_llm = nn.Linear(config.avace.dim, llm_dim)
        self.aud_to_llm = nn.Linear(config.avace.dim, llm_dim)
        self.llm = llm
        self.tokenizer = tokenizer
        if config.region_prompts:  # see meerkat_core.regions
            self.region_box_proj = zero_linear(llm_dim + 2, llm_dim)
            self.region_match_proj = zero_linear(MATCH_FEATURES * 2 * WHERE_FREQUENCIES, llm_dim)
            self.region_segment_proj = zero_linear(2 * config.audio.num_mel_bins, llm_dim)
        if config.audio_time_stamps:  # see encode_media
            ids = time_stamp_ids(config.audio, number_tokens(tokenizer)["time"])
            self.register_buffer("audio_time_ids", ids, persistent=False)  # [N]
            self.audio_time_gain = nn.Parameter(torch.ones(1))  # [1], not 0-d: FSDP shards dim 0
        if config.audio_time_map:  # see encode_media and time_map_loss
            times = number_tokens(tokenizer)["time"]
            if not times:
                raise ValueError("audio_time_map needs a tokenizer with whole-number time tokens")
            starts, ends = audio_token_times(config.audio)
            self.register_buffer(
                "audio_token_centres",
                torch.tensor((starts + ends) / 2, dtype=torch.float32),
                persistent=False,
            )  # [N] seconds
            values = torch.full((llm.get_input_embeddings().num_embeddings,), float("nan"))
            values[torch.tensor([i for i, _ in times])] = torch.tensor([v for _, v in times])
            self.register_buffer("time_values", values, persistent=False)  # [V] seconds, NaN: no time
            self.time_head = nn.Linear(config.avace.dim, 1)
            self.time_embed = nn.Parameter(torch.zeros(llm_dim))
            self.time_where = zero_linear(2 * 2 * WHERE_FREQUENCIES, llm_dim)
        if config.av_match:  # see encode_media and meerkat_core.correspondence
            self.av_match_proj = zero_linear(MATCH_VALUES * 2 * WHERE_FREQUENCIES, llm_dim)
            # the match loss's log-scale and bias (correspondence.match_loss): t = 10 as SigLIP's,
            # b so that an untrained model's typical pair sits near probability 1/2
            self.match_scale_bias = nn.Parameter(torch.tensor([math.log(10.0), -MATCH_BIAS_INIT]))
        self.image_token_id = tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(prompts.AUDIO_TOKEN)
        # soft labels of the answer loss (non-persistent: rebuilt from the tokenizer, never saved)
        ids, slot, targets = number_label_targets(
            tokenizer, config.loss.number_label_sigma, llm.get_input_embeddings().num_embeddings
        )
        self.register_buffer("number_ids", ids, persistent=False)
        self.register_buffer("number_slot", slot, persistent=False)
        self.register_buffer("number_targets", targets, persistent=False)

    # -- media -------------------------------------------------------------------------------
    def encode_media(self, pixel_values: torch.Tensor, audio_features: torch.Tensor) -> MediaTokens:
        z_img = self.image_encoder(pixel_values)[:, 1:]  # [B, M, D_I], CLS dropped: AVACE wants the grid
        z_aud = self.audio_encoder(audio_features)  # [B, N, D_A]
        av = self.avace(z_img.float(), z_aud.float())
        img = av.img
        k = self.config.llm_image_pool
        if k > 1:
            b, m, d = img.shape
            g = self.avace.grid
            img = (
                F.avg_pool2d(img.transpose(1, 2).reshape(b, d, g, g), k).flatten(2).transpose(1, 2)
            )  # [B, M/k², d]
        dtype = base_dtype(self.config)  # what the LLM's layers compute in
        aud = self.aud_to_llm(av.aud)  # [B, N, D_T]
        if self.config.audio_time_stamps:
            # each audio token + the (frozen) input embedding of the time token at its centre
            stamps = self.llm.get_input_embeddings()(self.audio_time_ids)  # [N, D_T]
            aud = aud + self.audio_time_gain * stamps.to(aud.dtype)
        time_logits = None
        if self.config.audio_time_map:
            # the time map: a score per audio token, its window as features (module docstring)
            time_logits = self.time_head(av.aud).squeeze(-1).float()  # [B, N]
            prob = time_logits.sigmoid()
            clip = self.config.audio.clip_seconds
            bands, slots = audio_token_layout(self.config.audio)
            step = self.config.audio.window_seconds / slots
            window = time_map_window(prob, self.audio_token_centres, step, clip, bands)  # [B, 2] seconds
            aud = (
                aud
                + prob[..., None].to(aud.dtype) * self.time_embed
                + self.time_where(fourier_features(window / clip)).to(aud.dtype)[:, None]
            )
        if self.config.av_match:
            # how well anything in the picture matches the sound, on every audio token
            match = match_values(
                av.img_proj, av.aud_proj, av.attn_map, self.match_scale_bias
            )  # [B, MATCH_VALUES]
            aud = aud + self.av_match_proj(fourier_features(match)).to(aud.dtype)[:, None]
        return MediaTokens(
            img=self.img_to_llm(img).to(dtype),
            aud=aud.to(dtype),
            attn_map=av.attn_map,
            map_box=av.map_box,
            img_proj=av.img_proj,
            aud_proj=av.aud_proj,
            time_logits=time_logits,
        )

    def _add_regions(
        self, text: torch.Tensor, batch: dict[str, torch.Tensor] | None, media: MediaTokens
    ) -> torch.Tensor:
        """``text`` with the region prompts' features added (:mod:`meerkat_core.regions`), when on."""
        if not self.config.region_prompts or batch is None or "region_pos" not in batch:
            return text
        box, segment = region_features(
            batch,
            media.img,
            media.attn_map,
            media.map_box,
            self.region_box_proj,
            self.region_match_proj,
            self.region_segment_proj,
        )
        return add_region_features(text, batch, box, segment)

    def _merge(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        media: MediaTokens,
        batch: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Splice the media tokens in place of ``<image>`` / ``<audio>``: ``[B, L] -> [B, L - 2 + M' + N, D_T]``
        (after adding the region prompts' features, when ``batch`` carries them)."""
        text = self._add_regions(self.llm.get_input_embeddings()(input_ids), batch, media)  # [B, L, D_T]
        embeds, masks, labs = [], [], []
        for i in range(input_ids.shape[0]):
            ids = input_ids[i]
            img_pos = (ids == self.image_token_id).nonzero()
            aud_pos = (ids == self.audio_token_id).nonzero()
            if len(img_pos) != 1 or len(aud_pos) != 1:
                raise ValueError(
                    f"sample {i} must hold exactly one {prompts.IMAGE_TOKEN} and one {prompts.AUDIO_TOKEN}"
                )
            p, q = sorted((int(img_pos[0]), int(aud_pos[0])))
            first, second = (
                (media.img[i], media.aud[i]) if p == int(img_pos[0]) else (media.aud[i], media.img[i])
            )
            # the embedding's compute dtype (bf16 under FSDP's mixed precision whatever is stored)
            first, second = first.to(text.dtype), second.to(text.dtype)
            embeds.append(torch.cat([text[i, :p], first, text[i, p + 1 : q], second, text[i, q + 1 :]]))
            ones = attention_mask.new_ones
            masks.append(
                torch.cat(
                    [
                        attention_mask[i, :p],
                        ones(len(first)),
                        attention_mask[i, p + 1 : q],
                        ones(len(second)),
                        attention_mask[i, q + 1 :],
                    ]
                )
            )
            if labels is not None:
                ign = labels.new_full
                labs.append(
                    torch.cat(
                        [
                            labels[i, :p],
                            ign((len(first),), IGNORE_INDEX),
                            labels[i, p + 1 : q],
                            ign((len(second),), IGNORE_INDEX),
                            labels[i, q + 1 :],
                        ]
                    )
                )
        return torch.stack(embeds), torch.stack(masks), (torch.stack(labs) if labels is not None else None)

    # -- training ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of Eq. 4 (scalars) and the AVACE map ``attn_map [B, h, w]``."""
        media = self.encode_media(batch["pixel_values"], batch["audio_features"])
        embeds, mask, labels = self._merge(
            batch["input_ids"], batch["attention_mask"], batch["labels"], media, batch
        )
        positions = (mask.cumsum(-1) - 1).clamp_min(0)  # left or right padding alike
        # Logits only from the position before the batch's first answer token on: the prompt's
        # logits are never scored, and the vocabulary projection over all L' positions was the
        # largest matmul of a tiny training step.
        answered = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        keep = embeds.shape[1] - max(int(answered[0]) - 1, 0) if len(answered) else 1
        logits = self.llm(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=keep
        ).logits  # [B, keep, V]
        targets = labels[:, labels.shape[1] - keep + 1 :]
        n_tokens = (targets != IGNORE_INDEX).sum()
        loss_ce = answer_cross_entropy(
            logits[:, :-1], targets, self.number_ids, self.number_slot, self.number_targets
        ) / n_tokens.clamp_min(1)

        lc = self.config.loss
        zero = loss_ce.new_zeros(())
        b = embeds.shape[0]
        pair = batch.get("ot_pair", torch.ones(b, dtype=torch.bool, device=embeds.device)).bool()
        with contextlib.nullcontext() if lc.lambda_ot > 0 else torch.no_grad():
            loss_ot = (
                ot_loss(
                    media.img_proj[pair],
                    media.aud_proj[pair],
                    solver=lc.ot_solver,
                    reg=lc.ot_reg,
                    n_iters=lc.ot_iters,
                ).mean()
                if pair.any()
                else zero
            )
        has_box = batch.get("has_box", torch.zeros(b, dtype=torch.bool, device=embeds.device)).bool()
        with contextlib.nullcontext() if lc.lambda_ac > 0 else torch.no_grad():
            loss_ac = (
                attention_consistency_loss(
                    media.attn_map[has_box],
                    batch["box_mask"][has_box],
                    lc.ac_lambda1,
                    lc.ac_lambda2,
                    lc.ac_eps1,
                    lc.ac_eps2,
                ).mean()
                if has_box.any()
                else zero
            )
        loss = loss_ce + lc.lambda_ot * loss_ot + lc.lambda_ac * loss_ac
        out = {
            "loss": loss,
            "loss_ce": loss_ce,
            "loss_ot": loss_ot,
            "loss_ac": loss_ac,
            "attn_map": media.attn_map,
        }
        if self.config.av_match:
            with contextlib.nullcontext() if lc.lambda_match > 0 else torch.no_grad():
                pair_labels = (
                    match_labels(
                        batch["image_classes"], batch["sound_classes"], batch["classes_known"].bool(), pair
                    )
                    if "classes_known" in batch
                    else torch.where(torch.eye(b, dtype=torch.bool, device=pair.device), pair.long(), -1)
                )
                loss_match = match_loss(
                    pair_scores(media.img_proj, media.aud_proj), pair_labels, self.match_scale_bias
                )
            out["loss_match"] = loss_match
            loss = loss + lc.lambda_match * loss_match
            out["loss"] = loss
        if media.time_logits is not None:
            with contextlib.nullcontext() if lc.lambda_time > 0 else torch.no_grad():
                loss_time = time_map_loss(
                    media.time_logits, batch["labels"], self.time_values, self.audio_token_centres
                )
            out["loss_time"] = loss_time
            out["loss"] = loss + lc.lambda_time * loss_time
        return out

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, torch.Tensor],
        *,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        return_attention: bool = False,
    ) -> list[str] | tuple[list[str], torch.Tensor]:
        """Answer texts for left-padded prompts (``labels`` ignored); greedy when ``temperature == 0``."""
        media = self.encode_media(batch["pixel_values"], batch["audio_features"])
        embeds, mask, _ = self._merge(batch["input_ids"], batch["attention_mask"], None, media, batch)
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
            **sampling,
        )
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        return (texts, media.attn_map) if return_attention else texts

    # -- state -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, *, seed: int, pretrained: bool) -> Path:
        """A model directory (:mod:`meerkat_core.checkpoint`): config, tokenizer, trainable weights.

        Frozen base weights are not written: they are rebuilt from ``name_or_path`` (pretrained)
        or from the recorded ``seed`` (random init, tiny).
        """
        return checkpoint.save_model_dir(directory, self, seed=seed, pretrained=pretrained)


def time_map_window(
    prob: torch.Tensor, centres: torch.Tensor, step: float, clip_seconds: float, bands: int = 1
) -> torch.Tensor:
    """``[B, N]`` scores in [0, 1] of audio tokens centred at ``centres [N]`` seconds, each covering
    ``step`` seconds, in windows of ``bands`` rows of time slots (:func:`~meerkat_core.encoders.audio_token_layout`)
    -> ``[B, 2]`` the window they imply, in seconds.

    The window runs from the first to the last time slot whose score, averaged over the bands, is
    above 0.5 (no gradient: the head has its own loss). Where no slot is, it falls back to
    ``μ ± √3·σ`` of the scores as a distribution over time: a uniform one over ``[s, e]`` has mean
    ``(s+e)/2`` and variance ``(e-s)²/12``; over token centres the variance of n whole tokens is
    ``step²(n²-1)/12``, so ``step²/12`` is added back (a window of whole tokens is given back
    exactly), clamped to the clip. The first version used only ``μ ± √3·σ``; trained scores keep
    a floor outside the sound that widens it (mean IoU 0.78 against 0.92 for the thresholded scores
    of a linear probe on the same tokens: ``experiments/temporal_probe.py``).
    """
    w = prob.float()
    b, n = w.shape
    slots = n // bands if bands > 1 else n
    slot_p = w.view(b, -1, bands, slots).mean(dim=2).flatten(1)  # [B, W*slots], time order
    slot_start = centres.view(-1, bands, slots)[:, 0].flatten() - step / 2  # [W*slots]
    on = slot_p > 0.5
    first = on.float().argmax(dim=1)
    last = on.shape[1] - 1 - on.flip(1).float().argmax(dim=1)
    hard = torch.stack([slot_start[first], slot_start[last] + step], dim=1)
    d = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    mu = d @ centres  # [B]
    var = (d @ centres.square() - mu.square()).clamp_min(0.0) + step**2 / 12
    half = math.sqrt(3.0) * var.sqrt()
    soft = torch.stack([mu - half, mu + half], dim=1)
    return torch.where(on.any(dim=1, keepdim=True), hard.detach(), soft).clamp(0.0, clip_seconds)


def answer_windows(labels: torch.Tensor, time_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``labels [B, L]`` (answer ids, -100 elsewhere) -> ``[B, 2]`` the time window each answer
    writes (its two time tokens, ``time_values [V]`` seconds or NaN) and ``[B]`` bool: the answer
    holds exactly two time tokens, in order (an igatl answer ``[2.3, 5.1]``)."""
    vals = time_values[labels.clamp_min(0)]  # [B, L]
    is_time = (labels >= 0) & ~vals.isnan()
    start = torch.where(is_time, vals, torch.inf).amin(dim=1)
    end = torch.where(is_time, vals, -torch.inf).amax(dim=1)
    first = torch.where(is_time, vals, torch.nan)
    # in order: the first time token written is the start
    first_pos = is_time.float().argmax(dim=1)
    ordered = first.gather(1, first_pos[:, None]).squeeze(1) == start
    has = (is_time.sum(dim=1) == 2) & ordered
    return torch.stack([start, end], dim=1).where(has[:, None], 0.0), has


def time_map_loss(
    logits: torch.Tensor, labels: torch.Tensor, time_values: torch.Tensor, centres: torch.Tensor
) -> torch.Tensor:
    """The time map's loss: binary cross-entropy of each audio token's logit ``logits [B, N]``
    against "its centre (``centres [N]`` s) lies in the window the answer writes", averaged over the
    tokens and the rows whose answer writes one (:func:`answer_windows`); 0 (still in the graph)
    when none does."""
    window, has = answer_windows(labels, time_values)
    if not has.any():
        return logits.sum() * 0.0
    inside = (centres >= window[:, :1]) & (centres <= window[:, 1:])  # [B, N]
    bce = F.binary_cross_entropy_with_logits(logits.float(), inside.float(), reduction="none").mean(dim=1)
    return bce[has].mean()


def count_parameters(
    module: nn.Module, *, trainable: bool | None = None, name_contains: str | None = None
) -> int:
    """Elements of ``module``'s parameters, only the trainable (or frozen) ones when ``trainable`` is
    given, only those whose name contains ``name_contains`` when given."""
    return sum(
        p.numel()
        for n, p in module.named_parameters()
        if (trainable is None or p.requires_grad == trainable)
        and (name_contains is None or name_contains in n)
    )


def base_dtype(config: ModelConfig) -> torch.dtype:
    """The dtype the LLM computes in: ``config.base_dtype``, or float32 when the whole LLM trains
    (``lora.r == 0``: trainable parameters are always float32)."""
    return torch.float32 if config.lora.full_finetune else getattr(torch, config.base_dtype)
