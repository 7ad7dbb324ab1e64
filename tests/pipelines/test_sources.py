"""Tests of the AVFIT source converters against fixtures in each dataset's real annotation format.

The annotation files under ``tests/fixtures/sources/<source>/`` are committed (their provenance is in
the README there); the media they point to are generated into a copy in ``tmp_path``, so that every
test can also leave a file out on purpose. Expected boxes, segments and answers are worked out by
hand from the fixture values; seeded choices (which audio clip, which fact type) are checked through
the invariants they must satisfy.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from meerkat_core.prompts import TEMPLATES
from pipelines.avfit.sample import SampleError, validate_key, validate_meta
from pipelines.avfit.sources import SOURCES, SPLITS, iter_source
from pipelines.avfit.sources._common import SampleWriter, clean_box, find_frame, merge_segments
from pipelines.avfit.sources._pairing import load_pairing_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"


def _dataset(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    return root


def _image(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    """A flat image of ``size`` (w, h), encoded as its suffix says (JPEG or PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 150)).save(path)


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(80, dtype=np.float32), 8000)


def _mask(path: Path, rects: list[tuple[int, int, int, int]], size: tuple[int, int] = (20, 10)) -> None:
    """A binary mask of ``size`` (w, h) with the pixel rectangles (col0, row0, col1, row1) inclusive set."""
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    for c0, r0, c1, r1 in rects:
        mask[r0 : r1 + 1, c0 : c1 + 1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def _run(name: str, root: Path, split: str, seed: int = 0) -> tuple[list[dict], Counter]:
    stats: Counter = Counter()
    samples = list(iter_source(name, root, split, seed=seed, stats=stats))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)), "keys must be unique"
    for sample in samples:
        validate_key(sample["__key__"])
        validate_meta(sample["json"])
        assert sample["__key__"].startswith(f"{name}-")
        assert sample["json"]["source"] == name and sample["json"]["split"] == split
        assert Path(sample["image"]).is_file() and Path(sample["audio"]).is_file()
        json.dumps(sample["json"])  # the metadata must be JSON-serialisable as is
    return samples, stats


def _by_key(samples: list[dict]) -> dict[str, dict]:
    return {s["__key__"]: s for s in samples}


def _instructions(samples: list[dict]) -> list[str]:
    return [s["json"]["instruction"] for s in samples]


# ---------------------------------------------------------------------------------------------------
# Registry and shared helpers


def test_registry_lists_every_table2_source():
    assert set(SOURCES) == {
        "vggss",
        "flickr_soundnet",
        "avsbench",
        "pascal_sound",
        "llp",
        "audioset_strong",
        "openimages_audioset",
        "openimages_vggsound",
        "avqa",
        "music_avqa",
        "valor",
    }
    assert set(SPLITS) == set(SOURCES)


def test_iter_source_rejects_unknown_names_and_splits(tmp_path):
    with pytest.raises(KeyError, match="known sources: audioset_strong, avqa"):
        iter_source("vgg-ss", tmp_path, "test")
    with pytest.raises(ValueError, match=r"no 'train' split; it offers \('test',\)"):
        iter_source("vggss", tmp_path, "train")


def test_clean_box_drops_garbage_and_degenerate_boxes_and_counts_them():
    stats: Counter = Counter()
    assert clean_box([0.1, 0.2, 0.3, 0.4], stats) == [0.1, 0.2, 0.3, 0.4]
    assert clean_box([-0.02, 0, 1.03, 1], stats) == [0.0, 0.0, 1.0, 1.0]  # border slop is clipped
    assert clean_box([0.3, 0.8, 0.6, -2.8823037615171176e16], stats) is None  # VGG-SS sentinel
    assert clean_box([0.5, 0.5, 0.5, 0.9], stats) is None  # zero width
    assert clean_box([0.6, 0.1, 0.4, 0.3], stats) is None  # corners swapped
    assert clean_box(["nan", 0, 1, 1], stats) is None
    assert clean_box([10, 20, 110, 70], stats, width=200, height=100) == [0.05, 0.2, 0.55, 0.7]
    assert stats == Counter(bad_box=4)


