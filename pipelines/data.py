"""Streaming AVFIT shards into model batches with Ray Data.

    ds = build_dataset(DataConfig(uri="s3://meerkat/avfit/train"), model_config, None, rank=r, world=n)
    for batch in ds.iter_torch_batches(batch_size=8, collate_fn=MeerkatCollate(pad_id, device=dev)):
        model(batch)

Stages (each a callable class or function, testable with a hand-made dict):

1. **read + untar** (:func:`group_samples`): the shards listed in the split's ``manifest.json`` (all
   present, checked at start: :func:`check_shards`), a read group's shards fetched at once
   (:func:`pipelines.storage.read_bytes`: S3 through the process's shared client, or local), for
   ``epochs`` passes in one stream. Untar (:func:`untar`) is webdataset's own tar iterator and key
   grouping, with a handler that counts instead of raising. Why not ``ray.data.read_webdataset``: a
   truncated tar makes it fail the whole read (checked with Ray 2.60), and the job with it; here the
   samples before the damage are kept and the damage is counted. A shard that cannot be read (after
   retries) is skipped and counted.
2. **preprocess** (:func:`preprocess_batch`, over :class:`ShardRows`):
   :func:`pipelines.avfit.sample.decode_sample` (contract check, task mixing before any decoding,
   image/audio decoding and the model's preprocessing and tokenization,
   :class:`meerkat_core.batching.SamplePreprocessor`, the same code Serve runs), then lean rows
   (:func:`meerkat_core.media.lean_media`). A sample it rejects is skipped and counted under its
   reason. :func:`preprocess_batch` keeps one :class:`ShardRows` per worker process (Ray keeps its
   workers between tasks), so the torch + transformers imports and the tokenizer load are paid
   once per process.
3. **collate** (:class:`MeerkatCollate`, in ``iter_torch_batches``): pads the text, stacks the rest,
   and turns the lean media into float32 on the trainer's device (:func:`meerkat_core.media.normalise_media`).

The training stream (:func:`build_dataset`) runs 1 and 2 as **one** Ray Data operator: a task per
read group (:func:`stream_group`, ``map_batches`` with no task count, ``TaskPoolStrategy()``) reads
the group and yields its lean rows ``preprocess_batch`` at a time. Why one: as two operators, Ray
Data's per-operator resource reservation held preprocessing to about one task on a two-CPU node
(1.1 tasks busy on average, measured with per-task timestamps on the data benchmark's shards)
while the read operator's share sat idle (reading is about 5 % of a sample's CPU), and without the
reservation the read operator started a worker per read task at once, each importing torch (the
first read 28 s after the call). As one, every task is a whole CPU of useful work and Ray
Data runs as many as the cluster's CPUs allow, and as many more as nodes join; no config holds a
cluster-wide number. Each task requests the memory its group needs (:func:`read_memory`), from the
manifest's shard sizes. Evaluation and the cache read raw samples with :func:`read_samples`
(``flat_map``), for their own preprocessing.

Each rank reads its own share (:func:`rank_groups`): the epoch's shard order is seeded by
``(seed, epoch)`` with each source's shards spread evenly through it (:func:`shard_order`), rank
``r`` of ``n`` takes every ``n``-th shard from ``r``, and runs of ``mix_shards`` of them are read
by one task and interleaved by a seeded permutation (read-time source and task mixing). Ray
Data keeps the order (``preserve_order``), so a rank's stream is the same at every run and the
three numbers of :func:`stream_position` (epoch, group, index in the group) say where it is: a
restart builds the stream from there, skipping at most one group's already-trained samples
before decoding, whatever the point in the epoch. Why not ``streaming_split``: it hands blocks
out dynamically, so what a worker had trained on cannot be told from a count, and a restart had
to read and discard the epoch's prefix.

Lean rows: ``pixel_values`` as the crop's uint8 values and ``audio_features`` as float16 in the
object store (:func:`meerkat_core.media.lean_media`), about a quarter of the float32 row; the float32 tensors the
model takes are made once, on the trainer's device, with the constants of
:class:`meerkat_core.media.ImageFrontEnd` carried by each row (``pixel_norm``).

Skips are counted by reason (:data:`pipelines.avfit.sample.SKIP_REASONS`, plus ``corrupt_tar``
and ``unreadable_shard`` here) in a named Ray actor (:class:`SkipCounter`) that every stage reports
to (:func:`report_skips`); the job reads :func:`skip_counts` and logs them.

Task mixing: ``task_weights`` gives the wanted share of each task in the stream. The shards'
manifest says how many samples each task has; every sample of task t is kept with probability
``r_t / max(r)`` where ``r_t = w_t / n_t`` — the most under-represented task (per unit weight) is
read in full, the others are thinned. The draw is a hash of (seed, epoch, key): reproducible, and a
different subset each epoch.

Epochs: training asks for all its epochs as one stream (``build_dataset(epochs=N)``) rather than
iterating the dataset once per epoch: each iteration is a new Ray Data execution, whose start
(scheduling, first shard read from S3) left the training workers waiting at every epoch.

The cache (``data.cache``, :func:`build_cached_epochs`) is for small splits on small machines: it
refuses a split that would not fit the object store (:func:`check_cache_fits`), and its epochs are
counted by the caller (:func:`cached_batches`), not read from Ray's internals.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn
from webdataset import tariterators

from meerkat_core import batching
from meerkat_core.config import ModelConfig, to_dict
from meerkat_core.correspondence import CLASS_SLOTS
from meerkat_core.media import lean_media, normalise_media
from meerkat_core.tokenizer import load_tokenizer
from pipelines import storage
from pipelines.avfit.sample import CorruptSample, count_skip, decode_sample
from pipelines.avfit.shards import read_manifest, shard_source, shard_uris
from pipelines.mixing import task_keep_probs, thin_batch, unit_hash

logger = logging.getLogger(__name__)

SKIP_COUNTER_NAME = "meerkat-skip-counter"
READ_ATTEMPTS = 3
"""Tries per shard read before the shard is skipped and counted (a missing shard: one)."""
READ_THREADS = 8
"""Shards of a read group fetched at once."""
ROW_COLUMNS = (
    "pixel_values",
    "audio_features",
    "input_ids",
    "labels",
    "box_mask",
    "has_box",
    "ot_pair",
    "image_classes",
    "sound_classes",
    "classes_known",
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
    """Samples in each worker's local shuffle buffer on the cached path (0: none). The streaming
    path shuffles inside each read group instead (``mix_shards``), which keeps resumption exact."""
    mix_shards: int = 8
    """Shards one stream task reads and interleaves (a seeded permutation of their samples): the
    read-time source and task mixing, and the unit of resumption. Memory per task grows
    with it (see :func:`read_memory`)."""
    preprocess_tasks: int | None = None
    """At most this many stream (read + preprocess) tasks at once; ``None`` (the default, and what every
    config uses): as many as the cluster's free CPUs allow, scaled by Ray Data as nodes come
    and go. A number is for benchmarks and small shared machines only."""
    preprocess_cpus: float = 1.0
    """Logical CPUs each stream task (read + preprocess a read group) reserves. Leave room for the
    training workers: a stream that takes every CPU of the cluster stalls them."""
    preprocess_batch: int = 32
    """Rows a stream task preprocesses per call and hands on as one Ray Data block
    (:func:`yield_block_bytes`), so a task's first rows leave it before its whole group is done.
    32 against 8: 65-66 against 63 samples/s in one pair of probes on two cores, within that
    machine's run-to-run spread."""
    cache: bool = False
    """Preprocess the split once and keep the model rows in Ray's object store for every epoch
    (:func:`build_cached_epochs`): for splits that fit in it (:func:`row_bytes` a sample), where
    decoding and preprocessing, not the model, bound the step (small CPU runs)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError("task weights must be >= 0")
        if self.mix_shards < 1:
            raise ValueError(f"data.mix_shards must be >= 1, got {self.mix_shards}")
        if self.preprocess_batch < 1:
            raise ValueError(f"data.preprocess_batch must be >= 1, got {self.preprocess_batch}")


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


def report_skips(counts: Counter[str]) -> None:
    """Send a stage's skip counts (by reason, see :func:`pipelines.avfit.sample.count_skip`) to the
    job's counter; a stage run outside Ray only logs them."""
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
        report_skips(counts)


