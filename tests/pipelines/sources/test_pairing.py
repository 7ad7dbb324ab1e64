"""The Open Images class pairing table of ``pipelines.avfit.sources._pairing``."""

from __future__ import annotations

import pytest

from pipelines.avfit.sources._pairing import load_pairing_table
from tests.pipelines.sources.helpers import FIXTURES


def test_pairing_table_is_well_formed():
    classes = load_pairing_table()
    assert 40 <= len(classes) <= 150
    assert len({c.mid for c in classes}) == len(classes)
    assert len({c.name for c in classes}) == len(classes)
    voc = {"aeroplane", "bicycle", "bird", "boat", "bus", "car", "cat", "cow", "dog", "horse"}
    voc |= {"motorbike", "person", "sheep", "train", "tvmonitor"}
    assert {c.voc for c in classes if c.voc} == voc
    for c in classes:
        assert c.mid.startswith("/m/"), c
        assert c.audioset_mids or c.vggsound_labels, c
        assert all(mid[:3] in ("/m/", "/t/", "/g/") for mid in c.audioset_mids), c
    by_name = {c.name: c for c in classes}
    assert "/m/0bt9lr" in by_name["Dog"].audioset_mids
    assert "eletric blender running" in by_name["Blender"].vggsound_labels  # VGGSound's own typo
    # People and speech: a Person takes any voice, a Man only a man's.
    assert {"/m/09x0r", "/m/05zppz", "/m/02zsn"} <= by_name["Person"].audioset_mids
    assert "/m/02zsn" not in by_name["Man"].audioset_mids


def test_pairing_covers_the_classes_real_rows_carry():
    """The label excerpt of ``fixtures/sources/pairing_excerpt`` (see the README there): most box
    rows are people, most clips speech or music. Every sounding box class pairs; the clips that do
    not are music without an instrument, weather, crowds and silence."""
    import csv

    from pipelines.avfit.sources._pairing import pairing_coverage, read_audioset_segments

    excerpt = FIXTURES / "pairing_excerpt"
    with open(excerpt / "openimages-boxes.csv", newline="", encoding="utf-8") as stream:
        box_labels = [row["LabelName"] for row in csv.DictReader(stream)]
    clips = read_audioset_segments([excerpt / "audioset-segments.csv"])
    coverage = pairing_coverage(box_labels, clips.values(), load_pairing_table())
    assert (coverage["n_boxes"], coverage["n_clips"]) == (60, 40)
    # 39 boxes of people, faces and sounding things; 21 of clothing, trees, windows, furniture.
    assert coverage["boxes"] == pytest.approx(39 / 60)
    # Unpaired: 7 music-only clips, wind, rain, applause + crowd, silence.
    assert coverage["clips"] == pytest.approx(29 / 40)
