"""The Open Images x AudioSet converter: paired boxes and their fact-checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pipelines.avfit.sources._pairing import load_pairing_table
from tests.pipelines.sources.helpers import _by_key, _dataset, _image, _run, _wav


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