class ShardRows:
    """``map_batches`` stage: untarred shard samples -> lean model rows (each through
    :class:`meerkat_core.batching.SamplePreprocessor`, the one preprocessor).

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

    def _wanted(self, meta: dict[str, Any], key: str, epoch: int) -> bool:
        """The task-mixing draw: whether this epoch keeps the sample (decided before any decoding)."""
        if self.keep_probs is None:
            return True
        p = self.keep_probs.get(meta["task"], 0.0)
        return p >= 1.0 or unit_hash(self.seed, epoch, key) < p

    def row(self, sample: dict[str, Any], counts: Counter[str], epoch: int) -> dict[str, Any] | None:
        """One untarred sample (``__key__`` and its ``jpg``/``flac``/``json`` members) -> its lean
        row, or None when the sample is not drawn this epoch or is corrupt (counted in ``counts``)."""
        key = sample["__key__"]
        try:
            decoded = decode_sample(
                sample,
                self.prep,
                with_answer=self.with_answer,
                wanted=lambda meta: self._wanted(meta, key, epoch),
            )
        except CorruptSample as exc:
            count_skip(counts, key, exc)
            return None
        if decoded is None:
            return None
        meta, row = decoded
        row.update(lean_media(row["pixel_values"], row["audio_features"], self.prep.image))
        row["__key__"] = key
        row["task"] = meta["task"]
        row["source"] = str(meta.get("source", ""))
        row["epoch"] = epoch
        if self.keep_meta:
            row["meta"] = json.dumps(meta)
        return row

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        counts: Counter[str] = Counter()
        n = len(batch["__key__"])
        epochs = batch["epoch"] if "epoch" in batch else np.zeros(n, dtype=np.int64)
        rows, kept = [], []
        for i, (k, j, f, m, e) in enumerate(
            zip(batch["__key__"], batch["jpg"], batch["flac"], batch["json"], epochs, strict=True)
        ):
            row = self.row({"__key__": k, "jpg": j, "flac": f, "json": m}, counts, int(e))
            if row is not None:
                rows.append(row)
                kept.append(i)
        report_skips(counts)
        out = _columns(rows)
        for name in POSITION_COLUMNS:  # where each row is in its rank's stream (resumption)
            if rows and name in batch:
                out[name] = np.asarray(batch[name])[kept]
        return out


_PREPROCESSORS: dict[tuple[Any, ...], ShardRows] = {}
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
    """``map_batches`` task: :class:`ShardRows` of ``batch``, its instance cached in this process."""
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
            stage = ShardRows(
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


# -- lean rows ---------------------------------------------------------------------------------------


def row_bytes(model_config: ModelConfig) -> int:
    """Bytes of one lean row in the object store (media, box mask, text at its budget)."""
    s, g, a = model_config.image.image_size, model_config.image.grid, model_config.audio
    mel = a.num_windows * a.frames_per_window * a.num_mel_bins * 2
    return (
        3 * s * s
        + mel
        + g * g * 4
        + 2 * model_config.max_text_tokens * 8
        + 3 * 3 * 4
        + 2 * CLASS_SLOTS * 8
        + 256
    )


class MeerkatCollate(NumpyBatchCollateFn):
    """``iter_torch_batches`` collate: pad ragged text (right for training, left for generation),
    then turn the lean media into the model's float tensors on ``device`` (:func:`meerkat_core.media.normalise_media`)."""

    def __init__(self, pad_id: int, side: str = "right", device: Any = None) -> None:
        self.pad_id = pad_id
        self.side = side
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        n = len(batch["input_ids"])
        rows = [{c: batch[c][i] for c in ROW_COLUMNS} for i in range(n)]
        out: dict[str, Any] = batching.collate(rows, self.pad_id, side=self.side)
        if "pixel_norm" in batch:
            out["pixel_norm"] = torch.from_numpy(np.stack(list(batch["pixel_norm"])))
        out = normalise_media(out, self.device)
        out["__key__"] = list(batch["__key__"])
        out["task"] = list(batch["task"])
        for name in POSITION_COLUMNS:
            if name in batch:
                out[name] = [int(v) for v in batch[name]]
        if "meta" in batch:
            out["meta"] = [json.loads(m) for m in batch["meta"]]
        return out


