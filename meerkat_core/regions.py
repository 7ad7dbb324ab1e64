"""Region prompts: a box or time window written in a prompt, also given to the LLM as features.

``config.region_prompts`` (on in ``tiny``, off in ``paper``; not in the paper). A fact-check
statement writes a box or a time window that the model must check against the media. Llama-2 reads
``[0.12, 0.30, 0.55, 0.80]`` as text it has seen in pre-training; a tiny randomly initialised LLM
would have to learn from scratch to relate four number tokens to places on the patch grid. So, as
region-referring MLLMs do (GPT4RoI, Ferret: features pooled from the referred region), the written
box is also given as the mean of the LLM-side image tokens it covers plus AVACE's mean map inside
and outside it, and the written window as the mean log-mel frame in it
(:func:`~meerkat_core.batching.segment_features`). Each goes through a zero-initialised linear layer
(so a region prompt starts as a no-op) and is added to the embedding of the span's closing bracket.
The text of the prompt is unchanged.

How well the written box agrees with AVACE's map (:func:`map_agreement`: the map inside and outside
the box, their contrast, the box's IoU with the box the map implies) also gets a projection of its
own, over sin/cos features of each value. Given only as two of the ``D_T + 2`` inputs of the box's
projection, beside the pooled image tokens, that signal was drowned: in a seed where fact-checking
a written box stalled (accuracy .54-.78 on it, a box on the other object mostly read as True), one
threshold on the map's contrast separated the written box from a wrong one on every held-out
case, as in a seed that learnt it (``experiments/learn_probe.py``, its ``avfact_region``
diagnostics: an upper bound, the threshold picked on those cases). The LLM's loss reaches AVACE's
map through these features too, as it does through the pooled tokens.

The batch carries, per row (built by :class:`~meerkat_core.batching.SamplePreprocessor`)::

    region_box    [B, 4]    box written in the prompt, in crop coordinates
    region_pos    [B] long  its closing-bracket token, -1 if none
    segment_feat  [B, 2F]   batching.segment_features of the written window
    segment_pos   [B] long  its closing-bracket token, -1 if none

The three projections are attributes of :class:`~meerkat_core.model.MeerkatModel`
(``region_box_proj``, ``region_match_proj``, ``region_segment_proj``), so that their parameter
names, and with them the checkpoint format, do not depend on where this code lives.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from meerkat_core.attention import fourier_features

MATCH_FEATURES = 4
"""Values of :func:`map_agreement` per box (``region_match_proj`` reads their sin/cos features)."""


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear layer whose weight and bias start at zero: a learnt input that starts as a no-op."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def box_coverage(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, grid*grid]``: the fraction of each patch cell (row-major) that box ``[B, 4]`` covers."""
    edges = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) / grid  # [g+1]
    lo, hi = edges[:-1], edges[1:]

    def axis(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [B] -> [B, g]
        return ((torch.minimum(b[:, None], hi) - torch.maximum(a[:, None], lo)) * grid).clamp(0, 1)

    x, y = axis(boxes[:, 0], boxes[:, 2]), axis(boxes[:, 1], boxes[:, 3])
    return (y[:, :, None] * x[:, None, :]).flatten(1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B]`` IoU of boxes ``a`` and ``b`` ``[B, 4]`` (x1, y1, x2, y2); 0 where either is empty."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp_min(0)
    inter = wh[:, 0] * wh[:, 1]
    area = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(1) + (b[:, 2:] - b[:, :2]).clamp_min(0).prod(1)
    return inter / (area - inter).clamp_min(1e-9)


def map_agreement(boxes: torch.Tensor, attn_map: torch.Tensor, map_box: torch.Tensor) -> torch.Tensor:
    """``[B, MATCH_FEATURES]`` in [0, 1]: how well each box ``[B, 4]`` agrees with AVACE's map
    ``[B, h, w]`` (values in [0, 1]) and the box it implies ``map_box [B, 4]``
    (:func:`~meerkat_core.attention.map_box`, ``AVACEOutput.map_box``): the map's mean inside the
    box, its mean outside, ``(1 + inside - outside) / 2``, and the box's IoU with ``map_box``."""
    amap = attn_map.float().flatten(1)  # [B, g*g]
    cm = box_coverage(boxes.float(), attn_map.shape[-1])
    inside = (cm * amap).sum(1) / cm.sum(1).clamp_min(1e-6)
    outside = ((1 - cm) * amap).sum(1) / (1 - cm).sum(1).clamp_min(1e-6)
    iou = box_iou(boxes.float(), map_box.float())
    return torch.stack([inside, outside, (1 + inside - outside) / 2, iou], dim=1)


def region_features(
    batch: dict[str, torch.Tensor],
    image_tokens: torch.Tensor,
    attn_map: torch.Tensor,
    map_box: torch.Tensor,
    box_proj: nn.Module,
    match_proj: nn.Module,
    segment_proj: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, D_T]`` features of the box and of the time window written in each prompt (rows
    without one hold values that :func:`add_region_features` never uses).

    Box: the LLM-side ``image_tokens [B, M', D_T]`` averaged over the box (each patch weighted by
    the fraction of it the box covers) and the mean of AVACE's ``attn_map [B, h, w]`` inside and
    outside the box, through ``box_proj``, plus the sin/cos features of :func:`map_agreement`
    (with the box the map implies, ``map_box [B, 4]``) through ``match_proj``. Window: ``segment_feat``, layer-normalised, through ``segment_proj``.
    """
    img = image_tokens.float()  # [B, M', D_T]
    cov = box_coverage(batch["region_box"].float(), math.isqrt(img.shape[1]))  # [B, M']
    pooled = (cov[..., None] * img).sum(1) / cov.sum(1, keepdim=True).clamp_min(1e-6)
    agree = map_agreement(batch["region_box"], attn_map, map_box)  # [B, 4]
    box = box_proj(torch.cat([pooled, agree[:, :2]], dim=1)) + match_proj(fourier_features(agree))
    seg = batch["segment_feat"].float()
    segment = segment_proj(F.layer_norm(seg, seg.shape[-1:]))
    return box, segment


def add_region_features(
    text: torch.Tensor, batch: dict[str, torch.Tensor], box: torch.Tensor, segment: torch.Tensor
) -> torch.Tensor:
    """``text [B, L, D_T]`` with each row's box and window features added at their closing brackets."""
    rows = torch.arange(text.shape[0], device=text.device)
    for feats, pos in ((box, batch["region_pos"]), (segment, batch["segment_pos"])):
        has = pos >= 0
        if has.any():
            text = text.index_put((rows[has], pos[has]), feats[has].to(text.dtype), accumulate=True)
        # Keep both projections in the graph when no row of the batch writes a box (or a window):
        # DDP expects every trainable parameter to get a gradient on every rank at every step.
        text = text + 0.0 * feats.sum().to(text.dtype)
    return text
