"""The demo's configuration and how it reads the jobs' results back from MLflow (never their output).

The demo itself (``make demo``) is not run here; its result-reading functions are, against the
MLflow server fixture.
"""

from __future__ import annotations

import uuid

import pytest

from infra import demo
from pipelines import evaluate, report
from pipelines.config import from_argv


def test_demo_config_from_the_command_line(monkeypatch):
    cfg = from_argv(demo.DemoConfig, ["dir=/tmp/stack", "retrain=true", "train_steps=5"])
    assert (cfg.dir, cfg.retrain, cfg.train_steps, cfg.scenes) == ("/tmp/stack", True, 5, 400)
    monkeypatch.setenv("MEERKAT_SERVE_PORT", "8123")
    assert cfg.port == 8123 and from_argv(demo.DemoConfig, ["serve_port=9000"]).port == 9000
    with pytest.raises(SystemExit):
        from_argv(demo.DemoConfig, ["--train-steps", "5"])  # the old flags are not a second syntax


def test_trained_version_is_the_one_the_training_run_registered(mlflow_server):
    import mlflow

    client = mlflow.MlflowClient(mlflow_server)
    tag = uuid.uuid4().hex[:6]
    exp = client.create_experiment(f"demo-{tag}")
    ours = client.create_run(exp, tags={"meerkat.run_name": f"ours-{tag}"}).info.run_id
    other = client.create_run(exp, tags={"meerkat.run_name": f"other-{tag}"}).info.run_id
    model = f"demo-model-{tag}"
    client.create_registered_model(model)
    for run_id in (other, ours, other):  # versions 1, 2, 3: the latest is not ours
        client.create_model_version(model, source=f"runs:/{run_id}/model", run_id=run_id)
    assert demo.registered_version(mlflow_server, model) == "3"
    assert demo.trained_version(mlflow_server, f"ours-{tag}", model) == "2"
    with pytest.raises(LookupError, match="no MLflow run"):
        demo.trained_version(mlflow_server, f"missing-{tag}", model)
    with pytest.raises(LookupError, match="registered no version"):
        demo.trained_version(mlflow_server, f"ours-{tag}", f"{model}-other")


def test_a_registered_model_of_another_model_config_is_found_changed(mlflow_server):
    """The demo trains again instead of serving a registered model that today's code would build
    otherwise (and might not load): the changes are read from the version's training run."""
    import mlflow
    import yaml

    from meerkat_core.config import replace_path, to_dict
    from pipelines.config import load_config, resolve_model
    from pipelines.train import TrainJobConfig

    train_config = demo.DemoConfig().train_config
    now = resolve_model(load_config(TrainJobConfig, train_config).model)
    older = replace_path(replace_path(now, "loss.lambda_match", 0.0), "llm_image_pool", 1)
    client = mlflow.MlflowClient(mlflow_server)
    tag = uuid.uuid4().hex[:6]
    exp = client.create_experiment(f"demo-changes-{tag}")
    model = f"demo-model-{tag}"
    client.create_registered_model(model)
    for cfg in (now, older, None):  # versions 1, 2, 3: the same model, an older one, no record
        run_id = client.create_run(exp).info.run_id
        if cfg is not None:
            client.log_text(
                run_id, yaml.safe_dump({"job": {}, "model": to_dict(cfg)}), "config/resolved.yaml"
            )
        client.create_model_version(model, source=f"runs:/{run_id}/model", run_id=run_id)
    mlflow.set_tracking_uri(mlflow_server)
    assert demo.registered_model_changes(mlflow_server, model, "1", train_config) == []
    assert demo.registered_model_changes(mlflow_server, model, "2", train_config) == [
        "model.llm_image_pool: 1 -> 2",
        "model.loss.lambda_match: 0.0 -> 0.5",
    ]
    assert demo.registered_model_changes(mlflow_server, model, "3", train_config) == []


def test_evaluation_table_is_the_demo_evaluation_runs_artefact(mlflow_server, tmp_path, monkeypatch):
    """What ``pipelines.evaluate`` logs is what the demo reads: the baselines table of the latest
    finished demo evaluation of that model; runs that are not the demo's are not."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    ref = str(tmp_path / f"model-{uuid.uuid4().hex[:6]}")  # no registry lookup for the parent run
    assert demo.evaluation_table(mlflow_server, ref) is None
    results = {
        "avfact": {"world": {"model": {"accuracy": 0.75, "n": 4}, "baseline_majority": {"accuracy": 0.5}}}
    }

    def log(tags, accuracy):
        res = {"avfact": {"world": {**results["avfact"]["world"], "model": {"accuracy": accuracy, "n": 4}}}}
        evaluate.log_to_mlflow(
            res, [], model_ref=ref, data_uri="d", experiment="demo-eval", run_name="e", skipped={}, tags=tags
        )
        return report.baselines_markdown(res).strip()

    log({}, 0.1)  # not the demo's
    assert demo.evaluation_table(mlflow_server, ref) is None
    first = log({demo.DEMO_TAG: "true"}, 0.75)
    assert demo.evaluation_table(mlflow_server, ref) == first
    assert "75" in first
    log({}, 0.2)
    assert demo.evaluation_table(mlflow_server, ref) == first
    later = log({demo.DEMO_TAG: "true"}, 0.25)
    assert later != first and demo.evaluation_table(mlflow_server, ref) == later


def test_evaluate_stage_submits_once_and_passes_nothing_through_stdout(mlflow_server, monkeypatch):
    """The evaluation job's command line the demo builds is a valid ``pipelines.evaluate`` config;
    a second demo reuses the evaluation found in MLflow without submitting."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    name = f"demo-stage-{uuid.uuid4().hex[:6]}"
    train_run = client.create_run(client.create_experiment(name)).info.run_id
    client.create_registered_model(name)
    client.create_model_version(name, source=f"runs:/{train_run}/model", run_id=train_run)
    ref = f"models:/{name}/1"
    submitted = []

    def fake_submit(env, module, *args):
        submitted.append((module, args))
        cfg = from_argv(evaluate.EvaluateConfig, list(args))
        evaluate.log_to_mlflow(
            {"avqa": {"world": {"model": {"accuracy": 0.5, "n": 2}}}},
            [],
            model_ref=cfg.model,
            data_uri=cfg.data_uris,
            experiment=cfg.experiment,
            run_name=cfg.run_name,
            skipped={},
            tags=cfg.tags,
        )

    monkeypatch.setattr(demo, "submit", fake_submit)
    table = demo.evaluate({}, mlflow_server, ref, "s3://b/avfit/test", 7)
    assert table.startswith("# Model against trivial baselines")
    ((module, args),) = submitted
    cfg = from_argv(evaluate.EvaluateConfig, list(args))
    assert module == "pipelines.evaluate"
    assert (cfg.model, cfg.data_uris, cfg.max_samples) == (ref, ["s3://b/avfit/test"], 7)
    assert cfg.tags == {demo.DEMO_TAG: "true"} and cfg.run_name == "demo-eval-1"
    evaluation = client.search_runs(
        [client.get_experiment_by_name("meerkat").experiment_id], f"tags.`meerkat.model_ref` = '{ref}'"
    )
    assert [r.data.tags["mlflow.parentRunId"] for r in evaluation] == [train_run]  # nested under its training
    assert demo.evaluate({}, mlflow_server, ref, "s3://b/avfit/test", 7) == table
    assert len(submitted) == 1  # reused
