"""Semi-automatic image-audio pairing (MEERKAT Sec. 4.2): the lookup table and the readers it joins.

An image with a box of class C (Open Images, PASCAL VOC) is paired with an audio clip that carries a
label of C in ``pairing_table.tsv`` (AudioSet MIDs, VGGSound labels). This module reads the table,
the Open Images box files, the AudioSet segment lists and ``vggsound.csv``, and draws partners.

Layout shared by the pairing sources (one ``root`` can serve all of them)::

    openimages/oidv6-train-annotations-bbox.csv    V6, 21 columns (or train-annotations-bbox.csv, V4/V5)
    openimages/validation-annotations-bbox.csv     13 columns
    openimages/test-annotations-bbox.csv           13 columns
    openimages/{train,validation,test}/<ImageID>.jpg
    audioset/balanced_train_segments.csv, audioset/unbalanced_train_segments.csv, audioset/eval_segments.csv
    audioset/audioset_train_strong.tsv, audioset/audioset_eval_strong.tsv
    audioset/audio/<ytid>_<start ms>.wav           (the strong labels' segment_id, e.g. M6XLGqoquxI_0)
    vggsound/vggsound.csv
    vggsound/audio/<ytid>_<start:06d>.wav          (the VGG-SS / AVQA clip id)

Open Images boxes are read by column name, so the V6 and V4/V5 layouts both work; they are
normalised in the order **XMin, XMax, YMin, YMax** and reordered to ``[x1, y1, x2, y2]``. Boxes
flagged ``IsDepiction=1`` (drawings, toys, statues) cannot make the sound and are dropped
(``depiction``); ``-1`` (unknown) is kept. A box flagged ``IsGroupOf=1`` spans a group of objects
(a crowd, a row of cars): as in the Open Images evaluation, where a detection inside a group box is
not a false positive, it stays in the ground truth (``boxes``), but it is never the answer or the
box a statement names, which point at one object (``BoxedImage.single``); a class an image shows
only as groups gives no record there (``group_only``). AudioSet segment CSVs have three ``#`` lines, a comma-plus-space separator and
quoted, comma-joined labels. Candidates whose media file is missing are left out of the pools and
counted once each under ``missing_media``; a record for which no partner is left is counted under
``no_pair``.
"""

from __future__ import annotations

import csv
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.avfit.sources._common import Box, clean_box, largest_box, read_rows, sanitise_id

PAIRING_TABLE = Path(__file__).resolve().parent.parent / "pairing_table.tsv"

