"""The AVQA converter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.pipelines.sources.helpers import _dataset, _image, _run, _wav


def _avqa(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "avqa")
    for video in ("-HG3Omg_89c_000030", "--56QUhyDQM_000185", "-0jeONf82dE_000021", "-0BIyqJj9ZU_000030"):
        _image(root / "frames" / f"{video}.jpg")
        _wav(root / "audio" / f"{video}.wav")
    return root


def test_avqa_answers_with_the_zero_based_choice_and_a_meerkat_category(tmp_path):
    root = _avqa(tmp_path)
    samples, stats = _run("avqa", root, "train")
    got = {s["__key__"]: s["json"] for s in samples}
    expected = {
        "avqa-183-avqa": ("Yacht consignment", "Existential"),
        "avqa-184-avqa": ("The engine of the boat", "World Knowledge"),
        "avqa-2051-avqa": ("the racket", "Localisation"),
        "avqa-2052-avqa": ("two", "Count"),
        "avqa-3107-avqa": ("horse", "Existential"),
    }
    assert {k: (m["answer"], m["qa_category"]) for k, m in got.items()} == expected
    first = got["avqa-183-avqa"]
    assert first["choices"] == ["motorboat", "Yacht consignment", "Sailboat set sail", "Consignment car"]
    assert (
        "What happened in the video? Options: motorboat; Yacht consignment; Sailboat set sail; Consignment car."
        in first["instruction"]
    )
    # 2053's answer index 4 is out of range; 3107's type is unknown; 3108 has no media.
    assert stats == Counter(bad_answer=1, unknown_question_type=1, missing_media=1)
    test, _ = _run("avqa", root, "test")  # AVQA's val set is the benchmark's test set
    assert [(s["__key__"], s["json"]["answer"], s["json"]["qa_category"]) for s in test] == [
        ("avqa-1139-avqa", "after the man speaks", "Temporal")
    ]
