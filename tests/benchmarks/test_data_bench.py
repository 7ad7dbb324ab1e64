"""Benchmark (opt-in, ``-m bench``): the Ray Data stream against its ceiling, where the time goes,
bytes per row, and how long a resumed stream takes to its first batch early and late in an epoch.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_data_bench.py

One run, the same local shards (the procedural world, easy preset, tiny preset's shapes):

* single process: a plain loop read -> untar -> decode -> preprocess -> lean rows -> collate (the
  stage code, no Ray), timed per step, once before the Ray Data stream and once after (the rate
  is the two together: this machine's speed drifts over minutes). With collate, the per-core
  rate the README's capacity model starts from; without it (the stream's stages: collate runs
  in the trainer), the rate of the ceiling;
* ceiling: that rate x the cores Ray Data may use (the cluster's CPUs, at most the machine's
  cores); beside it, right after the stream, the plain loop in that many processes at once (no
  Ray, started together), which says how much of the gap to the ceiling is the machine's cores
  not adding up;
* Ray Data: ``build_dataset(epochs=EPOCHS)`` (rank 0 of 1, all epochs one stream, as training
  asks for them), iterated to the end: start-up (the call to the first batch), end to end (from
  the call) and steady (from the first batch on); Ray Data's CPU time per row by operator, the
  share of the cores its tasks spent producing blocks, and every process's CPU over the stream
  (processes that exited during it are not counted);
* resume: ``build_dataset(position=...)`` at the second sample of the epoch's first shard and
  at the sixth of its last (groups of one shard here, so that the two differ by the epoch's
  length), time to the first batch (the stream does not read what lies before the position;
  the late start's first batch is its group's last 25 rows, handed on at the group's end, so
  it can come sooner than the early one's first 32); each stream is read to its end and the
  next starts on an idle cluster.

The Ray instance is this test's own, shaped like a node: one logical CPU per core and a 2 GiB
object store. The test suite's shared instance (6 logical CPUs on this machine's cores, a 256 MiB
store) would measure something else: Ray Data budgets operators from the store's size, and with
256 MiB it holds preprocessing to one task at a time; a cluster node's store is several GB.

Last line: ``bench: data ray_vs_ceiling=<steady> end_to_end=<x> bytes_per_row=<lean row bytes>``.
The only assertions are that each path yields every sample and that lean rows are smaller.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest
import ray
import torch
from threadpoolctl import threadpool_limits

from meerkat_core import batching, media
from meerkat_core.config import PRESETS
from meerkat_core.tokenizer import load_tokenizer
from pipelines import data
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples
from tests.benchmarks.processes import cpu_by_title, process_cpu_s

pytestmark = pytest.mark.bench
TINY = PRESETS["tiny"]
EPOCHS = 36
"""Passes over the shards in the Ray Data stream: 12,960 samples, 2.3-2.9 minutes on two cores.
End to end is the steady rate less the start-up (the first task's worker importing torch and
transformers, Ray Data starting its own actors: 5.6-7.8 s on two cores) spread over the stream:
``steady x T / (T + start-up)``. A training stream runs for hours, where the start-up is nothing;
at 8 epochs (40 s) it took a fifth of end to end, at this length a twentieth, and the benchmark
prints it on its own."""
OBJECT_STORE_BYTES = 2 * 1024**3
DRIVER = "driver (Ray Data executor + iter_batches)"
MIX_SHARDS = 12
"""Shards per read group, so per stream task: the epoch's 12 x 30 = 360 samples, a task of
about 8 s on a core. Ray Data spends about 0.2 s between one task's end and the next task's
start on a worker (its scheduling loop polls finished tasks every 0.1 s): a quarter of a
30-sample task (0.7 s), 2-3 % of this one, and 1 % of a paper-config task (``mix_shards`` 8 of
112-sample shards: 896 samples, 24 s). What the per-task cost is measured against is a task's
length, so the benchmark's tasks are seconds long, as a cluster's are (a third of the paper's)."""


@pytest.fixture(scope="module")
def ray_node():
    """A Ray instance of this machine's cores (see the module docstring)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        context = ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=False,
        )
        try:
            yield context
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench-shards"))
    with shards.ShardWriter(out, max_count=30, fingerprint="bench") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 60, 0):
            w.write(s)
    return out


def _single_process(uris: list[str]) -> tuple[int, float, dict[str, float], int, int]:
    """The plain loop on one core (one thread for torch, BLAS and OpenMP, as Ray gives a task of
    one CPU), timed per step; returns samples, seconds, seconds per step, row bytes before
    (float32 media) and after (lean)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            return _plain_loop(uris)
    finally:
        torch.set_num_threads(threads)


def _plain_loop(uris: list[str]) -> tuple[int, float, dict[str, float], int, int]:
    tok = load_tokenizer(None)
    prep = batching.SamplePreprocessor(TINY, tok)
    collate = data.MeerkatCollate(tok.pad_token_id)
    spent: dict[str, float] = defaultdict(float)
    n, fat, lean = 0, 0, 0
    t_all = time.perf_counter()
    for uri in uris:
        t = time.perf_counter()
        payload = data.read_shard(uri)
        spent["read"] += time.perf_counter() - t
        t = time.perf_counter()
        members = list(data.untar({"bytes": payload, "path": uri}))
        spent["untar"] += time.perf_counter() - t
        rows = []
        for m in members:
            meta = json.loads(m["json"])
            t = time.perf_counter()
            img = media.load_image(m["jpg"])
            wave = media.load_audio(
                m["flac"], target_sr=TINY.audio.sampling_rate, max_seconds=prep.max_audio_seconds
            )
            spent["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            pixels = prep.image([img])[0].numpy()
            spent["image"] += time.perf_counter() - t
            t = time.perf_counter()
            mel = prep.audio([wave])[0].numpy()
            spent["mel"] += time.perf_counter() - t
            t = time.perf_counter()
            row = prep(img, wave, meta)  # text, boxes, regions (media again: subtracted below)
            spent["tokenise+rest"] += time.perf_counter() - t
            t = time.perf_counter()
            fat = pixels.nbytes + mel.nbytes
            row.update(media.lean_media(row["pixel_values"], row["audio_features"], prep.image))
            lean = sum(row[c].nbytes for c in ("pixel_values", "audio_features", "pixel_norm"))
            row.update(__key__=m["__key__"], task=meta["task"])
            rows.append(row)
            spent["lean"] += time.perf_counter() - t
        t = time.perf_counter()
        for i in range(0, len(rows), 8):
            collate(data._columns(rows[i : i + 8]))
        spent["transfer(collate)"] += time.perf_counter() - t
        n += len(rows)
    total = time.perf_counter() - t_all
    # prep() above decoded nothing but redid image and mel: count only its own part
    spent["tokenise+rest"] = max(0.0, spent["tokenise+rest"] - spent["image"] - spent["mel"])
    total -= spent["image"] + spent["mel"]
    return n, total, dict(spent), fat, lean


def _stream_seconds(total: float, spent: dict[str, float]) -> float:
    """The plain loop's seconds on the stream's stages (all but the trainer's collate)."""
    return total - spent["transfer(collate)"]


_START: Any = None
"""The barrier the parallel plain loops start behind (set in each of their processes)."""


def _set_start(barrier: Any) -> None:
    global _START
    _START = barrier


def _plain_rate(uris: list[str]) -> float:
    """One process's plain-loop rate (samples/s, the stream's stages) over the shards, twice
    through them, started when every process of the pool is ready (imports done)."""
    _START.wait()
    n, secs = 0, 0.0
    for _ in range(2):
        got, total, spent, *_ = _single_process(uris)
        n, secs = n + got, secs + _stream_seconds(total, spent)
    return n / secs


def _parallel_plain(uris: list[str], processes: int) -> float:
    """The plain loop in ``processes`` processes at once (no Ray): the sum of their rates. What
    the cores give together when every one of them decodes, with whatever they share (caches,
    memory bandwidth, the host's scheduling of a VM's cores): the ceiling's "x cores" measured."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    with ProcessPoolExecutor(
        max_workers=processes, mp_context=ctx, initializer=_set_start, initargs=(start,)
    ) as pool:
        return sum(pool.map(_plain_rate, [uris] * processes))


def _idle(timeout_s: float = 60.0) -> None:
    """Wait until no task holds a CPU, so that a start is measured on an idle cluster."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster's CPUs did not come free")
        time.sleep(0.2)
    time.sleep(0.5)


def _first_batch_s(cfg: data.DataConfig, position: dict[str, int]) -> float:
    """Seconds from the call to the first batch of a stream started at ``position``; the stream
    is then read to its end. Dropped after its first batch, Ray Data would cancel the stream's
    running tasks and kill their worker processes, and the next start would pay a new worker's
    imports (about 4 s) that the previous one did not: the positions would not be compared alike."""
    _idle()
    t = time.perf_counter()
    ds = data.build_dataset(cfg, TINY, None, position=position)
    batches = iter(ds.iter_batches(batch_size=4))
    next(batches)
    first = time.perf_counter() - t
    for _ in batches:
        pass
    return first


def _stream_label(title: str) -> str:
    # a worker's title is IDLE again after its task: count every task worker as one
    return (
        "Ray task workers (the stream's tasks)"
        if title == "ray::IDLE" or title.startswith("ray::MapBatches")
        else title
    )


_TOTAL = re.compile(r"([\d.]+)(us|ms|s) total$")


def _operator_totals(stats: str, what: str) -> dict[str, float]:
    """Ray Data's remote ``what`` ("cpu" or "wall") time summed over each operator's tasks (s),
    from ``Dataset.stats()``."""
    out, name = {}, None
    for line in stats.splitlines():
        if line.startswith("Operator "):
            name = line.split(":")[0].split(" ", 2)[2]
        elif name and line.startswith(f"* Remote {what} time:") and (m := _TOTAL.search(line)):
            out[name] = float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    return out


def test_stream_throughput(ray_node, shard_dir):
    uris = shards.shard_uris(shard_dir)
    n = shards.read_manifest(shard_dir)["total"]
    # the plain loop before and after the stream: this machine's speed drifts over minutes
    single, single_s, spent, fat, lean = _single_process(uris)
    cores = min(os.cpu_count() or 1, int(ray.cluster_resources().get("CPU", 1)))

    cfg = data.DataConfig(uri=shard_dir, mix_shards=MIX_SHARDS)
    procs = process_cpu_s(_stream_label, DRIVER)
    t = time.perf_counter()
    got, first_at, first_n, row_bytes = 0, None, 0, []
    ds = data.build_dataset(cfg, TINY, None, epochs=EPOCHS)
    for b in ds.iter_batches(batch_size=16):
        got += len(b["__key__"])
        row_bytes.append(
            sum(b[c].nbytes for c in b if c in data.ROW_COLUMNS or c == "pixel_norm") / len(b["__key__"])
        )
        if first_at is None:  # steady state: from the first batch on, start-up excluded
            first_at, first_n = time.perf_counter(), got
    end = time.perf_counter()
    by_process = cpu_by_title(procs, process_cpu_s(_stream_label, DRIVER))
    parallel = _parallel_plain(uris, cores)
    after, after_s, spent_after, _, _ = _single_process(uris)
    r = (single + after) / (single_s + after_s)  # every stage: the capacity model's per-core rate
    stages_s = _stream_seconds(single_s, spent) + _stream_seconds(after_s, spent_after)
    rate_before = single / _stream_seconds(single_s, spent)
    rate_after = after / _stream_seconds(after_s, spent_after)
    rate = (single + after) / stages_s
    ceiling = rate * cores
    stats = ds.stats()
    operators = {k: 1e3 * v / got for k, v in _operator_totals(stats, "cpu").items()}
    task_wall = sum(_operator_totals(stats, "wall").values())
    end_to_end = got / (end - t)
    steady = (got - first_n) / max(end - first_at, 1e-9)

    resume = dataclasses.replace(cfg, mix_shards=1)
    groups = data.rank_groups(uris, seed=cfg.seed, epoch=0, group=1, strata=data._strata(shard_dir))
    early_at, late_at = (
        {"epoch": 0, "group": 0, "index": 1},
        {"epoch": 0, "group": len(groups) - 1, "index": 5},
    )
    # alternated, best of three each
    times = [(_first_batch_s(resume, early_at), _first_batch_s(resume, late_at)) for _ in range(3)]
    early, late = min(t[0] for t in times), min(t[1] for t in times)

    print(f"\n{n} samples in {len(uris)} shards; Ray Data may use {cores} cores")
    print(
        f"single process, the stream's stages: {rate:.1f} samples/s ({rate_before:.1f} before the "
        f"stream, {rate_after:.1f} after); with the trainer's collate r = {r:.1f}; per sample (ms, before):"
    )
    for step, secs in spent.items():
        print(f"  {step:18s} {1e3 * secs / single:7.2f}")
    print(f"ceiling ({rate:.1f} x {cores}): {ceiling:.1f} samples/s")
    print(
        f"plain loop in {cores} processes at once (no Ray): {parallel:.1f} samples/s "
        f"(x{parallel / ceiling:.2f} the ceiling); Ray Data steady is x{steady / parallel:.2f} of it"
    )
    print(
        f"Ray Data, {got} samples ({EPOCHS} epochs): start-up {first_at - t:.1f} s, "
        f"{steady:.1f} samples/s steady, {end_to_end:.1f} end to end"
    )
    print(
        "Ray Data CPU per row (ms, remote, by operator): "
        + ", ".join(f"{k} {v:.2f}" for k, v in operators.items())
    )
    print(
        f"stream tasks producing blocks (Ray Data's remote wall time / ({cores} cores x end to end)): "
        f"{task_wall / (cores * (end - t)):.2f}"
    )
    print(
        f"CPU by process over end to end ({end - t:.1f} s; cores busy on average): "
        + ", ".join(
            f"{k} {v / (end - t):.2f}"
            for k, v in sorted(by_process.items(), key=lambda kv: -kv[1])
            if v / (end - t) >= 0.01
        )
    )
    print(
        f"row media bytes: float32 {fat}, lean {lean} (x{lean / fat:.3f}); lean row, all columns {np.mean(row_bytes):.0f}"
    )
    print(f"resume -> first batch: early {early:.2f} s, late {late:.2f} s (late/early x{late / early:.2f})")
    assert single == n == after and got == n * EPOCHS and lean < fat
    print(
        f"bench: data ray_vs_ceiling={steady / ceiling:.2f} end_to_end={end_to_end / ceiling:.2f} "
        f"bytes_per_row={np.mean(row_bytes):.0f}"
    )
