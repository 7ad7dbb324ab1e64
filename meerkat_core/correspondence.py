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
  place, near 1 where it finds nothing to attend to;
* the match probability: ``sigmoid(t · s + b)`` of the mean similarity ``s`` with the match loss's
  learnt scale and bias (below). A monotone map of the mean match, so it carries nothing the mean
  does not; it is there because it puts the loss's decision threshold at 1/2, where sin/cos features
  of a value in [0, 1] resolve it, wherever on the cosine scale training moves that threshold.

The similarities are taken between AVACE's trainable projections before any cross-modal mixing
(``AVACEOutput.img_proj`` / ``aud_proj``), the token sets that the OT loss aligns
(:mod:`meerkat_core.alignment`) on matching pairs only. The values go through sin/cos features
(:func:`~meerkat_core.attention.fourier_features`, as the map's box does) and a zero-initialised
projection (``av_match_proj`` of :class:`~meerkat_core.model.MeerkatModel`, so the features start
as a no-op), and the result is added to every audio token.

**The match loss** (``loss.lambda_match``, 0.5 in ``tiny``). The OT loss never sees a mismatched
pair: it pulls every audio token of a matching pair towards some patch, and nothing pushed a
mismatched pair apart. Without this loss the features measured so (``experiments/match_probe.py``,
two seeds of the 2,700-step schedule): the best match sat at .99 whether or not the source was in
the picture (ROC AUC between the two .48-.52; mean match .56-.60, spread .60-.68), and the switch
moved type 4 by +.03 and -.04. :func:`match_loss` is a per-pair sigmoid loss (SigLIP's form) on
:func:`pair_scores`, the mean match of *every* (image i, sound j) pair of the batch, labelled by
:func:`match_labels`: 1 where a class heard in j is shown in i, 0 where none is, from the classes
the samples list (:func:`class_columns`; the procedural world lists them, so a type-4 False pair and
every other scene's sound whose class is not on the picture are negatives, and another scene's
sound of a class that *is* on it is a positive). Where a sample lists no classes only its own
pair is labelled, by its pairing (``paired``). The loss needs a labelled match and a mismatch in
the batch; the pairs come from each worker's own batch, so a larger per-worker batch sees more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MATCH_VALUES = 4
"""Values of :func:`match_values` per sample (``av_match_proj`` reads their sin/cos features)."""


def match_values(
    img_proj: torch.Tensor, aud_proj: torch.Tensor, attn_map: torch.Tensor, scale_bias: torch.Tensor
) -> torch.Tensor:
    """``[B, MATCH_VALUES]`` in [0, 1]: the best and the mean closest-patch cosine similarity of the
    audio tokens ``aud_proj [B, N, d]`` with the image patches ``img_proj [B, M, d]`` (each mapped
    by ``(1 + s) / 2``), the mean of AVACE's peak-normalised map ``attn_map [B, h, w]``, and the
    match loss's probability of the mean similarity (:func:`match_probability` with ``scale_bias``).

    In float32 whatever the inputs' dtype (the similarities are near-equal values whose differences matter).
    """
    with torch.autocast(img_proj.device.type, enabled=False):
        img = F.normalize(img_proj.float(), dim=-1, eps=1e-8)
        aud = F.normalize(aud_proj.float(), dim=-1, eps=1e-8)
        closest = torch.bmm(aud, img.transpose(1, 2)).amax(dim=-1)  # [B, N]
        spread = attn_map.float().flatten(1).mean(dim=1)  # [B]
        mean = closest.mean(dim=1)
        return torch.stack(
            [
                (1 + closest.amax(dim=1)) / 2,
                (1 + mean) / 2,
                spread,
                match_probability(mean, scale_bias.float()),
            ],
            dim=1,
        )


# -- the match loss: mismatched pairs seen -------------------------------------------------------
MATCH_BIAS_INIT = 1.0
"""Minus the match loss's initial bias: 10 × the mean closest-patch similarity an untrained tiny
model gives a pair of the procedural world (0.08-0.16), so that its pairs start near probability 1/2."""

CLASS_SLOTS = 8
"""Classes a sample can name on its image and in its sound (``image_classes`` / ``sound_classes``
columns); a sample naming more is treated as unlabelled (:func:`class_columns`)."""


def class_id(name: str) -> int:
    """A class name's id in the class columns: 63 bits of its BLAKE2b digest (stable across
    processes and machines, unlike ``hash``; no vocabulary to ship, and two names of any dataset's
    few hundred classes share an id with probability ~1e-14)."""
    digest = hashlib.blake2b(name.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def class_columns(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The match loss's columns of a sample: ``image_classes [CLASS_SLOTS]`` and ``sound_classes
    [CLASS_SLOTS]`` (class ids, -1 padded) and ``classes_known``.

    Known where the sample lists what its picture shows (``objects[].class``) and what its clip
    holds (``sound_events[].class``, an empty list: nothing but noise), as the procedural world's
    samples do; real sources that list neither leave the sample unlabelled, and the loss then
    uses only its own pairing (``paired``).
    """
    objects, events = meta.get("objects"), meta.get("sound_events")
    image = sorted({class_id(name) for name in _class_names(objects, "objects")})
    sound = sorted({class_id(name) for name in _class_names(events, "sound_events")})
    known = bool(objects) and events is not None and max(len(image), len(sound)) <= CLASS_SLOTS
    if not known:
        image, sound = [], []

    def pad(ids: list[int]) -> np.ndarray:
        return np.asarray(ids + [-1] * (CLASS_SLOTS - len(ids)), dtype=np.int64)

    return {"image_classes": pad(image), "sound_classes": pad(sound), "classes_known": known}


def _class_names(entries: Any, field: str) -> list[str]:
    """The ``class`` of each entry of ``meta[field]`` (entries without one are skipped); a
    ValueError naming the field for anything that is not a list of objects with string classes."""
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        raise ValueError(f"{field} must be a list of objects")
    names = [e.get("class") for e in entries if e.get("class") is not None]
    if not all(isinstance(n, str) for n in names):
        raise ValueError(f"{field}[].class must be a string")
    return [n for n in names if n.strip()]


def match_labels(
    image_classes: torch.Tensor, sound_classes: torch.Tensor, known: torch.Tensor, paired: torch.Tensor
) -> torch.Tensor:
    """``[B, B]`` labels of every (image i, sound j) pair of a batch: 1 where something the sound
    holds is on the picture, 0 where nothing is, -1 where that is not known (left out of the loss).

    Both samples labelled (:func:`class_columns`): from their classes, so other samples' sounds
    are negatives (or positives) wherever the classes say so. Otherwise only the diagonal is
    labelled, by the sample's own pairing (``ot_pair``).
    """
    img, snd = image_classes[:, None, :, None], sound_classes[None, :, None, :]  # [B,1,K,1], [1,B,1,K]
    shared = ((img == snd) & (img >= 0)).flatten(2).any(-1)  # [B, B]
    labels = torch.full(shared.shape, -1, dtype=torch.long, device=shared.device)
    both = known[:, None] & known[None, :]
    labels[both] = shared[both].long()
    diag = torch.arange(len(known), device=shared.device)
    labels[diag, diag] = torch.where(known, shared[diag, diag], paired.bool()).long()
    return labels


def pair_scores(img_proj: torch.Tensor, aud_proj: torch.Tensor) -> torch.Tensor:
    """``[B, B]``: for image i and sound j, the mean over j's audio tokens of each one's closest
    patch of i by cosine similarity (the mean match of :func:`match_values`, for every pair)."""
    with torch.autocast(img_proj.device.type, enabled=False):
        img = F.normalize(img_proj.float(), dim=-1, eps=1e-8)
        aud = F.normalize(aud_proj.float(), dim=-1, eps=1e-8)
        sims = torch.einsum("imd,jnd->ijnm", img, aud)  # [B_img, B_aud, N, M]
        return sims.amax(dim=-1).mean(dim=-1)


def match_loss(scores: torch.Tensor, labels: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """Sigmoid (SigLIP-style) loss of the labelled pairs: the mean over pairs with a label of
    ``softplus(-y · (t · s + b))``, ``y = ±1``, ``t = exp(scale_bias[0])``, ``b = scale_bias[1]``;
    0 (with a gradient path) unless the batch holds a labelled match *and* a labelled mismatch.
    With one kind alone the loss would only move the bias towards it: a stream of real pairs
    with no mismatches (a source that neither lists classes nor writes ``paired`` False) would
    drive every pair's probability to 1 and teach nothing.

    Sigmoid rather than softmax (InfoNCE): a type-4 negative's sound has no matching picture in
    the batch, and two scenes that share a class are both right for the same sound; a per-pair
    binary loss takes both as they are.
    """
    keep = labels >= 0
    logits = scale_bias[0].exp() * scores + scale_bias[1]
    if not ((labels == 1).any() and (labels == 0).any()):
        return logits.sum() * 0.0
    y = labels[keep].float() * 2 - 1
    return F.softplus(-y * logits[keep]).mean()


def match_probability(scores: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """``sigmoid(t · s + b)``: the match loss's probability that a sound's source is on the picture
    (a monotone map of the mean match ``s``, with its threshold at 1/2)."""
    return torch.sigmoid(scale_bias[0].exp() * scores + scale_bias[1])