def test_sample_writer_builds_dot_free_keys_and_skips_duplicates(tmp_path):
    stats: Counter = Counter()
    writer = SampleWriter("valor", "test", stats)
    fields = {"instruction": "Describe it.", "answer": "A dog barks.", "references": ["A dog barks."]}
    sample = writer.make("CEfOX4fYlsY_20.000_30.000", tmp_path / "a.jpg", tmp_path / "a.wav", "avc", **fields)
    assert sample["__key__"] == "valor-CEfOX4fYlsY_20_000_30_000-avc"
    assert sample["json"] == {"task": "avc", "source": "valor", "split": "test", **fields}
    assert (
        writer.make("CEfOX4fYlsY_20.000_30.000", tmp_path / "b.jpg", tmp_path / "b.wav", "avc", **fields)
        is None
    )
    assert stats == Counter(duplicate=1)
    with pytest.raises(SampleError):  # the contract is checked as samples are made
        writer.make("other", tmp_path / "a.jpg", tmp_path / "a.wav", "avc", instruction="x", answer="y")


def test_merge_segments_joins_overlapping_and_touching_intervals():
    assert merge_segments([[5.0, 6.0], [1.0, 2.0], [2.0, 3.0], [5.5, 8.0], [9.0, 10.0]]) == [
        [1.0, 3.0],
        [5.0, 8.0],
        [9.0, 10.0],
    ]


def test_find_frame_prefers_a_chosen_frame_then_the_folder_frame_at_a_time(tmp_path):
    for i in range(1, 11):
        _image(tmp_path / "clip" / f"{i:06d}.jpg")
    assert find_frame(tmp_path, "clip") == tmp_path / "clip" / "000006.jpg"
    assert find_frame(tmp_path, "clip", at=0.0) == tmp_path / "clip" / "000001.jpg"
    assert find_frame(tmp_path, "clip", at=1.0) == tmp_path / "clip" / "000010.jpg"
    _image(tmp_path / "clip.jpg")
    assert find_frame(tmp_path, "clip") == tmp_path / "clip.jpg"
    assert find_frame(tmp_path, "absent") is None


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


# ---------------------------------------------------------------------------------------------------
# VGG-SS


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


# ---------------------------------------------------------------------------------------------------
# Flickr-SoundNet


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


# ---------------------------------------------------------------------------------------------------
# AVSBench


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


# ---------------------------------------------------------------------------------------------------
# PASCAL Sound


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


# ---------------------------------------------------------------------------------------------------
# LLP


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


# ---------------------------------------------------------------------------------------------------
# Open Images x AudioSet


def _openimages_audioset(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "openimages_audioset")
    for image in (
        "000002b66c9c498e",
        "00a3f1c5e9b2d471",
        "00b7c2d9a4e6f013",
        "00c4e8a1b3f5d927",
        "00e9a3c7d5b1f284",
    ):
        _image(root / "openimages" / "train" / f"{image}.jpg")
    _image(root / "openimages" / "validation" / "0001eeaf4aed83f9.jpg")
    for clip in (
        "--aE2O5G5WE_0",
        "-0SdAVK79lg_30000",
        "-1LrH01Ei1w_100000",
        "-5QrBL6MzLg_170000",
        "-0xM1xGxZyw_30000",
    ):
        _wav(root / "audioset" / "audio" / f"{clip}.wav")
    return root


def _check_facts(facts: list[dict], arigs: dict[str, dict], pools: dict[str, set[str]]) -> None:
    """Fact-checks agree with their ARIG twin: True ones keep its clip, False ones swap in a foreign one."""
    for fact in facts:
        meta = fact["json"]
        twin = arigs[fact["__key__"].replace("-avfact", "-arig")]["json"]
        assert meta["fact_type"] in (1, 4)
        assert meta["answer"] == ("True" if meta["label"] else "False")
        assert meta["paired"] is meta["label"]
        if meta["label"]:
            assert meta["audio_id"] == twin["audio_id"]
        else:
            assert meta["audio_id"] not in pools[twin["label_text"]]
        if meta["fact_type"] == 1:
            assert meta["boxes"] == [max(twin["boxes"], key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))]
            assert twin["answer"] in meta["instruction"]


