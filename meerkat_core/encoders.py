"""Frozen image (CLIP vision) and audio (CLAP HTSAT) encoders that return patch tokens.

* :class:`ImageEncoder`: ``pixel_values [B, 3, 224, 224] -> z_I [B, S_I, D_I]``, all of CLIP's last
  hidden states: CLS then the row-major patch grid (197 × 768 for ViT-B/16). Consumers that need
  the grid take ``z_I[:, 1:]``.
* :class:`AudioEncoder`: ``input_features [B, W, 1, T, F] -> z_A [B, W * S_w, D_A]``. A clip longer
  than CLAP's 10-s window arrives as W consecutive windows (see
  :class:`meerkat_core.media.AudioFrontEnd`); each window is encoded alone (the W windows of the
  batch go through HTSAT as one batch of B·W) and the windows' tokens are concatenated in time
  order. HTSAT's last stage is a ``[C, h, w]`` map; its tokens are the h·w positions (64 per window
  for the HTSAT shapes used here). They are NOT in time order: HTSAT folds a window's mel frames
  into ``freq_ratio`` chunks stacked along its frequency axis, and transformers' ``ClapAudioEncoder``
  regroups its last map as ``[bands, chunks · w]``, so the tokens of a window are ``bands`` rows
  (frequency bands, low first) that each run through the whole window in time order. Which time
  each token covers: :func:`audio_token_times`.

Both are frozen when ``freeze=True``: parameters without gradients, always in eval mode (dropout
off) and run under ``torch.no_grad()`` so that no activation is kept for backward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from transformers import ClapAudioModel, CLIPVisionModel

from meerkat_core.config import AudioEncoderConfig


def audio_token_layout(cfg: AudioEncoderConfig) -> tuple[int, int]:
    """``(bands, slots)`` of one window's tokens: the tokens are ``bands`` rows of ``slots``
    consecutive time slots (row-major), ``bands * slots == cfg.tokens_per_window``.

    HTSAT's last map is ``side × side`` (``side = spec_size / patch / 2^(stages-1)``); the window's
    frames were cut into ``freq_ratio = spec_size / num_mel_bins`` chunks stacked along the
    frequency axis, which transformers regroups into ``side / freq_ratio`` bands of
    ``freq_ratio · side`` time slots (``ClapAudioEncoder.forward``, the "group 2D CNN" step)."""
    side = cfg.spec_size // cfg.patch_size // 2 ** (len(cfg.depths) - 1)
    freq_ratio = cfg.spec_size // cfg.num_mel_bins
    bands = max(side // freq_ratio, 1)
    return bands, cfg.tokens_per_window // bands


def audio_token_times(cfg: AudioEncoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)``, each ``[num_tokens]`` seconds: the stretch of the clip that each audio
    token of :class:`AudioEncoder` covers (windows in time order, see :func:`audio_token_layout`)."""
    bands, slots = audio_token_layout(cfg)
    slot = np.tile(np.arange(slots), bands)  # [tokens_per_window]
    step = cfg.window_seconds / slots
    starts = np.concatenate([w * cfg.window_seconds + slot * step for w in range(cfg.num_windows)])
    return starts, starts + step


def time_stamp_ids(cfg: AudioEncoderConfig, time_numbers: list[tuple[int, float]]) -> torch.Tensor:
    """``[num_tokens]`` long: for each audio token, the id of the whole-number time token (the
    tokenizer's ``(id, value)`` pairs, e.g. ``tokenizer.number_tokens(tok)["time"]``) nearest the
    centre of the stretch it covers (:func:`audio_token_times`). The stamps of
    ``ModelConfig.audio_time_stamps``: see :meth:`meerkat_core.model.MeerkatModel.encode_media`."""
    if not time_numbers:
        raise ValueError("audio time stamps need a tokenizer with whole-number time tokens (the offline one)")
    starts, ends = audio_token_times(cfg)
    ids = np.asarray([i for i, _ in time_numbers])
    values = np.asarray([v for _, v in time_numbers])
    centres = (starts + ends) / 2
    nearest = np.abs(centres[:, None] - values[None, :]).argmin(axis=1)  # [num_tokens]
    return torch.from_numpy(ids[nearest]).long()


class _Frozen(nn.Module):
    def __init__(self, freeze: bool) -> None:
        super().__init__()
        self.frozen = freeze

    def _freeze(self) -> None:
        if self.frozen:
            for p in self.parameters():
                p.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> _Frozen:
        # A frozen encoder stays in eval mode whatever the parent model is switched to.
        return super().train(mode and not self.frozen)


class ImageEncoder(_Frozen):
    """CLIP vision transformer returning all its token states."""

    def __init__(self, clip: CLIPVisionModel, freeze: bool = True) -> None:
        super().__init__(freeze)
        self.clip = clip
        cfg = clip.config
        self.grid = cfg.image_size // cfg.patch_size
        self.dim = cfg.hidden_size
        self._freeze()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 1 + grid², D_I]``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            dtype = next(self.clip.parameters()).dtype
            return self.clip(pixel_values=pixel_values.to(dtype)).last_hidden_state


class AudioEncoder(_Frozen):
    """CLAP's HTSAT audio transformer over consecutive windows of a clip."""

    def __init__(self, clap: ClapAudioModel, freeze: bool = True) -> None:
        super().__init__(freeze)
        self.clap = clap
        cfg = clap.config
        self.dim = cfg.patch_embeds_hidden_size * 2 ** (len(cfg.depths) - 1)
        self._freeze()

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        """``[B, W, 1, T, F] -> [B, W * S_w, D_A]`` (windows in time order)."""
        if input_features.ndim != 5:
            raise ValueError(f"audio features must be [B, W, 1, T, F], got {tuple(input_features.shape)}")
        b, w = input_features.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            dtype = next(self.clap.parameters()).dtype
            flat = input_features.flatten(0, 1).to(dtype)  # [B*W, 1, T, F]
            hidden = self.clap(input_features=flat).last_hidden_state  # [B*W, C, h, w]
            tokens = hidden.flatten(2).transpose(1, 2)  # [B*W, h*w, C]
        return tokens.reshape(b, w * tokens.shape[1], tokens.shape[2])
