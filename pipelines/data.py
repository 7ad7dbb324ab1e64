"""Streaming AVFIT shards into model batches with Ray Data.

    ds = build_dataset(DataConfig(uri="s3://meerkat/avfit/train"), model_config, tokenizer_dir=None)
    for batch in ds.iter_torch_batches(batch_size=8, collate_fn=MeerkatCollate(pad_id)):
        model(batch)

Stages (each a callable class or function, testable with a hand-made dict):

1. **read + untar** (:func:`read_samples`, :func:`shard_samples`, ``flat_map``): the shards listed
   in the split's ``manifest.json``, read whole through :mod:`pipelines.storage` (S3 with its
   endpoint override, or local), for ``epochs`` passes in one stream, each pass in its own seeded
   order; every sample carries its ``epoch``. A shard that cannot be read (after retries) is
   skipped and counted. Untar (:func:`untar`) is webdataset's own tar iterator and key grouping,
   with a handler that counts instead of raising. Why not ``ray.data.read_webdataset``: a truncated
   tar makes it fail the whole read (checked with Ray 2.60), and the job with it; here the samples
   before the damage are kept and the damage is counted.
3. **preprocess** (:func:`preprocess_batch`, ``map_batches`` as Ray tasks, over :class:`Preprocess`):
   JSON parsing and contract check, task mixing, image/audio decoding and the model's
   preprocessing and tokenization (:class:`meerkat_core.batching.SamplePreprocessor`, the same
   code Serve runs). A sample with undecodable media or missing fields is skipped and counted.
   Tasks, not an actor pool: Ray keeps its worker processes between tasks and
   :func:`preprocess_batch` keeps one :class:`Preprocess` per process, so the torch +
   transformers imports and the tokenizer load are paid once per process, and evaluation or a
   second dataset in the same job starts warm (an actor pool is built anew at every execution).
4. **collate** (:class:`MeerkatCollate`, in ``iter_torch_batches``): pads the text, stacks the rest.

Skips are counted by reason in a named Ray actor (:class:`SkipCounter`); the job reads
:func:`skip_counts` and logs them.

Task mixing: ``task_weights`` gives the wanted share of each task in the stream. The shards'
manifest says how many samples each task has; every sample of task t is kept with probability
``r_t / max(r)`` where ``r_t = w_t / n_t`` — the most under-represented task (per unit weight) is
read in full, the others are thinned. The draw is a hash of (seed, epoch, key): reproducible, and a
different subset each epoch.

Epochs: training asks for all its epochs as one stream (``build_dataset(epochs=N)``) rather than
iterating the dataset once per epoch: each iteration is a new Ray Data execution, whose start
(scheduling, first shard read from S3, the local shuffle buffer filling) left the training
workers waiting about 40 s at every epoch on this 2-core machine, twice an epoch's compute on
the demo's split.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn
from webdataset import tariterators

from meerkat_core import batching
from meerkat_core.config import ModelConfig, to_dict
from meerkat_core.media import MediaError
from meerkat_core.tokenizer import load_tokenizer
from pipelines import storage
from pipelines.avfit.sample import SampleError, validate_meta
from pipelines.avfit.shards import read_manifest, shard_uris
from pipelines.mixing import task_keep_probs, thin_batch, unit_hash

logger = logging.getLogger(__name__)

SKIP_COUNTER_NAME = "meerkat-skip-counter"
READ_ATTEMPTS = 3
"""Tries per shard read before the shard is skipped and counted (a missing shard: one)."""
ROW_COLUMNS = (
    "pixel_values",
    "audio_features",
    "input_ids",
    "labels",
    "box_mask",
    "has_box",
    "ot_pair",
    "region_box",
    "region_pos",
    "segment_feat",
    "segment_pos",
)


@dataclass(frozen=True)
class DataConfig:
    """Where the shards are and how they are streamed."""

    uri: str = "data/avfit/train"
    """Shard directory of one split (with its ``manifest.json``): ``s3://bucket/prefix`` or a path."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Wanted share per task (any scale); empty: the tasks as they come."""
    tasks: tuple[str, ...] = ()
    """Keep only these tasks (empty: all). The single-task ablation sets one."""
    shuffle_buffer: int = 64
    """Samples in each worker's local shuffle buffer (0: no local shuffle)."""
    preprocess_tasks: int = 1
    """Preprocessing tasks running at once (each process keeps a tokenizer and a mel filter bank)."""
    preprocess_cpus: float = 1.0
    """Logical CPUs each preprocessing task reserves. Leave room for the read tasks and the
    training workers: preprocessing that takes every CPU of the cluster starves the reads and stalls."""
    preprocess_batch: int = 8
    cache: bool = False
    """Preprocess the split once and keep the model rows in Ray's object store for every epoch
    (:func:`build_cached_epochs`): for splits that fit in it (about 0.9 MB a sample with the tiny
    preset), where decoding and preprocessing, not the model, bound the step (small CPU runs)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError("task weights must be >= 0")


@ray.remote(num_cpus=0)
class SkipCounter:
    """Counts of skipped samples by reason, shared by every stage of every job in the namespace."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def add(self, counts: dict[str, int]) -> None:
        self._counts.update(counts)

    def counts(self) -> dict[str, int]:
        return dict(self._counts)


