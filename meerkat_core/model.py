"""MeerkatModel: frozen encoders -> AVACE -> projections -> LoRA-tuned LLM, and its builders.

``forward(batch)`` returns the four terms of Eq. 4::

    loss = loss_ce + λ_OT · loss_ot + λ_AC · loss_ac

* ``loss_ce``: next-token cross-entropy averaged over the answer tokens of *every* sample in the
  batch (labels are -100 elsewhere; see :mod:`meerkat_core.batching`). With
  ``loss.number_label_sigma = σ > 0`` and a tokenizer that has whole-number tokens (box coordinates
  ``0.00 … 1.00``, times ``0.0 … 60.0``), the target of such a token is a Gaussian of width σ grid
  steps over the numbers of its kind instead of a one-hot: 0.41 for a true 0.40 is then nearly
  right rather than as wrong as 0.90, which gives a box answer a gradient towards the true value
  (STACK.md: a tiny model escaped the mean-box plateau only with such labels). σ = 0 is plain CE
  (the presets' default); ``experiments/learn_probe.py`` trains the tiny model with σ = 1.5,
  which in its CPU runs gave better boxes and fact-checking than σ = 0. Logits are computed only
  from the position before the batch's first answer token on (the rest are never scored).
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
    region_box      [B, 4]            box written in the prompt, crop coords  (optional, region prompts)
    region_pos      [B] long          its closing-bracket token, -1 if none
    segment_feat    [B, 2F]           batching.segment_features of the written window
    segment_pos     [B] long          its closing-bracket token, -1 if none

Region prompts (``config.region_prompts``; on in ``tiny``, off in ``paper``, not in the paper): a
fact-check statement writes a box or a time window that the model must check against the media.
Llama-2 reads ``[0.12, 0.30, 0.55, 0.80]`` as text it has seen in pre-training; a tiny random LLM
has to learn from scratch to relate four number tokens to places on the patch grid, and in CPU runs
it never did (fact-check Types 1-3 stayed at chance). So, as region-referring MLLMs do (GPT4RoI,
Ferret: features pooled from the referred region), the written box is also given as the mean of
the LLM-side image tokens it covers plus AVACE's mean map inside and outside it, and the written
window as the mean log-mel frame in it; each through a zero-initialised linear layer, added to the
embedding of the span's closing bracket (:meth:`MeerkatModel.region_features`). The text of the
prompt is unchanged.

The ``<image>`` placeholder is replaced by the LLM-side image tokens (AVACE-fused patches, pooled
``llm_image_pool``²) and ``<audio>`` by the audio tokens: the paper's ``z_AVT = z̃_I ‖ z̃_A ‖ z_T``
with the chat template's system prompt in front.

Trainable: LoRA (or the whole LLM when ``lora.r == 0``), AVACE and the two projections.
Frozen: both encoders and the LLM's base weights. A randomly initialised LLM (the tiny preset)
gets smooth rows for its whole-number tokens (:func:`_smooth_number_rows`), standing in for the
ordering of numbers that a pretrained LLM already knows.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peft
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    ClapAudioConfig,
    ClapAudioModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)

from meerkat_core import checkpoint, prompts
from meerkat_core import config as cfgmod
from meerkat_core.alignment import ot_loss
from meerkat_core.attention import AVACE, attention_consistency_loss
from meerkat_core.batching import IGNORE_INDEX
from meerkat_core.config import ModelConfig
from meerkat_core.encoders import AudioEncoder, ImageEncoder
from meerkat_core.pretrained import check_tokenizer, load_clap_audio, load_clip_vision, load_llama
from meerkat_core.tokenizer import load_tokenizer, number_tokens


@dataclass
class MediaTokens:
    img: torch.Tensor
    """``[B, M', D_T]`` image tokens for the LLM."""
    aud: torch.Tensor
    """``[B, N, D_T]`` audio tokens for the LLM."""
    attn_map: torch.Tensor
    """``[B, h, w]`` AVACE map in [0, 1]."""
    img_proj: torch.Tensor
    aud_proj: torch.Tensor


class MeerkatModel(nn.Module):
    """The audio-visual LLM, composed from parts that are built elsewhere (see :func:`build_model`)."""

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
        if config.region_prompts:
            # zero-initialised: a region prompt starts as a no-op and its features are learnt
            self.region_box_proj = nn.Linear(llm_dim + 2, llm_dim)
            self.region_segment_proj = nn.Linear(2 * config.audio.num_mel_bins, llm_dim)
            for layer in (self.region_box_proj, self.region_segment_proj):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.image_token_id = tokenizer.convert_tokens_to_ids(prompts.IMAGE_TOKEN)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(prompts.AUDIO_TOKEN)
        self._init_number_labels(config.loss.number_label_sigma, llm.get_input_embeddings().num_embeddings)

    def _init_number_labels(self, sigma: float, vocab: int) -> None:
        """Buffers for the soft number labels: ``number_ids [K]`` (every whole-number token),
        ``number_slot [V]`` (a token's index in ``number_ids`` or -1), ``number_targets [K, K]``
        (row k: the soft label of number k; a Gaussian over the numbers of its kind)."""
        ids, rows = [], []
        for pairs in number_tokens(self.tokenizer).values() if sigma > 0 else ():
            n = len(pairs)
            steps = torch.arange(n, dtype=torch.float32)
            rows.append(((steps[:, None] - steps[None, :]) ** 2 / (-2 * sigma**2)).softmax(dim=1))  # [n, n]
            ids += [i for i, _ in pairs]
        slot = torch.full((vocab,), -1, dtype=torch.long)
        slot[torch.tensor(ids, dtype=torch.long)] = torch.arange(len(ids))
        self.register_buffer("number_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.register_buffer("number_slot", slot, persistent=False)
        self.register_buffer(
            "number_targets", torch.block_diag(*rows) if rows else torch.zeros(0, 0), persistent=False
        )

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed next-token CE over the non-ignored ``targets [B, L]`` of ``logits [B, L, V]``,
        with soft labels on whole-number targets when ``number_label_sigma > 0``."""
        keep = targets != IGNORE_INDEX
        logp = logits[keep].float().log_softmax(dim=-1)  # [T, V]
        tgt = targets[keep]  # [T]
        nll = -logp.gather(1, tgt[:, None])[:, 0]  # [T]
        if len(self.number_ids):
            slot = self.number_slot[tgt]  # [T], -1 for non-numbers
            is_num = slot >= 0
            if is_num.any():
                soft = self.number_targets[slot[is_num]]  # [T_num, K]
                nll = nll.clone()
                nll[is_num] = -(soft * logp[is_num][:, self.number_ids]).sum(dim=1)
        return nll.sum()

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
        return MediaTokens(
            img=self.img_to_llm(img).to(dtype),
            aud=self.aud_to_llm(av.aud).to(dtype),
            attn_map=av.attn_map,
            img_proj=av.img_proj,
            aud_proj=av.aud_proj,
        )

    def region_features(
        self, batch: dict[str, torch.Tensor], media: MediaTokens
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, D_T]`` features of the box and of the time window written in each prompt (rows
        without one hold garbage that :meth:`_add_regions` never uses).

        Box: the LLM-side image tokens averaged over the box (each patch weighted by the fraction of
        it the box covers) and AVACE's mean map inside and outside the box, through
        ``region_box_proj``. Window: :func:`~meerkat_core.batching.segment_features` (the mean
        log-mel frame in the window, and its difference from the clip's), layer-normalised,
        through ``region_segment_proj``. Both projections start at zero.
        """
        img = media.img.float()  # [B, M', D_T]
        cov = box_coverage(batch["region_box"].float(), math.isqrt(img.shape[1]))  # [B, M']
        pooled = (cov[..., None] * img).sum(1) / cov.sum(1, keepdim=True).clamp_min(1e-6)
        amap = media.attn_map.float().flatten(1)  # [B, g*g]
        cm = box_coverage(batch["region_box"].float(), media.attn_map.shape[-1])
        inside = (cm * amap).sum(1) / cm.sum(1).clamp_min(1e-6)
        outside = ((1 - cm) * amap).sum(1) / (1 - cm).sum(1).clamp_min(1e-6)
        box = self.region_box_proj(torch.cat([pooled, inside[:, None], outside[:, None]], dim=1))
        seg = batch["segment_feat"].float()
        segment = self.region_segment_proj(F.layer_norm(seg, seg.shape[-1:]))
        return box, segment

    def _add_regions(
        self, text: torch.Tensor, batch: dict[str, torch.Tensor] | None, media: MediaTokens
    ) -> torch.Tensor:
        """Add each prompt's region features to the embedding of its closing-bracket token."""
        if not self.config.region_prompts or batch is None or "region_pos" not in batch:
            return text
        box, segment = self.region_features(batch, media)
        rows = torch.arange(text.shape[0], device=text.device)
        for feats, pos in ((box, batch["region_pos"]), (segment, batch["segment_pos"])):
            has = pos >= 0
            if has.any():
                text = text.index_put((rows[has], pos[has]), feats[has].to(text.dtype), accumulate=True)
            # Keep both projections in the graph when no row of the batch writes a box (or a window):
            # DDP expects every trainable parameter to get a gradient on every rank at every step.
            text = text + 0.0 * feats.sum().to(text.dtype)
        return text

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
        loss_ce = self._cross_entropy(logits[:, :-1], targets) / n_tokens.clamp_min(1)

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
        return {
            "loss": loss,
            "loss_ce": loss_ce,
            "loss_ot": loss_ot,
            "loss_ac": loss_ac,
            "attn_map": media.attn_map,
        }

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


def box_coverage(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, grid*grid]``: the fraction of each patch cell (row-major) that box ``[B, 4]`` covers."""
    edges = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) / grid  # [g+1]
    lo, hi = edges[:-1], edges[1:]

    def axis(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [B] -> [B, g]
        return ((torch.minimum(b[:, None], hi) - torch.maximum(a[:, None], lo)) * grid).clamp(0, 1)

    x, y = axis(boxes[:, 0], boxes[:, 2]), axis(boxes[:, 1], boxes[:, 3])
    return (y[:, :, None] * x[:, None, :]).flatten(1)


def count_parameters(
    module: nn.Module, *, trainable: bool | None = None, name_contains: str | None = None
) -> int:
    return sum(
        p.numel()
        for n, p in module.named_parameters()
        if (trainable is None or p.requires_grad == trainable)
        and (name_contains is None or name_contains in n)
    )


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


def _llama(
    cfg: cfgmod.LLMConfig, tokenizer: PreTrainedTokenizerBase, pretrained: bool, dtype: torch.dtype
) -> LlamaForCausalLM:
    if pretrained and cfg.name_or_path:
        llm = load_llama(cfg, dtype)
        check_tokenizer(tokenizer, llm.config, f"for {cfg.name_or_path}")
    else:
        llm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=max(cfg.vocab_size, len(tokenizer)),
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
        ).to(dtype)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        # the media placeholders of a pretrained tokenizer; their rows are never read (the
        # placeholders are replaced by media tokens before the LLM)
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    if not (pretrained and cfg.name_or_path):
        _smooth_number_rows(llm, tokenizer)
    return llm


NUMBER_FREQUENCIES = 8
"""Harmonics of the smooth number rows (see :func:`_smooth_number_rows`)."""


@torch.no_grad()
def _smooth_number_rows(llm: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Random-init LLM only: the whole-number tokens' input and output rows become a smooth
    function of their value.

    A pretrained LLM knows that 0.41 lies between 0.40 and 0.42; a randomly initialised one sees
    101 unrelated box tokens, and a tiny model stays on the mean box (STACK.md). So each number
    ``v`` (rescaled to [0, 1] within its kind, box or time) gets the row
    ``R · [cos(πkv), sin(πkv)]_{k=1..K} + R · c``: Fourier features of the value, a shared "this is
    a number" component ``c``, and a random orthonormal ``R`` per kind, scaled to the norm of the
    other rows. Nearby values then start with nearby embeddings, and the output logits over the
    numbers start as a smooth function of the value that the trained ``lm_head`` sharpens. A no-op
    for a tokenizer without whole-number tokens.
    """
    emb = llm.get_input_embeddings().weight  # [V, D]
    head = llm.get_output_embeddings().weight  # [V, D]
    dim = emb.shape[1]
    k = torch.arange(1, NUMBER_FREQUENCIES + 1, dtype=torch.float32)
    for pairs in number_tokens(tokenizer).values():
        if len(pairs) < 2:
            continue
        ids = torch.tensor([i for i, _ in pairs])
        v = torch.tensor([x for _, x in pairs], dtype=torch.float32)
        v = (v - v.min()) / (v.max() - v.min())  # [n] in [0, 1]
        feats = torch.cat(
            [torch.cos(math.pi * k * v[:, None]), torch.sin(math.pi * k * v[:, None]), torch.ones(len(v), 1)],
            dim=1,
        )  # [n, 2K+1], every row of norm sqrt(K+1)
        basis, _ = torch.linalg.qr(torch.randn(dim, feats.shape[1]))  # [D, 2K+1] orthonormal columns
        rows = feats @ basis.T / math.sqrt(NUMBER_FREQUENCIES + 1)  # [n, D] unit rows
        for weight in (emb, head):
            norm = weight.float().norm(dim=1).mean()
            weight[ids] = (rows * norm).to(weight.dtype)


def base_dtype(config: ModelConfig) -> torch.dtype:
    """The dtype the LLM computes in: ``config.base_dtype``, or float32 when the whole LLM trains
    (``lora.r == 0``: trainable parameters are always float32)."""
    return torch.float32 if config.lora.full_finetune else getattr(torch, config.base_dtype)


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
        llm = _llama(config.llm, tokenizer, pretrained, base_dtype(config))
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
    meta = checkpoint.read_model_meta(directory)
    config = cfgmod.from_dict(ModelConfig, meta["model"])
    tokenizer = AutoTokenizer.from_pretrained(Path(directory) / checkpoint.TOKENIZER_DIR)
    model = build_model(
        config,
        pretrained=meta["pretrained"],
        device="cpu",
        seed=meta["seed"],
        tokenizer=tokenizer,
        **overrides,
    )
    checkpoint.load_trainable(directory, model)
    return model.to(device).eval()
