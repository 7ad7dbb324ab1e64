"""Exact resumption of the training stream: 2 workers, a SIGKILL mid-epoch, every sample once.

Each rank streams its own share of every epoch (``pipelines.data.build_dataset(rank=, world=)``)
and the checkpoint keeps where each rank is; the run's trace (``trace_dir``: the keys of every
micro-batch per rank, step and attempt) is checked against the stream each rank should have read.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import mlflow
import pytest

from pipelines import data, train
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples
from pipelines.config import load_config
from tests.pipelines.faults import KillAt

# Minutes: a training job killed and resumed (make test-slow, which CI runs after make test).
pytestmark = pytest.mark.slow


def _effective(trace_dir: Path, world: int) -> dict[int, list[str]]:
    """Per rank, the keys trained on in the run's final history: for each step, the micro-batches
    of the last attempt that trained it (a restart repeats the steps after its checkpoint)."""
    out = {}
    for rank in range(world):
        by_step: dict[int, tuple[int, list[list[str]]]] = {}
        for line in (trace_dir / f"rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            attempt, batches = by_step.get(rec["step"], (-1, []))
            if rec["attempt"] > attempt:
                by_step[rec["step"]] = (rec["attempt"], [rec["keys"]])
            elif rec["attempt"] == attempt:
                batches.append(rec["keys"])
        out[rank] = [k for step in sorted(by_step) for keys in by_step[step][1] for k in keys]
    return out


def test_sigkill_mid_epoch_trains_every_sample_once(ray_local, s3_uri, mlflow_server, tmp_path, monkeypatch):
    with shards.ShardWriter(s3_uri, max_count=6, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 12, 3):
            w.write(s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    trace = tmp_path / "trace"
    name = f"resume-{uuid.uuid4().hex[:6]}"
    cfg = load_config(
        train.TrainJobConfig,
        "pipelines/configs/tiny.yaml",
        [
            f"name={name}",
            f"data.uri={s3_uri}",
            f"storage_uri={tmp_path / 'runs'}",
            "data.cache=false",
            "data.task_weights={}",
            "data.mix_shards=2",
            "optim.batch_size=4",
            "optim.max_steps=20",
            "optim.warmup_steps=2",
            "checkpoint.every=5",
            "log_every=5",
            "mlflow.register_as=null",
            f"trace_dir={trace}",
        ],
    )
    train.run(cfg, after_step=KillAt(7))
    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("meerkat")
    (run,) = client.search_runs([exp.experiment_id], f"tags.`meerkat.run_name` = '{name}'")
    resumed = [m.value for m in client.get_metric_history(run.info.run_id, "train/resumed_at_step")]
    assert resumed == [5], resumed  # killed at 7, mid-epoch 0, resumed from the checkpoint of step 5
    attempts = {json.loads(line)["attempt"] for line in (trace / "rank1.jsonl").read_text().splitlines()}
    assert attempts == {0, 1}

    world, trained = 2, _effective(trace, 2)
    manifest = shards.read_manifest(s3_uri)
    all_keys = {k for r in trained.values() for k in r}
    epochs_run = 3
    for rank in range(world):
        # the stream this rank should read: its shares of epochs 0, 1, 2 in order (no task mixing,
        # no bad samples here); trained must be exactly its prefix: nothing repeated, nothing skipped
        want = [
            s["__key__"]
            for e in range(epochs_run)
            for s in data.raw_stream(
                s3_uri, seed=cfg.data.seed, epoch=e, rank=rank, world=world, mix_shards=cfg.data.mix_shards
            )
        ]
        got = trained[rank]
        assert len(got) == cfg.optim.max_steps * cfg.optim.batch_size
        assert len(want) >= len(got)
        assert got == want[: len(got)], (
            f"rank {rank} diverges at {next(i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b)}"
        )
    # across the ranks: every sample of every completed epoch exactly once (in-flight bound: 0)
    per_epoch_total = manifest["total"]
    assert len(all_keys) == per_epoch_total
    counts = Counter(k for r in trained.values() for k in r)
    completed = min(len(trained[r]) for r in range(world)) // -(-per_epoch_total // world)
    assert completed >= 1
    assert all(c >= completed for c in counts.values())
    assert max(counts.values()) <= epochs_run