def skip_counter() -> Any:
    """The named :class:`SkipCounter` of this job's namespace; call it on the driver first, so the
    driver owns it and it outlives the stage workers that report to it."""
    return SkipCounter.options(name=SKIP_COUNTER_NAME, get_if_exists=True).remote()


def skip_counts() -> dict[str, int]:
    return ray.get(skip_counter().counts.remote())


def _report(counts: Counter[str]) -> None:
    """Send a stage's skip counts to the job's counter (a stage run outside Ray only logs them)."""
    if not counts:
        return
    if not ray.is_initialized():  # ray.get_actor would start a local Ray just to find nothing
        logger.warning("skipped samples (outside Ray, not counted by a job): %s", dict(counts))
        return
    try:
        ray.get_actor(SKIP_COUNTER_NAME).add.remote(dict(counts))
    except (ValueError, RuntimeError):
        logger.warning("skipped samples (no job counter to report to): %s", dict(counts))


def untar(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``flat_map`` stage: one tar (``{"bytes", "path"}``) -> its samples as ``{"__key__", "jpg", "flac", "json"}``."""
    counts: Counter[str] = Counter()

    def handler(exc: Exception) -> bool:
        counts["corrupt_tar"] += 1
        logger.warning(
            "shard %s is damaged (%s); keeping the samples before the damage", row.get("path"), exc
        )
        return False  # stop reading this tar; what was read stays

    def files() -> Iterator[dict[str, Any]]:
        for member in tariterators.tar_file_iterator(io.BytesIO(row["bytes"]), handler=handler):
            member["__url__"] = row.get("path", "")  # group_by_keys wants it on every member
            yield member

    try:
        for sample in tariterators.group_by_keys(files(), handler=handler):
            yield {
                "__key__": sample["__key__"],
                "__url__": row.get("path", ""),
                "jpg": sample.get("jpg"),
                "flac": sample.get("flac"),
                "json": sample.get("json"),
                "epoch": int(row.get("epoch", 0)),
            }
    except (tarfile.TarError, OSError, EOFError) as exc:  # a header cut short fails outside the handler
        handler(exc)
    finally:
        _report(counts)


class Preprocess:
    """``map_batches`` stage: raw members -> model rows (see :class:`meerkat_core.batching.SamplePreprocessor`).

    Args:
        model_config: fixes image size, audio windows, patch grid and the text budget.
        tokenizer_dir: the model's tokenizer (a checkpoint's ``tokenizer/`` or a hub name);
            ``None``: the offline tokenizer of the tiny preset.
        keep_probs: per-task keep probability (task mixing); tasks absent are dropped.
        seed: with each row's ``epoch``, makes the mixing draw reproducible per epoch.
        with_answer: ``False`` tokenizes prompts only (generation in evaluation).
    """

    def __init__(
        self,
        model_config: ModelConfig,
        tokenizer_dir: str | None,
        keep_probs: Mapping[str, float] | None = None,
        *,
        seed: int = 0,
        with_answer: bool = True,
        keep_meta: bool = False,
    ) -> None:
        self.prep = batching.SamplePreprocessor(model_config, load_tokenizer(tokenizer_dir))
        self.keep_probs = dict(keep_probs) if keep_probs is not None else None
        self.seed = seed
        self.with_answer = with_answer
        self.keep_meta = keep_meta

    def _row(
        self, key: str, jpg: Any, flac: Any, raw_json: Any, counts: Counter[str], epoch: int
    ) -> dict[str, Any] | None:
        try:
            if raw_json is None:
                raise SampleError("no json member")
            meta = validate_meta(json.loads(raw_json))
        except (SampleError, ValueError, TypeError) as exc:
            counts["bad_json"] += 1
            logger.warning("skipping %s: %s", key, exc)
            return None
        if self.keep_probs is not None:
            p = self.keep_probs.get(meta["task"], 0.0)
            if p < 1.0 and unit_hash(self.seed, epoch, key) >= p:
                return None
        if jpg is None or flac is None:
            counts["missing_media"] += 1
            return None
        try:
            row = self.prep(bytes(jpg), bytes(flac), meta, with_answer=self.with_answer)
        except MediaError as exc:
            counts["bad_media"] += 1
            logger.warning("skipping %s: %s", key, exc)
            return None
        except ValueError as exc:
            counts["bad_sample"] += 1
            logger.warning("skipping %s: %s", key, exc)
            return None
        row["__key__"] = key
        row["task"] = meta["task"]
        row["epoch"] = epoch
        if self.keep_meta:
            row["meta"] = json.dumps(meta)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts: Counter[str] = Counter()
        n = len(batch["__key__"])
        epochs = batch["epoch"] if "epoch" in batch else np.zeros(n, dtype=np.int64)
        rows = [
            r
            for r in (
                self._row(k, j, f, m, counts, int(e))
                for k, j, f, m, e in zip(
                    batch["__key__"], batch["jpg"], batch["flac"], batch["json"], epochs, strict=True
                )
            )
            if r is not None
        ]
        _report(counts)
        return _columns(rows)


_PREPROCESSORS: dict[tuple[Any, ...], Preprocess] = {}
_PREPROCESSORS_LOCK = threading.Lock()


def preprocess_batch(
    batch: dict[str, np.ndarray],
    *,
    model_config: ModelConfig,
    tokenizer_dir: str | None,
    keep_probs: Mapping[str, float] | None = None,
    seed: int = 0,
    with_answer: bool = True,
    keep_meta: bool = False,
) -> dict[str, np.ndarray]:
    """``map_batches`` task: :class:`Preprocess` of ``batch``, its instance cached in this process."""
    key = (
        json.dumps(to_dict(model_config), sort_keys=True),
        tokenizer_dir,
        None if keep_probs is None else tuple(sorted(keep_probs.items())),
        seed,
        with_answer,
        keep_meta,
    )
    with _PREPROCESSORS_LOCK:
        stage = _PREPROCESSORS.get(key)
        if stage is None:
            stage = Preprocess(
                model_config,
                tokenizer_dir,
                keep_probs,
                seed=seed,
                with_answer=with_answer,
                keep_meta=keep_meta,
            )
            _PREPROCESSORS[key] = stage
    return stage(batch)


def _columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    out: dict[str, np.ndarray] = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        if name in ("input_ids", "labels"):  # ragged: one object per row
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[name] = arr
        else:
            out[name] = np.stack(values) if isinstance(values[0], np.ndarray) else np.asarray(values)
    return out


class MeerkatCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate: pad ragged text (right for training, left for generation)."""

    def __init__(self, pad_id: int, side: str = "right") -> None:
        self.pad_id = pad_id
        self.side = side

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        n = len(batch["input_ids"])
        rows = [{c: batch[c][i] for c in ROW_COLUMNS} for i in range(n)]
        out: dict[str, Any] = batching.collate(rows, self.pad_id, side=self.side)
        out["__key__"] = list(batch["__key__"])
        out["task"] = list(batch["task"])
        if "epoch" in batch:
            out["epoch"] = [int(e) for e in batch["epoch"]]
        if "meta" in batch:
            out["meta"] = [json.loads(m) for m in batch["meta"]]
        return out


