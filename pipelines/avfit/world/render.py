"""Rendering a scene: its RGB picture (the objects in their colours on a seeded texture) and its mono
clip (each event in its class's timbre and pulse, over white noise at the config's ``snr_db``).

Everything is seeded by the scene (background and noise seeds, one seed per event for band noise),
so a scene renders to the same pixels and samples every time, and an event sounds the same alone
or mixed with others (which the tests use to check the event windows against the audio energy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from pipelines.avfit.world.catalogue import CLASS_CATALOGUE

if TYPE_CHECKING:
    from pipelines.avfit.world.scene import Scene, SoundEvent


# Nominal RMS of one sound event; the background noise level is set against it by ``snr_db``.
_EVENT_RMS = 0.1
_FADE_S = 0.02
# The pulse dips the level to 30%, never to silence, so an event is audible over its whole window.
_PULSE_DEPTH = 0.7
# Harmonics stop below this fraction of the sample rate so that nothing aliases.
_MAX_PARTIAL = 0.45
_COARSE_GRID = 8


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, left: int, top: int, side: int) -> None:
    x0, y0, x1, y1 = left, top, left + side - 1, top + side - 1
    cx, cy, radius = (x0 + x1) / 2, (y0 + y1) / 2, (side - 1) / 2
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else 0.45 * radius
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        half = side / 6
        draw.rectangle((x0, cy - half, x1, cy + half), fill=255)
        draw.rectangle((cx - half, y0, cx + half, y1), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def shape_mask(shape: str, left: int, top: int, side: int, size: int) -> Image.Image:
    """A ``size`` x ``size`` L-mode mask, 255 on ``shape`` drawn in the square (left, top, side);
    a scene's boxes are read off it (:func:`pipelines.avfit.world.scene.generate_scene`)."""
    mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(mask), shape, left, top, side)
    return mask


def render_object_mask(scene: Scene, index: int) -> np.ndarray:
    """Bool [H, W]: the pixels of object ``index`` drawn alone (occlusion ignored)."""
    obj = scene.objects[index]
    mask = shape_mask(CLASS_CATALOGUE[obj.cls].shape, obj.left, obj.top, obj.side, scene.config.image_size)
    return np.asarray(mask) > 0


def _background(scene: Scene) -> np.ndarray:
    """Float [H, W, 3] in 0..255: a muted base colour with smooth and fine seeded noise."""
    cfg = scene.config
    rng = np.random.default_rng(scene.background_seed)
    size = cfg.image_size
    # Grey-ish bases keep the saturated object colours the most salient thing in the picture.
    base = rng.uniform(80.0, 170.0) + rng.uniform(-15.0, 15.0, size=3)  # [3]
    coarse = rng.standard_normal((_COARSE_GRID, _COARSE_GRID, 3)).astype(np.float32)
    smooth = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(coarse[:, :, c])).resize(
                    (size, size), Image.Resampling.BICUBIC
                )
            )
            for c in range(3)
        ],
        axis=-1,
    )  # [H, W, 3]
    fine = rng.standard_normal((size, size, 3))  # [H, W, 3]
    return base + 255.0 * cfg.background_noise * (smooth + 0.5 * fine)


def render_image(scene: Scene) -> Image.Image:
    """The RGB picture: textured background, then the objects in order (later ones on top)."""
    pixels = _background(scene)  # [H, W, 3]
    for i, obj in enumerate(scene.objects):
        pixels[render_object_mask(scene, i)] = CLASS_CATALOGUE[obj.cls].rgb
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _event_wave(event: SoundEvent, sample_rate: int) -> np.ndarray:
    """Float64 [n]: one event of its class at ``_EVENT_RMS``, pulsed, with raised-cosine fades."""
    spec = CLASS_CATALOGUE[event.cls]
    n = round(event.end * sample_rate) - round(event.start * sample_rate)
    t = np.arange(n) / sample_rate  # [n]
    if spec.timbre == "noisy":
        spectrum = np.fft.rfft(np.random.default_rng(event.seed).standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        spectrum[(freqs < spec.f0 / 1.25) | (freqs > spec.f0 * 1.25)] = 0.0
        wave = np.fft.irfft(spectrum, n)
    else:
        harmonics = {"pure": [1], "hollow": [1, 3, 5, 7, 9], "bright": list(range(1, 9))}[spec.timbre]
        wave = np.zeros(n)
        for k in harmonics:
            if k * spec.f0 < _MAX_PARTIAL * sample_rate:
                wave += np.sin(2 * np.pi * k * spec.f0 * t) / k
    wave *= _EVENT_RMS / np.sqrt(np.mean(wave**2))
    if spec.pulse_hz > 0:
        wave *= 1.0 - _PULSE_DEPTH * (0.5 - 0.5 * np.cos(2 * np.pi * spec.pulse_hz * t))
    fade = min(round(_FADE_S * sample_rate), n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)  # [fade]
    wave[:fade] *= ramp
    wave[n - fade :] *= ramp[::-1]
    return wave


def render_audio(
    scene: Scene, events: Sequence[SoundEvent] | None = None, *, noise: bool = True
) -> np.ndarray:
    """Float32 [clip_seconds * sample_rate] mono in [-1, 1]: ``events`` (default the scene's) over
    white noise at ``snr_db`` below one event's level (none when ``noise`` is False)."""
    cfg = scene.config
    n = round(cfg.clip_seconds * cfg.sample_rate)
    audio = np.zeros(n)
    if noise and math.isfinite(cfg.snr_db):
        level = _EVENT_RMS / 10 ** (cfg.snr_db / 20)
        audio += level * np.random.default_rng(scene.noise_seed).standard_normal(n)
    for event in scene.events if events is None else events:
        start = round(event.start * cfg.sample_rate)
        wave = _event_wave(event, cfg.sample_rate)
        audio[start : start + len(wave)] += wave
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
