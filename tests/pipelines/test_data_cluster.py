"""Four Ray nodes on this machine (``ray.cluster_utils.Cluster``): the stream and a 2-worker training
job, with the stream's tasks (read + preprocess, one per read group) counted per node (Ray's state
API) to show they spread."""

from __future__ import annotations

import os
import uuid
from collections import Counter

import pytest

from infra.local import processes
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples
from pipelines.config import load_config

# Minutes: a four-node Ray cluster (make test-slow, which CI runs after make test).
pytestmark = pytest.mark.slow


def _stage_tasks_per_node(address: str, since: set[str]) -> dict[str, Counter[str]]:
    """Finished Ray Data tasks of the stream's one stage (``stream_group``: read and preprocess a
    read group), per node.

    The state API is asked at the test cluster's ``address``: without one it looks for a local Ray
    and refuses when it finds several (other Ray instances on the same machine)."""
    from ray.util.state import list_tasks

    tasks = list_tasks(
        address=address, filters=[("state", "=", "FINISHED")], limit=10_000, raise_on_missing_output=False
    )
    out: dict[str, Counter[str]] = {"stream": Counter()}
    for t in tasks:
        if t.task_id not in since and "stream_group" in t.name:
            out["stream"][t.node_id] += 1
    return out


def test_four_nodes_stream_and_train(s3_server, mlflow_server, tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_tasks

    from meerkat_core.config import PRESETS
    from pipelines import data, train

    data_uri = s3_server.uri(f"four-{uuid.uuid4().hex[:6]}", "train")
    with shards.ShardWriter(data_uri, max_count=4, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "train", 12, 5):
            w.write(s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    # A free dashboard port, not Ray's default: a local stack left running holds 8265.
    head = {"num_cpus": 2, "include_dashboard": True, "dashboard_port": processes.free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(3):
        cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 4
        before = {
            t.task_id
            for t in list_tasks(address=cluster.address, limit=10_000, raise_on_missing_output=False)
        }
        cfg = data.DataConfig(uri=data_uri, mix_shards=1, preprocess_cpus=0.5)
        rows = list(data.build_dataset(cfg, PRESETS["tiny"], None).iter_rows())
        assert len(rows) == shards.read_manifest(data_uri)["total"]
        stream = _stage_tasks_per_node(cluster.address, before)
        print(f"\nstream, tasks per node: { ({k: sorted(v.values()) for k, v in stream.items()}) }")
        assert len(stream["stream"]) >= 3, stream

        before = {
            t.task_id
            for t in list_tasks(address=cluster.address, limit=10_000, raise_on_missing_output=False)
        }
        name = f"four-{uuid.uuid4().hex[:6]}"
        job = load_config(
            train.TrainJobConfig,
            "pipelines/configs/tiny.yaml",
            [
                f"name={name}",
                f"data.uri={data_uri}",
                f"storage_uri={tmp_path / 'runs'}",
                "data.cache=false",
                "data.mix_shards=1",
                "data.preprocess_cpus=0.5",
                "scaling.placement_strategy=SPREAD",
                "optim.batch_size=4",
                "optim.max_steps=8",
                "optim.warmup_steps=2",
                "checkpoint.every=8",
                "log_every=4",
                "mlflow.register_as=null",
            ],
        )
        train.run(job)
        trained = _stage_tasks_per_node(cluster.address, before)
        print(
            f"training (2 workers), tasks per node: { ({k: sorted(v.values()) for k, v in trained.items()}) }"
        )
        assert len(trained["stream"]) >= 2, trained
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
