"""The MUSIC-AVQA converter."""

from __future__ import annotations

from collections import Counter

from tests.pipelines.sources.helpers import FIXTURES, _dataset, _image, _run, _wav


def test_music_avqa_fills_templates_and_keeps_the_categories(tmp_path):
    raw = (FIXTURES / "music_avqa" / "avqa-test.json").read_text()
    assert not raw.endswith("\n") and "\\uff1f" in raw and '"anser"' in raw
    root = _dataset(tmp_path, "music_avqa")
    for video in ("00000272", "00000259", "00007052", "sa000731"):
        for i in range(1, 4):
            _image(root / "frames" / video / f"{i:06d}.jpg")
        _wav(root / "audio" / f"{video}.wav")
    samples, stats = _run("music_avqa", root, "test")
    got = {s["__key__"]: s for s in samples}
    expected = {
        "music_avqa-50-avqa": ("Where is the first sounding instrument?", "left", "Temporal", "Audio-Visual"),
        "music_avqa-157-avqa": (
            "How many types of musical instruments sound in the video?",
            "two",
            "Counting",
            "Audio-Visual",
        ),
        "music_avqa-1751-avqa": (
            "Is this sound from the instrument in the video?",
            "yes",
            "Existential",
            "Audio-Visual",
        ),
        "music_avqa-9120-avqa": ("Is the piano more rhythmic than the violin?", "no", "Comparative", "Audio"),
    }
    assert list(got) == list(expected)
    for key, (question, answer, category, modality) in expected.items():
        meta = got[key]["json"]
        assert question in meta["instruction"]
        assert (meta["answer"], meta["qa_category"], meta["qa_modality"]) == (answer, category, modality)
        assert got[key]["image"].name == "000002.jpg"  # the middle of three 1-fps frames
    # 51 has two placeholders and one value; 158 is deleted; 00001914 has no media.
    assert stats == Counter(bad_template=1, deleted=1, missing_media=1)
