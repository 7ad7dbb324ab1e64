"""meerkat_core.config: presets, their round trip through plain values, typed updates, validation."""

from __future__ import annotations

import json

import pytest

from meerkat_core.config import PRESETS, LossConfig, ModelConfig, from_dict, replace_path, to_dict


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    preset = PRESETS[name]
    plain = json.loads(json.dumps(to_dict(preset)))  # tuples become lists, as in YAML and config.json
    assert from_dict(ModelConfig, plain) == preset


def test_unknown_keys_name_their_path():
    with pytest.raises(KeyError, match=r"loss\.lambda_typo"):
        from_dict(ModelConfig, {"loss": {"lambda_typo": 1.0}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"llm_image_pool": "two"}, "llm_image_pool: expected an integer"),
        ({"llm_image_pool": True}, "expected an integer"),  # a bool is not an int here
        ({"region_prompts": 1}, "expected true/false"),
        ({"loss": {"lambda_ot": "0.1"}}, "loss.lambda_ot: expected a number"),
        ({"audio": {"depths": 2}}, "audio.depths: expected a list"),
    ],
)
def test_wrong_types_name_their_path(data, message):
    with pytest.raises(TypeError, match=message):
        from_dict(ModelConfig, data)


def test_an_int_is_accepted_for_a_float():
    assert from_dict(LossConfig, {"lambda_ot": 1}).lambda_ot == 1.0


def test_replace_path_is_typed_validated_and_leaves_the_original():
    tiny = PRESETS["tiny"]
    changed = replace_path(tiny, "loss.number_label_sigma", 1.5)
    assert changed.loss.number_label_sigma == 1.5 and tiny.loss.number_label_sigma == 0.0
    assert changed.llm == tiny.llm
    with pytest.raises(KeyError, match="'nope' for LossConfig"):
        replace_path(tiny, "loss.nope", 1)
    with pytest.raises(TypeError):
        replace_path(tiny, "loss.lambda_ot", "high")
    with pytest.raises(ValueError, match="number_label_sigma must be >= 0"):
        replace_path(tiny, "loss.number_label_sigma", -1.0)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("base_dtype", "float8", "base_dtype must be one of"),
        ("loss.ot_solver", "greedy", "ot_solver must be"),
        ("loss.lambda_ac", -0.5, "loss weights must be >= 0"),
        ("audio.num_mel_bins", 60, "spec_size must be a multiple of num_mel_bins"),
        ("image.patch_size", 15, "not a multiple of patch_size"),
    ],
)
def test_invalid_values_are_refused_when_built(path, value, message):
    with pytest.raises(ValueError, match=message):
        replace_path(PRESETS["tiny"], path, value)
