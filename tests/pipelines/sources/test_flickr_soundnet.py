"""The Flickr-SoundNet converter against its fixture, through to the consensus score."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipelines.avfit.sample import SampleError, validate_meta
from tests.pipelines.sources.helpers import FIXTURES, _by_key, _dataset, _image, _run, _wav


def _flickr(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "flickr_soundnet")
    for flickr_id in ("10000130166", "10007936344", "10008553263", "10013411946"):
        _image(root / "frames" / f"{flickr_id}.jpg", size=(320, 240))  # boxes are in a 256 frame regardless
        _wav(root / "audio" / f"{flickr_id}.wav")
    return root


def test_flickr_soundnet_normalises_256_pixel_boxes_and_takes_the_annotators_median(tmp_path):
    assert (FIXTURES / "flickr_soundnet" / "flickr_test.csv").read_bytes().count(b"\r\n") == 5
    samples, stats = _run("flickr_soundnet", _flickr(tmp_path), "test")
    got = _by_key(samples)
    assert list(got) == [
        "flickr_soundnet-10000130166-arig",
        "flickr_soundnet-10007936344-arig",
        "flickr_soundnet-10013411946-arig",
    ]
    first = got["flickr_soundnet-10000130166-arig"]["json"]
    # Annotators (64,32,192,224), (60,40,200,228), (68,28,180,220) over 256.
    assert first["boxes"] == [
        [0.25, 0.125, 0.75, 0.875],
        [0.234375, 0.15625, 0.78125, 0.890625],
        [0.265625, 0.109375, 0.703125, 0.859375],
    ]
    assert first["answer"] == "[0.25, 0.12, 0.75, 0.88]"  # median box [0.25, 0.125, 0.75, 0.875]
    assert "label_text" not in first  # the hche11 second column is an undocumented integer
    second = got["flickr_soundnet-10007936344-arig"]["json"]
    assert second["boxes"] == [[0.0, 0.390625, 0.5, 1.0], [0.03125, 0.375, 0.53125, 0.984375]]
    assert second["answer"] == "[0.02, 0.38, 0.52, 0.99]"  # median of two = mean: 0.015625, 0.3828125, ...
    third = got["flickr_soundnet-10013411946-arig"]["json"]
    # The second annotator's xmax 300 runs past the 256 frame: clipped to its edge, the vote kept.
    assert third["boxes"] == [[0.0625, 0.0625, 0.9375, 0.9375], [0.0625, 0.0625, 1.0, 0.9375]]
    assert third["annotator_boxes"] == [[[0.0625, 0.0625, 0.9375, 0.9375]], [[0.0625, 0.0625, 1.0, 0.9375]]]
    assert third["answer"] == "[0.06, 0.06, 0.97, 0.94]"  # median of two = mean, x2 0.96875
    # 10007936344 has a zero-width box; 10008553263 has no XML.
    assert stats == Counter(bad_box=1, missing_annotation=1, missing_media=1)


_QUADRANT_VOTES = """<annotation>
	<object><bbox><annotator>1</annotator><xmin>0</xmin><ymin>0</ymin><xmax>128</xmax><ymax>128</ymax></bbox></object>
	<object><bbox><annotator>2</annotator><xmin>0</xmin><ymin>0</ymin><xmax>128</xmax><ymax>128</ymax></bbox></object>
	<object><bbox><annotator>3</annotator><xmin>128</xmin><ymin>128</ymin><xmax>256</xmax><ymax>256</ymax></bbox></object>
</annotation>
"""


def test_flickr_soundnet_consensus_reaches_the_score(tmp_path):
    """Converter -> evaluation -> score: the ground truth is the annotators' consensus, not their union."""
    from pipelines import evaluate

    root = _flickr(tmp_path)
    (root / "Annotations" / "10000130166.xml").write_text(_QUADRANT_VOTES)
    samples, _ = _run("flickr_soundnet", root, "test")
    meta = _by_key(samples)["flickr_soundnet-10000130166-arig"]["json"]
    assert meta["annotator_boxes"] == [[[0.0, 0.0, 0.5, 0.5]], [[0.0, 0.0, 0.5, 0.5]], [[0.5, 0.5, 1.0, 1.0]]]
    # Consensus at 224: the top-left quadrant (112 x 112 px) has two votes (G = 1), the bottom-right
    # one vote (G = 0.5). A prediction of the bottom-right quadrant: 0.5 * 112^2 / (1.5 * 112^2) = 1/3,
    # a failure at 0.5; against the union of the boxes it would score 112^2 / (2 * 112^2) = 0.5.
    row = {"prediction": "[0.50, 0.50, 1.00, 1.00]", "meta": meta}
    scores = evaluate.score([row])["arig"]["flickr_soundnet"]["model"]
    assert scores["mean_ciou"] == pytest.approx(1 / 3)
    assert scores["ciou"] == 0.0
    # Success rate 1 for t = 0, ..., 0.30, then 0: AUC 0.30 + 0.05 / 2.
    assert scores["auc"] == pytest.approx(0.325)
    # The agreed quadrant scores 112^2 / (1.5 * 112^2).
    agreed = evaluate.score([{**row, "prediction": "[0.00, 0.00, 0.50, 0.50]"}])["arig"]["flickr_soundnet"]
    assert agreed["model"]["mean_ciou"] == pytest.approx(2 / 3)


