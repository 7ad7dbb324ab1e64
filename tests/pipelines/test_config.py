"""Job configs: every shipped YAML loads, overrides are typed, unknown keys fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from meerkat_core.config import PRESETS, ModelConfig, from_dict, to_dict
from pipelines.config import CONFIG_DIR, apply_overrides, load_config, read_yaml, resolve_model


def _job_config_class(path: Path):
    from pipelines import build_avfit

    classes = {"avfit": build_avfit.BuildConfig}
    try:
        from pipelines import train

        classes["train"] = train.TrainJobConfig
    except ImportError:
        pass
    kind = "avfit" if path.name.startswith("avfit") else "train"
    return classes.get(kind)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cls = _job_config_class(path)
    assert cls is not None, f"no job config class for {path.name}"
    cfg = load_config(cls, path)
    assert to_dict(cfg)


def test_overrides_are_parsed_as_yaml_and_typed():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=true", "d.e=[1, 2]"])
    assert data == {"a": {"b": 2.5, "c": True}, "d": {"e": [1, 2]}}
    with pytest.raises(ValueError):
        apply_overrides({}, ["no-equals-sign"])


def test_unknown_or_mistyped_keys_fail():
    with pytest.raises(KeyError, match="lr_typo"):
        from_dict(ModelConfig, {"lr_typo": 1})
    with pytest.raises(TypeError):
        from_dict(ModelConfig, {"llm_image_pool": "two"})
    with pytest.raises(KeyError):
        resolve_model({"preset": "huge"})


def test_model_spec_merges_onto_the_preset():
    cfg = resolve_model({"preset": "tiny", "loss": {"lambda_ot": 0.0}})
    assert cfg.loss.lambda_ot == 0.0 and cfg.loss.lambda_ac == PRESETS["tiny"].loss.lambda_ac
    assert cfg.llm == PRESETS["tiny"].llm
    assert from_dict(ModelConfig, to_dict(PRESETS["paper"])) == PRESETS["paper"]


def test_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("a: {b: 1, c: 2}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\na: {c: 3}\n")
    assert read_yaml(tmp_path / "child.yaml") == {"a": {"b": 1, "c": 3}}
