"""Helpers shared by the source converters: keys, seeded randomness, boxes, segments, media, samples.

Policies that every converter follows, decided here once:

- Randomness: every record gets its own ``random.Random`` seeded from the source, the split, the
  build seed and the record id (``rng_for``). The output therefore does not depend on the order in
  which records are read, and one record's instruction does not change when another is added.
- Boxes: a coordinate that is not finite or lies more than ``BOX_TOLERANCE`` outside [0, 1] after
  normalising marks the box as garbage (VGG-SS holds ``-2.88e16`` sentinels); anything else is
  clipped to [0, 1]. A box whose clipped extent is zero on either axis is
  degenerate. Garbage and degenerate boxes are dropped and counted under ``bad_box``. A source whose
  every box is one annotator's vote (Flickr-SoundNet) passes an infinite ``tolerance``: any finite
  box is clipped to the frame, as the benchmark's map does, and only a degenerate one is dropped.
- Segments: seconds, clipped to the clip duration; a segment that is not finite, starts before 0 or
  is empty after clipping is dropped and counted under ``bad_segment``. Overlapping or touching
  segments of one event class are merged.
- Media: a record whose image or audio file is missing is skipped and counted under
  ``missing_media``. A frame may be stored as ``<stem>.jpg`` / ``.png`` or as a folder ``<stem>/``
  of frames, of which the middle one (or the one at a requested time) is used.
- Keys: ``<source>-<record id>-<task>`` with every character outside ``[A-Za-z0-9_-]`` of the record
  id replaced by ``_``. A key produced twice (a duplicated record) is skipped and counted under
  ``duplicate``.
- Answers: ARIG answers with one box, the largest ground-truth box (the paper's model predicts one
  box; all boxes stay in ``boxes`` for the metric). IGATL answers list every merged segment of the
  event in time order, since a repeated event has several intervals and the metric scores them all.
"""

from __future__ import annotations

import csv
import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from meerkat_core.grounding import format_box, format_segment
from meerkat_core.prompts import render_instruction, verdict_text
from pipelines.avfit.sample import validate_key, validate_meta

Sample = dict[str, Any]
Box = list[float]
Segment = list[float]

# Normalised coordinates up to this far outside [0, 1] are annotation slop (a click on the border);
# further out they are garbage, not a box.
BOX_TOLERANCE = 0.05
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]")


def check_split(source: str, split: str, splits: Sequence[str]) -> None:
    """Raise ValueError naming the splits ``source`` offers when ``split`` is not one of them."""
    if split not in splits:
        raise ValueError(f"source {source!r} has no {split!r} split; it offers {tuple(splits)}")


def rng_for(source: str, split: str, seed: int, record_id: str) -> random.Random:
    """A generator seeded by the record alone (str seeds hash with SHA-512, stable across runs)."""
    return random.Random(f"{source}:{split}:{seed}:{record_id}")


def sanitise_id(raw: str) -> str:
    """``raw`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``."""
    return _UNSAFE_KEY_CHARS.sub("_", raw)