# -- reading: per-rank shard groups, in a seeded order ----------------------------------------------

POSITION_COLUMNS = ("epoch", "group", "index")
"""Where a row is in its rank's stream: epoch, read group of the rank's epoch, index in the group."""
READ_MEMORY_FACTOR = 3
"""A stream task holds a group's payloads, their untarred members and its output block: about three
times the group's bytes (see :func:`read_memory`)."""
READ_PROCESS_MEMORY = 400 * 1024**2
"""What a read worker process holds before any shard (this module imports torch through
``meerkat_core``): Ray Data's per-worker peak for the read stage in the data benchmark
(``tests/benchmarks/test_data_bench.py``), rounded up."""


def read_shard(uri: str) -> bytes:
    """The bytes of one shard (S3 through the process's shared client, or a local file)."""
    return storage.read_bytes(uri)


def _read_or_skip(uri: str) -> bytes | None:
    for attempt in range(READ_ATTEMPTS):
        try:
            return read_shard(uri)
        except OSError as exc:  # storage masks credentials in the message
            if attempt + 1 < READ_ATTEMPTS and not isinstance(exc, FileNotFoundError):
                time.sleep(2**attempt)
                continue
            logger.warning("shard %s cannot be read (%s); skipping it", uri, exc)
            report_skips(Counter(unreadable_shard=1))
    return None


