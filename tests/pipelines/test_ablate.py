"""The ablation job: one variant list, configs built from it, and the jobs composed as functions."""

from __future__ import annotations

import pytest

from pipelines import ablate, evaluate, train
from pipelines.config import CONFIG_DIR, from_argv, resolve_model


def _cfg(*overrides: str) -> ablate.AblateConfig:
    return from_argv(ablate.AblateConfig, ["--config", str(CONFIG_DIR / "ablate.yaml"), *overrides])


def test_config_runs_every_variant_by_default_and_refuses_unknown_ones():
    cfg = _cfg("data=s3://b/avfit")
    assert cfg.variants == tuple(ablate.VARIANTS) and cfg.steps == 300
    assert _cfg("data=x", "variants=[no_ot, lora4]").variants == ("no_ot", "lora4")
    with pytest.raises(ValueError, match="no_such"):
        _cfg("data=x", "variants=[no_ot, no_such]")


@pytest.mark.parametrize("variant", sorted(ablate.VARIANTS))
def test_every_variant_is_a_valid_training_config(variant):
    cfg = ablate.variant_train_config(_cfg("data=s3://b/avfit", "steps=12"), "abl-x", variant)
    assert isinstance(cfg, train.TrainJobConfig)
    assert cfg.name == cfg.mlflow.register_as == f"abl-x-{variant}"
    assert cfg.data.uri == "s3://b/avfit/train" and cfg.optim.max_steps == 12
    assert cfg.mlflow.tags == {"meerkat.ablation": "abl-x", "meerkat.variant": variant}
    resolve_model(cfg.model)  # the variant's model overrides resolve


def test_variants_change_what_they_name():
    base = _cfg("data=d")
    full = resolve_model(ablate.variant_train_config(base, "a", "full").model)
    no_ot = resolve_model(ablate.variant_train_config(base, "a", "no_ot").model)
    assert full.loss.lambda_ot > 0 and no_ot.loss.lambda_ot == 0.0
    assert no_ot.loss.lambda_ac == full.loss.lambda_ac
    no_loss = resolve_model(ablate.variant_train_config(base, "a", "no_match_loss").model)
    assert full.loss.lambda_match > 0 and no_loss.loss.lambda_match == 0.0 and no_loss.av_match
    no_match = resolve_model(ablate.variant_train_config(base, "a", "no_av_match").model)
    assert not no_match.av_match and no_match.loss.lambda_match == 0.0
    only_arig = ablate.variant_train_config(base, "a", "tasks_arig").data
    assert only_arig.tasks == ("arig",) and only_arig.task_weights == {}
    assert resolve_model(ablate.variant_train_config(base, "a", "full_ft").model).lora.r == 0


def test_variant_evaluation_config():
    cfg = ablate.variant_eval_config(
        _cfg("data=s3://b/avfit", "eval_samples=40", "eval.actors=2"),
        "abl-x",
        "no_ac",
        "models:/abl-x-no_ac/1",
    )
    assert isinstance(cfg, evaluate.EvaluateConfig)
    assert (cfg.model, cfg.data_uris, cfg.max_samples, cfg.actors) == (
        "models:/abl-x-no_ac/1",
        ["s3://b/avfit/test"],
        40,
        2,
    )
    assert cfg.tags == {"meerkat.ablation": "abl-x", "meerkat.variant": "no_ac"}


def test_run_composes_train_evaluate_and_compare_as_functions(monkeypatch):
    """Each variant trained then evaluated under the ablation's id (``ablation=<id>`` adds them to an
    earlier ablation); the table is every evaluation of that id in MLflow, earlier variants' too."""
    calls = []

    def fake_train(cfg):
        calls.append(("train", cfg.name, cfg.model))
        return {"mlflow_run_id": f"t-{cfg.name}", "registered_version": "3"}

    def fake_evaluate(cfg):
        calls.append(("evaluate", cfg.model, cfg.tags["meerkat.variant"]))
        return {"eval_run_id": f"e-{cfg.tags['meerkat.variant']}", "n": 1, "skipped": {}, "results": {}}

    def fake_compare(ablation=None, experiment="meerkat", run_ids=None, patterns=None):
        calls.append(("compare", ablation, experiment, run_ids))
        return "| table |"

    monkeypatch.setattr(train, "run", fake_train)
    monkeypatch.setattr(evaluate, "run", fake_evaluate)
    monkeypatch.setattr(ablate, "compare", fake_compare)
    out = ablate.run(_cfg("data=d", "variants=[full, no_ot]", "ablation=abl-t"))
    assert out == {"ablation": "abl-t", "eval_runs": ["e-full", "e-no_ot"], "table": "| table |"}
    assert [c[:2] for c in calls] == [
        ("train", "abl-t-full"),
        ("evaluate", "models:/abl-t-full/3"),  # the version the training registered
        ("train", "abl-t-no_ot"),
        ("evaluate", "models:/abl-t-no_ot/3"),
        ("compare", "abl-t"),
    ]
    assert calls[2][2] == {**calls[0][2], "loss": {**calls[0][2].get("loss", {}), "lambda_ot": 0.0}}
    assert calls[-1] == ("compare", "abl-t", "meerkat", None)
    assert ablate.run(_cfg("data=d", "variants=[full]"))["ablation"].startswith("abl-")  # a new id
    with pytest.raises(ValueError, match="no data"):
        ablate.run(_cfg())


def test_data_variants_train_the_full_recipe_on_their_own_root_and_test_on_data():
    cfg = _cfg("data=s3://b/plain", "variants=[full]", "data_variants={mix: s3://b/mix}", "steps=12")
    assert cfg.all_variants == ("full", "mix")
    full = ablate.variant_train_config(cfg, "abl-x", "full")
    mix = ablate.variant_train_config(cfg, "abl-x", "mix")
    assert (full.data.uri, mix.data.uri) == ("s3://b/plain/train", "s3://b/mix/train")
    assert mix.model == full.model and mix.data.task_weights == full.data.task_weights
    assert mix.mlflow.tags == {"meerkat.ablation": "abl-x", "meerkat.variant": "mix"}
    assert ablate.variant_eval_config(cfg, "abl-x", "mix", "models:/m/1").data_uris == ["s3://b/plain/test"]
    with pytest.raises(ValueError, match="no_ot"):
        _cfg("data=d", "data_variants={no_ot: s3://b/x}")
    with pytest.raises(ValueError, match="no AVFIT root"):
        _cfg("data=d", "data_variants={mix: ''}")


def test_run_trains_data_variants_after_the_config_variants(monkeypatch):
    trained = []
    monkeypatch.setattr(
        train,
        "run",
        lambda cfg: trained.append(cfg.data.uri) or {"mlflow_run_id": "t", "registered_version": "1"},
    )
    monkeypatch.setattr(
        evaluate,
        "run",
        lambda cfg: {"eval_run_id": cfg.tags["meerkat.variant"], "n": 1, "skipped": {}, "results": {}},
    )
    monkeypatch.setattr(ablate, "compare", lambda *a, **k: "| table |")
    out = ablate.run(_cfg("data=s3://b/plain", "variants=[full]", "data_variants={mix: s3://b/mix}"))
    assert trained == ["s3://b/plain/train", "s3://b/mix/train"]
    assert out["eval_runs"] == ["full", "mix"]
