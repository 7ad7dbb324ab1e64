"""pipelines.mixing: the task-mixing keep probabilities, the per-epoch draw, and the window-mix measure."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import mixing


def test_task_keep_probs_hand_case():
    probs = mixing.task_keep_probs({"arig": 100, "avqa": 50, "avc": 10}, {"arig": 1, "avqa": 1, "avc": 0})
    # rates 1/100, 1/50, 0: avqa is the scarcest per unit weight and is read in full
    assert probs == pytest.approx({"arig": 0.5, "avqa": 1.0, "avc": 0.0})
    assert mixing.task_keep_probs({"arig": 3}, {}) == {"arig": 1.0}
    with pytest.raises(ValueError):
        mixing.task_keep_probs({"arig": 3}, {"avc": 1.0})


def test_unit_hash_is_reproducible_and_uniform():
    draws = [mixing.unit_hash(0, 1, f"key-{i}") for i in range(4000)]
    assert draws == [mixing.unit_hash(0, 1, f"key-{i}") for i in range(4000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert abs(np.mean(draws) - 0.5) < 0.02
    assert mixing.unit_hash(0, 1, "key-0") != mixing.unit_hash(0, 2, "key-0")


def _batch(n: int) -> dict[str, np.ndarray]:
    tasks = np.asarray(["arig", "avc"] * (n // 2))
    return {"__key__": np.asarray([f"k{i}" for i in range(n)]), "task": tasks, "x": np.arange(n)}


def test_thin_batch_keeps_each_task_at_its_rate_and_draws_anew_each_epoch():
    batch = _batch(4000)
    keep = {"arig": 1.0, "avc": 0.25}
    first = mixing.thin_batch(batch, keep_probs=keep, seed=3, epoch=0)
    again = mixing.thin_batch(batch, keep_probs=keep, seed=3, epoch=0)
    second = mixing.thin_batch(batch, keep_probs=keep, seed=3, epoch=1)
    assert list(first["__key__"]) == list(again["__key__"])
    assert set(first["epoch"]) == {0} and set(second["epoch"]) == {1}
    assert np.sum(first["task"] == "arig") == 2000
    assert abs(np.sum(first["task"] == "avc") / 2000 - 0.25) < 0.04
    assert set(first["__key__"][first["task"] == "avc"]) != set(second["__key__"][second["task"] == "avc"])
    assert np.array_equal(first["x"], np.asarray([int(k[1:]) for k in first["__key__"]]))


def test_thin_batch_without_probabilities_keeps_all_and_drops_unlisted_tasks():
    batch = _batch(10)
    assert len(mixing.thin_batch(batch, keep_probs=None, seed=0, epoch=0)["__key__"]) == 10
    assert set(mixing.thin_batch(batch, keep_probs={"arig": 1.0}, seed=0, epoch=0)["task"]) == {"arig"}


def test_window_tvd_hand_case():
    assert mixing.window_tvd(list("aabb"), {"a": 1, "b": 1}, 2) == pytest.approx(0.5)
    assert mixing.window_tvd(list("abab"), {"a": 1, "b": 1}, 2) == pytest.approx(0.0)
    assert mixing.total_variation({"a": 3, "b": 1}, {"a": 0.5, "b": 0.5}) == pytest.approx(0.25)
