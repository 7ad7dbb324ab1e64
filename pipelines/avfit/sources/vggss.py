"""VGG-SS (Chen et al., CVPR 2021) -> ARIG samples (test only, paper Table 2).

Layout under ``root`` (the files of ``hche11/Localizing-Visual-Sounds-the-Hard-Way`` ``metadata/``
and the extracted VGGSound media, as its loaders expect)::

    vggss.json        one-line JSON array of {"file", "class", "bbox": [[x_min, y_min, x_max, y_max], ...]}
    vggss_test.csv    the test clip ids, one per line, CRLF
    frames/<file>.jpg the annotated frame (or a folder frames/<file>/ of frames: the middle one is used)
    audio/<file>.wav  the 10-s clip

Boxes are already normalised to [0, 1] in ``[x_min, y_min, x_max, y_max]`` order. Quirks handled:
integer coordinates (``0``, ``1``), long float reprs, degenerate boxes (zero width or height) and the
``-2.8823037615171176e+16`` garbage sentinel, which are dropped and counted (``bad_box``); a record
left without a box is skipped (``no_box``). Records not listed in ``vggss_test.csv`` are counted
under ``not_in_split``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pipelines.avfit.sources._common import (
    Sample,
    SampleWriter,
    check_split,
    clean_box,
    find_frame,
    media_present,
    read_rows,
    rng_for,
)

NAME = "vggss"
SPLITS = ("test",)


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG samples of the VGG-SS test set; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    test_ids = {row[0] for row in read_rows(root / "vggss_test.csv")}
    with open(root / "vggss.json", encoding="utf-8") as stream:
        records = json.load(stream)
    for record in records:
        clip = record["file"]
        if clip not in test_ids:
            stats["not_in_split"] += 1
            continue
        image = find_frame(root / "frames", clip)
        audio = root / "audio" / f"{clip}.wav"
        if not media_present(stats, image, audio):
            continue
        boxes = [box for raw in record["bbox"] if (box := clean_box(raw, stats)) is not None]
        if not boxes:
            stats["no_box"] += 1
            continue
        sample = writer.arig(
            clip, image, audio, boxes, rng_for(NAME, split, seed, clip), label_text=record["class"]
        )
        if sample is not None:
            yield sample
