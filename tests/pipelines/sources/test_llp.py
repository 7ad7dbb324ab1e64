"""The LLP converter against its fixture, through to the per-video score."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.pipelines.sources.helpers import FIXTURES, _by_key, _dataset, _image, _run, _wav


def _llp(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "llp")
    for ytid in (
        "KSRjje7GH44",
        "McVcuryKUp4",
        "HK1i4YyF5WU",
        "H5WcJwyjxIg",
        "Ishr8cHsJkc",
        "8DF2PxdT5tE",
        "AP0061o0Nvk",
    ):
        for i in range(1, 11):
            _image(root / "LLP_dataset" / "frame" / ytid / f"{i:06d}.jpg")
        _wav(root / "LLP_dataset" / "audio" / f"{ytid}.wav")
    return root


def test_llp_fixture_is_tab_separated_despite_the_suffix():
    header = (FIXTURES / "llp" / "AVVP_eval_audio.csv").read_text().splitlines()[0]
    assert header == "filename\tonset\toffset\tevent_labels"


def test_llp_localises_visible_events_with_exclusive_offsets(tmp_path):
    samples, stats = _run("llp", _llp(tmp_path), "test")
    got = _by_key(samples)
    expected = {
        "llp-AP0061o0Nvk_101_8_111_8-Speech-igatl": (
            [[2.0, 5.0]],
            "[2.0, 5.0]",
            "person speaking",
            "000006.jpg",
        ),
        "llp-HK1i4YyF5WU_30_40-Motorcycle-igatl": ([[4.0, 6.0]], "[4.0, 6.0]", "motorcycle", "000006.jpg"),
        "llp-Ishr8cHsJkc_180_190-Dog-igatl": (
            [[1.0, 2.0], [3.0, 4.0], [8.0, 10.0]],
            "[1.0, 2.0], [3.0, 4.0], [8.0, 10.0]",
            "dog",
            "000006.jpg",
        ),
        "llp-KSRjje7GH44_60_70-Blender-igatl": ([[8.0, 10.0]], "[8.0, 10.0]", "blender", "000006.jpg"),
        # Seen during [0, 2] and [6, 8]: the frames at 1 s and 7 s of the 10 frames.
        "llp-McVcuryKUp4_160_170-Motorcycle-igatl": ([[0.0, 2.0]], "[0.0, 2.0]", "motorcycle", "000002.jpg"),
        "llp-McVcuryKUp4_160_170-Speech-igatl": ([[3.0, 8.0]], "[3.0, 8.0]", "person speaking", "000008.jpg"),
    }
    assert list(got) == list(expected)
    for key, (segments, answer, obj, frame) in expected.items():
        meta = got[key]["json"]
        assert meta["task"] == "igatl"
        assert meta["segments"] == segments
        assert meta["answer"] == answer
        assert meta["duration"] == 10.0  # also for the fractional 101.8_111.8 clip
        assert obj in meta["instruction"]
        assert got[key]["image"].name == frame
    # Unknown: CSWQ_HzQ_10_20 (audio and visual rows). Bad: H5WcJwyjxIg "0 0", 8DF2PxdT5tE "9 0".
    # Heard but not seen: HK1i4YyF5WU Speech and Singing, Ishr8cHsJkc Speech, KSRjje7GH44 Speech.
    # GSovTky7XbU has no media.
    assert stats == Counter(unknown_clip=2, bad_segment=2, not_visible=4, missing_media=2)
    assert got["llp-McVcuryKUp4_160_170-Speech-igatl"]["json"]["clip_id"] == "McVcuryKUp4_160_170"


def test_llp_samples_score_per_video_through_evaluation(tmp_path):
    """Converter -> evaluation: the two McVcuryKUp4 classes are one video of the LLP average."""
    from pipelines import evaluate

    samples, _ = _run("llp", _llp(tmp_path), "test")
    rows = [{"prediction": s["json"]["answer"], "meta": s["json"]} for s in samples]
    # McVcuryKUp4 Speech answered [3, 5] instead of [3, 8]: bins 3 4 of 3..7 -> class F1 4/7, event
    # IoU 2/5 -> event F1 0. Its Motorcycle class is right (1.0); the other four videos are perfect.
    for row in rows:
        if row["meta"]["label_text"] == "Speech" and row["meta"]["clip_id"].startswith("McVcury"):
            row["prediction"] = "[3.0, 5.0]"
    scores = evaluate.score(rows)["igatl"]["llp"]["model"]
    assert (scores["n"], scores["n_videos"]) == (6, 5)
    assert scores["f1"] == pytest.approx((4 + (1 + 4 / 7) / 2) / 5)
    assert scores["event_f1"] == pytest.approx((4 + 0.5) / 5)
