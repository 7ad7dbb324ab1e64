"""AVACE: audio-visual cross-modal attention whose map is kept inside the sounding object's box.

The module (paper §3.2, Algorithm 1 line 3: ``z̃_I, z̃_A, A^c = AVACE(z_I, z_A)``):

1. projects the frozen encoders' tokens into a shared space of width ``dim``
   (``img_proj [B, M, d]``, ``aud_proj [B, N, d]``; these modality-specific features are what the OT
   loss aligns, see :mod:`meerkat_core.alignment`);
2. audio→image attention: every audio token queries the image patches; the softmax is over the
   patches (keys), so each row is a distribution over the image. The map ``A^c`` is the mean of
   those rows over heads and audio tokens — still a distribution over the M patches, never the
   constant ``1/M`` that averaging *over keys* would give — divided by its maximum so that it lies in
   [0, 1] with its peak at 1. Eq. 3 is then minimised by a map that is 1 on the box and 0 off it,
   i.e. attention spread evenly over the sounding object. It is returned on the patch grid
   ``[B, h, w]`` (14×14 for ViT-B/16);
3. image→audio attention: every patch queries the audio tokens, so image tokens carry what they
   sound like, and audio tokens get the visual context of step 2 (both residual, with LayerNorm);
4. optionally (neither is in the paper; each has its own switch, ``map_tokens`` and
   ``map_box_tokens`` of :class:`~meerkat_core.config.AVACEConfig`: both on in the ``tiny``
   preset, both off in ``paper``; with both off the module has no parameters for them and the
   image tokens are ``LayerNorm(img + img_ctx)`` of step 3 alone), writes the map back into the
   image tokens, two ways, so that the LLM reads *where the sound is* directly from the
   box-supervised map — the lever that lets the attention-consistency loss change what the model
   says, not only its attention:

   * locally, ``A^c(k) · e_sound`` (a learned vector) on patch k: which patches sound;
   * globally, the box the map implies (:func:`map_box`): Eq. 3 is minimised by a map spread
     evenly over the box, and a uniform distribution over an interval of width ``w`` has standard
     deviation ``w/√12``, so the map's spatial mean ``μ`` and deviation ``σ`` give the box
     ``μ ± √3·σ`` per axis. The moments are those of ``(A^c)³``, not of ``A^c``: Eq. 3 charges
     the background only its *mean* level, so a trained map keeps a faint floor over the large
     area outside the box, which carries a large share of the plain map's mass and inflates σ;
     the cube keeps the box and drops the floor. The box's four coordinates, as sin/cos features
     of the value (:func:`fourier_features`, the kind of features the tiny LLM's number tokens
     start from, see :mod:`meerkat_core.builders`), go through a learned projection (zero at
     init) that is added to every image token.

   Why the second channel: with only the local one, a small LLM has to learn to turn a
   highlighted region into edge coordinates (a min and a max over patches) from scratch, which
   it can pick the right object long before it can do; the implied box hands it the coordinates
   directly. It is differentiable, so the answer's loss reaches the map through it too.

:func:`attention_consistency_loss` is Eq. 3 verbatim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine positions ``[h*w, dim]`` (row-major), half the channels per axis."""
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / (10_000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))  # [dim/4]
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    ang_y = ys.reshape(-1, 1) * freqs  # [hw, dim/4]
    ang_x = xs.reshape(-1, 1) * freqs
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)


