"""The PASCAL Sound converter: VOC boxes paired with VGGSound clips."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.pipelines.sources.helpers import _by_key, _dataset, _image, _run, _wav


def _pascal(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "pascal_sound")
    images = root / "VOCdevkit" / "VOC2007" / "JPEGImages"
    _image(images / "000001.jpg", (353, 500))
    _image(images / "000002.jpg", (335, 500))
    _image(images / "000004.jpg", (500, 375))  # the XML claims 500 x 406: the header wins
    for clip in ("-1pRmoJIGQc_000010", "-2-wdcN5vOw_000017", "-0jeONf82dE_000021"):
        _wav(root / "vggsound" / "audio" / f"{clip}.wav")
    return root


def test_pascal_sound_converts_one_based_pixels_with_the_image_header_size(tmp_path):
    samples, stats = _run("pascal_sound", _pascal(tmp_path), "test")
    got = _by_key(samples)
    assert list(got) == ["pascal_sound-000002-train-arig", "pascal_sound-000004-car-arig"]
    train = got["pascal_sound-000002-train-arig"]["json"]
    assert train["boxes"] == [[138 / 335, 199 / 500, 207 / 335, 301 / 500]]
    assert train["answer"] == "[0.41, 0.40, 0.62, 0.60]"
    assert train["audio_id"] == "-2-wdcN5vOw_000017" and train["paired"] is True
    car = got["pascal_sound-000004-car-arig"]["json"]
    # (13,311,84,362) and (362,330,500,389) over 500 x 375; 389/375 is border slop, clipped to 1.
    assert car["boxes"] == [[12 / 500, 310 / 375, 84 / 500, 362 / 375], [361 / 500, 329 / 375, 1.0, 1.0]]
    assert car["answer"] == "[0.72, 0.88, 1.00, 1.00]"
    assert car["audio_id"] == "-1pRmoJIGQc_000010"  # the other car clip has no audio file
    assert got["pascal_sound-000004-car-arig"]["audio"].name == "-1pRmoJIGQc_000010.wav"
    # The third car box reaches x = 600 of 500; the dog has no VGGSound test clip; 000006.jpg and
    # the car clip -3YWuPXHknk_000030 are missing.
    assert stats == Counter(bad_box=1, no_pair=2, missing_media=2)


def test_pascal_sound_leaves_difficult_objects_out(tmp_path):
    root = _pascal(tmp_path)
    annotation = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000004.xml"
    text = annotation.read_text()
    # The first car becomes difficult: it leaves the ground truth and cannot be the answer.
    annotation.write_text(text.replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1))
    assert "<difficult>1</difficult>" in annotation.read_text()
    samples, stats = _run("pascal_sound", root, "test")
    car = _by_key(samples)["pascal_sound-000004-car-arig"]["json"]
    assert car["boxes"] == [[361 / 500, 329 / 375, 1.0, 1.0]]
    assert stats["difficult"] == 1
