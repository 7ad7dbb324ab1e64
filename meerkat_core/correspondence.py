"""Audio-visual correspondence: how well anything in the picture matches the sound (``av_match``).

``config.av_match`` (on in ``tiny``, off in ``paper``; not in the paper). A type-4 fact-check asks
whether the sound's source is in the picture at all: its False statements pair the image with a
sound of a class that is nowhere on it. Nothing else the LLM reads answers that in absolute terms.
AVACE's map is divided by its peak (:mod:`meerkat_core.attention`), so it points at *some* object
whatever the sound is, and the map's box (``map_box``) and the region prompts'
:func:`~meerkat_core.regions.map_agreement` only compare places on the image with each other. A
tiny LLM trained on the other signals fit those statements to .89-.94 on its own training data and
.83-.86 on held-out scenes.

So, as the audio-visual correspondence task of self-supervised audio-visual learning asks
("does this sound belong with this picture?"), each sample gets :func:`match_values`, in [0, 1]:

* the best match: over the audio tokens, the largest cosine similarity of one with its closest
  image patch, ``(1 + max_l max_k cos(a_l, i_k)) / 2``;
* the mean match: the same closest-patch similarity averaged over the audio tokens, so a sound
  heard through most of the clip and one heard in a short stretch are told apart;
* the map's spread: the mean of AVACE's peak-normalised map, ``1 / (M · max_k p_k)`` for its
  distribution ``p`` over the M patches: near ``1/M`` where the audio's attention falls on one
  place, near 1 where it finds nothing to attend to.

The similarities are taken between AVACE's trainable projections before any cross-modal mixing
(``AVACEOutput.img_proj`` / ``aud_proj``), the token sets that the OT loss aligns
(:mod:`meerkat_core.alignment`) on matching pairs only: a sound's tokens are pulled towards the
patches of its source, and a sound whose source is absent has no such patches. The three values go
through sin/cos features (:func:`~meerkat_core.attention.fourier_features`, as the map's box does) and a
zero-initialised projection (``av_match_proj`` of :class:`~meerkat_core.model.MeerkatModel`, so
the switch starts as a no-op), and the result is added to every audio token. No loss of its own:
the answers' cross-entropy reaches the projection, and once that is not zero, AVACE too: its input
projections through the similarities, and its audio-to-image attention through the map's spread.
The OT loss never sees a mismatched pair, so nothing but that cross-entropy pushes a mismatched
pair's similarities down; whether it does is measured by the ablation variant ``no_av_match``.
Measured so far, it does not: over two seeds the switch moved type 4 by +.03 and -.04, and
``experiments/match_probe.py`` finds the best match at .99 whether or not the source is in the
picture (ROC AUC between the two after training: best match .48-.52, mean .56-.60, spread
.60-.68). A loss that sees mismatched pairs is what would make these values informative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MATCH_VALUES = 3
"""Values of :func:`match_values` per sample (``av_match_proj`` reads their sin/cos features)."""


def match_values(img_proj: torch.Tensor, aud_proj: torch.Tensor, attn_map: torch.Tensor) -> torch.Tensor:
    """``[B, MATCH_VALUES]`` in [0, 1]: the best and the mean closest-patch cosine similarity of the
    audio tokens ``aud_proj [B, N, d]`` with the image patches ``img_proj [B, M, d]`` (each mapped
    by ``(1 + s) / 2``), and the mean of AVACE's peak-normalised map ``attn_map [B, h, w]``.

    In float32 whatever the inputs' dtype (the similarities are near-equal values whose differences matter).
    """
    with torch.autocast(img_proj.device.type, enabled=False):
        img = F.normalize(img_proj.float(), dim=-1, eps=1e-8)
        aud = F.normalize(aud_proj.float(), dim=-1, eps=1e-8)
        closest = torch.bmm(aud, img.transpose(1, 2)).amax(dim=-1)  # [B, N]
        spread = attn_map.float().flatten(1).mean(dim=1)  # [B]
        return torch.stack([(1 + closest.amax(dim=1)) / 2, (1 + closest.mean(dim=1)) / 2, spread], dim=1)