def shard_samples(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``flat_map`` stage: ``{"uri", "epoch"}`` -> the shard's samples (:func:`untar`), each with its epoch.

    Read and untar are one stage on purpose: no 100-MB tar blocks between stages. A shard that
    cannot be read (after retries; a missing one at once) is skipped and counted.
    """
    payload = _read_or_skip(row["uri"])
    if payload is not None:
        yield from untar({"bytes": payload, "path": row["uri"], "epoch": int(row["epoch"])})


def group_samples(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``flat_map`` stage: one read group -> its shards' samples, interleaved, from ``skip`` on.

    ``row``: ``uris`` (JSON list), ``epoch``, ``group``, ``skip``, ``seed`` (< 0: no shuffle). The
    group's samples are permuted by a generator seeded with (seed, epoch, the group's shards): the
    same bytes give the same order, so a resumed stream skips exactly the ``skip`` samples it
    trained on, without decoding them. Each sample gets its ``group`` and ``index`` (in that order).
    """
    uris: list[str] = json.loads(row["uris"])
    epoch, seed = int(row["epoch"]), int(row["seed"])
    samples: list[dict[str, Any]] = []
    # The group's shards are fetched at once (I/O, threads), so that a task of a whole CPU does
    # not wait for them one after the other.
    if any(u.startswith("s3://") for u in uris):
        storage.s3_client()  # made once here, not by each thread at once (its cache has no lock)
    with ThreadPoolExecutor(max_workers=min(len(uris), READ_THREADS) or 1) as pool:
        payloads = list(pool.map(_read_or_skip, uris))
    for uri, payload in zip(uris, payloads, strict=True):
        if payload is not None:
            samples.extend(untar({"bytes": payload, "path": uri, "epoch": epoch}))
    if seed >= 0:
        order = np.random.default_rng([seed, epoch, zlib.crc32(" ".join(uris).encode())]).permutation(
            len(samples)
        )
        samples = [samples[i] for i in order]
    for index in range(int(row["skip"]), len(samples)):
        yield {**samples[index], "group": int(row["group"]), "index": index}


_RAW_COLUMNS = ("__key__", "jpg", "flac", "json")


def stream_group(
    batch: dict[str, np.ndarray], *, chunk: int, **preprocess: Any
) -> Iterator[dict[str, np.ndarray]]:
    """The stream's one ``map_batches`` task: a read group (one row, see :func:`_group_items`) ->
    its lean rows, ``chunk`` rows a yield: :func:`group_samples` then :func:`preprocess_batch`
    (``preprocess``: its keyword arguments) ``chunk`` samples at a time. One operator for both:
    see the module docstring.

    Every yield but the group's last holds exactly ``chunk`` rows: what task mixing or a bad
    sample drops from one call is made up from the next, so each yield is one Ray Data block
    (:func:`yield_block_bytes`) and none waits in Ray's buffer for the next.
    """
    if len(batch["uris"]) != 1:
        raise ValueError(f"stream_group takes one read group per call, got {len(batch['uris'])}")
    row = {name: values[0] for name, values in batch.items()}
    samples = list(group_samples(row))

    def prepared() -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(samples), chunk):
            part = samples[start : start + chunk]
            columns = {name: np.array([s[name] for s in part], dtype=object) for name in _RAW_COLUMNS}
            for name in POSITION_COLUMNS:
                columns[name] = np.array([s[name] for s in part], dtype=np.int64)
            yield preprocess_batch(columns, **preprocess)

    yield from recut(prepared(), chunk, keep_last=True)


