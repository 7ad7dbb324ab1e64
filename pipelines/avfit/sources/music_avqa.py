"""MUSIC-AVQA (Li et al., CVPR 2022) -> AVQA samples keeping the dataset's own question categories.

Layout under ``root`` (one version of ``GeWu-Lab/MUSIC-AVQA`` ``data/json/``, or the corrected
``data/json_update/``; use one consistently, the file names are the same)::

    avqa-train.json, avqa-val.json, avqa-test.json   2-space indented JSON arrays, no trailing newline
    frames/<video_id>/*.jpg                          the 1-fps frames the baselines extract (middle one used)
    audio/<video_id>.wav

Quirks handled: ``type`` and ``templ_values`` are **strings** holding a list (``"[\\"Audio-Visual\\",
\\"Existential\\"]"``) and are parsed again; the answer key is ``anser`` (sic); the template
placeholders ``<Object>``, ``<LR>``, ``<FL>``, ... of ``question_content`` are filled in order from
``templ_values`` (a question with fewer values than placeholders is counted under ``bad_template``);
the full-width question mark ``？`` (``\\uff1f``) becomes ``?``; records with ``question_deleted`` set
are counted under ``deleted``. Synthetic clips (ids ``va…``, ``sa…``, ``ev…``, ``vv…``, ``es…``) are
used like real ones.

``qa_category`` is the second element of ``type`` (Existential, Counting, Location, Comparative,
Temporal), as the paper keeps MUSIC-AVQA's categories (Sec. 4.2); the first (Audio, Visual,
Audio-Visual) is kept as ``qa_modality``.
"""

from __future__ import annotations

import ast
import json
import re
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

NAME = "music_avqa"
SPLITS = ("train", "val", "test")
_PLACEHOLDER = re.compile(r"<[^<>]+>")


def fill_template(template: str, values: list[str]) -> str | None:
    """``template`` with its placeholders replaced in order by ``values``; None if values run out."""
    slots = _PLACEHOLDER.findall(template)
    if len(slots) > len(values):
        return None
    fill = iter(values)
    return _PLACEHOLDER.sub(lambda _: str(next(fill)), template).replace("\uff1f", "?")


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """AVQA samples of MUSIC-AVQA ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    with open(root / f"avqa-{split}.json", encoding="utf-8") as stream:
        records = json.load(stream)
    for record in records:
        if record.get("question_deleted", 0):
            stats["deleted"] += 1
            continue
        # The loaders eval() these strings; literal_eval reads the same lists without running code.
        modality, category = ast.literal_eval(record["type"])
        question = fill_template(record["question_content"], ast.literal_eval(record["templ_values"]))
        if question is None:
            stats["bad_template"] += 1
            continue
        video = record["video_id"]
        image = find_frame(root / "frames", video)
        audio = root / "audio" / f"{video}.wav"
        if not media_present(stats, image, audio):
            continue
        record_id = str(record["question_id"])
        sample = writer.make(
            record_id,
            image,
            audio,
            "avqa",
            instruction=render_instruction("avqa", rng_for(NAME, split, seed, record_id), question=question),
            answer=record["anser"],
            qa_category=category,
            qa_modality=modality,
            video_id=video,
        )
        if sample is not None:
            yield sample
