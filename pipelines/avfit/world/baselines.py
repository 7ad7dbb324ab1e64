"""Scores of answers that need no understanding, for one split of the world (the build writes them
to ``baselines.json`` beside the shards, for the training and evaluation runs to be read against).

The definitions are :mod:`meerkat_core.metrics`'s, the ones evaluation scores its baselines with
(:mod:`pipelines.evaluate`): the constant box is ``metrics.constant_box_baseline``, the verdict
``metrics.majority_baseline``, and a box is scored by ``metrics.mean_box_iou`` (the IoU with the
sample's best-matching ground-truth box). One owner, so that a number here and the same baseline in
an evaluation run mean the same thing.

The random-object baseline is an expectation here (the mean over each scene's objects) where
evaluation draws one object per sample: the world knows every object, so the build reports the
value a draw estimates.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from meerkat_core import metrics


def baselines(samples: Iterable[dict]) -> dict:
    """Scores of answers that need no understanding, for the samples of one split.

    - ``arig_mean_box`` and ``arig_mean_box_miou``: the constant box
      (``metrics.constant_box_baseline``: the coordinate-wise mean of every ground-truth box of the
      split's arig samples; a world arig sample has exactly one, its sounding object) and its mean
      IoU (``metrics.mean_box_iou``). A model at this level has learnt where objects tend to be,
      not which one sounds.
    - ``arig_random_object_miou``: the expected IoU of the box of an object picked at random in the
      scene (the mean over its objects, each scored by ``metrics.mean_box_iou``). A model that finds
      objects but ignores the audio scores this, so only the margin above it shows audio-visual
      grounding.
    - ``avfact_majority_acc``: accuracy of always giving the most frequent fact-check label
      (``metrics.majority_baseline``).

    Values are None without arig or avfact samples. Raises ValueError for samples of several
    splits, or arig samples lacking ``objects``.
    """
    metas = [s["json"] for s in samples]
    splits = {m["split"] for m in metas}
    if len(splits) > 1:
        raise ValueError(f"baselines are per split, got samples of {sorted(splits)}")
    arig = [m for m in metas if m["task"] == "arig"]
    facts = [bool(m["label"]) for m in metas if m["task"] == "avfact"]
    result: dict = {
        "split": splits.pop() if splits else None,
        "arig_n": len(arig),
        "arig_mean_box": None,
        "arig_mean_box_miou": None,
        "arig_random_object_miou": None,
        "avfact_n": len(facts),
        "avfact_majority_acc": None,
    }
    if facts:
        majority = metrics.majority_baseline(facts)
        result["avfact_majority_acc"] = sum(f == majority for f in facts) / len(facts)
    if arig:
        if any(not m.get("objects") for m in arig):
            raise ValueError("arig samples need `objects` for the random-object baseline")
        truths = [m["boxes"] for m in arig]
        mean_box = metrics.constant_box_baseline(truths)
        result["arig_mean_box"] = list(mean_box)
        result["arig_mean_box_miou"] = metrics.mean_box_iou([mean_box] * len(arig), truths)["mean_iou"]
        result["arig_random_object_miou"] = float(
            np.mean(
                [
                    metrics.mean_box_iou([o["box"] for o in m["objects"]], [m["boxes"]] * len(m["objects"]))[
                        "mean_iou"
                    ]
                    for m in arig
                ]
            )
        )
    return result
