"""Scenes of the procedural world: boxes tight around the drawn objects, objects mostly visible."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines.avfit.world import (
    CLASS_CATALOGUE,
    WORLD_PRESETS,
    generate_scene,
    render_image,
    render_object_mask,
)


def _scenes(preset: str, n: int = 6):
    cfg = dataclasses.replace(WORLD_PRESETS[preset], sample_rate=16000)
    return [generate_scene(np.random.default_rng([i, 3]), cfg) for i in range(n)]


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
