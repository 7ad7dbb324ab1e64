"""Rendering the procedural world: every event sounds inside its window and nowhere else."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.avfit.world import WORLD_PRESETS, generate_scene, render_audio

SR = 16000


def _scenes(preset: str, n: int = 6):
    cfg = dataclasses.replace(WORLD_PRESETS[preset], sample_rate=SR)
    return [generate_scene(np.random.default_rng([i, 3]), cfg) for i in range(n)]


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