def test_annotator_boxes_are_checked_by_the_contract():
    meta = {"task": "arig", "source": "flickr_soundnet", "split": "test", "instruction": "?", "answer": "[]"}
    validate_meta({**meta, "boxes": [[0, 0, 1, 1]], "annotator_boxes": [[[0, 0, 1, 1]], [[0, 0, 0.5, 0.5]]]})
    with pytest.raises(SampleError, match="annotator_boxes"):
        validate_meta({**meta, "boxes": [[0, 0, 1, 1]], "annotator_boxes": [[0, 0, 1, 1]]})
    with pytest.raises(SampleError, match="normalised"):
        validate_meta({**meta, "boxes": [[0, 0, 1, 1]], "annotator_boxes": [[[0, 0, 1.5, 1]]]})


def test_flickr_soundnet_three_annotators_match_the_loaders_map(tmp_path):
    """The fixture's three overlapping annotators, against the map the loaders build from the XML's
    pixels (int(224 * v / 256) per box, votes summed, halved, clipped to 1)."""
    from pipelines import evaluate

    samples, _ = _run("flickr_soundnet", _flickr(tmp_path), "test")
    meta = _by_key(samples)["flickr_soundnet-10000130166-arig"]["json"]
    votes = np.zeros((224, 224))
    for xmin, ymin, xmax, ymax in ((64, 32, 192, 224), (60, 40, 200, 228), (68, 28, 180, 220)):
        x1, y1, x2, y2 = (int(224 * v / 256) for v in (xmin, ymin, xmax, ymax))
        votes[y1:y2, x1:x2] += 1
    gt = np.clip(votes / 2, 0, 1)
    pred = np.zeros((224, 224))
    pred[int(0.3 * 224) : int(0.6 * 224), int(0.2 * 224) : int(0.9 * 224)] = 1  # [0.2, 0.3, 0.9, 0.6]
    expected = (pred * gt).sum() / (gt.sum() + (pred * (gt == 0)).sum())
    row = {"prediction": "[0.20, 0.30, 0.90, 0.60]", "meta": meta}
    scores = evaluate.score([row])["arig"]["flickr_soundnet"]["model"]
    assert scores["mean_ciou"] == pytest.approx(expected, abs=1e-12)
    union = (pred * (votes > 0)).sum() / ((votes > 0).sum() + (pred * (votes == 0)).sum())
    assert abs(expected - union) > 1e-3  # the two ground truths differ on this case


_OUT_OF_FRAME_VOTES = """<annotation>
	<object><bbox><annotator>1</annotator><xmin>16</xmin><ymin>16</ymin><xmax>240</xmax><ymax>240</ymax></bbox></object>
	<object><bbox><annotator>2</annotator><xmin>16</xmin><ymin>16</ymin><xmax>300</xmax><ymax>240</ymax></bbox></object>
	<object><bbox><annotator>3</annotator><xmin>260</xmin><ymin>16</ymin><xmax>300</xmax><ymax>240</ymax></bbox></object>
</annotation>
"""


def test_flickr_soundnet_clips_out_of_frame_votes_as_the_loaders_map_does(tmp_path):
    """A box past the frame's edge keeps its vote, clipped (the loaders' slices stop at the edge); one
    wholly outside the frame has no area and is dropped."""
    from pipelines import evaluate

    root = _flickr(tmp_path)
    (root / "Annotations" / "10013411946.xml").write_text(_OUT_OF_FRAME_VOTES)
    samples, stats = _run("flickr_soundnet", root, "test")
    meta = _by_key(samples)["flickr_soundnet-10013411946-arig"]["json"]
    assert meta["annotator_boxes"] == [[[0.0625, 0.0625, 0.9375, 0.9375]], [[0.0625, 0.0625, 1.0, 0.9375]]]
    assert stats["bad_box"] == 2  # the third vote here, the zero-width box of 10007936344
    votes = np.zeros((224, 224))
    for xmin, ymin, xmax, ymax in ((16, 16, 240, 240), (16, 16, 300, 240), (260, 16, 300, 240)):
        x1, y1, x2, y2 = (int(224 * v / 256) for v in (xmin, ymin, xmax, ymax))
        votes[y1:y2, x1:x2] += 1  # numpy stops the slices at 224
    gt = np.clip(votes / 2, 0, 1)
    pred = np.zeros((224, 224))
    pred[int(0.1 * 224) : int(0.9 * 224), int(0.5 * 224) :] = 1  # [0.5, 0.1, 1.0, 0.9]
    expected = (pred * gt).sum() / (gt.sum() + (pred * (gt == 0)).sum())
    row = {"prediction": "[0.50, 0.10, 1.00, 0.90]", "meta": meta}
    scores = evaluate.score([row])["arig"]["flickr_soundnet"]["model"]
    assert scores["mean_ciou"] == pytest.approx(expected, abs=1e-12)


def test_flickr_soundnet_reads_the_acl_ssl_variant_labels(tmp_path):
    root = _flickr(tmp_path)
    shutil.copy(root / "variants" / "ACL-SSL" / "flickr_test.csv", root / "flickr_test.csv")
    samples, _ = _run("flickr_soundnet", root, "test")
    assert [s["json"]["label_text"] for s in samples] == ["child singing", "dog barking"]