def recut(
    batches: Iterable[dict[str, np.ndarray]], size: int, *, keep_last: bool
) -> Iterator[dict[str, np.ndarray]]:
    """Column batches of any lengths -> batches of exactly ``size`` rows, row order kept; the
    last partial one yielded with ``keep_last``, dropped without. Empty batches are passed over."""
    if size < 1:
        raise ValueError(f"recut: size must be at least 1, got {size}")
    pending: list[dict[str, np.ndarray]] = []
    have = 0
    for batch in batches:
        if not len(batch.get("__key__", ())):
            continue
        pending.append(batch)
        have += len(batch["__key__"])
        while have >= size:
            rows = _concat(pending)
            yield {name: values[:size] for name, values in rows.items()}
            have -= size
            pending = [{name: values[size:] for name, values in rows.items()}] if have else []
    if have and keep_last:
        yield _concat(pending)


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Column batches -> one (row order kept)."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def shard_order(uris: list[str], strata: list[str] | None, *, seed: int | None, epoch: int) -> list[str]:
    """The epoch's shard order: with a seed, each stratum's (source's) shards in a seeded order,
    the strata spread evenly through the epoch (shard ``j`` of a stratum of ``n`` sits at
    ``(j + u) / n``, ``u`` a seeded offset per stratum), so any run of consecutive shards holds the
    sources near their shares; without a seed, the manifest's order."""
    if seed is None:
        return list(uris)
    rng = np.random.default_rng([seed, epoch])
    if strata is None:
        order = list(uris)
        rng.shuffle(order)
        return order
    by: dict[str, list[str]] = {}
    for uri, stratum in zip(uris, strata, strict=True):
        by.setdefault(stratum, []).append(uri)
    keyed = []
    for stratum in sorted(by):
        members = by[stratum]
        rng.shuffle(members)
        offset = rng.random()
        keyed += [((j + offset) / len(members), stratum, u) for j, u in enumerate(members)]
    return [u for _, _, u in sorted(keyed)]


