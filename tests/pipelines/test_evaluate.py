"""The evaluation job: scoring on hand-made predictions (unit), then end to end on Ray + MLflow."""

from __future__ import annotations

import uuid

import pytest

from pipelines import evaluate


def _arig(pred: str, sounding: list, other: list) -> dict:
    return {
        "prediction": pred,
        "meta": {
            "task": "arig",
            "source": "world",
            "boxes": [sounding],
            "objects": [{"box": sounding, "sounds": True}, {"box": other, "sounds": False}],
        },
    }


def test_sounding_rate_and_baselines_hand_case():
    left, right = [0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]
    rows = [
        _arig("[0.00, 0.00, 0.40, 0.40]", left, right),  # on the sounding object
        _arig("[0.60, 0.60, 1.00, 1.00]", left, right),  # on the other one
        _arig("garbage", right, left),  # unparsed: a miss
        _arig("[0.60, 0.60, 0.90, 0.90]", right, left),  # on the sounding object
    ]
    res = evaluate.score(rows)["arig"]["world"]
    assert res["model"]["sounding_rate"] == pytest.approx(0.5)
    assert res["model"]["n_unparsed"] == 1
    assert res["model"]["ciou"] == pytest.approx(0.5)  # samples 0 and 3 (cIoU 0.5625 >= 0.5)
    assert set(res) == {"model", "baseline_mean_box", "baseline_random_object"}
    assert res["baseline_mean_box"]["box_mean_iou"] < 0.3


def test_fact_check_and_temporal_scoring():
    facts = [
        {"prediction": p, "meta": {"task": "avfact", "source": "world", "label": lab, "fact_type": t}}
        for p, lab, t in [("True", True, 1), ("False", False, 1), ("True", False, 2), ("False", True, 2)]
    ]
    windows = [
        {
            "prediction": "[2.0, 4.0]",
            "meta": {"task": "igatl", "source": "llp", "segments": [[2.0, 4.0]], "duration": 10.0},
        },
        {
            "prediction": "nope",
            "meta": {"task": "igatl", "source": "llp", "segments": [[5.0, 6.0]], "duration": 10.0},
        },
    ]
    res = evaluate.score(facts + windows)
    assert res["avfact"]["world"]["model"]["accuracy"] == pytest.approx(0.5)
    assert res["avfact"]["world"]["baseline_majority"]["accuracy"] == pytest.approx(0.5)
    seg = res["igatl"]["llp"]["model"]
    # Published protocol: each row its own video (no clip_id); F1 1 and 0, averaged.
    assert seg["f1"] == pytest.approx(0.5) and seg["event_f1"] == pytest.approx(0.5)
    # The project's variants beside it: micro over bins (TP 2, FN 1) and greedy one-to-one events.
    assert (seg["micro_tp"], seg["micro_fn"], seg["micro_fp"]) == (2, 1, 0)
    assert seg["micro_f1"] == pytest.approx(0.8)
    assert seg["greedy_event_f1"] == pytest.approx(2 / 3)
    assert res["igatl"]["llp"]["baseline_whole_clip"]["micro_recall"] == pytest.approx(1.0)


def test_temporal_rows_of_one_clip_average_as_its_classes():
    def row(pred: str, segments: list, clip: str) -> dict:
        meta = {"task": "igatl", "source": "llp", "segments": segments, "duration": 10.0, "clip_id": clip}
        return {"prediction": pred, "meta": meta}

    rows = [
        row("[0.0, 2.0]", [[0.0, 2.0]], "a"),
        row("nothing", [[4.0, 6.0]], "a"),
        row("[1.0, 2.0]", [[1, 2]], "b"),
    ]
    seg = evaluate.score(rows)["igatl"]["llp"]["model"]
    # Clip a: classes 1.0 and 0.0 -> 0.5; clip b: 1.0. Mean over the two clips.
    assert seg["f1"] == pytest.approx(0.75) and seg["n_videos"] == 2 and seg["n"] == 3


def test_metric_names_follow_the_convention():
    flat = evaluate.flatten_metrics(
        {
            "avfact": {
                "world": {
                    "model": {"f1": 0.5, "per_type": {1: {"f1": 0.25}}},
                    "baseline_majority": {"f1": 0.1},
                }
            }
        }
    )
    assert flat == {
        "eval/avfact/world/f1": 0.5,
        "eval/avfact/world/per_type/type1/f1": 0.25,
        "eval/avfact/world/baseline_majority/f1": 0.1,
    }


def test_evaluation_job_end_to_end(ray_local, s3_server, mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from meerkat_core.config import PRESETS
    from meerkat_core.model import build_model
    from pipelines import registry
    from pipelines.avfit import shards
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    data_uri = s3_server.uri(f"eval-{uuid.uuid4().hex[:6]}", "test")
    with shards.ShardWriter(data_uri, max_count=20, fingerprint="t") as w:
        for s in iter_samples(WORLD_PRESETS["easy"], "test", 5, 11):
            w.write(s)
    model = build_model(PRESETS["tiny"], pretrained=False, seed=0)
    model.save_pretrained(tmp_path / "m", seed=0, pretrained=False)
    name = f"eval-it-{uuid.uuid4().hex[:6]}"
    mlflow.set_experiment("meerkat")
    with mlflow.start_run(run_name="train") as train_run:
        registry.log_and_register(tmp_path / "m", registered_name=name)

    out = evaluate.main(
        ["--model", f"models:/{name}/1", "--data", data_uri, "--batch-size", "8", "--max-new-tokens", "16"]
    )
    assert out["n"] == shards.read_manifest(data_uri)["total"]
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(out["eval_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    keys = set(run.data.metrics)
    for k in (
        "eval/arig/world/ciou",
        "eval/arig/world/auc",
        "eval/arig/world/baseline_random_object/box_mean_iou",
        "eval/avfact/world/accuracy",
        "eval/igatl/world/f1",
        "eval/avqa/world/accuracy",
        "eval/avc/world/cider",
    ):
        assert k in keys, k
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {
        "results.md",
        "results.json",
        "predictions.json",
        "plots/success_curve.png",
        "plots/grounding.png",
        "plots/segments.png",
    } <= artifacts
