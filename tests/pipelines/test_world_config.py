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
    ],
)
def test_config_rejects_impossible_worlds(change):
    with pytest.raises(ValueError):
        WorldConfig(**{"max_objects": 3, **change})
