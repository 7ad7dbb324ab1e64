"""Example scenes for the demo page, so that a visitor without files of their own can try it.

They are held-out scenes: the first scenes of the procedural world's *test* split (the ``easy``
preset, seed 0), which training never reads (it reads the train split). Rendered with
:mod:`pipelines.avfit.world` the first time they are asked for and kept in memory; that import is
the ingress's only use of ``pipelines`` besides the model registry. Each example gives the files
and what the demo page fills in: the sounding object's name (for ``localize``) and, for
``factcheck``, its box and window written as a claim.
"""

from __future__ import annotations

import functools
from typing import Any

N_SCENES = 3
SEED = 0
_TYPES = {"jpg": "image/jpeg", "flac": "audio/flac"}


@functools.lru_cache(maxsize=1)
def scenes() -> tuple[dict[str, Any], ...]:
    """The example scenes: ``image`` (JPEG), ``audio`` (FLAC), ``object``, ``box``, ``window``."""
    from pipelines.avfit.world import WORLD_PRESETS, iter_samples

    found = []
    for sample in iter_samples(WORLD_PRESETS["easy"], "test", N_SCENES, SEED):
        meta = sample["json"]
        if meta["task"] != "arig":  # one sample per scene
            continue
        sounding = next(o for o in meta["objects"] if o["sounds"])
        event = next(e for e in meta["sound_events"] if e["class"] == sounding["class"])
        found.append(
            {
                "image": sample["image"],
                "audio": sample["audio"],
                "object": sounding["class"],
                "box": [round(v, 2) for v in sounding["box"]],
                "window": list(event["segment"]),
            }
        )
    return tuple(found)


def index() -> list[dict[str, Any]]:
    """What ``GET /examples`` lists: per scene its file URLs and the fields the page fills in."""
    return [
        {
            "id": f"scene-{i}",
            "image": f"/examples/scene-{i}.jpg",
            "audio": f"/examples/scene-{i}.flac",
            "object": scene["object"],
            "box": scene["box"],
            "window": scene["window"],
        }
        for i, scene in enumerate(scenes())
    ]


def file(name: str) -> tuple[bytes, str] | None:
    """The bytes and media type of ``scene-<i>.jpg`` or ``scene-<i>.flac``; None for anything else."""
    stem, _, extension = name.partition(".")
    prefix, _, number = stem.partition("-")
    if prefix != "scene" or extension not in _TYPES or not (number.isascii() and number.isdigit()):
        return None
    index = int(number)
    if index >= N_SCENES or index >= len(scenes()):
        return None
    return scenes()[index]["image" if extension == "jpg" else "audio"], _TYPES[extension]
