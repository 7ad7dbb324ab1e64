"""Task mixing: which samples of each task an epoch keeps (numpy and hashlib only).

Kept apart from :mod:`pipelines.data` so that the Ray workers running :func:`thin_batch` over
cached rows import neither torch nor transformers (a worker process that does pays seconds).
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
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def execution_index() -> int:
    """How many times the running Ray Data dataset was iterated before this iteration (0 outside one).

    Ray Data counts the executions of a dataset in its context (``_execution_idx``, what
    ``FileShuffleConfig`` reseeds with) and sends that context along with every task.
    """
    from ray.data.context import DataContext

    return int(getattr(DataContext.get_current(), "_execution_idx", 0))


def thin_batch(
    batch: dict[str, np.ndarray],
    *,
    keep_probs: Mapping[str, float] | None,
    seed: int,
    epoch: int | None,
    first_execution: int = 0,
) -> dict[str, np.ndarray]:
    """``map_batches`` stage over model rows: the epoch's task-mixing draw; rows get an ``epoch`` column.

    ``epoch=None``: the dataset's :func:`execution_index` minus ``first_execution``, for a dataset
    iterated once per epoch.
    """
    if epoch is None:
        epoch = execution_index() - first_execution
    n = len(batch["__key__"])
    keep = np.ones(n, dtype=bool)
    if keep_probs is not None:
        for i, (key, task) in enumerate(zip(batch["__key__"], batch["task"], strict=True)):
            p = keep_probs.get(str(task), 0.0)
            keep[i] = p >= 1.0 or unit_hash(seed, epoch, key) < p
    out = {name: values[keep] for name, values in batch.items()}
    out["epoch"] = np.full(int(keep.sum()), epoch, dtype=np.int64)
    return out
