"""The AVFIT build job on Ray: world shards into the S3 server, manifests, baselines, idempotent re-runs."""

from __future__ import annotations

import json

from pipelines import build_avfit, storage
from pipelines.avfit import shards
from pipelines.config import load_config


def _cfg(out_uri: str, **scenes):
    return load_config(
        build_avfit.BuildConfig,
        "pipelines/configs/avfit_demo.yaml",
        [f"out_uri={out_uri}", "scenes_per_task=3", *[f"world.scenes.{k}={v}" for k, v in scenes.items()]],
    )


def test_plan_cuts_scenes_into_ranges(tmp_path):
    cfg = _cfg(str(tmp_path), train=7, val=3, test=0)
    plan = build_avfit.plan(cfg)
    assert [p[0] for p in plan["train"]] == ["world-000000", "world-000003", "world-000006"]
    assert [p[2][3] for p in plan["train"]] == [3, 3, 1]  # scene counts per part
    assert "test" not in plan
    # evaluation scenes always hold a distractor object
    assert cfg.world.config("val").min_objects == 2 and cfg.world.config("train").min_objects == 1


def test_build_into_s3_then_rerun_reuses(ray_local, s3_uri):
    cfg = _cfg(s3_uri, train=7, val=3, test=3)
    first = build_avfit.build(cfg, progress=False)
    assert set(first) == {"train", "val", "test"}
    train = shards.read_manifest(storage.join_uri(s3_uri, "train"))
    assert train["total"] == sum(s["count"] for s in train["shards"]) > 0
    assert len(train["shards"]) == 3 and set(train["counts"]["task"]) == {
        "arig",
        "igatl",
        "avfact",
        "avqa",
        "avc",
    }
    baselines = json.loads(storage.read_bytes(storage.join_uri(s3_uri, "val", "baselines.json")))
    assert baselines["arig_random_object_miou"] < 0.75  # two objects per evaluation scene
    sha = {s["name"]: s["sha256"] for s in train["shards"]}

    again = build_avfit.build(cfg, progress=False)
    assert all(r["reused"] for r in again.values())

    # a changed config rebuilds, and the same scenes give the same bytes
    storage.atomic_write_bytes(storage.join_uri(s3_uri, "train", "manifest.json"), b"{}")
    storage_bytes_before = {n: storage.read_bytes(storage.join_uri(s3_uri, "train", n)) for n in sha}
    rebuilt = build_avfit.build(cfg, progress=False)
    assert not rebuilt["train"]["reused"]
    for n in sha:
        assert storage.read_bytes(storage.join_uri(s3_uri, "train", n)) == storage_bytes_before[n]
