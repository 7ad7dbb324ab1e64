"""MeerkatBench metrics (paper Sec. 5, Tables 3-7) and the trivial baselines they are read against.

Every function is pure and takes plain Python / numpy values. A prediction may be the model's raw
text or a value already parsed (a box, a list of segments, a bool); text goes through
``grounding.parse_box`` / ``grounding.parse_segment`` / ``prompts.parse_verdict``. An unparseable
prediction is scored as a miss and counted in ``n_unparsed``; it never raises. Malformed *ground
truth* (our own data) and mismatched input lengths raise ``ValueError``.

Rates are fractions in [0, 1] (the paper prints cIoU, AUC, AVQA accuracy and segment F1 as
percentages). A ratio whose denominator is zero (no samples; precision with nothing predicted;
F1 with neither positives nor predictions) is ``nan``: it is undefined, and reporting 0 or 1 would
read as a failure or a success that did not happen.

Decisions made here, where the literature leaves room:

- **Localisation (ARIG)** follows EZ-VSL's evaluation code, which the sound-source-localisation
  papers of Table 3 share: a normalised box is rasterised on an ``image_size`` x ``image_size``
  grid by truncating ``x * image_size`` to an integer pixel index and filling
  ``map[y1:y2, x1:x2]`` (start inclusive, end exclusive), so ``[0.1, 0.1, 0.2, 0.2]`` at 224 covers
  pixels 22..43. The ground truth is the union of the sample's boxes; for Flickr-SoundNet's
  consensus variant (a list of per-annotator box lists) each annotator's boxes are first united
  into a binary map, and ``G = clip(sum of annotator maps / 2, 0, 1)``: two or more annotators
  agreeing give 1, one gives 0.5, and predicting a half-agreed pixel is not penalised (only
  ``G == 0`` counts as background). EZ-VSL sums raw boxes, one vote per ``bbox`` element of the
  annotation XML; the Flickr-SoundNet converter stores each of them as one annotator's list
  (``annotator_boxes``), so the map is EZ-VSL's exactly. Uniting per annotator first only differs
  when one annotator list holds several boxes (kept from counting twice where they overlap).
  ``ciou`` is the fraction of samples with cIoU >= 0.5 (EZ-VSL's ``AP50``, the paper's "cIoU") and
  ``auc`` the trapezoid area under the success-rate curve over the thresholds, as ``sklearn.auc``
  computes it there.
- **1-second segments.** A clip of ``duration`` seconds has ``ceil(duration)`` bins
  ``[k, min(k + 1, duration))``; a bin is active when the union of the clip's segments, clipped to
  ``[0, duration]``, covers at least half of it (0.5 s for a whole bin, half the length of a shorter
  last bin). Overlapping segments are united first, so two segments that together cover a bin
  activate it. LLP's integer ``[onset, offset)`` ground truth activates exactly its bins.
- **Temporal localisation, the published protocol (Table 4: ``avvp_f1``)** is the LLP/AVVP
  evaluation's: one row is one (video, event class) pair, scored on its 1-second bins.
  *Segment level*: per class, F1 = 2TP / (2TP + FP + FN) over the video's bins. *Event level*: an
  event is a maximal run of active bins; a predicted event is a TP when its IoU with any
  ground-truth event of the class is at least 0.5 and a FP otherwise, and a ground-truth event no
  prediction reaches at 0.5 is a FN. (Between maximal runs, which are at least one bin apart, no
  two predicted events can both reach IoU 0.5 with one ground-truth event, so "any" is one-to-one.)
  In both, a class with neither predictions nor ground truth in a video is left out, the video's
  score is the mean over its remaining classes (1.0 when none is left: all true negatives), and
  the reported F1 is the mean over videos. The event classes are those the benchmark asks about:
  one query per class that the converter made a sample of (``pipelines/avfit/sources/llp.py``:
  heard and seen); classes never asked about count as neither predicted nor present.
- **Project variants, under their own names**: ``segment_f1`` pools TP/FP/FN over all bins of all
  clips (micro F1, defined with one query per clip), and ``event_f1`` treats each predicted segment
  as one event (no merging, so a model that splits one event into two pays a false positive),
  matched one-to-one greedily in order of decreasing temporal IoU (ties by prediction, then
  ground-truth order) on continuous times, a pair counting when IoU >= the threshold.
- Interval comparisons allow ``1e-9`` s of floating-point slack, so that one-decimal boundaries
  (``2.6``, not exact in binary) sit where they are written: an overlap of exactly 0.5 s, or an
  IoU of exactly 0.5, counts.
- **Fact-checking (Table 5)**: positive class True. An unparseable verdict is always wrong: for a
  True label it is a false negative, for a False label a false positive. Treating it as a
  prediction of False would credit a model that babbles on every negative sample.
- **AVQA (Table 6)**: exact match after ``normalise_answer`` (the VQA evaluation's normalisation:
  lowercase, punctuation and the articles a/an/the removed, number words zero..twenty written as
  digits). When the reference is ``yes`` or ``no``, the prediction's first word decides ("Yes, it
  is." is right); there is no synonym list (``yeah``, ``nope``), because such lists are open-ended
  and the model is trained to answer with the dataset's words. Answers are not searched inside
  longer predictions, which would reward listing every option.
- **Captioning** goes through pycocoevalcap exactly as the COCO caption evaluation does: PTB
  tokenisation, then ``Bleu(4)``, ``Meteor()``, ``Rouge()``, ``Cider()`` on the whole corpus.
  CIDEr's document frequencies come from the evaluated references, so it is a corpus-level number.
"""