def test_openimages_audioset_pairs_boxes_with_matching_clips(tmp_path):
    root = _openimages_audioset(tmp_path)
    samples, stats = _run("openimages_audioset", root, "train")
    arigs = {s["__key__"]: s for s in samples if s["json"]["task"] == "arig"}
    facts = [s for s in samples if s["json"]["task"] == "avfact"]
    expected = {  # in table order: Dog, Goat, Person, Man, Guitar
        "openimages_audioset-00a3f1c5e9b2d471-dog-arig": (
            [[0.1, 0.2, 0.6, 0.9], [0.65, 0.3, 0.95, 0.7]],  # XMin,XMax,YMin,YMax reordered
            "[0.10, 0.20, 0.60, 0.90]",
            "-1LrH01Ei1w_100000",
        ),
        "openimages_audioset-00c4e8a1b3f5d927-goat-arig": (
            [[0.3, 0.25, 0.7, 0.95]],
            "[0.30, 0.25, 0.70, 0.95]",
            "--aE2O5G5WE_0",
        ),
        # The three real person rows of the V6 file; speech clips pair with them now.
        "openimages_audioset-000002b66c9c498e-person-arig": (
            [
                [0.0125, 0.148438, 0.195312, 0.5875],
                [0.025, 0.714063, 0.276563, 0.948438],
                [0.151562, 0.198437, 0.310937, 0.590625],
            ],
            "[0.01, 0.15, 0.20, 0.59]",  # the largest (0.183 x 0.439)
            "-0SdAVK79lg_30000",  # Speech + male speech; --aE2O5G5WE_0 (Speech) is the other one
        ),
        "openimages_audioset-00a3f1c5e9b2d471-man-arig": (
            [[0.05, 0.0, 0.35, 0.85]],
            "[0.05, 0.00, 0.35, 0.85]",
            "-0SdAVK79lg_30000",
        ),
        "openimages_audioset-00b7c2d9a4e6f013-guitar-arig": (
            [[0.25, 0.4, 0.75, 0.8]],
            "[0.25, 0.40, 0.75, 0.80]",
            "-5QrBL6MzLg_170000",
        ),
    }
    assert list(arigs) == list(expected)
    for key, (boxes, answer, clip) in expected.items():
        meta = arigs[key]["json"]
        assert (meta["boxes"], meta["answer"], meta["audio_id"], meta["paired"]) == (
            boxes,
            answer,
            clip,
            True,
        )
        assert arigs[key]["audio"].name == f"{clip}.wav"
    assert [f["__key__"] for f in facts] == [k.replace("-arig", "-avfact") for k in expected]
    pools = {"Dog": {"-1LrH01Ei1w_100000"}, "Goat": {"--aE2O5G5WE_0"}, "Man": {"-0SdAVK79lg_30000"}}
    pools["Guitar"] = {"-5QrBL6MzLg_170000"}
    pools["Person"] = {"--aE2O5G5WE_0", "-0SdAVK79lg_30000"}
    _check_facts(facts, arigs, pools)
    # The depicted guitar; image 00d2b6f8c1e3a759 and the clips -2PDE7hUArE_12500 (dog),
    # --PJHxphWEs_30000 (speech), --ZhevVpy1s_50000 (toothbrush) and --aO5cdqSAg_30000 (male and
    # child singing) are missing; no accordion clip for 00e9a3c7d5b1f284.
    assert stats == Counter(depiction=1, missing_media=5, no_pair=1)


def test_openimages_group_boxes_stay_in_the_ground_truth_but_are_never_the_answer(tmp_path):
    root = _openimages_audioset(tmp_path)
    boxes = root / "openimages" / "oidv6-train-annotations-bbox.csv"
    tail = ",0,0,1,0,0" + ",0" * 8  # IsOccluded, IsTruncated, IsGroupOf=1, IsDepiction, IsInside, XClicks
    with open(boxes, "a", encoding="utf-8") as stream:
        # A pack of dogs over most of the dog image (larger than either dog), and a goat image whose
        # only goats are a herd.
        stream.write("00a3f1c5e9b2d471,xclick,/m/0bt9lr,1,0.000000,1.000000,0.100000,1.000000" + tail + "\n")
        stream.write("00f1a2b3c4d5e6f7,xclick,/m/03fwl,1,0.100000,0.900000,0.100000,0.900000" + tail + "\n")
    _image(root / "openimages" / "train" / "00f1a2b3c4d5e6f7.jpg")
    samples, stats = _run("openimages_audioset", root, "train")
    dog = _by_key(samples)["openimages_audioset-00a3f1c5e9b2d471-dog-arig"]["json"]
    assert dog["boxes"] == [[0.1, 0.2, 0.6, 0.9], [0.65, 0.3, 0.95, 0.7], [0.0, 0.1, 1.0, 1.0]]
    assert dog["answer"] == "[0.10, 0.20, 0.60, 0.90]"  # the largest single dog, not the pack
    assert not any("00f1a2b3c4d5e6f7" in s["__key__"] for s in samples)
    assert stats["group_only"] == 1
    # A type-1 statement names the largest single dog too: find a seed that draws one.
    type_one = []
    for seed in range(20):
        seeded, _ = _run("openimages_audioset", root, "train", seed=seed)
        fact = _by_key(seeded)["openimages_audioset-00a3f1c5e9b2d471-dog-avfact"]["json"]
        if fact["fact_type"] == 1:
            type_one.append(fact)
    assert type_one, "no seed drew a type-1 statement for the dog image"
    for fact in type_one:
        assert fact["boxes"] == [[0.1, 0.2, 0.6, 0.9]]
        assert "[0.10, 0.20, 0.60, 0.90]" in fact["instruction"]


