"""A seeded procedural audio-visual world: coloured shapes that look and sound distinct.

Every scene is a 2-D picture of a few objects (a shape in a colour, one *class* each) on a textured
background, and a clip in which some of those objects sound at known times, perhaps with a sound
from an object that is not in the picture. Because every box and every time window is known
exactly, the scenes yield samples of all five MeerkatBench tasks (``pipelines/avfit/sample.py``
contract) with true ground truth and negatives that are wrong by construction, so the whole system
can be trained and measured end to end on one machine::

    from pipelines.avfit.world import WORLD_PRESETS, iter_samples
    for sample in iter_samples(WORLD_PRESETS["easy"], "train", n_scenes=100, seed=0):
        ...

The package, one concept a module, in the order a sample is made:

- :mod:`~pipelines.avfit.world.catalogue`: the object classes, how each looks and sounds;
- :mod:`~pipelines.avfit.world.config`: ``WorldConfig`` and the presets (``easy``, ``default``, ``hard``);
- :mod:`~pipelines.avfit.world.scene`: drawing a scene (objects, boxes, sound events) from a config;
- :mod:`~pipelines.avfit.world.render`: a scene's picture and clip;
- :mod:`~pipelines.avfit.world.tasks`: a scene's samples of each task, and ``iter_samples``;
- :mod:`~pipelines.avfit.world.baselines`: the scores of trivial answers on a split.
"""

from pipelines.avfit.world.baselines import baselines
from pipelines.avfit.world.catalogue import CLASS_CATALOGUE, SoundClass
from pipelines.avfit.world.config import WORLD_PRESETS, WorldConfig
from pipelines.avfit.world.render import render_audio, render_image, render_object_mask
from pipelines.avfit.world.scene import Scene, SceneObject, SoundEvent, generate_scene
from pipelines.avfit.world.tasks import SOURCE, caption_references, iter_samples, scene_samples

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
