"""The AVSBench converter: boxes from the ground-truth masks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.pipelines.sources.helpers import _by_key, _dataset, _image, _mask, _run, _wav


def _avsbench(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "avsbench")
    s4 = root / "Single-source" / "s4_data"
    ms3 = root / "Multi-sources" / "ms3_data"
    clips = {
        ("test", "helicopter", "0d9u2CymIxc"): {2: [(4, 1, 9, 5)]},  # frame 1's mask is empty
        ("test", "helicopter", "2fIX-p9h_q0"): {1: [(0, 0, 19, 9)]},
        ("test", "typing_on_computer_keyboard", "-6AOy8GAMpM"): {},
        ("train", "mynah_bird_singing", "_8m_rszChvE"): {1: [(10, 5, 14, 9)]},
    }
    for (split, category, name), masks in clips.items():
        frames = 5 if split != "train" else 1
        for k in range(1, 6):
            _image(s4 / "visual_frames" / split / category / name / f"{name}_{k}.png")
        for k in range(1, frames + 1):
            _mask(s4 / "gt_masks" / split / category / name / f"{name}_{k}.png", masks.get(k, []))
        _wav(s4 / "audio_wav" / split / category / f"{name}.wav")
    ms3_clips = {
        "0WxgIKuetYI_0": [(2, 2, 5, 4), (12, 6, 17, 8)],
        "26xaTuDMCIQ_1": [(1, 1, 3, 3)],
        "CNbSq__q-BY": [(0, 5, 9, 9)],
    }
    for name, rects in ms3_clips.items():
        for k in range(1, 6):
            _image(ms3 / "visual_frames" / name / f"{name}.mp4_{k}.png")
            _mask(ms3 / "gt_masks" / "test" / name / f"{name}_{k}.png", rects)
        if name != "26xaTuDMCIQ_1":  # left without audio on purpose
            _wav(ms3 / "audio_wav" / "test" / f"{name}.wav")
    return root


def test_avsbench_boxes_come_from_the_first_non_empty_mask(tmp_path):
    root = _avsbench(tmp_path)
    samples, stats = _run("avsbench", root, "test")
    got = _by_key(samples)
    assert list(got) == [
        "avsbench-s4-0d9u2CymIxc-arig",
        "avsbench-s4-2fIX-p9h_q0-arig",
        "avsbench-ms3-0WxgIKuetYI_0-arig",
        "avsbench-ms3-CNbSq__q-BY-arig",
    ]
    # Masks are 20 x 10: columns 4..9 and rows 1..5 are the pixel edges [4, 1, 10, 6].
    heli = got["avsbench-s4-0d9u2CymIxc-arig"]
    assert heli["json"]["boxes"] == [[0.2, 0.1, 0.5, 0.6]]
    assert heli["json"]["answer"] == "[0.20, 0.10, 0.50, 0.60]"
    assert heli["json"]["label_text"] == "helicopter"
    assert heli["image"].name == "0d9u2CymIxc_2.png"
    assert got["avsbench-s4-2fIX-p9h_q0-arig"]["json"]["boxes"] == [[0.0, 0.0, 1.0, 1.0]]
    two_sources = got["avsbench-ms3-0WxgIKuetYI_0-arig"]
    assert two_sources["json"]["boxes"] == [[0.1, 0.2, 0.9, 0.9]]  # encloses both sources
    assert two_sources["image"].name == "0WxgIKuetYI_0.mp4_1.png"
    assert "label_text" not in two_sources["json"]
    assert got["avsbench-ms3-CNbSq__q-BY-arig"]["json"]["boxes"] == [[0.0, 0.5, 0.5, 1.0]]
    assert stats == Counter(empty_mask=1, missing_media=1)
    train, _ = _run("avsbench", root, "train")
    assert [s["json"]["boxes"] for s in train] == [[[0.5, 0.5, 0.75, 1.0]]]