class _CrossAttention(nn.Module):
    """Multi-head attention of queries over another modality's keys/values; returns the probabilities."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AVACE dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        m = ctx.shape[1]
        h = self.num_heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)  # [B, h, n, d/h]
        k = self.k(ctx).view(b, m, h, d // h).transpose(1, 2)  # [B, h, m, d/h]
        v = self.v(ctx).view(b, m, h, d // h).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)  # [B, h, n, m]
        # float32 whatever the module's dtype (a bf16 mixed-precision policy): the map and L_AC read these
        probs = logits.float().softmax(dim=-1)  # a distribution over the context tokens per query
        mixed = F.dropout(probs, self.dropout, self.training).to(v.dtype) @ v  # [B, h, n, d/h]
        return self.out(mixed.transpose(1, 2).reshape(b, n, d)), probs


@dataclass
class AVACEOutput:
    img: torch.Tensor
    """``[B, M, d]`` image patch tokens after fusion (to the LLM projection)."""
    aud: torch.Tensor
    """``[B, N, d]`` audio tokens after fusion."""
    attn_map: torch.Tensor
    """``[B, h, w]`` audio→image attention over the patch grid, in [0, 1], peak 1."""
    img_proj: torch.Tensor
    """``[B, M, d]`` image tokens projected, before any cross-modal mixing (for the OT loss)."""
    aud_proj: torch.Tensor
    """``[B, N, d]`` audio tokens projected, before any cross-modal mixing (for the OT loss)."""
    map_box: torch.Tensor | None = None
    """``[B, 4]`` the box the map implies, ``[x1, y1, x2, y2]`` in [0, 1] of the patch grid."""


WHERE_FREQUENCIES = 8
"""Harmonics of the sin/cos features of ``map_box`` (as many as the tiny LLM's number rows)."""


def fourier_features(values: torch.Tensor, n_freq: int = WHERE_FREQUENCIES) -> torch.Tensor:
    """``[..., C]`` values in [0, 1] -> ``[..., C * 2 n_freq]``: ``cos(πkv), sin(πkv)``, k = 1..n_freq."""
    k = torch.arange(1, n_freq + 1, device=values.device, dtype=values.dtype)
    ang = math.pi * values[..., None] * k  # [..., C, n_freq]
    return torch.cat([ang.cos(), ang.sin()], dim=-1).flatten(-2)


MAP_BOX_POWER = 3
"""``map_box`` weighs the patches by ``(A^c)^MAP_BOX_POWER`` (see the module docstring)."""


def map_box(weights: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, grid²]`` non-negative weights over the row-major patch grid -> ``[B, 4]`` boxes
    ``μ ± √3·σ`` of the weights normalised to a distribution.

    A distribution uniform over the n cells a box spans along an axis gives back a half-width of
    ``√(n²-1)/2`` cells for the true ``n/2``: exact up to the grid's resolution. Clamped to [0, 1].

    Always in float32, under autocast too: the variance is a difference of near-equal moments,
    which bf16 matmuls round to a zero-width box for a peaked map."""
    centres = (torch.arange(grid, device=weights.device, dtype=torch.float32) + 0.5) / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)  # [M, 2] (x, y) of each cell centre
    with torch.autocast(weights.device.type, enabled=False):
        d = weights.float()
        d = d / d.sum(dim=1, keepdim=True).clamp_min(1e-12)
        mu = d @ xy  # [B, 2]
        var = (d @ xy.square() - mu.square()).clamp_min(1e-6)
        half = math.sqrt(3.0) * var.sqrt()
        return torch.cat([mu - half, mu + half], dim=1).clamp(0.0, 1.0)


class AVACE(nn.Module):
    """Cross-modal attention adapter between audio tokens and the image patch grid."""

    def __init__(
        self,
        img_dim: int,
        aud_dim: int,
        dim: int,
        num_heads: int,
        grid: int,
        dropout: float = 0.0,
        *,
        map_tokens: bool = True,
        map_box_tokens: bool = True,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.map_tokens = map_tokens
        self.map_box_tokens = map_box_tokens
        self.img_in = nn.Sequential(nn.LayerNorm(img_dim), nn.Linear(img_dim, dim))
        self.aud_in = nn.Sequential(nn.LayerNorm(aud_dim), nn.Linear(aud_dim, dim))
        self.register_buffer("img_pos", sincos_2d(grid, grid, dim), persistent=False)  # [M, d]
        self.aud_to_img = _CrossAttention(dim, num_heads, dropout)
        self.img_to_aud = _CrossAttention(dim, num_heads, dropout)
        self.norm_img = nn.LayerNorm(dim)
        self.norm_aud = nn.LayerNorm(dim)
        if map_tokens:
            self.sound_embed = nn.Parameter(torch.zeros(dim))
        if map_box_tokens:
            self.where = nn.Linear(4 * 2 * WHERE_FREQUENCIES, dim)
            nn.init.zeros_(self.where.weight)
            nn.init.zeros_(self.where.bias)

    def forward(self, z_img: torch.Tensor, z_aud: torch.Tensor) -> AVACEOutput:
        """``z_img [B, M, D_I]`` patch tokens (no CLS, row-major grid), ``z_aud [B, N, D_A]``."""
        b, m, _ = z_img.shape
        if m != self.grid * self.grid:
            raise ValueError(f"AVACE expects {self.grid}x{self.grid} image patches, got {m}")
        img = self.img_in(z_img)  # [B, M, d]
        aud = self.aud_in(z_aud)  # [B, N, d]
        img_pos = img + self.img_pos.to(img.dtype)
        aud_ctx, a2i = self.aud_to_img(aud, img_pos)  # a2i [B, heads, N, M]
        dist = a2i.mean(dim=(1, 2))  # [B, M], sums to 1
        attn = dist / dist.amax(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, M] in [0, 1]
        img_ctx, _ = self.img_to_aud(img_pos, aud)  # [B, M, d]
        box = map_box(attn.float() ** MAP_BOX_POWER, self.grid)  # [B, 4]
        img_out = self.norm_img(img_pos + img_ctx)  # [B, M, d]
        if self.map_tokens:
            img_out = img_out + attn.unsqueeze(-1).to(img_out.dtype) * self.sound_embed
        if self.map_box_tokens:
            img_out = img_out + self.where(fourier_features(box).to(img.dtype))[:, None]  # + [B, 1, d]
        aud_out = self.norm_aud(aud + aud_ctx)
        return AVACEOutput(
            img=img_out,
            aud=aud_out,
            attn_map=attn.view(b, self.grid, self.grid),
            img_proj=img,
            aud_proj=aud,
            map_box=box,
        )


def attention_consistency_loss(
    attn: torch.Tensor,
    mask: torch.Tensor,
    lambda1: float = 0.5,
    lambda2: float = 0.5,
    eps1: float = 1e-6,
    eps2: float = 1e-6,
) -> torch.Tensor:
    """Eq. 3: keep the attention map inside the box mask.

    ``L_AC = λ1 (1 - Σ M·A / (Σ M + ε1)) + λ2 (Σ (1-M)·A / (Σ (1-M) + ε2))``

    Args:
        attn: ``[B, h, w]`` attention map in [0, 1].
        mask: ``[B, h, w]`` box mask (1 inside the box).

    Returns:
        ``[B]`` per-sample losses, float32.
    """
    if attn.shape != mask.shape:
        raise ValueError(f"attention {tuple(attn.shape)} and mask {tuple(mask.shape)} differ in shape")
    attn, mask = attn.float(), mask.float()  # computed in float32 whatever the map's dtype
    inside = (mask * attn).sum(dim=(-2, -1)) / (mask.sum(dim=(-2, -1)) + eps1)
    outside = ((1 - mask) * attn).sum(dim=(-2, -1)) / ((1 - mask).sum(dim=(-2, -1)) + eps2)
    return lambda1 * (1 - inside) + lambda2 * outside
