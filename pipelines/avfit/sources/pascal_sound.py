"""PASCAL Sound: PASCAL VOC 2007 test images x VGGSound test clips -> ARIG samples (test only).

The paper pairs PASCAL images with audio of the same class through its lookup table (Sec. 4.2) and
evaluates on the result (Table 2: 0.56K test samples); the set itself is not public, so it is
rebuilt here with ``pairing_table.tsv``'s ``voc_class`` column. Layout under ``root``::

    VOCdevkit/VOC2007/ImageSets/Main/test.txt     image ids, one per line
    VOCdevkit/VOC2007/Annotations/<id>.xml        annotation/{filename, size, object*/{name, bndbox}}
    VOCdevkit/VOC2007/JPEGImages/<filename>
    vggsound/vggsound.csv, vggsound/audio/<ytid>_<start:06d>.wav   (see ``_pairing``)

VOC boxes are **1-based inclusive integer pixels** (xmin, ymin, xmax, ymax): pixel ``xmin`` covers
``[xmin - 1, xmin)`` in 0-based edges, so the box is ``[xmin - 1, ymin - 1, xmax, ymax]``, normalised
by the size read from the JPEG header (the XML's ``size`` is not trusted). One sample is made per
image and sounding VOC class present (all boxes of that class, answered with the largest), with a
VGGSound test clip of a matching label.

Objects flagged ``difficult`` are excluded, as the VOC evaluation excludes them from its scores:
they are neither the answer nor part of the ground truth, and a class present only as difficult
objects makes no sample. (VOC ignores a detection of a difficult object; a pixel map has no
"ignore", so a prediction on one counts as background here.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import (
    Box,
    Sample,
    SampleWriter,
    check_split,
    clean_box,
    image_size,
    media_present,
    rng_for,
)
from pipelines.avfit.sources._pairing import AudioPools, load_pairing_table, read_vggsound

NAME = "pascal_sound"
SPLITS = ("test",)


def read_objects(
    path: Path, stats: Counter | None = None
) -> tuple[str, dict[str, list[tuple[int, int, int, int]]]]:
    """``(filename, class -> [(xmin, ymin, xmax, ymax)])`` of one VOC annotation, VOC pixels.

    Objects marked ``<difficult>1</difficult>`` are left out (counted as ``difficult``).
    """
    root = ET.parse(path).getroot()
    objects: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    for node in root.iter("object"):
        if (node.findtext("difficult") or "0").strip() == "1":
            if stats is not None:
                stats["difficult"] += 1
            continue
        bndbox = node.find("bndbox")
        coords = tuple(int(float(bndbox.findtext(tag))) for tag in ("xmin", "ymin", "xmax", "ymax"))
        objects[node.findtext("name").strip()].append(coords)
    return root.findtext("filename").strip(), objects


def voc_box(coords: tuple[int, int, int, int], width: int, height: int, stats: Counter) -> Box | None:
    """1-based inclusive VOC pixels -> normalised edges, or None (counted) for a bad box."""
    xmin, ymin, xmax, ymax = coords
    return clean_box((xmin - 1, ymin - 1, xmax, ymax), stats, width=width, height=height)


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG samples of the VOC 2007 test images with a sounding class; skips are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    voc = root / "VOCdevkit" / "VOC2007"
    classes = {c.voc: c for c in load_pairing_table() if c.voc and c.vggsound_labels}
    clips = {
        clip: frozenset((label,))
        for clip, label in read_vggsound(root / "vggsound" / "vggsound.csv", "test").items()
    }
    pools = AudioPools(
        clips, list(classes.values()), lambda c: c.vggsound_labels, root / "vggsound" / "audio", stats
    )
    image_ids = (voc / "ImageSets" / "Main" / "test.txt").read_text(encoding="utf-8").split()
    for image_id in image_ids:
        annotation = voc / "Annotations" / f"{image_id}.xml"
        if not annotation.is_file():
            stats["missing_annotation"] += 1
            continue
        filename, objects = read_objects(annotation, stats)
        sounding = [name for name in objects if name in classes]
        image = voc / "JPEGImages" / filename
        if not sounding or not media_present(stats, image):
            continue
        width, height = image_size(image)
        for name in sounding:
            c = classes[name]
            boxes = [
                box for coords in objects[name] if (box := voc_box(coords, width, height, stats)) is not None
            ]
            if not boxes:
                stats["no_box"] += 1
                continue
            if not pools.has(c):
                stats["no_pair"] += 1
                continue
            record_id = f"{image_id}-{name}"
            rng = rng_for(NAME, split, seed, record_id)
            clip = pools.draw(c, rng)
            sample = writer.arig(
                record_id, image, pools.path(clip), boxes, rng, audio_id=clip, paired=True, label_text=name
            )
            if sample is not None:
                yield sample
