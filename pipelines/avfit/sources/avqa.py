"""AVQA (Yang et al., ACM MM 2022) -> AVQA samples with a MEERKAT question category.

Layout under ``root`` (``AlyssaYoung/AVQA`` ``data/annotation/`` and the clips' media)::

    train_qa.json, val_qa.json     JSON arrays of question records
    frames/<video_name>.jpg        a representative frame (or a folder frames/<video_name>/: middle frame)
    audio/<video_name>.wav         the 10-s VGGSound clip's audio

AVQA publishes no test annotations; its val set (16.9K questions) is the benchmark's test set in the
paper's Table 2, so split ``test`` reads ``val_qa.json``.

Records: ``id``, ``video_name`` (``<ytid>_<start:06d>``), ``question_text``, ``multi_choice`` (4
options with odd capitalisation, kept verbatim), ``answer`` (a **0-based** index into
``multi_choice``), ``question_relation`` (View / Sound / Both), ``question_type``. The options are
appended to the question (the task is multiple choice) and kept in ``choices``; the answer is the
chosen option's text. A record whose answer index is out of range is counted under ``bad_answer``.

The paper sorts AVQA questions into Existential, Temporal, Localisation, Count and World Knowledge
(Sec. 4.2) without giving the rule; ours maps AVQA's ``question_type`` (``CATEGORY_OF_TYPE``), except
that a question starting with "how many" is Count, and an unknown type is Existential (counted under
``unknown_question_type``).
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

NAME = "avqa"
SPLITS = ("train", "test")
_FILES = {"train": "train_qa.json", "test": "val_qa.json"}

CATEGORY_OF_TYPE: dict[str, str] = {
    "Which": "Existential",
    "Happening": "Existential",
    "Where": "Localisation",
    "Come From": "Localisation",
    "When": "Temporal",
    "Before Next": "Temporal",
    "Why": "World Knowledge",
    "Used For": "World Knowledge",
}


def qa_category(question: str, question_type: str, stats: Counter) -> str:
    """The MEERKAT category of an AVQA question."""
    if question.strip().lower().startswith("how many"):
        return "Count"
    if question_type not in CATEGORY_OF_TYPE:
        stats["unknown_question_type"] += 1
        return "Existential"
    return CATEGORY_OF_TYPE[question_type]


def iter_samples(
    root: str | Path, split: str, *, seed: int = 0, stats: Counter | None = None
) -> Iterator[Sample]:
    """AVQA samples of ``split``; skipped records are counted in ``stats``."""
    check_split(NAME, split, SPLITS)
    root = Path(root)
    stats = Counter() if stats is None else stats
    writer = SampleWriter(NAME, split, stats)
    with open(root / _FILES[split], encoding="utf-8") as stream:
        records = json.load(stream)
    for record in records:
        video = record["video_name"]
        choices = [str(choice) for choice in record["multi_choice"]]
        index = record["answer"]
        if not isinstance(index, int) or not 0 <= index < len(choices):
            stats["bad_answer"] += 1
            continue
        image = find_frame(root / "frames", video)
        audio = root / "audio" / f"{video}.wav"
        if not media_present(stats, image, audio):
            continue
        question = record["question_text"].strip()
        record_id = str(record["id"])
        rng = rng_for(NAME, split, seed, record_id)
        sample = writer.make(
            record_id,
            image,
            audio,
            "avqa",
            instruction=render_instruction(
                "avqa", rng, question=f"{question} Options: {'; '.join(choices)}."
            ),
            answer=choices[index],
            qa_category=qa_category(question, record["question_type"], stats),
            choices=choices,
            question_relation=record["question_relation"],
            video_id=video,
        )
        if sample is not None:
            yield sample