def rank_groups(
    uris: list[str],
    *,
    seed: int | None,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    group: int = 1,
    strata: list[str] | None = None,
) -> list[list[str]]:
    """The read groups of ``rank`` in ``epoch``: every ``world``-th shard of :func:`shard_order`
    from ``rank``, cut into runs of ``group``. A rank's share depends only on these numbers: no
    coordination at run time, and a checkpoint can say where each rank is (:func:`stream_position`)."""
    mine = shard_order(uris, strata, seed=seed, epoch=epoch)[rank::world]
    return [mine[i : i + group] for i in range(0, len(mine), group)]


def _strata(uri: str) -> list[str]:
    return [shard_source(s) for s in read_manifest(uri)["shards"]]


def raw_stream(
    uri: str,
    *,
    seed: int | None,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    mix_shards: int = 1,
    stratify: bool = True,
) -> Iterator[dict[str, Any]]:
    """``rank``'s samples of ``epoch`` in stream order, metadata only, in this process (no Ray, no
    decoding): what a stream task reads (:func:`group_samples`) before preprocessing, for
    measuring the stream's mix.
    ``stratify=False``: shards in a plain seeded shuffle, the reference the stratified order is
    measured against."""
    groups = rank_groups(
        shard_uris(uri),
        seed=seed,
        epoch=epoch,
        rank=rank,
        world=world,
        group=mix_shards,
        strata=_strata(uri) if stratify else None,
    )
    for g, members in enumerate(groups):
        row = {
            "uris": json.dumps(members),
            "epoch": epoch,
            "group": g,
            "skip": 0,
            "seed": -1 if seed is None else seed,
        }
        for sample in group_samples(row):
            yield {"__key__": sample["__key__"], "meta": json.loads(sample["json"])}


def stream_position(batch: Mapping[str, Any]) -> dict[str, int]:
    """The position just after ``batch`` in its rank's stream (rows carry :data:`POSITION_COLUMNS`)."""
    epoch, group, index = max(zip(*(batch[c] for c in POSITION_COLUMNS), strict=True))
    return {"epoch": int(epoch), "group": int(group), "index": int(index) + 1}


def read_memory(uri: str, mix_shards: int) -> int:
    """Memory a stream task requests: :data:`READ_PROCESS_MEMORY` + :data:`READ_MEMORY_FACTOR` x its
    group's largest shards."""
    sizes = sorted((s["bytes"] for s in read_manifest(uri)["shards"]), reverse=True)
    return int(READ_PROCESS_MEMORY + READ_MEMORY_FACTOR * sum(sizes[:mix_shards]))


def check_shards(uri: str) -> list[str]:
    """The manifest's shard URIs, after checking they are all there (one listing): a missing
    shard is a clear error at start rather than an epoch short of samples."""
    uris = shard_uris(uri)
    if not uris:
        raise ValueError(f"the manifest at {uri} lists no shards")
    present = set(storage.list_prefix(uri))
    missing = [u for u in uris if u not in present]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(uris)} shards listed in {uri}/manifest.json are missing "
            f"(first: {missing[:3]}): the manifest does not match the shards"
        )
    return uris


def read_samples(
    uri: str,
    *,
    epochs: int = 1,
    start_epoch: int = 0,
    shuffle_seed: int | None = None,
    rank: int = 0,
    world: int = 1,
    mix_shards: int = 1,
    position: Mapping[str, int] | None = None,
) -> ray.data.Dataset:
    """The raw samples of ``rank``'s share of the split at ``uri`` (:func:`untar` rows with
    :data:`POSITION_COLUMNS`), epochs ``start_epoch ..``, in a fixed order, from ``position`` on.

    All the epochs are one execution of one dataset, so the pipeline stays warm from one epoch to
    the next (a new execution per epoch costs a pipeline start each time). One read task per group
    of ``mix_shards`` shards (:func:`group_samples`); Ray Data runs as many at once as the cluster
    has room for. Ray Data keeps the order of the items (``preserve_order``): a rank's stream is
    the same at every run, which is what makes :func:`stream_position` a resumption point.
    ``position`` (``{"epoch", "group", "index"}``) overrides ``start_epoch``.
    """
    uris = check_shards(uri)
    items = _group_items(uris, uri, epochs, start_epoch, shuffle_seed, rank, world, mix_shards, position)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Mostly I/O: a small CPU reservation keeps reads schedulable beside busy workers.
    ds = ds.flat_map(group_samples, num_cpus=0.25, memory=read_memory(uri, mix_shards))
    ds.context.execution_options.preserve_order = True
    return ds


