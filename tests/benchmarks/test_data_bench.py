"""Benchmark (opt-in, ``-m bench``): the Ray Data stream against its ceiling, where the time goes,
bytes per row, and how long a resumed stream takes to its first batch early and late in an epoch.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_data_bench.py

One run, the same local shards (the procedural world, easy preset, tiny preset's shapes):

* single process: a plain loop read -> untar -> decode -> preprocess -> lean rows -> collate (the
  stage code, no Ray), timed per step: the per-core rate the README's capacity model starts from;
* ceiling: that rate x the cores Ray Data may use (the cluster's CPUs, at most the machine's cores);
* Ray Data: ``build_dataset(epochs=EPOCHS)`` (rank 0 of 1, all epochs one stream, as training
  asks for them), iterated to the end: start-up (the call to the first batch), end to end (from
  the call) and steady (from the first batch on), and Ray Data's CPU time per row by operator;
* resume: ``build_dataset(position=...)`` at the second sample and at the last group of the epoch,
  time to the first batch (the stream does not read what lies before the position), each started
  on an idle cluster (the previous, abandoned stream's tasks finished).

The Ray instance is this test's own, shaped like a node: one logical CPU per core and a 2 GiB
object store. The test suite's shared instance (6 logical CPUs on this machine's cores, a 256 MiB
store) would measure something else: Ray Data budgets operators from the store's size, and with
256 MiB it holds preprocessing to one task at a time; a cluster node's store is several GB.

Last line: ``bench: data ray_vs_ceiling=<steady> end_to_end=<x> bytes_per_row=<lean row bytes>``.
The only assertions are that each path yields every sample and that lean rows are smaller.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict

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

pytestmark = pytest.mark.bench
TINY = PRESETS["tiny"]
EPOCHS = 8
"""Passes over the shards in the Ray Data stream: 2,880 samples, long enough that the stream's
start-up (worker processes importing torch, the first read) is a small part of end to end."""
OBJECT_STORE_BYTES = 2 * 1024**3


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


def _idle(timeout_s: float = 60.0) -> None:
    """Wait until no task holds a CPU: an abandoned stream's tasks run to their end, and a restart
    starts on an idle cluster, not beside the stream it replaces."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0):
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster's CPUs did not come free")
        time.sleep(0.2)
    time.sleep(0.5)


def _first_batch_s(cfg: data.DataConfig, position: dict[str, int]) -> float:
    _idle()
    t = time.perf_counter()
    ds = data.build_dataset(cfg, TINY, None, position=position)
    next(iter(ds.iter_batches(batch_size=4)))
    return time.perf_counter() - t


_TOTAL = re.compile(r"([\d.]+)(us|ms|s) total$")


def _cpu_per_row(stats: str, rows: int) -> dict[str, float]:
    """Ray Data's remote CPU time per output row by operator (ms), from ``Dataset.stats()``."""
    out, name = {}, None
    for line in stats.splitlines():
        if line.startswith("Operator "):
            name = line.split(":")[0].split(" ", 2)[2]
        elif name and line.startswith("* Remote cpu time:") and (m := _TOTAL.search(line)):
            out[name] = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] / rows
            name = None
    return out


def test_stream_throughput(ray_node, shard_dir):
    uris = shards.shard_uris(shard_dir)
    n = shards.read_manifest(shard_dir)["total"]
    single, single_s, spent, fat, lean = _single_process(uris)
    rate = single / single_s
    cores = min(os.cpu_count() or 1, int(ray.cluster_resources().get("CPU", 1)))
    ceiling = rate * cores

    cfg = data.DataConfig(uri=shard_dir, mix_shards=1)
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
    operators = _cpu_per_row(ds.stats(), got)
    end_to_end = got / (end - t)
    steady = (got - first_n) / max(end - first_at, 1e-9)

    groups = data.rank_groups(
        uris, seed=cfg.seed, epoch=0, group=cfg.mix_shards, strata=data._strata(shard_dir)
    )
    early_at, late_at = (
        {"epoch": 0, "group": 0, "index": 1},
        {"epoch": 0, "group": len(groups) - 1, "index": 5},
    )
    # alternated, best of three each: a start that lands on a worker process which has not yet
    # imported torch and built its preprocessor pays ~5 s more, whatever the position
    times = [(_first_batch_s(cfg, early_at), _first_batch_s(cfg, late_at)) for _ in range(3)]
    early, late = min(t[0] for t in times), min(t[1] for t in times)

    print(f"\n{n} samples in {len(uris)} shards; Ray Data may use {cores} cores")
    print(f"single process: {rate:.1f} samples/s; per sample (ms):")
    for step, secs in spent.items():
        print(f"  {step:18s} {1e3 * secs / single:7.2f}")
    print(f"ceiling ({rate:.1f} x {cores}): {ceiling:.1f} samples/s")
    print(
        f"Ray Data, {got} samples ({EPOCHS} epochs): start-up {first_at - t:.1f} s, "
        f"{steady:.1f} samples/s steady, {end_to_end:.1f} end to end"
    )
    print(
        "Ray Data CPU per row (ms, remote, by operator): "
        + ", ".join(f"{k} {v:.2f}" for k, v in operators.items())
    )
    print(
        f"row media bytes: float32 {fat}, lean {lean} (x{lean / fat:.3f}); lean row, all columns {np.mean(row_bytes):.0f}"
    )
    print(f"resume -> first batch: early {early:.2f} s, late {late:.2f} s (late/early x{late / early:.2f})")
    assert single == n and got == n * EPOCHS and lean < fat
    print(
        f"bench: data ray_vs_ceiling={steady / ceiling:.2f} end_to_end={end_to_end / ceiling:.2f} "
        f"bytes_per_row={np.mean(row_bytes):.0f}"
    )