from __future__ import annotations

import math
import numbers
import random
import re
import shutil
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from meerkat_core.grounding import box_iou, parse_box, parse_segment, validate_box
from meerkat_core.prompts import parse_verdict

Box = tuple[float, float, float, float]
Segment = tuple[float, float]
T = TypeVar("T", bound=Hashable)

# Slack on interval comparisons, in seconds or IoU units; see the module docstring.
_EPS = 1e-9
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
SUCCESS_THRESHOLDS = np.arange(0, 1.0001, 0.05)  # 0, 0.05, ..., 1.0 as in EZ-VSL


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _f1(tp: int, fp: int, fn: int) -> float:
    """F1 as 2TP / (2TP + FP + FN): the harmonic mean of precision and recall wherever both exist."""
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _check_lengths(**sequences: Sequence[Any]) -> int:
    lengths = {name: len(seq) for name, seq in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    return next(iter(lengths.values()))


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_numbers(value: object, count: int) -> bool:
    """Whether ``value`` is a non-string sequence of exactly ``count`` real numbers."""
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        return False
    return len(value) == count and all(_is_real(v) for v in value)


# ---------------------------------------------------------------------------------------------
# Boxes: audio-referred image grounding (Table 3) and the procedural world
# ---------------------------------------------------------------------------------------------


def _pred_box(pred: object) -> Box | None:
    """A predicted box from text or numbers, clamped to [0, 1]; None when it is not a valid box."""
    if isinstance(pred, str):
        return parse_box(pred)
    if not _is_numbers(pred, 4):
        return None
    try:
        return validate_box(pred, tolerance=math.inf)
    except ValueError:
        return None


def _gt_box(box: object) -> Box:
    """A ground-truth box clamped to [0, 1]; raises ValueError when it is not a valid box."""
    if not _is_numbers(box, 4):
        raise ValueError(f"a ground-truth box is four finite numbers [x1, y1, x2, y2], got {box!r}")
    return validate_box(box, tolerance=math.inf)


def _gt_annotators(gt: object) -> tuple[list[list[Box]], bool]:
    """A sample's ground truth as per-annotator box lists, and whether it is the consensus variant.

    Accepts one box, a list of boxes (one annotation, united) or a list of per-annotator box lists.
    """
    if _is_numbers(gt, 4):
        return [[_gt_box(gt)]], False
    if isinstance(gt, str) or not isinstance(gt, Sequence | np.ndarray):
        raise ValueError(f"ground truth must be a box, a list of boxes or a list of box lists, got {gt!r}")
    if all(_is_numbers(b, 4) for b in gt):
        groups, consensus = [[_gt_box(b) for b in gt]], False
    elif all(isinstance(a, Sequence | np.ndarray) and not isinstance(a, str) for a in gt):
        groups, consensus = [[_gt_box(b) for b in annotator] for annotator in gt], True
    else:
        raise ValueError(f"ground truth mixes boxes and box lists: {gt!r}")
    if not any(groups):
        raise ValueError("a localisation sample needs at least one ground-truth box")
    return groups, consensus


def _box_map(boxes: Sequence[Box], image_size: int) -> np.ndarray:
    """Binary float [S, S] union of boxes, rasterised as EZ-VSL does (truncated indices, end-exclusive)."""
    mask = np.zeros((image_size, image_size))  # [S, S]
    for box in boxes:
        x1, y1, x2, y2 = (int(v * image_size) for v in box)
        mask[y1:y2, x1:x2] = 1.0
    return mask


def _gt_map(gt: object, image_size: int) -> np.ndarray:
    groups, consensus = _gt_annotators(gt)
    if not consensus:
        return _box_map(groups[0], image_size)
    votes = sum(_box_map(boxes, image_size) for boxes in groups)  # [S, S]
    return np.clip(votes / 2, 0.0, 1.0)


def sample_ciou(pred: object, gt: object, image_size: int = 224) -> float:
    """cIoU of one prediction: Σ(P·G) / (ΣG + Σ(P·[G == 0])); 0.0 for an unparseable prediction.

    ``pred`` is model text, a normalised box or None; ``gt`` is a box, a list of boxes or a list of
    per-annotator box lists (see the module docstring). Raises ValueError for invalid ground truth.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    gt_map = _gt_map(gt, image_size)  # [S, S]
    box = _pred_box(pred)
    if box is None:
        return 0.0
    pred_map = _box_map([box], image_size)  # [S, S]
    denominator = gt_map.sum() + (pred_map * (gt_map == 0)).sum()
    # The ground truth has at least one box, but it can rasterise to nothing when thinner than a pixel.
    return float((pred_map * gt_map).sum() / denominator) if denominator > 0 else 0.0


def success_rates(
    cious: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray = SUCCESS_THRESHOLDS
) -> np.ndarray:
    """[T] the success-rate curve: the fraction of samples with cIoU >= t for each threshold t.

    Raises ValueError for no samples (the curve is undefined).
    """
    values = np.asarray(cious, dtype=float)  # [N]
    if values.size == 0:
        raise ValueError("a success-rate curve needs at least one cIoU value")
    t = np.asarray(thresholds, dtype=float)  # [T]
    return (values[None, :] >= t[:, None]).mean(axis=1)


def success_auc(
    cious: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray = SUCCESS_THRESHOLDS
) -> float:
    """The area under the success-rate curve over ``thresholds`` (ascending) by the trapezoid rule,
    as ``sklearn.metrics.auc`` computes it in EZ-VSL's evaluation. Raises ValueError for no samples."""
    t = np.asarray(thresholds, dtype=float)  # [T]
    return float(np.trapezoid(success_rates(cious, t), t))


def localization_scores(
    pred_boxes: Sequence[object],
    gt_boxes: Sequence[object],
    image_size: int = 224,
    thresholds: Sequence[float] | np.ndarray = SUCCESS_THRESHOLDS,
) -> dict[str, float]:
    """Sound-source localisation scores over samples: ``ciou``, ``auc``, ``mean_ciou``, ``n``, ``n_unparsed``.

    ``ciou``: fraction of samples with cIoU >= 0.5. ``auc``: trapezoid area under the success rate
    (fraction with cIoU >= t) over ``thresholds`` (ascending; 0, 0.05, ..., 1 by default).
    ``mean_ciou``: the mean per-sample cIoU. See ``sample_ciou`` for the inputs of one sample.
    """
    n = _check_lengths(pred_boxes=pred_boxes, gt_boxes=gt_boxes)
    cious = np.array([sample_ciou(p, g, image_size) for p, g in zip(pred_boxes, gt_boxes, strict=True)])
    n_unparsed = sum(_pred_box(p) is None for p in pred_boxes)
    if n == 0:
        return {"ciou": math.nan, "auc": math.nan, "mean_ciou": math.nan, "n": 0, "n_unparsed": 0}
    t = np.asarray(thresholds, dtype=float)  # [T]
    return {
        "ciou": float(np.mean(cious >= 0.5)),
        "auc": success_auc(cious, t),
        "mean_ciou": float(cious.mean()),
        "n": n,
        "n_unparsed": n_unparsed,
    }


def mean_box_iou(pred_boxes: Sequence[object], gt_boxes: Sequence[object]) -> dict[str, float]:
    """Mean over samples of the IoU between the predicted box and its best-matching ground-truth box.

    Ground truth per sample as in ``sample_ciou`` (consensus lists are flattened); an unparseable
    prediction scores 0. Returns ``mean_iou``, ``n``, ``n_unparsed``.
    """
    n = _check_lengths(pred_boxes=pred_boxes, gt_boxes=gt_boxes)
    ious, n_unparsed = [], 0
    for pred, gt in zip(pred_boxes, gt_boxes, strict=True):
        candidates = [box for annotator in _gt_annotators(gt)[0] for box in annotator]
        box = _pred_box(pred)
        if box is None:
            n_unparsed += 1
            ious.append(0.0)
        else:
            ious.append(max(box_iou(box, g) for g in candidates))
    return {"mean_iou": float(np.mean(ious)) if n else math.nan, "n": n, "n_unparsed": n_unparsed}


# ---------------------------------------------------------------------------------------------
# Time segments: image-guided audio temporal localisation (Table 4)
# ---------------------------------------------------------------------------------------------


def _numeric_segment(value: object) -> Segment | None:
    if not _is_numbers(value, 2):
        return None
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return None
    return start, end


def parse_segments(pred: object) -> list[Segment] | None:
    """The segments of one clip's prediction; None when nothing in it parses.

    Text: every bracketed group that ``parse_segment`` accepts, in order. Numbers: one
    ``[start, end]`` or a list of them; invalid pairs are dropped. An empty list is a parsed
    prediction of no event.
    """
    if isinstance(pred, str):
        found = [parse_segment(m.group(0)) for m in _BRACKETS.finditer(pred)]
        segments = [s for s in found if s is not None]
        return segments or None
    if _is_numbers(pred, 2):
        segment = _numeric_segment(pred)
        return None if segment is None else [segment]
    if not isinstance(pred, Sequence | np.ndarray):
        return None
    if len(pred) == 0:
        return []
    segments = [s for s in (_numeric_segment(v) for v in pred) if s is not None]
    return segments or None


def _gt_segments(gt: object) -> list[Segment]:
    if _is_numbers(gt, 2):
        gt = [gt]
    if isinstance(gt, str) or not isinstance(gt, Sequence | np.ndarray):
        raise ValueError(f"ground-truth segments must be [start, end] or a list of them, got {gt!r}")
    segments = []
    for value in gt:
        segment = _numeric_segment(value)
        if segment is None:
            raise ValueError(f"invalid ground-truth segment (need finite start <= end): {value!r}")
        segments.append(segment)
    return segments


def _active_bins(segments: Sequence[Segment], duration: float) -> np.ndarray:
    """Boolean [ceil(duration)]: the 1-s bins that the union of ``segments`` covers at least half of."""
    merged: list[list[float]] = []
    for start, end in sorted((max(0.0, s), min(duration, e)) for s, e in segments):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    lows = np.arange(math.ceil(duration), dtype=float)  # [K]
    highs = np.minimum(lows + 1.0, duration)  # [K]
    covered = np.zeros_like(lows)  # [K]
    for start, end in merged:
        covered += np.clip(np.minimum(end, highs) - np.maximum(start, lows), 0.0, None)
    return covered >= (highs - lows) / 2 - _EPS


def _durations(duration: float | Sequence[float], n: int) -> list[float]:
    durations = [float(duration)] * n if _is_real(duration) else [float(d) for d in duration]
    if len(durations) != n:
        raise ValueError(f"need one duration per clip ({n}), got {len(durations)}")
    if not all(math.isfinite(d) and d > 0 for d in durations):
        raise ValueError(f"durations must be positive and finite, got {duration!r}")
    return durations


def _detection_scores(tp: int, fp: int, fn: int, n: int, n_unparsed: int) -> dict[str, float]:
    return {
        "f1": _f1(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n": n,
        "n_unparsed": n_unparsed,
    }


def segment_f1(
    pred_segments: Sequence[object],
    gt_segments: Sequence[object],
    duration: float | Sequence[float],
) -> dict[str, float]:
    """Micro F1 over 1-second segments of all clips (AVVP-style), with precision and recall.

    Per clip, ``pred_segments`` holds model text, ``[start, end]``, a list of them, or None;
    ``gt_segments`` holds ``[start, end]`` or a list of them (possibly empty); ``duration`` is one
    length in seconds for all clips or one per clip. Segments are clipped to the clip; see the
    module docstring for when a bin is active. Returns ``f1``, ``precision``, ``recall``, ``tp``,
    ``fp``, ``fn`` (bins), ``n`` (clips), ``n_unparsed``.
    """
    n = _check_lengths(pred_segments=pred_segments, gt_segments=gt_segments)
    tp = fp = fn = n_unparsed = 0
    for pred, gt, length in zip(pred_segments, gt_segments, _durations(duration, n), strict=True):
        truth = _active_bins(_gt_segments(gt), length)
        segments = parse_segments(pred)
        if segments is None:
            n_unparsed += 1
            segments = []
        predicted = _active_bins(segments, length)
        tp += int(np.sum(predicted & truth))
        fp += int(np.sum(predicted & ~truth))
        fn += int(np.sum(~predicted & truth))
    return _detection_scores(tp, fp, fn, n, n_unparsed)


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of True bins, in order."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))  # [2R]
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _class_f1(tp: int, fp: int, fn: int) -> float | None:
    """One class's F1 in one video, or None when it has neither predictions nor ground truth."""
    return None if tp + fp == 0 and tp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def avvp_f1(
    pred_segments: Sequence[object],
    gt_segments: Sequence[object],
    duration: float | Sequence[float],
    videos: Sequence[Hashable] | None = None,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Segment-level and event-level F1 as the LLP/AVVP evaluation aggregates them (Table 4).

    One row per (video, event class): ``pred_segments`` and ``gt_segments`` as in ``segment_f1``,
    ``duration`` one length for all rows or one per row, ``videos`` the video of each row (rows of
    one video are its classes; None: every row its own video). See the module docstring for the
    protocol. Returns ``segment_f1`` and ``event_f1`` (means over videos), ``n`` (rows),
    ``n_videos`` and ``n_unparsed``; nan for no rows.
    """
    n = _check_lengths(pred_segments=pred_segments, gt_segments=gt_segments)
    video_of = list(range(n)) if videos is None else list(videos)
    if len(video_of) != n:
        raise ValueError(f"need one video per row ({n}), got {len(video_of)}")
    per_video: dict[Hashable, tuple[list[float], list[float]]] = {}
    n_unparsed = 0
    for pred, gt, length, video in zip(
        pred_segments, gt_segments, _durations(duration, n), video_of, strict=True
    ):
        truth = _active_bins(_gt_segments(gt), length)  # [K]
        segments = parse_segments(pred)
        if segments is None:
            n_unparsed += 1
            segments = []
        predicted = _active_bins(segments, length)  # [K]
        seg_scores, event_scores = per_video.setdefault(video, ([], []))
        seg = _class_f1(
            int(np.sum(predicted & truth)), int(np.sum(predicted & ~truth)), int(np.sum(~predicted & truth))
        )
        pred_events, gt_events = _runs(predicted), _runs(truth)
        hits = [any(_segment_iou(p, g) >= iou_threshold - _EPS for g in gt_events) for p in pred_events]
        found = [any(_segment_iou(p, g) >= iou_threshold - _EPS for p in pred_events) for g in gt_events]
        event = _class_f1(sum(hits), len(hits) - sum(hits), len(found) - sum(found))
        if seg is not None:
            seg_scores.append(seg)
        if event is not None:
            event_scores.append(event)
    if n == 0:
        return {"segment_f1": math.nan, "event_f1": math.nan, "n": 0, "n_videos": 0, "n_unparsed": 0}
    # A video whose every class is a true negative scores 1.0, as the LLP evaluation does.
    seg_f1 = [float(np.mean(s)) if s else 1.0 for s, _ in per_video.values()]
    event_f1_ = [float(np.mean(e)) if e else 1.0 for _, e in per_video.values()]
    return {
        "segment_f1": float(np.mean(seg_f1)),
        "event_f1": float(np.mean(event_f1_)),
        "n": n,
        "n_videos": len(per_video),
        "n_unparsed": n_unparsed,
    }


def _segment_iou(a: Segment, b: Segment) -> float:
    """Temporal IoU; 0.0 when the union is empty (two zero-length segments cover no time)."""
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection / union if union > 0 else 0.0


def _greedy_matches(preds: Sequence[Segment], gts: Sequence[Segment], iou_threshold: float) -> int:
    """Number of one-to-one (prediction, ground truth) pairs matched greedily by decreasing IoU."""
    scored = [(_segment_iou(p, g), i, j) for i, p in enumerate(preds) for j, g in enumerate(gts)]
    pairs = sorted(
        (pair for pair in scored if pair[0] >= iou_threshold - _EPS),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    used_preds: set[int] = set()
    used_gts: set[int] = set()
    for _, i, j in pairs:
        if i not in used_preds and j not in used_gts:
            used_preds.add(i)
            used_gts.add(j)
    return len(used_preds)


def event_f1(
    pred_segments: Sequence[object], gt_segments: Sequence[object], iou_threshold: float = 0.5
) -> dict[str, float]:
    """Event-level micro F1 (the paper's F1@0.5): a predicted event is a TP when matched to a GT event.

    Inputs per clip as in ``segment_f1``; matching is one-to-one and greedy by temporal IoU, a pair
    counting when its IoU >= ``iou_threshold``. Returns ``f1``, ``precision``, ``recall``, ``tp``,
    ``fp``, ``fn`` (events), ``n`` (clips), ``n_unparsed``.
    """
    n = _check_lengths(pred_segments=pred_segments, gt_segments=gt_segments)
    tp = fp = fn = n_unparsed = 0
    for pred, gt in zip(pred_segments, gt_segments, strict=True):
        truth = _gt_segments(gt)
        segments = parse_segments(pred)
        if segments is None:
            n_unparsed += 1
            segments = []
        matched = _greedy_matches(segments, truth, iou_threshold)
        tp += matched
        fp += len(segments) - matched
        fn += len(truth) - matched
    return _detection_scores(tp, fp, fn, n, n_unparsed)


# ---------------------------------------------------------------------------------------------
# Audio-visual fact-checking (Table 5)
# ---------------------------------------------------------------------------------------------


def _verdict(value: object) -> bool | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    return parse_verdict(value) if isinstance(value, str) else None


def _binary_scores(preds: Sequence[bool | None], labels: Sequence[bool]) -> dict[str, float]:
    tp = fp = fn = tn = n_unparsed = 0
    for pred, label in zip(preds, labels, strict=True):
        if pred is None:
            n_unparsed += 1
            # Always wrong: a missed positive, or a false alarm on a negative (module docstring).
            fn += int(label)
            fp += int(not label)
        elif pred and label:
            tp += 1
        elif pred:
            fp += 1
        elif label:
            fn += 1
        else:
            tn += 1
    return {
        "f1": _f1(tp, fp, fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, len(labels)),
        "n": len(labels),
        "n_unparsed": n_unparsed,
    }


def factcheck_scores(
    preds: Sequence[object], labels: Sequence[object], fact_types: Sequence[int]
) -> dict[str, Any]:
    """Fact-check F1 (positive class True), precision, recall and accuracy, overall and per type.

    ``preds``: model text, bools or None; ``labels``: bools (or ``"True"`` / ``"False"``);
    ``fact_types``: 1..4. Returns the overall scores (``f1``, ``precision``, ``recall``,
    ``accuracy``, ``n``, ``n_unparsed``), ``per_type`` {type: same keys} for the types present, and
    ``mean_type_f1``, the mean of those types' F1 (Table 7's "Avg F1-score").
    """
    _check_lengths(preds=preds, labels=labels, fact_types=fact_types)
    truth = []
    for label in labels:
        value = _verdict(label)
        if value is None:
            raise ValueError(f"fact-check labels must be True or False, got {label!r}")
        truth.append(value)
    if not set(fact_types) <= {1, 2, 3, 4}:
        raise ValueError(f"fact types must be 1..4, got {sorted(set(fact_types))}")
    verdicts = [_verdict(p) for p in preds]
    per_type = {}
    for fact_type in sorted(set(fact_types)):
        index = [i for i, t in enumerate(fact_types) if t == fact_type]
        per_type[fact_type] = _binary_scores([verdicts[i] for i in index], [truth[i] for i in index])
    type_f1 = [scores["f1"] for scores in per_type.values()]
    return {
        **_binary_scores(verdicts, truth),
        "per_type": per_type,
        "mean_type_f1": float(np.mean(type_f1)) if type_f1 else math.nan,
    }


# ---------------------------------------------------------------------------------------------
# Audio-visual question answering (Table 6)
# ---------------------------------------------------------------------------------------------

_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d)")
# Any punctuation character except a decimal point ("2.5").
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")
_POLAR = frozenset({"yes", "no"})


def normalise_answer(text: str) -> str:
    """Lowercase; apostrophes and thousands separators dropped, other punctuation (but a decimal
    point) to spaces; articles removed; number words zero..twenty as digits."""
    text = _THOUSANDS.sub("", text.lower().replace("'", "").replace("\u2019", ""))
    tokens = _PUNCTUATION.sub(" ", text).split()
    return " ".join(_NUMBER_WORDS.get(token, token) for token in tokens if token not in _ARTICLES)


def answer_matches(pred: object, answer: str) -> bool:
    """Whether a predicted answer matches the reference under ``normalise_answer`` (see module docstring)."""
    if not isinstance(pred, str):
        return False
    pred_norm, answer_norm = normalise_answer(pred), normalise_answer(answer)
    if answer_norm in _POLAR:
        return pred_norm.split(" ", 1)[0] == answer_norm
    return pred_norm == answer_norm


def avqa_accuracy(
    preds: Sequence[object], answers: Sequence[str], categories: Sequence[str | None]
) -> dict[str, Any]:
    """AVQA accuracy overall and per question category (``None`` categories count only overall).

    Returns ``accuracy``, ``n`` and ``per_category`` {category: {``accuracy``, ``n``}}.
    """
    n = _check_lengths(preds=preds, answers=answers, categories=categories)
    correct = [answer_matches(p, a) for p, a in zip(preds, answers, strict=True)]
    per_category = {}
    for category in dict.fromkeys(c for c in categories if c is not None):
        hits = [ok for ok, c in zip(correct, categories, strict=True) if c == category]
        per_category[category] = {"accuracy": sum(hits) / len(hits), "n": len(hits)}
    return {"accuracy": _ratio(sum(correct), n), "n": n, "per_category": per_category}


# ---------------------------------------------------------------------------------------------
# Audio-visual captioning (Table 6)
# ---------------------------------------------------------------------------------------------


def caption_scores(preds: Sequence[str | None], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU@4, METEOR, ROUGE-L and CIDEr through pycocoevalcap, as the COCO evaluation runs them.

    ``references[i]`` holds one or more reference captions for ``preds[i]``; a None prediction is
    scored as an empty caption. Returns ``bleu4``, ``meteor``, ``rouge_l``, ``cider`` and ``n``.
    Needs the ``pycocoevalcap`` package (ImportError otherwise) and a Java runtime for its tokenizer
    and METEOR (RuntimeError otherwise).
    """
    n = _check_lengths(preds=preds, references=references)
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every prediction needs at least one reference caption")
    if n == 0:
        return {"bleu4": math.nan, "meteor": math.nan, "rouge_l": math.nan, "cider": math.nan, "n": 0}
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as error:
        raise ImportError(
            "caption_scores needs pycocoevalcap: pip install 'meerkat-ray[ray]' (or pycocoevalcap)"
        ) from error
    if shutil.which("java") is None:
        raise RuntimeError(
            "caption_scores needs a Java runtime for pycocoevalcap's PTB tokenizer and METEOR; "
            "install a JRE, e.g. `apt-get install default-jre-headless`, and put `java` on PATH"
        )
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": pred or ""}] for i, pred in enumerate(preds)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    meteor, _ = Meteor().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {
        "bleu4": float(bleu[3]),
        "meteor": float(meteor),
        "rouge_l": float(rouge),
        "cider": float(cider),
        "n": n,
    }


# ---------------------------------------------------------------------------------------------
# Trivial baselines
# ---------------------------------------------------------------------------------------------


def majority_baseline(labels: Sequence[T]) -> T:
    """The most frequent label (fact-check verdict, AVQA answer); ties go to the first seen.

    Raises ValueError for no labels.
    """
    if len(labels) == 0:
        raise ValueError("majority_baseline needs at least one label")
    return Counter(labels).most_common(1)[0][0]


def constant_box_baseline(gt_boxes: Sequence[object]) -> Box:
    """The coordinate-wise mean of every ground-truth box (each box weighs the same, whichever sample).

    ``gt_boxes`` per sample as in ``sample_ciou``. Raises ValueError when there is no box.
    """
    boxes = [box for gt in gt_boxes for annotator in _gt_annotators(gt)[0] for box in annotator]
    if not boxes:
        raise ValueError("constant_box_baseline needs at least one ground-truth box")
    x1, y1, x2, y2 = (float(v) for v in np.mean(boxes, axis=0))
    return x1, y1, x2, y2


def whole_clip_segment(duration: float) -> Segment:
    """The segment covering the whole clip, ``(0.0, duration)``."""
    return 0.0, float(duration)


def random_segment(duration: float, rng: random.Random) -> Segment:
    """Two points drawn uniformly in ``[0, duration]``, in order (mean length ``duration / 3``)."""
    a, b = rng.uniform(0.0, duration), rng.uniform(0.0, duration)
    return min(a, b), max(a, b)