def _group_items(
    uris: list[str],
    uri: str,
    epochs: int,
    start_epoch: int,
    shuffle_seed: int | None,
    rank: int,
    world: int,
    mix_shards: int,
    position: Mapping[str, int] | None,
) -> list[dict[str, Any]]:
    """One item per read group of ``rank``'s epochs, from ``position`` (or ``start_epoch``) on: the
    input of :func:`group_samples` and :func:`stream_group`."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= rank < world or len(uris) < world:
        raise ValueError(
            f"rank {rank} of {world}: the split at {uri} has {len(uris)} shards, need >= {world}"
        )
    at = (position["epoch"], position["group"], position["index"]) if position else (start_epoch, 0, 0)
    strata = _strata(uri)
    items = []
    for epoch in range(at[0], at[0] + epochs):
        groups = rank_groups(
            uris, seed=shuffle_seed, epoch=epoch, rank=rank, world=world, group=mix_shards, strata=strata
        )
        for g, members in enumerate(groups):
            if (epoch, g) < at[:2]:
                continue
            skip = at[2] if (epoch, g) == at[:2] else 0
            seed = -1 if shuffle_seed is None else shuffle_seed
            items.append(
                {"uris": json.dumps(members), "epoch": epoch, "group": g, "skip": skip, "seed": seed}
            )
    return items


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


def keep_probs(cfg: DataConfig) -> dict[str, float] | None:
    """The task-mixing keep probability per task (``None``: keep everything)."""
    return _keep_probs(cfg, read_manifest(cfg.uri))[1]


CACHE_STORE_FRACTION = 0.8
"""Share of the cluster's object store the cached split may take (the rest: blocks in flight)."""


def check_cache_fits(cfg: DataConfig, model_config: ModelConfig) -> int:
    """Bytes the cached split will take; raises ValueError when it would not fit the object store."""
    task_counts, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    wanted = sum(n for t, n in task_counts.items() if keep is None or keep.get(t, 0.0) > 0)
    need = wanted * row_bytes(model_config)
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    if need > CACHE_STORE_FRACTION * store:
        raise ValueError(
            f"data.cache: the split at {cfg.uri} would take about {need / 1e9:.2f} GB in Ray's object "
            f"store ({wanted} samples x {row_bytes(model_config) / 1e6:.3f} MB), more than "
            f"{CACHE_STORE_FRACTION:.0%} of the cluster's {store / 1e9:.2f} GB: stream it (data.cache: false)"
        )
    return need


def build_cached_epochs(
    cfg: DataConfig, model_config: ModelConfig, tokenizer_dir: str | None
) -> ray.data.Dataset:
    """The split decoded and preprocessed once (``materialize``), every sample of a wanted task.

    Refuses (:func:`check_cache_fits`) a split that would not fit the object store. Iterate it
    once per epoch and thin each epoch's rows with :func:`cached_batches`, which knows the epoch
    from its caller's counter. The materialisation runs in the caller (the driver), before training.
    """
    check_cache_fits(cfg, model_config)
    _, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    wanted = None if keep is None else {t: 1.0 for t, p in keep.items() if p > 0}
    skip_counter()
    rows = (
        read_samples(cfg.uri, mix_shards=cfg.mix_shards)
        .map_batches(
            preprocess_batch,
            fn_kwargs={"model_config": model_config, "tokenizer_dir": tokenizer_dir, "keep_probs": wanted},
            batch_size=cfg.preprocess_batch,
            compute=ray.data.TaskPoolStrategy(size=cfg.preprocess_tasks),
            num_cpus=cfg.preprocess_cpus,
        )
        .drop_columns(["group", "index"])
        .materialize()
    )
    return rows