def clean_box(
    values: Sequence[Any],
    stats: Counter,
    *,
    width: float = 1.0,
    height: float = 1.0,
    tolerance: float = BOX_TOLERANCE,
) -> Box | None:
    """``[x1, y1, x2, y2]`` (pixels when ``width``/``height`` are given) -> normalised box, or None.

    None (counted as ``bad_box``) for a garbage or degenerate box: a coordinate further than
    ``tolerance`` outside [0, 1] is garbage; see the module docstring.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except (TypeError, ValueError):
        stats["bad_box"] += 1
        return None
    box = [x1 / width, y1 / height, x2 / width, y2 / height]
    if not all(math.isfinite(v) and -tolerance <= v <= 1.0 + tolerance for v in box):
        stats["bad_box"] += 1
        return None
    box = [min(1.0, max(0.0, v)) for v in box]
    if box[2] <= box[0] or box[3] <= box[1]:
        stats["bad_box"] += 1
        return None
    return box


def box_area(box: Sequence[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def largest_box(boxes: Sequence[Box]) -> Box:
    """The box of largest area; the first one among equals."""
    return max(boxes, key=box_area)


def clean_segment(start: Any, end: Any, duration: float, stats: Counter) -> Segment | None:
    """``[start, end]`` seconds clipped to ``[0, duration]``, or None (counted as ``bad_segment``)."""
    try:
        t0, t1 = float(start), float(end)
    except (TypeError, ValueError):
        stats["bad_segment"] += 1
        return None
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 < 0:
        stats["bad_segment"] += 1
        return None
    t1 = min(t1, duration)
    if t1 <= t0:
        stats["bad_segment"] += 1
        return None
    return [t0, t1]


def merge_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Sorted union of ``segments``; overlapping and touching segments become one."""
    merged: list[Segment] = []
    for start, end in sorted(segments):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` read from the image header (PIL decodes no pixels for this)."""
    with Image.open(path) as image:
        return image.size


def find_frame(base: Path, stem: str, *, at: float | None = None) -> Path | None:
    """The frame stored for ``stem`` under ``base``, or None when there is none.

    ``base/<stem>.jpg`` (or ``.jpeg``/``.png``) is a frame already chosen; a folder ``base/<stem>/``
    holds a clip's frames in time order, and the frame at fraction ``at`` of the clip is taken
    (the middle one when ``at`` is None).
    """
    for suffix in _IMAGE_SUFFIXES:
        path = base / f"{stem}{suffix}"
        if path.is_file():
            return path
    folder = base / stem
    if not folder.is_dir():
        return None
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not frames:
        return None
    fraction = 0.5 if at is None else min(max(at, 0.0), 1.0)
    return frames[min(int(fraction * len(frames)), len(frames) - 1)]


def media_present(stats: Counter, *paths: Path | None) -> bool:
    """True when every path is an existing file; otherwise count ``missing_media`` and say False."""
    if all(path is not None and path.is_file() for path in paths):
        return True
    stats["missing_media"] += 1
    return False


def read_rows(path: Path, *, delimiter: str = ",", skipinitialspace: bool = False) -> Iterator[list[str]]:
    """CSV/TSV rows of ``path``; CR, LF and CRLF line ends alike, blank lines skipped."""
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.reader(stream, delimiter=delimiter, skipinitialspace=skipinitialspace):
            if row and any(cell.strip() for cell in row):
                yield [cell.strip() for cell in row]


class SampleWriter:
    """Builds validated samples of one source and split, dropping duplicated keys.

    ``make`` assembles ``{"__key__", "image", "audio", "json"}``: the key from the record id and the
    task, the metadata from ``task``, ``source``, ``split`` and the given fields, then checks both
    against the sample contract so that a converter bug fails at once rather than in a shard.
    """

    def __init__(self, source: str, split: str, stats: Counter) -> None:
        self.source = source
        self.split = split
        self.stats = stats
        self._keys: set[str] = set()

    def make(self, record_id: str, image: Path, audio: Path, task: str, **fields: Any) -> Sample | None:
        """The sample, or None (counted as ``duplicate``) when its key was made before."""
        key = validate_key(f"{self.source}-{sanitise_id(record_id)}-{task}")
        if key in self._keys:
            self.stats["duplicate"] += 1
            return None
        self._keys.add(key)
        meta = validate_meta({"task": task, "source": self.source, "split": self.split, **fields})
        return {"__key__": key, "image": image, "audio": audio, "json": meta}

    def arig(
        self,
        record_id: str,
        image: Path,
        audio: Path,
        boxes: list[Box],
        rng: random.Random,
        *,
        answer_box: Box | None = None,
        **fields: Any,
    ) -> Sample | None:
        """An ARIG sample answering with ``answer_box``, by default the largest of ``boxes``."""
        return self.make(
            record_id,
            image,
            audio,
            "arig",
            instruction=render_instruction("arig", rng),
            answer=format_box(largest_box(boxes) if answer_box is None else answer_box),
            boxes=boxes,
            **fields,
        )

    def igatl(
        self,
        record_id: str,
        image: Path,
        audio: Path,
        obj: str,
        segments: list[Segment],
        duration: float,
        rng: random.Random,
        **fields: Any,
    ) -> Sample | None:
        """An IGATL sample asking when ``obj`` sounds; the answer lists every segment in order."""
        return self.make(
            record_id,
            image,
            audio,
            "igatl",
            instruction=render_instruction("igatl", rng, obj=obj),
            answer=", ".join(format_segment(seg) for seg in segments),
            segments=segments,
            duration=duration,
            **fields,
        )

    def avfact(
        self,
        record_id: str,
        image: Path,
        audio: Path,
        fact_type: int,
        label: bool,
        rng: random.Random,
        *,
        statement: dict[str, Any],
        **fields: Any,
    ) -> Sample | None:
        """A fact-check sample of ``fact_type`` whose statement is filled from ``statement``.

        ``statement`` holds the template fields (``obj``, ``box``, ``segment``); its box and segment
        are also stored as ``boxes`` and ``segments``, as the contract asks of fact-checks.
        """
        if "box" in statement:
            fields["boxes"] = [statement["box"]]
        if "segment" in statement:
            fields["segments"] = [statement["segment"]]
        return self.make(
            record_id,
            image,
            audio,
            "avfact",
            instruction=render_instruction("avfact", rng, fact_type=fact_type, **statement),
            answer=verdict_text(label),
            fact_type=fact_type,
            label=label,
            **fields,
        )