def shard_samples(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``flat_map`` stage: ``{"uri", "epoch"}`` -> the shard's samples (:func:`untar`), each with its epoch.

    Read and untar are one stage on purpose: fewer worker processes on a small machine (each Ray
    worker that runs this module pays the torch import), and no 100-MB tar blocks between stages.
    A shard that cannot be read (after retries; a missing one at once) is skipped and counted.
    """
    for attempt in range(READ_ATTEMPTS):
        try:
            payload = storage.read_bytes(row["uri"])
            break
        except OSError as exc:  # storage masks credentials in the message
            if attempt + 1 < READ_ATTEMPTS and not isinstance(exc, FileNotFoundError):
                time.sleep(2**attempt)
                continue
            logger.warning("shard %s cannot be read (%s); skipping it", row["uri"], exc)
            _report(Counter(unreadable_shard=1))
            return
    yield from untar({"bytes": payload, "path": row["uri"], "epoch": int(row["epoch"])})


def read_samples(
    uri: str,
    *,
    epochs: int = 1,
    start_epoch: int = 0,
    shuffle_seed: int | None = None,
    concurrency: int = 2,
) -> ray.data.Dataset:
    """The raw samples of the split at ``uri`` (:func:`untar` rows with ``epoch``), epochs ``start_epoch ..``.

    All the epochs are one execution of one dataset, so the pipeline stays warm from one epoch to
    the next (a new execution per epoch cost a pipeline start each time: about 40 s per epoch on
    2 cores, twice an epoch's compute on the demo's split). With ``shuffle_seed``, the shard order
    of epoch ``e`` is a permutation seeded by ``(shuffle_seed, e)``: reproducible, and different
    each epoch. ``concurrency`` shards are read at once.
    """
    uris = shard_uris(uri)
    if not uris:
        raise ValueError(f"the manifest at {uri} lists no shards")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    items = []
    for epoch in range(start_epoch, start_epoch + epochs):
        order = list(uris)
        if shuffle_seed is not None:
            np.random.default_rng([shuffle_seed, epoch]).shuffle(order)
        items += [{"uri": u, "epoch": epoch} for u in order]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 1000))
    # Mostly I/O: a small CPU reservation keeps reads schedulable beside busy workers.
    return ds.flat_map(shard_samples, num_cpus=0.25, compute=ray.data.TaskPoolStrategy(size=concurrency))


def _keep_probs(cfg: DataConfig, manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, float] | None]:
    task_counts = dict(manifest["counts"]["task"])
    if cfg.tasks:
        task_counts = {t: n for t, n in task_counts.items() if t in cfg.tasks}
        if not task_counts:
            raise ValueError(
                f"none of the tasks {cfg.tasks} is in {cfg.uri} (it has {sorted(manifest['counts']['task'])})"
            )
    weights = cfg.task_weights or ({t: float(n) for t, n in task_counts.items()} if cfg.tasks else {})
    keep = task_keep_probs(task_counts, weights) if (weights or cfg.tasks) else None
    return task_counts, keep


def build_cached_epochs(
    cfg: DataConfig, model_config: ModelConfig, tokenizer_dir: str | None
) -> ray.data.Dataset:
    """Like :func:`build_dataset`, but the split is decoded and preprocessed once (``materialize``).

    The returned dataset is one epoch; iterate it once per epoch. Each iteration is a pass over
    the rows held in the object store, in a new block order, thinned by the task-mixing draw of
    that iteration (:func:`pipelines.mixing.thin_batch`: the epoch is the dataset's execution
    index), and its rows carry that epoch. Starting an iteration costs little here: nothing is
    read or decoded again. The materialisation runs in the caller (the driver), before training.
    """
    _, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    wanted = None if keep is None else {t: 1.0 for t, p in keep.items() if p > 0}
    skip_counter()
    rows = (
        read_samples(cfg.uri)
        .map_batches(
            preprocess_batch,
            fn_kwargs={"model_config": model_config, "tokenizer_dir": tokenizer_dir, "keep_probs": wanted},
            batch_size=cfg.preprocess_batch,
            compute=ray.data.TaskPoolStrategy(size=cfg.preprocess_tasks),
            num_cpus=cfg.preprocess_cpus,
        )
        .materialize()
    )
    # materialize() ran this context's first execution: epochs count from the next one
    first = int(getattr(rows.context, "_execution_idx", 0))
    return rows.randomize_block_order().map_batches(
        thin_batch,
        fn_kwargs={"keep_probs": keep, "seed": cfg.seed, "epoch": None, "first_execution": first},
        batch_size=None,
        num_cpus=0.25,
        compute=ray.data.TaskPoolStrategy(size=1),
    )


def samples_per_epoch(cfg: DataConfig) -> float:
    """How many samples one epoch of the split yields after task mixing (in expectation)."""
    task_counts, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    return float(sum(n * (1.0 if keep is None else keep.get(t, 0.0)) for t, n in task_counts.items()))


def build_dataset(
    cfg: DataConfig,
    model_config: ModelConfig,
    tokenizer_dir: str | None,
    *,
    epochs: int = 1,
    start_epoch: int = 0,
    shuffle: bool = True,
    with_answer: bool = True,
    keep_meta: bool = False,
) -> ray.data.Dataset:
    """The preprocessed stream of one split, ready for ``iter_torch_batches(collate_fn=MeerkatCollate(...))``.

    ``epochs`` passes over the split in one stream (each row says its ``epoch``), starting at
    ``start_epoch``: the shard order and the task-mixing draw of an epoch depend only on the seed
    and the epoch, so a stream started at epoch 3 continues one started at 0.
    """
    _, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    skip_counter()
    ds = read_samples(
        cfg.uri, epochs=epochs, start_epoch=start_epoch, shuffle_seed=cfg.seed if shuffle else None
    )
    return ds.map_batches(
        preprocess_batch,
        fn_kwargs={
            "model_config": model_config,
            "tokenizer_dir": tokenizer_dir,
            "keep_probs": keep,
            "seed": cfg.seed,
            "with_answer": with_answer,
            "keep_meta": keep_meta,
        },
        batch_size=cfg.preprocess_batch,
        compute=ray.data.TaskPoolStrategy(size=cfg.preprocess_tasks),
        num_cpus=cfg.preprocess_cpus,
    )