def cached_batches(
    batches: Iterator[dict[str, np.ndarray]],
    *,
    keep: Mapping[str, float] | None,
    seed: int,
    epoch: int,
    batch_size: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches of the cached split -> epoch ``epoch``'s task-mixing draw, re-cut to
    ``batch_size`` rows (the last partial batch dropped). ``epoch`` is the caller's own count."""
    kept = (thin_batch(batch, keep_probs=keep, seed=seed, epoch=epoch) for batch in batches)
    yield from recut(kept, batch_size, keep_last=False)


BLOCK_FILL = 0.75
"""A stream block's byte target as a share of one full yield's estimated bytes (see
:func:`yield_block_bytes`)."""


def yield_block_bytes(chunk: int, model_config: ModelConfig) -> int:
    """Ray Data's ``target_max_block_size`` for the stream: one block per yield of ``chunk`` rows.

    Ray Data (2.60) buffers what a task yields and hands a block on only once the buffer's size is
    *above* the target (or the task ends), and slices a block of 1.5 x the target or more. Sized
    at exactly ``chunk`` x :func:`row_bytes`, a real yield (short text: a few KB under the
    estimate) stayed just under it and every block waited for the next yield, so a group's first
    rows left its task one chunk late. At :data:`BLOCK_FILL` of it, a yield of ``chunk`` rows
    (:func:`stream_group` yields nothing shorter but a group's last) is emitted as it comes, and
    is sliced only if its rows are 1.125 x :func:`row_bytes` or more (the media, which fill
    :func:`row_bytes` but for a few KB, are fixed by the model's config).
    """
    return int(BLOCK_FILL * chunk * row_bytes(model_config))


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
    rank: int = 0,
    world: int = 1,
    position: Mapping[str, int] | None = None,
) -> ray.data.Dataset:
    """The preprocessed stream of ``rank``'s share of one split (lean rows, see :func:`meerkat_core.media.lean_media`),
    for ``iter_torch_batches(collate_fn=MeerkatCollate(...))``.

    ``epochs`` passes in one stream (each row says its ``epoch``, ``group`` and ``index``),
    starting at ``start_epoch`` or at ``position`` (:func:`stream_position` of the last batch
    trained on): the shard order, the read groups and the task-mixing draw of an epoch depend only
    on the seed, the epoch, the rank and the world size, so a stream started there continues the
    interrupted one exactly, reading at most one group it had already read.
    """
    _, keep = _keep_probs(cfg, read_manifest(cfg.uri))
    skip_counter()
    uris = check_shards(cfg.uri)
    items = _group_items(
        uris,
        cfg.uri,
        epochs,
        start_epoch,
        cfg.seed if shuffle else None,
        rank,
        world,
        cfg.mix_shards,
        position,
    )
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        stream_group,
        fn_kwargs={
            "chunk": cfg.preprocess_batch,
            "model_config": model_config,
            "tokenizer_dir": tokenizer_dir,
            "keep_probs": keep,
            "seed": cfg.seed,
            "with_answer": with_answer,
            "keep_meta": keep_meta,
        },
        batch_size=1,
        compute=ray.data.TaskPoolStrategy(size=cfg.preprocess_tasks),
        num_cpus=cfg.preprocess_cpus,
        memory=read_memory(cfg.uri, cfg.mix_shards),
    )
    ds.context.target_max_block_size = yield_block_bytes(cfg.preprocess_batch, model_config)
    ds.context.execution_options.preserve_order = True
    return ds
