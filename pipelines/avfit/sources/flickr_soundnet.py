"""Flickr-SoundNet sound-source test set (Senocak et al., CVPR 2018) -> ARIG samples (test only).

Layout under ``root`` (as the ``hche11``/``EZ-VSL``/``ACL-SSL`` loaders read it)::

    flickr_test.csv              <flickr_id>,<second column>; no header, CRLF
    Annotations/<flickr_id>.xml  the annotators' boxes
    frames/<flickr_id>.jpg       (or a folder frames/<flickr_id>/: the middle frame is used)
    audio/<flickr_id>.wav

The box XML is **documented, no real excerpt**: no public copy of any file could be read, so this
parser follows the loaders' code. Every grandchild of the root whose tag is ``bbox`` is one box;
inside it the first child is skipped and the next four are ``xmin, ymin, xmax, ymax`` in integer
pixels of a 256 x 256 frame (the loaders rescale them by 224/256 whatever the JPEG's size), so they
are normalised by 256, not by the image header. The benchmark scores against a consensus map, not
the union of the boxes: each ``bbox`` element is one annotator's vote, the votes' maps are summed,
halved and clipped to 1 (two annotators agreeing give 1, one gives 0.5). So the sample keeps them
apart: ``annotator_boxes`` holds one list per ``bbox`` element (what ``pipelines.evaluate`` scores
against, through ``meerkat_core.metrics``), ``boxes`` their flat list (training masks, mean IoU). The
answer is their per-coordinate median.

A box reaching outside the 256-pixel frame is clipped to it, not dropped: the loaders paint it into
the map with array slices, which stop at the frame's edge, so the vote still counts (dropping it would
turn a two-vote region into a one-vote one). A box with no area inside the frame, or a coordinate
that is not a finite number, is dropped and counted as ``bad_box``.

``flickr_test.csv`` exists in two variants under the same name: the ``hche11`` one (249 rows) has an
undocumented integer second column that no loader reads; the ``ACL-SSL`` one (250 rows) has a class
text (``child singing``), which is kept as ``label_text``. The 250-line ``test_list.txt``
(``<id>.png``) is not read: the CSV is what the published evaluations use.
"""

from __future__ import annotations

import math
import statistics
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import (
    Box,
    Sample,
    SampleWriter,
    check_split,
    clean_box,
    find_frame,
    media_present,
    read_rows,
    rng_for,
)

NAME = "flickr_soundnet"
SPLITS = ("test",)
FRAME_SIZE = 256  # pixels; the annotation frame, per the loaders' int(224 * v / 256)


def read_boxes(path: Path, stats: Counter) -> list[Box]:
    """The normalised boxes of one annotation XML, clipped to the frame; bad ones are dropped and counted."""
    boxes = []
    for child in ET.parse(path).getroot():
        for node in child:
            if node.tag != "bbox":
                continue
            values = [field.text for field in list(node)[1:5]]
            box = clean_box(values, stats, width=FRAME_SIZE, height=FRAME_SIZE, tolerance=math.inf)
            if box is not None:
                boxes.append(box)
    return boxes


def consensus_box(boxes: list[Box]) -> Box:
    """Per-coordinate median of the annotators' boxes."""
    return [statistics.median(box[i] for box in boxes) for i in range(4)]


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG samples of the Flickr-SoundNet test set; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    for row in read_rows(root / "flickr_test.csv"):
        flickr_id = row[0]
        label = row[1] if len(row) > 1 and not row[1].isdigit() else None
        image = find_frame(root / "frames", flickr_id)
        audio = root / "audio" / f"{flickr_id}.wav"
        annotation = root / "Annotations" / f"{flickr_id}.xml"
        if not media_present(stats, image, audio):
            continue
        if not annotation.is_file():
            stats["missing_annotation"] += 1
            continue
        boxes = read_boxes(annotation, stats)
        if not boxes:
            stats["no_box"] += 1
            continue
        fields = {} if label is None else {"label_text": label}
        sample = writer.arig(
            flickr_id,
            image,
            audio,
            boxes,
            rng_for(NAME, split, seed, flickr_id),
            answer_box=consensus_box(boxes),
            annotator_boxes=[[box] for box in boxes],
            **fields,
        )
        if sample is not None:
            yield sample
