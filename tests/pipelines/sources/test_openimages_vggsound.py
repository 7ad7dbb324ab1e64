"""The Open Images x VGGSound converter."""

from __future__ import annotations

from collections import Counter

from tests.pipelines.sources.helpers import _dataset, _image, _run, _wav


def test_openimages_vggsound_matches_vggsound_labels_verbatim(tmp_path):
    root = _dataset(tmp_path, "openimages_vggsound")
    for image in ("01f4a7c2e8b3d596", "02c8e1b5d9a4f370", "03a6d2f9b7c1e485", "04e3b8a1c6d2f957"):
        _image(root / "openimages" / "train" / f"{image}.jpg")
    for clip in ("-011qJFjM4M_000056", "-2zHCY2q4DA_000139", "--yJcmmwiMc_000030"):
        _wav(root / "vggsound" / "audio" / f"{clip}.wav")
    samples, stats = _run("openimages_vggsound", root, "train")
    got = {s["__key__"]: (s["json"]["boxes"], s["json"]["audio_id"]) for s in samples}
    assert got == {
        "openimages_vggsound-01f4a7c2e8b3d596-dog-arig": ([[0.15, 0.35, 0.55, 0.95]], "-011qJFjM4M_000056"),
        "openimages_vggsound-03a6d2f9b7c1e485-guitar-arig": ([[0.1, 0.3, 0.9, 0.6]], "--yJcmmwiMc_000030"),
        "openimages_vggsound-02c8e1b5d9a4f370-blender-arig": ([[0.4, 0.2, 0.6, 0.7]], "-2zHCY2q4DA_000139"),
    }
    # The violin clip --iY3Bf4hDg_000030 ("playing violin, fiddle", quoted) and the woman clip
    # --9O4XZOge4_000030 have no audio file, nor has the (real) person image 000002b66c9c498e; no
    # violin clip is left for 04e3b8a1c6d2f957.
    assert stats == Counter(missing_media=3, no_pair=1)