_OPENIMAGES_FILES = {
    "train": ("oidv6-train-annotations-bbox.csv", "train-annotations-bbox.csv"),
    "val": ("validation-annotations-bbox.csv",),
    "test": ("test-annotations-bbox.csv",),
}
_OPENIMAGES_DIRS = {"train": "train", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class PairClass:
    """One row of the lookup table: an image class and the audio labels that sound like it."""

    mid: str
    name: str
    voc: str | None
    audioset_mids: frozenset[str]
    vggsound_labels: frozenset[str]

    @property
    def obj(self) -> str:
        """The object word used in instructions (``"sea lion"``)."""
        return self.name.lower()

    @property
    def slug(self) -> str:
        """The class as a key-safe word (``"sea_lion"``)."""
        return sanitise_id(self.obj)


@dataclass(frozen=True)
class BoxedImage:
    """An image and the normalised boxes of one class in it.

    ``boxes`` are all of them (the ground truth's extent); ``single`` those not flagged
    ``IsGroupOf``, one object each, which an answer or a statement may name. ``shown`` holds the MIDs
    of every class read whose objects the image shows (this one included, groups included,
    depictions not): a clip of any of them has a visible source in this image.
    """

    image_id: str
    path: Path
    boxes: tuple[Box, ...]
    single: tuple[Box, ...]
    shown: frozenset[str]

    @property
    def answer_box(self) -> Box:
        """The largest single-object box: what "where is the sound source?" is answered with."""
        return largest_box(self.single)


def _cell(value: str) -> frozenset[str]:
    return frozenset(part for part in value.split("|") if part)


def load_pairing_table(path: Path = PAIRING_TABLE) -> tuple[PairClass, ...]:
    """The rows of the lookup table, in file order."""
    with open(path, newline="", encoding="utf-8") as stream:
        lines = [line for line in stream if not line.startswith("#")]
    classes = []
    for row in csv.DictReader(lines, delimiter="\t"):
        classes.append(
            PairClass(
                mid=row["openimages_mid"],
                name=row["openimages_name"],
                voc=row["voc_class"] or None,
                audioset_mids=_cell(row["audioset_mids"]),
                vggsound_labels=_cell(row["vggsound_labels"]),
            )
        )
    return tuple(classes)


def read_openimages(
    root: Path, split: str, classes: Sequence[PairClass], stats: Counter
) -> dict[str, list[BoxedImage]]:
    """Class MID -> images (sorted by id) holding boxes of that class whose image file exists.

    ``BoxedImage.shown`` lists the classes of ``classes`` an image shows: a row names its class as
    present even when its box is garbage, so such rows count there too; depictions do not.
    """
    base = root / "openimages"
    path = next((base / name for name in _OPENIMAGES_FILES[split] if (base / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"none of {_OPENIMAGES_FILES[split]} under {base}")
    wanted = {c.mid for c in classes}
    boxes: dict[tuple[str, str], list[tuple[Box, bool]]] = defaultdict(list)  # (box, is group)
    shown: dict[str, set[str]] = defaultdict(set)  # image id -> class MIDs
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            if row["LabelName"] not in wanted:
                continue
            if row["IsDepiction"] == "1":
                stats["depiction"] += 1
                continue
            shown[row["ImageID"]].add(row["LabelName"])
            box = clean_box((row["XMin"], row["YMin"], row["XMax"], row["YMax"]), stats)
            if box is not None:
                boxes[(row["ImageID"], row["LabelName"])].append((box, row["IsGroupOf"] == "1"))
    image_dir = base / _OPENIMAGES_DIRS[split]
    present: dict[str, bool] = {}
    pools: dict[str, list[BoxedImage]] = defaultdict(list)
    for image_id, mid in sorted(boxes):
        found = boxes[(image_id, mid)]
        single = tuple(box for box, group in found if not group)
        if not single:
            stats["group_only"] += 1
            continue
        if image_id not in present:
            present[image_id] = (image_dir / f"{image_id}.jpg").is_file()
            stats["missing_media"] += not present[image_id]
        if present[image_id]:
            path_ = image_dir / f"{image_id}.jpg"
            all_boxes = tuple(box for box, _ in found)
            pools[mid].append(BoxedImage(image_id, path_, all_boxes, single, frozenset(shown[image_id])))
    return pools


def audioset_clip_id(ytid: str, start_seconds: str) -> str:
    """``<ytid>_<start ms>``, the strong labels' ``segment_id`` of a weak-label row."""
    return f"{ytid}_{round(float(start_seconds) * 1000)}"


def read_audioset_segments(paths: Iterable[Path]) -> dict[str, frozenset[str]]:
    """Clip id -> positive label MIDs of AudioSet weak-label segment CSVs."""
    clips: dict[str, frozenset[str]] = {}
    for path in paths:
        for row in read_rows(path, skipinitialspace=True):
            if row[0].startswith("#"):
                continue
            ytid, start, _end, labels = row
            clips[audioset_clip_id(ytid, start)] = frozenset(labels.split(","))
    return clips


def read_vggsound(path: Path, split: str) -> dict[str, str]:
    """Clip id ``<ytid>_<start:06d>`` -> label of the ``vggsound.csv`` rows of ``split``."""
    return {
        f"{ytid}_{int(start):06d}": label
        for ytid, start, label, clip_split in read_rows(path)
        if clip_split == split
    }


def pairing_coverage(
    box_labels: Iterable[str], clip_labels: Iterable[frozenset[str]], classes: Sequence[PairClass]
) -> dict[str, float]:
    """How much of a label excerpt the table can pair with AudioSet: ``boxes``, the fraction of box
    rows whose class has AudioSet labels in the table; ``clips``, the fraction of clips carrying at
    least one of them. Counts ``n_boxes`` and ``n_clips`` beside them (nan fractions when empty)."""
    box_classes = {c.mid for c in classes if c.audioset_mids}
    audio_labels = {mid for c in classes for mid in c.audioset_mids}
    boxes = [label in box_classes for label in box_labels]
    clips = [bool(labels & audio_labels) for labels in clip_labels]
    return {
        "boxes": sum(boxes) / len(boxes) if boxes else float("nan"),
        "clips": sum(clips) / len(clips) if clips else float("nan"),
        "n_boxes": len(boxes),
        "n_clips": len(clips),
    }


class AudioPools:
    """Per image class, the sorted clip ids whose labels match it and whose audio file exists."""

    def __init__(
        self,
        clips: dict[str, frozenset[str]],
        classes: Sequence[PairClass],
        labels_of: Callable[[PairClass], frozenset[str]],
        audio_dir: Path,
        stats: Counter,
    ) -> None:
        self.audio_dir = audio_dir
        self.labels = clips
        classes_of: dict[str, list[str]] = defaultdict(list)  # audio label -> class MIDs
        for c in classes:
            for label in labels_of(c):
                classes_of[label].append(c.mid)
        pools: dict[str, list[str]] = defaultdict(list)
        for clip in sorted(clips):
            mids = {mid for label in clips[clip] for mid in classes_of.get(label, ())}
            if not mids:
                continue
            if not self.path(clip).is_file():
                stats["missing_media"] += 1
                continue
            for mid in mids:
                pools[mid].append(clip)
        self._pools = dict(pools)
        self._classes = [c for c in classes if c.mid in self._pools]

    def path(self, clip: str) -> Path:
        return self.audio_dir / f"{clip}.wav"

    def has(self, c: PairClass) -> bool:
        return c.mid in self._pools

    def draw(self, c: PairClass, rng: random.Random) -> str:
        """A clip of class ``c``."""
        return rng.choice(self._pools[c.mid])

    def draw_other(
        self,
        c: PairClass,
        rng: random.Random,
        wanted: frozenset[str],
        *,
        skip: Collection[str] = (),
        tries: int = 10,
    ) -> str | None:
        """A clip of a class other than ``c`` and those in ``skip`` (MIDs) that carries none of
        ``wanted``, or None after ``tries`` misses."""
        others = [o for o in self._classes if o.mid != c.mid and o.mid not in skip]
        for _ in range(tries if others else 0):
            clip = self.draw(rng.choice(others), rng)
            if not self.labels[clip] & wanted:
                return clip
        return None
