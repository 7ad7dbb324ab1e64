"""The procedural audio-visual world (see :mod:`pipelines.avfit.world.tasks`)."""

from pipelines.avfit.world.tasks import (
    CLASS_CATALOGUE,
    SOURCE,
    WORLD_PRESETS,
    Scene,
    SceneObject,
    SoundClass,
    SoundEvent,
    WorldConfig,
    baselines,
    caption_references,
    generate_scene,
    iter_samples,
    render_audio,
    render_image,
    render_object_mask,
    scene_samples,
)

__all__ = [
    "CLASS_CATALOGUE",
    "SOURCE",
    "WORLD_PRESETS",
    "Scene",
    "SceneObject",
    "SoundClass",
    "SoundEvent",
    "WorldConfig",
    "baselines",
    "caption_references",
    "generate_scene",
    "iter_samples",
    "render_audio",
    "render_image",
    "render_object_mask",
    "scene_samples",
]
