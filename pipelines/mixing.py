"""Task mixing: which samples of each task an epoch keeps, and how evenly a stream mixes.

Kept apart from :mod:`pipelines.data`, with numpy and hashlib only, so that the draw
(:func:`unit_hash`, :func:`thin_batch`) and the window-mix measure (:func:`window_tvd`) run without
torch or Ray.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np


def task_keep_probs(task_counts: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """Per-task keep probability that turns the shard composition into the wanted task shares."""
    if not weights:
        return {t: 1.0 for t in task_counts}
    rates = {t: weights.get(t, 0.0) / n for t, n in task_counts.items() if n > 0}
    top = max(rates.values(), default=0.0)
    if top <= 0:
        raise ValueError(
            f"task weights {dict(weights)} select none of the tasks present {sorted(task_counts)}"
        )
    return {t: r / top for t, r in rates.items()}


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts`` (e.g. seed, epoch, key): the reproducible keep draw."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def thin_batch(
    batch: dict[str, np.ndarray],
    *,
    keep_probs: Mapping[str, float] | None,
    seed: int,
    epoch: int,
) -> dict[str, np.ndarray]:
    """Model rows -> the epoch's task-mixing draw of them; rows get an ``epoch`` column.

    The epoch is the caller's own count (the cached path counts its passes).
    """
    n = len(batch["__key__"])
    keep = np.ones(n, dtype=bool)
    if keep_probs is not None:
        for i, (key, task) in enumerate(zip(batch["__key__"], batch["task"], strict=True)):
            p = keep_probs.get(str(task), 0.0)
            keep[i] = p >= 1.0 or unit_hash(seed, epoch, key) < p
    out = {name: values[keep] for name, values in batch.items()}
    out["epoch"] = np.full(int(keep.sum()), epoch, dtype=np.int64)
    return out


def total_variation(counts: Mapping[str, int], target: Mapping[str, float]) -> float:
    """Total-variation distance between the shares of ``counts`` and the distribution ``target``."""
    n, z = sum(counts.values()), sum(target.values())
    keys = set(counts) | set(target)
    return 0.5 * sum(abs(counts.get(k, 0) / n - target.get(k, 0.0) / z) for k in keys)


def window_tvd(labels: list[str], target: Mapping[str, float], window: int = 256) -> float:
    """The worst total-variation distance from ``target`` over every ``window`` consecutive labels
    (the whole sequence when it is shorter)."""
    if not labels:
        raise ValueError("no labels to measure")
    window = min(window, len(labels))
    counts: dict[str, int] = {}
    for label in labels[:window]:
        counts[label] = counts.get(label, 0) + 1
    worst = total_variation(counts, target)
    for i in range(window, len(labels)):
        counts[labels[i]] = counts.get(labels[i], 0) + 1
        counts[labels[i - window]] -= 1
        worst = max(worst, total_variation(counts, target))
    return worst
