"""The world's baselines: the scores of trivial answers, by meerkat_core.metrics' definitions."""

from __future__ import annotations

import pytest

from pipelines.avfit.world import baselines


def test_baselines_on_hand_made_samples():
    def arig(gt, boxes):
        return {
            "json": {"task": "arig", "split": "test", "boxes": [gt], "objects": [{"box": b} for b in boxes]}
        }

    def fact(label):
        return {"json": {"task": "avfact", "split": "test", "label": label}}

    top_left, bottom_right = [0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]
    result = baselines(
        [arig(top_left, [top_left, bottom_right]), arig(bottom_right, [bottom_right]), *map(fact, [1, 1, 0])]
    )
    assert result["arig_mean_box"] == pytest.approx([0.25, 0.25, 0.75, 0.75])
    # The mean box meets each quarter in a 0.25 x 0.25 square: 0.0625 / (0.25 + 0.25 - 0.0625) = 1/7.
    assert result["arig_mean_box_miou"] == pytest.approx(1 / 7)
    assert result["arig_random_object_miou"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["avfact_majority_acc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="per split"):
        baselines([arig(top_left, [top_left]), {"json": {**fact(True)["json"], "split": "val"}}])
