"""WorldConfig: worlds that cannot be drawn are refused when configured."""

from __future__ import annotations

import pytest

from pipelines.avfit.world import WorldConfig


@pytest.mark.parametrize(
    "change",
    [
        {"n_classes": 3},
        {"min_size": 0.6},
        {"max_events": 9},
        {"clip_seconds": 10.05},
        {"task_weights": {"x": 1}},
        {"fact_type_weights": (1, 1, 1)},
        {"fact_type_weights": (0, 0, 0, 0)},
        {"fact_type_weights": (1, -1, 1, 1)},
        {"fact_type_weights": (1, float("inf"), 1, 1)},
        {"fact_type_weights": {1: 1, 2: 1, 3: 1, 4: 1}},
        {"whose_negative_prob": 1.5},
    ],
)
def test_config_rejects_impossible_worlds(change):
    with pytest.raises(ValueError):
        WorldConfig(**{"max_objects": 3, **change})


def test_fact_type_weights_from_yaml_become_a_tuple_of_floats():
    assert WorldConfig(fact_type_weights=[1, 2, 1, 2]).fact_type_weights == (1.0, 2.0, 1.0, 2.0)
