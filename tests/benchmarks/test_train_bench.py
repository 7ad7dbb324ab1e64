"""Benchmark (opt-in, ``-m bench``): training samples/s with 1 vs 2 Ray Train workers, and data wait.

    .venv/bin/python -m pytest -m bench -s tests/benchmarks/test_train_bench.py

Both runs in one session, same shards (procedural world), same per-worker batch, 40 steps each,
on the streaming path (``data.cache=false``: each rank streams its own share);
figures are the means of ``train/samples_per_s`` and ``train/data_wait_frac`` logged to MLflow
after the first logging window (start-up excluded). On a 2-core machine the two workers and the
preprocessing actor share the same cores, so the ratio says more about contention than scaling.
"""

from __future__ import annotations

import statistics
import uuid

import pytest

from pipelines import train
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples
from pipelines.config import load_config
from tests.pipelines.faults import KillAt

pytestmark = pytest.mark.bench


def test_one_vs_two_workers(ray_local, s3_server, mlflow_server, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data_uri = s3_server.uri(f"bench-{uuid.uuid4().hex[:6]}", "train")
    with shards.ShardWriter(data_uri, max_count=50, fingerprint="bench") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 60, 0):
            w.write(s)
    client = mlflow.MlflowClient(mlflow_server)
    figures = {}
    for workers in (1, 2):
        name = f"bench-{workers}w-{uuid.uuid4().hex[:6]}"
        cfg = load_config(
            train.TrainJobConfig,
            "pipelines/configs/tiny.yaml",
            [
                f"name={name}",
                f"data.uri={data_uri}",
                f"storage_uri={s3_server.uri('bench-runs')}",
                f"scaling.num_workers={workers}",
                "optim.max_steps=40",
                "checkpoint.every=40",
                "log_every=5",
                "mlflow.register_as=null",
                "data.cache=false",  # the streaming path a cluster uses: each rank reads its own share
                "data.preprocess_cpus=0.5",
            ],
        )
        run_id = train.run(cfg)["mlflow_run_id"]
        sps = [
            m.value
            for m in sorted(client.get_metric_history(run_id, "train/samples_per_s"), key=lambda m: m.step)
        ][1:]
        wait = [
            m.value
            for m in sorted(client.get_metric_history(run_id, "train/data_wait_frac"), key=lambda m: m.step)
        ][1:]
        figures[workers] = (statistics.mean(sps), statistics.mean(wait))
    for workers, (sps, wait) in figures.items():
        print(f"\n{workers} worker(s): {sps:.1f} samples/s, data wait {wait:.0%}")
    print(f"2 vs 1 workers: x{figures[2][0] / figures[1][0]:.2f} samples/s")
    assert all(sps > 0 for sps, _ in figures.values())
    print(
        f"bench: train streaming samples_per_s_1w={figures[1][0]:.1f} samples_per_s_2w={figures[2][0]:.1f} "
        f"data_wait_1w={figures[1][1]:.3f} data_wait_2w={figures[2][1]:.3f}"
    )


def test_restart_to_first_step_early_and_late(ray_local, s3_server, mlflow_server, tmp_path, monkeypatch):
    """Restart -> first trained step after a SIGKILL early and late in an epoch (streaming path).

    From MLflow's own timestamps: ``train/resumed_at_step`` (logged once the restarted group has
    restored the checkpoint) to the first ``train/loss`` after it (``log_every=1``). With each rank
    resuming at its recorded position, the two should be about equal; replaying the prefix made
    the late one grow with the position.
    """
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data_uri = s3_server.uri(f"bench-resume-{uuid.uuid4().hex[:6]}", "train")
    with shards.ShardWriter(data_uri, max_count=6, fingerprint="bench") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 40, 1):
            w.write(s)
    total = shards.read_manifest(data_uri)["total"]
    steps_per_epoch = total // 8  # 2 workers x batch 4
    client = mlflow.MlflowClient(mlflow_server)
    figures = {}
    for where, kill in (("early", 3), ("late", steps_per_epoch - 3)):
        name = f"bench-resume-{where}-{uuid.uuid4().hex[:6]}"
        cfg = load_config(
            train.TrainJobConfig,
            "pipelines/configs/tiny.yaml",
            [
                f"name={name}",
                f"data.uri={data_uri}",
                f"storage_uri={tmp_path / 'runs'}",
                "data.cache=false",
                "data.mix_shards=2",
                "data.preprocess_cpus=0.5",
                "optim.batch_size=4",
                f"optim.max_steps={kill + 3}",
                "optim.warmup_steps=2",
                "checkpoint.every=2",
                "log_every=1",
                "mlflow.register_as=null",
            ],
        )
        run_id = train.run(cfg, after_step=KillAt(kill))["mlflow_run_id"]
        (resumed,) = client.get_metric_history(run_id, "train/resumed_at_step")
        after = [m for m in client.get_metric_history(run_id, "train/loss") if m.step > resumed.value]
        first = min(after, key=lambda m: m.timestamp)
        figures[where] = (resumed.value, (first.timestamp - resumed.timestamp) / 1e3)
    for where, (at, secs) in figures.items():
        print(
            f"\n{where}: resumed at step {at:.0f} of a {steps_per_epoch}-step epoch, first step {secs:.1f} s later"
        )
    ratio = figures["late"][1] / figures["early"][1]
    print(
        f"bench: train_resume early_s={figures['early'][1]:.1f} late_s={figures['late'][1]:.1f} late_vs_early={ratio:.2f}"
    )
