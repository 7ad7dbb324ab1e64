"""The training job: schedule and config checks (unit), then Ray Train end to end (integration).

Integration runs, each on real services on loopback:
- the local stack: ``ray job submit`` of the AVFIT build and of ``pipelines.train`` with 2 CPU
  workers; one MLflow run with params and falling loss curves; the registered model loads in a
  fresh process and answers a grounding question with a parseable box;
- a Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``): one worker per node,
  checkpoints in the S3 server, a worker SIGKILLed mid-run, the run resumed from its latest
  checkpoint, one MLflow run, and re-submitting the same name resumes again.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.train import TrainJobConfig, lr_lambda

REPO = Path(__file__).resolve().parents[2]


def test_lr_schedule_hand_cases():
    assert lr_lambda(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_lambda(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_lambda(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_lambda(500, 10, 100, 0.1) == pytest.approx(0.1)


def test_grad_accumulation_reaches_the_effective_batch():
    cfg = load_config(TrainJobConfig, "pipelines/configs/paper.yaml")
    assert cfg.grad_accum * cfg.optim.batch_size * cfg.scaling.num_workers == 128
    with pytest.raises(ValueError, match="multiple"):
        load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", ["optim.effective_batch=20"])
    with pytest.raises(ValueError):
        load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", ["scaling.strategy=zero"])


def test_fault_hook_kills_only_the_chosen_rank_at_the_step_on_the_first_attempt(monkeypatch):
    """The resume tests' SIGKILL (tests/pipelines/faults.py), checked without killing anything; the
    production config has no such field."""
    import dataclasses
    import signal

    from tests.pipelines import faults

    killed, slept = [], []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    hook = faults.KillAt(7)
    for rank, step, attempt in ((0, 7, 0), (1, 6, 0), (1, 8, 0), (1, 7, 1)):
        hook(rank, {"step": step, "attempt": attempt})
    assert killed == []
    hook(1, {"step": 7, "attempt": 0})
    assert killed == [(os.getpid(), signal.SIGKILL)] and slept == [1.5]  # three controller polls first
    assert "fail_at_step" not in {f.name for f in dataclasses.fields(TrainJobConfig)}


def test_model_changes_name_each_field_and_read_new_fields_at_their_defaults():
    from dataclasses import replace

    from meerkat_core.config import PRESETS, to_dict
    from pipelines.train import model_changes

    tiny = PRESETS["tiny"]
    assert model_changes(to_dict(tiny), tiny) == []
    other = replace(tiny, av_match=False, llm_image_pool=1, loss=replace(tiny.loss, lambda_match=0.0))
    assert model_changes(to_dict(tiny), other) == [
        "model.av_match: True -> False",
        "model.llm_image_pool: 2 -> 1",
        "model.loss.lambda_match: 0.5 -> 0.0",
    ]
    # a run recorded before either field existed
    before_the_switch = {k: v for k, v in to_dict(tiny).items() if k != "av_match"}
    before_the_switch["loss"] = {k: v for k, v in before_the_switch["loss"].items() if k != "lambda_match"}
    assert model_changes(before_the_switch, tiny) == [
        "model.av_match: False -> True",
        "model.loss.lambda_match: 0.0 -> 0.5",
    ]


def test_resuming_a_run_with_another_model_is_refused_before_training(mlflow_server, monkeypatch):
    import mlflow
    import yaml

    from meerkat_core.config import PRESETS, replace_path, to_dict
    from pipelines.train import _mlflow_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    cfg = load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", [f"name=resume-{uuid.uuid4().hex[:6]}"])
    tiny = PRESETS["tiny"]
    record = yaml.safe_dump({"job": {}, "model": to_dict(tiny)})
    first = _mlflow_run(cfg, {"model.av_match": True}, record, tiny)
    assert _mlflow_run(cfg, {}, record, tiny) == first  # the same model: resumed
    changed = replace_path(tiny, "loss.lambda_ot", 0.5)  # every shape the same: the checkpoint would load
    with pytest.raises(ValueError, match=r"model\.loss\.lambda_ot: 0\.1 -> 0\.5\. Resubmit"):
        _mlflow_run(cfg, {}, record, changed)


def test_epochs_needed_covers_max_steps_with_a_margin():
    from pipelines.train import epochs_needed

    cfg = load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", ["optim.max_steps=300"])
    samples = 300 * cfg.grad_accum * cfg.optim.batch_size * cfg.scaling.num_workers  # 4800 with tiny.yaml
    assert epochs_needed(cfg, samples / 4) == math.ceil(1.25 * 4) + 1 == 6
    assert epochs_needed(cfg, 10 * samples) == 2  # one short epoch is never the whole budget
    with pytest.raises(ValueError, match="no samples"):
        epochs_needed(cfg, 0.0)


# ------------------------------------------------------------------------------------ integration


def _submit(env: dict[str, str], *args: str, timeout: int = 900) -> str:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "job",
            "submit",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in out, out[-6000:]
    return out


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow  # minutes: make test-slow, which CI runs after make test
def test_train_job_on_the_local_stack(local_stack):
    import mlflow

    env = local_stack.env
    tag = uuid.uuid4().hex[:6]
    data_uri = f"s3://{local_stack.config.bucket}/it-{tag}/avfit"
    _submit(
        env,
        "pipelines.build_avfit",
        "--config",
        "pipelines/configs/avfit_demo.yaml",
        f"out_uri={data_uri}",
        "world.scenes.train=200",
        "world.scenes.val=4",
        "world.scenes.test=4",
        "scenes_per_task=20",
    )
    name = f"it-train-{tag}"
    out = _submit(
        env,
        "pipelines.train",
        "--config",
        "pipelines/configs/tiny.yaml",
        f"name={name}",
        f"data.uri={data_uri}/train",
        f"storage_uri=s3://{local_stack.config.bucket}/it-{tag}/runs",
        "optim.max_steps=200",
        "optim.warmup_steps=10",
        "checkpoint.every=100",
        "log_every=10",
        f"mlflow.register_as={name}",
        "data.task_weights={arig: 1.0}",
    )
    result = json.loads(next(line for line in out.splitlines()[::-1] if line.startswith('{"mlflow_run_id"')))

    client = mlflow.MlflowClient(local_stack.config.mlflow_uri)
    exp = client.get_experiment_by_name("meerkat")
    runs = client.search_runs([exp.experiment_id], f"tags.`meerkat.run_name` = '{name}'")
    assert [r.info.run_id for r in runs] == [result["mlflow_run_id"]]
    run = runs[0]
    assert (
        run.data.params["job.scaling.num_workers"] == "2"
        and run.data.params["model.llm.hidden_size"] == "128"
    )
    for key in ("train/loss_ce", "train/loss_ot", "train/loss_ac"):
        values = [v for _, v in _history(client, run.info.run_id, key)]
        assert len(values) == 20, key
        assert sum(values[-3:]) < sum(values[:3]), (key, values)
    for key in ("train/lr", "train/grad_norm", "train/samples_per_s", "train/data_wait_frac"):
        assert _history(client, run.info.run_id, key), key
    assert result["registered_version"] == "1"

    # Eight held-out scenes, not one: a 200-step model answering one sample is a coin that lands on a
    # malformed box now and then; most of eight parsing is what a trained-and-registered model shows.
    probe = (
        "from pipelines import registry\n"
        "from pipelines.avfit.world import iter_samples, WORLD_PRESETS\n"
        "from meerkat_core import batching, grounding\n"
        f"m = registry.load('models:/{name}/1')\n"
        "ss = [x for x in iter_samples(WORLD_PRESETS['easy'], 'test', 40, 7) if x['json']['task'] == 'arig'][:8]\n"
        "p = batching.SamplePreprocessor(m.config, m.tokenizer)\n"
        "b = batching.collate([p(s['image'], s['audio'], s['json'], with_answer=False) for s in ss], m.tokenizer.pad_token_id, side='left')\n"
        "for text in m.generate(b):\n"
        "    print('ANSWER', repr(text), grounding.parse_box(text) is not None)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    answers = [line for line in proc.stdout.splitlines() if line.startswith("ANSWER")]
    assert proc.returncode == 0 and len(answers) == 8, proc.stdout + proc.stderr
    assert sum(line.endswith("True") for line in answers) >= 6, answers


@pytest.mark.slow  # minutes: make test-slow, which CI runs after make test
def test_two_nodes_fault_and_resume(s3_server, mlflow_server, tmp_path, monkeypatch):
    """One worker per node, checkpoints in S3, a worker SIGKILLed at step 15, resumed from step 10."""
    import boto3
    import mlflow
    import ray
    from ray.cluster_utils import Cluster

    from pipelines import train
    from pipelines.avfit import shards
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples
    from tests.pipelines.faults import KillAt

    data_uri = s3_server.uri(f"nodes-{uuid.uuid4().hex[:6]}", "train")
    with shards.ShardWriter(data_uri, max_count=20, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 16, 3):
            w.write(s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():  # a driver another module left connected would refuse the cluster below
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    cluster.add_node(num_cpus=3)
    try:
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        runs_uri = s3_server.uri(f"runs-{uuid.uuid4().hex[:6]}")
        name = f"nodes-{uuid.uuid4().hex[:6]}"
        overrides = [
            f"name={name}",
            f"data.uri={data_uri}",
            f"storage_uri={runs_uri}",
            "scaling.placement_strategy=STRICT_SPREAD",
            "optim.batch_size=4",
            "optim.warmup_steps=2",
            "checkpoint.every=10",
            "log_every=5",
            "mlflow.register_as=null",
            "data.shuffle_buffer=0",
        ]
        cfg = load_config(
            TrainJobConfig,
            "pipelines/configs/tiny.yaml",
            [*overrides, "optim.max_steps=30"],
        )
        first = train.run(cfg, after_step=KillAt(15))

        client = mlflow.MlflowClient(mlflow_server)
        exp = client.get_experiment_by_name("meerkat")
        runs = client.search_runs([exp.experiment_id], f"tags.`meerkat.run_name` = '{name}'")
        assert len(runs) == 1 and runs[0].info.run_id == first["mlflow_run_id"]
        nodes = runs[0].data.tags["meerkat.worker_nodes"].split(",")
        assert len(nodes) == 2 and len(set(nodes)) == 2, nodes

        steps = [m.step for m in client.get_metric_history(first["mlflow_run_id"], "train/loss")]
        assert max(steps) == 30 and set(range(5, 31, 5)) <= set(steps)
        # killed at 15, resumed once from the checkpoint of step 10: only steps after it may repeat
        # (whether rank 0 logged 15 before the group was torn down is a race)
        resumed = [
            m.value for m in client.get_metric_history(first["mlflow_run_id"], "train/resumed_at_step")
        ]
        assert resumed == [10], resumed
        assert all(s > 10 for s, c in Counter(steps).items() if c > 1), steps

        bucket, prefix = runs_uri[5:].split("/", 1)
        s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        # every rank's part of a checkpoint lands in one directory: the metadata and both ranks' files
        assert any(k.endswith("step-0000030/dcp/.metadata") for k in keys)
        assert sum(k.endswith("dcp/.metadata") for k in keys) == cfg.checkpoint.keep
        assert any(k.endswith("step-0000030/state.json") for k in keys)

        # re-submitting the same name resumes it (and its MLflow run) up to the new step count
        again = train.run(
            load_config(TrainJobConfig, "pipelines/configs/tiny.yaml", [*overrides, "optim.max_steps=40"])
        )
        assert again["mlflow_run_id"] == first["mlflow_run_id"]
        steps = [m.step for m in client.get_metric_history(first["mlflow_run_id"], "train/loss")]
        assert max(steps) == 40 and Counter(steps)[35] == 1
        resumed = [
            m.value for m in client.get_metric_history(first["mlflow_run_id"], "train/resumed_at_step")
        ]
        assert resumed == [10, 30], resumed
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
