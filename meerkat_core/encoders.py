"""Frozen image (CLIP vision) and audio (CLAP HTSAT) encoders that return patch tokens.

* :class:`ImageEncoder`: ``pixel_values [B, 3, 224, 224] -> z_I [B, S_I, D_I]``, all of CLIP's last
  hidden states: CLS then the row-major patch grid (197 × 768 for ViT-B/16). Consumers that need
  the grid take ``z_I[:, 1:]``.
* :class:`AudioEncoder`: ``input_features [B, W, 1, T, F] -> z_A [B, W * S_w, D_A]``. A clip longer
  than CLAP's 10-s window arrives as W consecutive windows (see
  :class:`meerkat_core.media.AudioFrontEnd`); each window is encoded alone (the W windows of the
  batch go through HTSAT as one batch of B·W) and the windows' tokens are concatenated in time
  order. HTSAT's last stage is a ``[C, h, w]`` map; its tokens are the h·w positions (64 per window
  for the HTSAT shapes used here).

Both are frozen when ``freeze=True``: parameters without gradients, always in eval mode (dropout
off) and run under ``torch.no_grad()`` so that no activation is kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import ClapAudioModel, CLIPVisionModel


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