def test_openimages_audioset_facts_cover_both_types_and_verdicts_over_seeds(tmp_path):
    root = _openimages_audioset(tmp_path)
    seen = set()
    for seed in range(12):
        samples, _ = _run("openimages_audioset", root, "train", seed=seed)
        arigs = {s["__key__"]: s for s in samples if s["json"]["task"] == "arig"}
        facts = [s for s in samples if s["json"]["task"] == "avfact"]
        pools = {"Dog": {"-1LrH01Ei1w_100000"}, "Goat": {"--aE2O5G5WE_0"}, "Man": {"-0SdAVK79lg_30000"}}
        pools["Guitar"] = {"-5QrBL6MzLg_170000"}
        pools["Person"] = {"--aE2O5G5WE_0", "-0SdAVK79lg_30000"}
        _check_facts(facts, arigs, pools)
        seen |= {(f["json"]["fact_type"], f["json"]["label"]) for f in facts}
    assert seen == {(1, True), (1, False), (4, True), (4, False)}


def test_openimages_audioset_not_visible_clips_sound_like_nothing_the_image_shows(tmp_path):
    """A False "is the sound source visible?" never takes a clip of another class the image shows:
    the dog image also shows a man (male speech), and the guitar image gets a crowd (group-only
    Person, any voice). A False type 1 names the boxed object, so only its own class is left out."""
    root = _openimages_audioset(tmp_path)
    crowd = ",0,0,1,0,0" + ",0" * 8  # IsGroupOf=1
    with open(root / "openimages" / "oidv6-train-annotations-bbox.csv", "a", encoding="utf-8") as stream:
        stream.write("00b7c2d9a4e6f013,xclick,/m/01g317,1,0.000000,0.300000,0.000000,0.400000" + crowd + "\n")
    table = {c.name: c for c in load_pairing_table()}
    shown = {
        "openimages_audioset-00a3f1c5e9b2d471-dog-avfact": ("Dog", "Man"),
        "openimages_audioset-00b7c2d9a4e6f013-guitar-avfact": ("Guitar", "Person"),
    }
    labels = {  # the fixture's clips with audio
        "--aE2O5G5WE_0": {"/m/03fwl", "/m/04rlf", "/m/09x0r"},
        "-0SdAVK79lg_30000": {"/m/05zppz", "/m/09x0r"},
        "-1LrH01Ei1w_100000": {"/m/0bt9lr", "/m/05tny_"},
        "-5QrBL6MzLg_170000": {"/m/0342h", "/m/042v_gx", "/m/04rlf"},
    }
    not_visible = Counter()
    for seed in range(40):
        samples, _ = _run("openimages_audioset", root, "train", seed=seed)
        for key, names in shown.items():
            fact = _by_key(samples)[key]["json"]
            if fact["label"]:
                continue
            heard = labels[fact["audio_id"]]
            own = table[names[0]].audioset_mids
            if fact["fact_type"] == 4:
                not_visible[key] += 1
                assert not heard & own.union(*(table[n].audioset_mids for n in names)), (seed, key, heard)
            else:
                assert not heard & own, (seed, key, heard)
    assert set(not_visible) == set(shown)  # both images got False type-4 statements


def test_openimages_audioset_val_reads_the_validation_layout(tmp_path):
    samples, _ = _run("openimages_audioset", _openimages_audioset(tmp_path), "val")
    arig = _by_key(samples)["openimages_audioset-0001eeaf4aed83f9-airplane-arig"]["json"]
    assert arig["boxes"] == [[0.022673031, 0.07103825, 0.9642005, 0.80054647]]
    assert arig["answer"] == "[0.02, 0.07, 0.96, 0.80]"
    assert arig["audio_id"] == "-0xM1xGxZyw_30000"


# ---------------------------------------------------------------------------------------------------
# Open Images x VGGSound


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


# ---------------------------------------------------------------------------------------------------
# AudioSet Strong x Open Images


