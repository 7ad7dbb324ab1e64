"""Benchmark (opt-in, ``-m bench``): samples/s of the Ray Data stream against two baselines.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_data_bench.py

All three read the same local shards (the procedural world, easy preset) in one run:

* ceiling: reading the raw tar bytes alone;
* single process: a plain loop untar -> decode -> preprocess (the same stage code, no Ray);
* Ray Data: ``build_dataset`` (read_binary_files -> untar -> preprocess actors), iterated to the end.

Printed: samples/s for each and the ratios Ray/single and Ray/ceiling. The only assertion is that
each path yields every sample.
"""

from __future__ import annotations

import time

import pytest

from meerkat_core.config import PRESETS
from pipelines import data
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples

pytestmark = pytest.mark.bench
TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench-shards"))
    with shards.ShardWriter(out, max_count=60, fingerprint="bench") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 60, 0):
            w.write(s)
    return out


def test_stream_throughput(ray_local, shard_dir):
    uris = shards.shard_uris(shard_dir)
    n = shards.read_manifest(shard_dir)["total"]

    t = time.perf_counter()
    total_bytes = sum(len(open(u, "rb").read()) for u in uris)
    ceiling_s = time.perf_counter() - t

    t = time.perf_counter()
    prep = data.Preprocess(TINY, None)
    single = 0
    for u in uris:
        rows = list(data.untar({"bytes": open(u, "rb").read(), "path": u}))
        for i in range(0, len(rows), 8):
            chunk = rows[i : i + 8]
            out = prep({k: [r[k] for r in chunk] for k in ("__key__", "jpg", "flac", "json")})
            single += len(out["__key__"])
    single_s = time.perf_counter() - t

    results = {}
    for actors in (1, 2):
        cfg = data.DataConfig(uri=shard_dir, preprocess_tasks=actors, preprocess_cpus=0.5)
        t = time.perf_counter()
        got, first_at, first_n = 0, None, 0
        for b in data.build_dataset(cfg, TINY, None).iter_batches(batch_size=16):
            got += len(b["__key__"])
            if first_at is None:  # steady state: from the first batch on, actor start-up excluded
                first_at, first_n = time.perf_counter(), got
        end = time.perf_counter()
        results[actors] = (got, end - t, (got - first_n) / max(end - first_at, 1e-9))

    print(f"\n{n} samples, {total_bytes / 1e6:.1f} MB of shards")
    print(f"raw tar bytes (ceiling): {n / ceiling_s:10.1f} samples/s")
    print(f"single-process loop:     {n / single_s:10.1f} samples/s")
    for actors, (got, secs, steady) in results.items():
        print(
            f"Ray Data, {actors} actor(s):    {got / secs:10.1f} samples/s end to end, {steady:.1f} steady "
            f"(x{steady / (n / single_s):.2f} of single, x{steady / (n / ceiling_s):.4f} of ceiling)"
        )
    assert single == n and all(got == n for got, _, _ in results.values())
