"""AVSBench (Zhou et al., ECCV 2022) -> ARIG samples, boxes taken from the segmentation masks.

The metadata CSVs are **documented, no real excerpt**: they are distributed only on request, so this
reader follows ``OpenNLPLab/AVSBench``'s loaders (``avs_s4/dataloader.py``, ``avs_ms3/dataloader.py``,
``preprocess_scripts/``). Layout under ``root`` (``avsbench_data/``); a subset whose metadata CSV is
absent is skipped, and at least one must be present::

    Single-source/s4_meta_data.csv        header; columns name, start, category, split (by position)
    Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png   k = 1..5
    Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png        k = 1 (train), 1..5
    Single-source/s4_data/audio_wav/<split>/<category>/<name>.wav
    Multi-sources/ms3_meta_data.csv       header; columns name, split (by position)
    Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<k>.png                 (literal ".mp4_")
    Multi-sources/ms3_data/gt_masks/<split>/<name>/<name>_<k>.png                  k = 1..5
    Multi-sources/ms3_data/audio_wav/<split>/<name>.wav

One sample per clip: the first frame ``k`` whose mask is not empty (train S4 has only the mask of
frame 1), with the 5-s clip's audio. The box is the tight box around the mask's non-zero pixels,
normalised by the mask's size (frames and masks share the 224 x 224 grid). For MS3 that box encloses
every sounding source of the frame, since the masks do not separate instances. Clips without a
non-empty mask are counted under ``empty_mask``. MS3 names are ``<ytid>_<k>`` or bare YouTube ids;
both are used as given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipelines.avfit.sources._common import (
    Box,
    Sample,
    SampleWriter,
    check_split,
    clean_box,
    media_present,
    read_rows,
    rng_for,
)

NAME = "avsbench"
SPLITS = ("train", "val", "test")
FRAMES_PER_CLIP = 5


def mask_box(path: Path, stats: Counter) -> Box | None:
    """The normalised tight box of the non-zero pixels of a mask image, None for an empty mask."""
    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 0  # [H, W]
    if not mask.any():
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    # Pixel i spans [i, i + 1): the box's far edges are one past the last marked pixel.
    edges = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return clean_box(edges, stats, width=width, height=height)


class _Clip(NamedTuple):
    subset: str  # "s4" or "ms3"
    name: str
    category: str | None  # S4 only
    frames: Path  # folder of the clip's 5 frames
    frame_prefix: str  # frame k is frames / f"{frame_prefix}{k}.png"
    masks: Path  # folder of the clip's masks, mask k is masks / f"{name}_{k}.png"
    audio: Path


def _clips(root: Path, split: str) -> Iterator[_Clip]:
    """The clips of ``split`` in the subsets whose metadata CSV is present, S4 first."""
    s4 = root / "Single-source"
    if (s4 / "s4_meta_data.csv").is_file():
        data = s4 / "s4_data"
        for row in list(read_rows(s4 / "s4_meta_data.csv"))[1:]:
            name, category, clip_split = row[0], row[2], row[3]
            if clip_split == split:
                yield _Clip(
                    "s4",
                    name,
                    category,
                    data / "visual_frames" / split / category / name,
                    f"{name}_",
                    data / "gt_masks" / split / category / name,
                    data / "audio_wav" / split / category / f"{name}.wav",
                )
    ms3 = root / "Multi-sources"
    if (ms3 / "ms3_meta_data.csv").is_file():
        data = ms3 / "ms3_data"
        for row in list(read_rows(ms3 / "ms3_meta_data.csv"))[1:]:
            name, clip_split = row[0], row[1]
            if clip_split == split:
                yield _Clip(
                    "ms3",
                    name,
                    None,
                    data / "visual_frames" / name,
                    f"{name}.mp4_",
                    data / "gt_masks" / split / name,
                    data / "audio_wav" / split / f"{name}.wav",
                )


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """ARIG samples of AVSBench S4 and MS3 clips of ``split``; skipped clips are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    if not any(
        (root / f).is_file() for f in ("Single-source/s4_meta_data.csv", "Multi-sources/ms3_meta_data.csv")
    ):
        raise FileNotFoundError(f"no s4_meta_data.csv or ms3_meta_data.csv under {root}")
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    for clip in _clips(root, split):
        for k in range(1, FRAMES_PER_CLIP + 1):
            mask = clip.masks / f"{clip.name}_{k}.png"
            box = mask_box(mask, stats) if mask.is_file() else None
            if box is not None:
                break
        else:
            stats["empty_mask" if clip.masks.is_dir() else "missing_media"] += 1
            continue
        image = clip.frames / f"{clip.frame_prefix}{k}.png"
        if not media_present(stats, image, clip.audio):
            continue
        record_id = f"{clip.subset}-{clip.name}"
        fields = {} if clip.category is None else {"label_text": clip.category.replace("_", " ")}
        sample = writer.arig(
            record_id, image, clip.audio, [box], rng_for(NAME, split, seed, record_id), **fields
        )
        if sample is not None:
            yield sample
