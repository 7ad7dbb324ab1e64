"""The VALOR-32K converter."""

from __future__ import annotations

from collections import Counter

from meerkat_core.prompts import TEMPLATES
from tests.pipelines.sources.helpers import _dataset, _image, _run, _wav


def test_valor_captions_with_dot_free_keys_and_clip_durations(tmp_path):
    root = _dataset(tmp_path, "valor")
    for video in (
        "CEfOX4fYlsY_20.000_30.000",
        "26OpBUZbdPw_18.000_28.000",
        "equOMojH26Q_0.000_7.000",
        "HSDNx-wvj7Y_36.200_46.200",
    ):
        _image(root / "frames" / f"{video}.jpg")
        _wav(root / "audio" / f"{video}.wav")
    samples, stats = _run("valor", root, "test")
    got = {s["__key__"]: s["json"] for s in samples}
    assert {k: m["duration"] for k, m in got.items()} == {
        "valor-CEfOX4fYlsY_20_000_30_000-avc": 10.0,
        "valor-26OpBUZbdPw_18_000_28_000-avc": 10.0,
        "valor-equOMojH26Q_0_000_7_000-avc": 7.0,
        "valor-HSDNx-wvj7Y_36_200_46_200-avc": 10.0,
    }
    first = got["valor-CEfOX4fYlsY_20_000_30_000-avc"]
    caption = "In one room, a yellow bird leaped over the fence. The sound of his mouth ringing."
    assert first["answer"] == caption and first["references"] == [caption]
    assert first["instruction"] in TEMPLATES["avc"]
    assert stats == Counter(missing_media=1)  # Sv9fcuRfk2o_70.000_80.000
    val, _ = _run("valor", root, "val")  # a VAST-style record with an extra "subtitle" key
    assert [s["json"]["references"] for s in val] == [[caption]]
