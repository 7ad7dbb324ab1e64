"""VALOR-32K (Chen et al., 2023) -> AVC (audio-visual captioning) samples.

Layout under ``root`` (``VALOR-32K-annotations/``, and media extracted from the YouTube segments,
which have no canonical local name)::

    desc_train.json, desc_val.json, desc_test.json   one-line JSON arrays of {"video_id", "desc"}
    frames/<video_id>.jpg                            (or a folder frames/<video_id>/: middle frame)
    audio/<video_id>.wav

``video_id`` is ``<ytid>_<start>_<end>`` with 3-decimal seconds (``CEfOX4fYlsY_20.000_30.000``); its
dots are not allowed in sample keys and become ``_``. The clip length ``end - start`` is stored as
``duration``: some clips are shorter than 10 s and a few start at fractional seconds. The
VAST redistribution (``descs_cap_*.json``) adds a ``subtitle`` key, which is ignored. Each clip has
one caption, which is both the answer and the only reference.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from meerkat_core.prompts import render_instruction
from pipelines.avfit.sources._common import (
    Sample,
    SampleWriter,
    check_split,
    find_frame,
    media_present,
    rng_for,
)

NAME = "valor"
SPLITS = ("train", "val", "test")


def clip_duration(video_id: str) -> float:
    """``end - start`` seconds of ``<ytid>_<start>_<end>``."""
    _, start, end = video_id.rsplit("_", 2)
    return round(float(end) - float(start), 3)


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """AVC samples of VALOR-32K ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    with open(root / f"desc_{split}.json", encoding="utf-8") as stream:
        records = json.load(stream)
    for record in records:
        video = record["video_id"]
        caption = record["desc"].strip()
        image = find_frame(root / "frames", video)
        audio = root / "audio" / f"{video}.wav"
        if not media_present(stats, image, audio):
            continue
        sample = writer.make(
            video,
            image,
            audio,
            "avc",
            instruction=render_instruction("avc", rng_for(NAME, split, seed, video)),
            answer=caption,
            references=[caption],
            duration=clip_duration(video),
        )
        if sample is not None:
            yield sample