def _audioset_strong(tmp_path: Path) -> Path:
    root = _dataset(tmp_path, "audioset_strong")
    for image in ("0a5c3e7b9d1f2468", "0b8d4f6a2c9e1357"):
        _image(root / "openimages" / "test" / f"{image}.jpg")
    for clip in (
        "M6XLGqoquxI_0",
        "YxlGt805lTA_30000",
        "_AUtYTaYMrE_100000",
        "dIIiaO12I5Q_6000",
        "K8On7nUJuP8_30000",
    ):
        _wav(root / "audioset" / "audio" / f"{clip}.wav")
    return root


def test_audioset_strong_localises_merged_events_of_the_pictured_class(tmp_path):
    samples, stats = _run("audioset_strong", _audioset_strong(tmp_path), "test")
    igatl = {s["__key__"]: s for s in samples if s["json"]["task"] == "igatl"}
    expected = {
        # Dog 5.2-7.0 and Bark 6.5-8.25 merge; 9.0-10.0 stays apart. 8.25 prints as 8.2 (half-even).
        "audioset_strong-M6XLGqoquxI_0-dog-igatl": (
            [[5.2, 8.25], [9.0, 10.0]],
            "[5.2, 8.2], [9.0, 10.0]",
            "0a5c3e7b9d1f2468",
        ),
        "audioset_strong-YxlGt805lTA_30000-guitar-igatl": ([[0.0, 10.0]], "[0.0, 10.0]", "0b8d4f6a2c9e1357"),
        # 8.0-12.5 is clipped to the 10-s clip; the zero-length 3.0-3.0 row is dropped.
        "audioset_strong-dIIiaO12I5Q_6000-dog-igatl": ([[8.0, 10.0]], "[8.0, 10.0]", "0a5c3e7b9d1f2468"),
    }
    assert list(igatl) == list(expected)
    for key, (segments, answer, image_id) in expected.items():
        meta = igatl[key]["json"]
        assert (meta["segments"], meta["answer"], meta["image_id"], meta["duration"]) == (
            segments,
            answer,
            image_id,
            10.0,
        )
        assert meta["label_text"].lower() in meta["instruction"]
    assert [s["__key__"] for s in samples if s["json"]["task"] == "avfact"] == [
        k.replace("-igatl", "-avfact") for k in expected
    ]
    _check_strong_facts(samples, stats)
    assert stats == Counter(bad_segment=1, missing_media=1, no_pair=1)


# The longest silent stretch of each clip's class: what a False statement must name.
_GAPS = {"M6XLGqoquxI_0": [0.0, 5.2], "YxlGt805lTA_30000": None, "dIIiaO12I5Q_6000": [0.0, 8.0]}


def _check_strong_facts(samples: list[dict], stats: Counter) -> None:
    """True facts name one of the class's segments, False ones its longest silence; pops no_negative."""
    igatl = {s["__key__"]: s["json"] for s in samples if s["json"]["task"] == "igatl"}
    for sample in samples:
        meta = sample["json"]
        if meta["task"] != "avfact":
            continue
        twin = igatl[sample["__key__"].replace("-avfact", "-igatl")]
        clip = sample["__key__"].split("-")[1]
        assert meta["fact_type"] in (2, 3) and meta["paired"] is True
        (segment,) = meta["segments"]
        if meta["label"]:
            assert segment in twin["segments"]
        else:
            assert _GAPS[clip] is not None and segment == _GAPS[clip]
        if meta["fact_type"] == 3:
            assert meta["boxes"] == twin["boxes"] and "[0." in meta["instruction"]
        else:
            assert "boxes" not in meta and twin["label_text"].lower() in meta["instruction"]
    # Only the guitar clip, sounding throughout, has no silent stretch to deny.
    assert stats.pop("no_negative", 0) <= 1


def test_audioset_strong_facts_cover_both_types_and_verdicts_over_seeds(tmp_path):
    root = _audioset_strong(tmp_path)
    seen = set()
    no_negative = 0
    for seed in range(12):
        samples, stats = _run("audioset_strong", root, "test", seed=seed)
        no_negative += stats["no_negative"]
        _check_strong_facts(samples, stats)
        seen |= {
            (s["json"]["fact_type"], s["json"]["label"]) for s in samples if s["json"]["task"] == "avfact"
        }
    assert seen == {(2, True), (2, False), (3, True), (3, False)}
    assert no_negative > 0  # some seed drew False for the guitar clip and had to turn it True


# ---------------------------------------------------------------------------------------------------
# AVQA


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


# ---------------------------------------------------------------------------------------------------
# MUSIC-AVQA


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


# ---------------------------------------------------------------------------------------------------
# VALOR-32K


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
