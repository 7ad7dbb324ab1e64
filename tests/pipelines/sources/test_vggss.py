"""The VGG-SS converter against its fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from meerkat_core.prompts import TEMPLATES
from tests.pipelines.sources.helpers import FIXTURES, _by_key, _dataset, _image, _instructions, _run, _wav


def _vggss(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "vggss")
    for record in json.loads((root / "vggss.json").read_text()):
        if record["file"] != "RDG7jY7P_8M_000088":  # left without media on purpose
            _image(root / "frames" / f"{record['file']}.jpg")
            _wav(root / "audio" / f"{record['file']}.wav")
    return root


def test_vggss_fixture_keeps_the_real_quirks():
    raw = (FIXTURES / "vggss" / "vggss_test.csv").read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") == 10
    text = (FIXTURES / "vggss" / "vggss.json").read_text()
    assert "\n" not in text and "-2.8823037615171176e+16" in text and ", 0, 1.0" in text


def test_vggss_converts_boxes_and_drops_bad_ones(tmp_path):
    samples, stats = _run("vggss", _vggss(tmp_path), "test")
    expected = {
        "zpWuikVorYg_000032": ([[0.403125, 0.253125, 0.6, 0.75]], "[0.40, 0.25, 0.60, 0.75]", "elk bugling"),
        "gEvCUcZ6w88_000030": (
            [[0.45, 0.190625, 0.584375, 0.47812499999999997]],
            "[0.45, 0.19, 0.58, 0.48]",
            "female speech, woman speaking",
        ),
        "gg6yoeBoYxg_000000": (
            [[0.13125, 0.0, 1.0, 0.31875]],
            "[0.13, 0.00, 1.00, 0.32]",
            "children shouting",
        ),
        "ORaz32CQ29k_000130": (
            [[0.121875, 0.171875, 0.6, 0.853125], [0.765625, 0.275, 0.984375, 0.565625]],
            "[0.12, 0.17, 0.60, 0.85]",
            "coyote howling",
        ),
        "UyCw7pCgYg8_000055": (
            [
                [0.503125, 0.403125, 0.6468750000000001, 0.6625000000000001],
                [0.253125, 0.065625, 0.375, 0.259375],
            ],
            "[0.50, 0.40, 0.65, 0.66]",
            "tap dancing",
        ),
        "Db6Hjt0x28k_000056": (
            [[0.05, 0.35625, 0.753125, 0.98125]],
            "[0.05, 0.36, 0.75, 0.98]",
            "playing timbales",
        ),
        "pjuyGQPd4S4_000039": (
            [[0.240625, 0.734375, 0.790625, 1.0]],
            "[0.24, 0.73, 0.79, 1.00]",
            "playing djembe",
        ),
    }
    got = _by_key(samples)
    assert list(got) == [f"vggss-{clip}-arig" for clip in expected]
    for clip, (boxes, answer, label) in expected.items():
        meta = got[f"vggss-{clip}-arig"]["json"]
        assert meta["task"] == "arig"
        assert meta["boxes"] == boxes
        assert meta["answer"] == answer
        assert meta["label_text"] == label
        assert meta["instruction"] in TEMPLATES["arig"]
        assert got[f"vggss-{clip}-arig"]["image"].name == f"{clip}.jpg"
    # UyCw7pCgYg8 degenerate third box, M1P1xla8rg0's only box is degenerate, Db6Hjt0x28k sentinel.
    assert stats == Counter(bad_box=3, no_box=1, missing_media=1, not_in_split=1)


def test_vggss_output_is_deterministic_and_seeded(tmp_path):
    root = _vggss(tmp_path)
    first, _ = _run("vggss", root, "test", seed=0)
    again, _ = _run("vggss", root, "test", seed=0)
    other, _ = _run("vggss", root, "test", seed=1)
    assert [s["json"] for s in first] == [s["json"] for s in again]
    assert _instructions(first) != _instructions(other)
    assert [s["json"]["answer"] for s in first] == [s["json"]["answer"] for s in other]
