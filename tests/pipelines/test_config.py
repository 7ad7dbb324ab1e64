"""Job configs: every shipped YAML loads, overrides are typed, unknown keys fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from meerkat_core.config import PRESETS, to_dict
from pipelines.config import CONFIG_DIR, apply_overrides, from_argv, load_config, read_yaml, resolve_model


def _job_config_class(path: Path):
    """The job config class a shipped YAML is for: by name (``avfit_*``, ``evaluate``, ``ablate``),
    else training."""
    from pipelines import ablate, build_avfit, evaluate, train

    if path.name.startswith("avfit"):
        return build_avfit.BuildConfig
    return {"evaluate": evaluate.EvaluateConfig, "ablate": ablate.AblateConfig}.get(
        path.stem, train.TrainJobConfig
    )


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cls = _job_config_class(path)
    assert cls is not None, f"no job config class for {path.name}"
    cfg = load_config(cls, path)
    assert to_dict(cfg)


def test_overrides_are_parsed_as_yaml_and_typed():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=true", "d.e=[1, 2]"])
    assert data == {"a": {"b": 2.5, "c": True}, "d": {"e": [1, 2]}}
    numbers = apply_overrides({}, ["a=1e-4", "b=-2E3", "c=1.5e+2", "d=1e", "e=v1e5", "f='1e-4'"])
    assert numbers == {"a": 1e-4, "b": -2000.0, "c": 150.0, "d": "1e", "e": "v1e5", "f": "1e-4"}
    with pytest.raises(ValueError):
        apply_overrides({}, ["no-equals-sign"])


def test_an_unknown_preset_fails():
    # from_dict's own errors (unknown and mistyped keys) are tested with the core: tests/core/test_config.py
    with pytest.raises(KeyError):
        resolve_model({"preset": "huge"})


def test_model_spec_merges_onto_the_preset():
    cfg = resolve_model({"preset": "tiny", "loss": {"lambda_ot": 0.0}})
    assert cfg.loss.lambda_ot == 0.0 and cfg.loss.lambda_ac == PRESETS["tiny"].loss.lambda_ac
    assert cfg.llm == PRESETS["tiny"].llm


def test_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: 2}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\na: {c: 3}\n")
    assert read_yaml(tmp_path / "child.yaml") == {"a": {"b": 1, "c": 3}}


def test_every_job_reads_its_command_line_the_same_way(tmp_path):
    """``[--config FILE] [a.b.c=value ...]``: the file, then the overrides in order, typed."""
    from pipelines import train

    (tmp_path / "job.yaml").write_text("base: " + str(CONFIG_DIR / "tiny.yaml") + "\nname: from-file\n")
    cfg = from_argv(
        train.TrainJobConfig,
        ["--config", str(tmp_path / "job.yaml"), "optim.lr=1e-4", "name=first", "name=second"],
        default_config=CONFIG_DIR / "paper.yaml",
    )
    assert cfg.name == "second" and cfg.optim.lr == 1e-4 and cfg.model["preset"] == "tiny"
    default = from_argv(train.TrainJobConfig, [], default_config=CONFIG_DIR / "paper.yaml")
    assert default.name == "meerkat-paper"
    assert from_argv(train.TrainJobConfig, ["seed=3"]).seed == 3  # no file: the dataclass defaults
    with pytest.raises(KeyError, match="optim.lr_typo"):
        from_argv(train.TrainJobConfig, ["optim.lr_typo=1"])
    with pytest.raises(TypeError):
        from_argv(train.TrainJobConfig, ["optim.max_steps=many"])
    with pytest.raises(ValueError, match="a.b.c=value"):
        from_argv(train.TrainJobConfig, ["max_steps"])
