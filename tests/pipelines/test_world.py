"""Tests of the procedural audio-visual world: determinism, exact ground truth, real negatives."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import numpy as np
import pytest
import soundfile as sf

from meerkat_core.grounding import box_iou, format_box, format_segment
from pipelines.avfit.sample import TASKS, validate_key, validate_meta
from pipelines.avfit.world import (
    CLASS_CATALOGUE,
    WORLD_PRESETS,
    WorldConfig,
    baselines,
    generate_scene,
    iter_samples,
    render_audio,
    render_image,
    render_object_mask,
)

SR = 16000
N_SCENES = 24


def _cfg(preset: str) -> WorldConfig:
    return dataclasses.replace(WORLD_PRESETS[preset], sample_rate=SR)


def _scenes(preset: str, n: int = 6):
    return [generate_scene(np.random.default_rng([i, 3]), _cfg(preset)) for i in range(n)]


def _frozen(samples: list[dict]) -> list[tuple]:
    return [(s["__key__"], s["image"], s["audio"], json.dumps(s["json"], sort_keys=True)) for s in samples]


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return list(iter_samples(_cfg("default"), "train", N_SCENES, seed=0))


def _overlaps(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _events_of(meta: dict, name: str) -> list[list[float]]:
    index = [o["class"] for o in meta["objects"]].index(name)
    return [e["segment"] for e in meta["sound_events"] if e["object"] == index]


def test_same_seed_same_bytes_and_different_seed_differs(samples):
    again = list(iter_samples(_cfg("default"), "train", N_SCENES, seed=0))
    assert _frozen(again) == _frozen(samples)
    other = list(iter_samples(_cfg("default"), "train", 2, seed=1))
    assert other[0]["image"] != samples[0]["image"]
    assert other[0]["audio"] != samples[0]["audio"]


def test_a_scene_does_not_depend_on_how_many_are_generated_or_on_other_splits(samples):
    fewer = list(iter_samples(_cfg("default"), "train", 3, seed=0))
    assert _frozen(fewer) == _frozen(samples[: len(fewer)])
    val = next(iter_samples(_cfg("default"), "val", 1, seed=0))
    assert val["image"] != samples[0]["image"]
    assert val["__key__"].startswith("world-val-000000-")


@pytest.mark.parametrize("preset", sorted(WORLD_PRESETS))
def test_boxes_are_tight_around_the_drawn_pixels(preset):
    for scene in _scenes(preset):
        size = scene.config.image_size
        pixels = np.asarray(render_image(scene))
        masks = [render_object_mask(scene, i) for i in range(len(scene.objects))]
        for i, (obj, mask) in enumerate(zip(scene.objects, masks, strict=True)):
            ys, xs = np.nonzero(mask)
            drawn = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert np.abs(np.array(obj.box) * size - drawn).max() <= 1.0
            visible = mask & ~np.any(masks[i + 1 :], axis=0) if i + 1 < len(masks) else mask
            assert visible.sum() > 0.5 * mask.sum()
            assert np.all(pixels[visible] == CLASS_CATALOGUE[obj.cls].rgb)
        if not scene.config.allow_overlap:
            assert np.sum(masks, axis=0).max() == 1


def _frame_rms(wave: np.ndarray, frame: int) -> np.ndarray:
    n = len(wave) // frame
    return np.sqrt(np.mean(wave[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))


@pytest.mark.parametrize("preset", sorted(WORLD_PRESETS))
def test_event_windows_match_the_audio_energy(preset):
    # 50 ms frames: band noise (the "noisy" timbre) has deep envelope dips over shorter spans.
    frame_s, margin = 0.05, 0.03  # the fades are 20 ms
    for scene in _scenes(preset):
        starts = np.arange(round(scene.config.clip_seconds / frame_s)) * frame_s  # [frames], s
        for i in range(len(scene.objects)):
            rms = _frame_rms(render_audio(scene, scene.events_of(i), noise=False), round(frame_s * SR))
            inside = np.zeros(len(rms), bool)
            touched = np.zeros(len(rms), bool)
            for event in scene.events_of(i):
                inside |= (starts >= event.start + margin) & (starts + frame_s <= event.end - margin)
                touched |= (starts + frame_s > event.start) & (starts < event.end)
            assert np.all(rms[inside] > 0.01)
            assert np.all(rms[~touched] == 0.0)
            assert inside.any() == bool(scene.events_of(i))


def test_sample_audio_is_loud_inside_the_answer_window(samples):
    for sample in (s for s in samples if s["json"]["task"] == "igatl"):
        wave, sr = sf.read(io.BytesIO(sample["audio"]), dtype="float32")
        meta = sample["json"]
        start, end = meta["segments"][0]
        assert meta["answer"] == ", ".join(format_segment(seg) for seg in meta["segments"])
        silent = np.ones(len(wave), bool)
        for event in meta["sound_events"]:
            silent[round(event["segment"][0] * sr) : round(event["segment"][1] * sr)] = False
        inside = wave[round(start * sr) : round(end * sr)]
        assert np.mean(inside**2) > 4 * np.mean(wave[silent] ** 2)


def test_all_tasks_fact_types_labels_and_qa_categories_present(samples):
    metas = [s["json"] for s in samples]
    assert {m["task"] for m in metas} == set(TASKS)
    facts = {(m["fact_type"], m["label"]) for m in metas if m["task"] == "avfact"}
    assert facts == {(t, label) for t in (1, 2, 3, 4) for label in (True, False)}
    categories = {m["qa_category"] for m in metas if m["task"] == "avqa"}
    assert categories == {"Existential", "Temporal", "Localisation", "Count"}


def test_every_sample_meets_the_contract_with_unique_keys(samples):
    keys = [validate_key(s["__key__"]) for s in samples]
    assert len(set(keys)) == len(keys)
    for sample in samples:
        meta = validate_meta(sample["json"])
        assert re.fullmatch(rf"world-train-\d{{6}}-{meta['task']}-\d+", sample["__key__"])
        assert meta["source"] == "world" and meta["duration"] == 10.0
        assert sample["image"][:2] == b"\xff\xd8" and sample["audio"][:4] == b"fLaC"
        if meta["task"] == "avc":
            assert len(set(meta["references"])) >= 3 and meta["answer"] in meta["references"]


def test_arig_and_igatl_answers_are_the_sounding_object(samples):
    for meta in (s["json"] for s in samples):
        sounding = [o for o in meta["objects"] if o["sounds"]]
        if meta["task"] == "arig":
            assert len(sounding) == 1
            assert meta["boxes"] == [sounding[0]["box"]]
            assert meta["answer"] == format_box(sounding[0]["box"])
        if meta["task"] == "igatl":
            assert meta["segments"] == _events_of(meta, meta["label_text"][0])


def test_fact_check_statements_are_really_true_or_false(samples):
    checked = 0
    for meta in (s["json"] for s in samples if s["json"]["task"] == "avfact"):
        sounding = [(i, o) for i, o in enumerate(meta["objects"]) if o["sounds"]]
        label, kind = meta["label"], meta["fact_type"]
        assert meta["answer"] == ("True" if label else "False")
        if kind == 1:
            best = max(box_iou(meta["boxes"][0], o["box"]) for _, o in sounding)
            assert best == 1.0 if label else best < 0.5
        elif kind == 2:
            events = _events_of(meta, meta["label_text"][0])
            window = meta["segments"][0]
            if label:
                assert window in events
            else:
                assert not any(_overlaps(window, e) for e in events)
        elif kind == 3:
            window, box = meta["segments"][0], meta["boxes"][0]
            holds = any(
                box_iou(box, o["box"]) >= 0.5
                and any(_overlaps(window, e) for e in _events_of(meta, o["class"]))
                for _, o in sounding
            )
            assert holds == label
        else:
            on_screen = {o["class"] for o in meta["objects"]}
            heard = {e["class"] for e in meta["sound_events"]}
            assert meta["paired"] == label
            assert bool(heard & on_screen) == label
        checked += 1
    assert checked >= 20


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
