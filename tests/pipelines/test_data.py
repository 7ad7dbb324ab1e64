"""Streaming shards with Ray Data: stages on hand-made input, then the S3 round trip and its faults."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest

from meerkat_core.config import PRESETS
from meerkat_core.correspondence import CLASS_SLOTS, class_id
from meerkat_core.tokenizer import load_tokenizer
from pipelines import data, storage
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples

TINY = PRESETS["tiny"]
WORLD = WORLD_PRESETS["easy"]


def _world(n_scenes: int, seed: int = 0, split: str = "train") -> list[dict]:
    return list(iter_samples(WORLD, split, n_scenes, seed))


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _members(samples: list[dict]) -> list[tuple[str, bytes]]:
    out = []
    for s in samples:
        out += [(f"{s['__key__']}.jpg", s["image"]), (f"{s['__key__']}.flac", s["audio"])]
        out.append((f"{s['__key__']}.json", json.dumps(s["json"]).encode()))
    return out


def test_untar_groups_members_by_key():
    samples = _world(1)[:3]
    rows = list(data.untar({"bytes": _tar(_members(samples)), "path": "x.tar"}))
    assert [r["__key__"] for r in rows] == [s["__key__"] for s in samples]
    assert rows[1]["jpg"] == samples[1]["image"] and json.loads(rows[2]["json"]) == samples[2]["json"]


def test_untar_keeps_samples_before_the_damage():
    samples = _world(1)[:3]
    raw = _tar(_members(samples))
    cut = raw[: int(len(raw) * 0.8)]  # the third sample is cut
    rows = list(data.untar({"bytes": cut, "path": "x.tar"}))
    keys = [r["__key__"] for r in rows if r["json"] is not None]
    assert keys[:2] == [s["__key__"] for s in samples[:2]]
    assert samples[2]["__key__"] not in keys


def _batch(samples: list[dict], json_override: dict[int, bytes] | None = None) -> dict[str, np.ndarray]:
    def col(values):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr

    jsons = [json.dumps(s["json"]).encode() for s in samples]
    for i, raw in (json_override or {}).items():
        jsons[i] = raw
    return {
        "__key__": col([s["__key__"] for s in samples]),
        "jpg": col([s["image"] for s in samples]),
        "flac": col([s["audio"] for s in samples]),
        "json": col(jsons),
    }


def test_preprocess_skips_and_counts_bad_samples(caplog):
    samples = _world(2)[:5]
    batch = _batch(
        samples, {3: json.dumps({k: v for k, v in samples[3]["json"].items() if k != "task"}).encode()}
    )
    batch["jpg"][1] = b"\xff\xd8\xff garbage jpeg"
    batch["flac"][2] = b"fLaC garbage"
    out = data.ShardRows(TINY, None)(batch)
    assert list(out["__key__"]) == [samples[0]["__key__"], samples[4]["__key__"]]
    assert out["pixel_values"].shape == (2, 3, 224, 224)
    assert out["audio_features"].shape == (2, 1, 1, TINY.audio.frames_per_window, TINY.audio.num_mel_bins)
    assert "bad_media" in caplog.text and "bad_json" in caplog.text


def test_mixing_drops_unwanted_tasks_deterministically():
    samples = _world(3)
    keep = {"arig": 1.0}
    a = data.ShardRows(TINY, None, keep, seed=1)(_batch(samples))
    b = data.ShardRows(TINY, None, keep, seed=1)(_batch(samples))
    assert set(a["task"]) == {"arig"} and list(a["__key__"]) == list(b["__key__"])


def test_collate_pads_ragged_text():
    samples = _world(1)[:3]
    rows = data.ShardRows(TINY, None)(_batch(samples))
    pad = load_tokenizer(None).pad_token_id
    batch = data.MeerkatCollate(pad)(rows)
    lengths = [len(x) for x in rows["input_ids"]]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    left = data.MeerkatCollate(pad, side="left")(rows)
    assert left["attention_mask"][:, -1].all()
    # the match loss's class columns: the world lists what each picture shows and each clip holds
    assert batch["classes_known"].all() and batch["image_classes"].shape == (3, CLASS_SLOTS)
    for i, s in enumerate(samples):
        shown = {class_id(o["class"]) for o in s["json"]["objects"]}
        assert {int(c) for c in batch["image_classes"][i] if c >= 0} == shown


def _write_split(uri: str, samples: list[dict], max_count: int = 4) -> dict:
    with shards.ShardWriter(uri, max_count=max_count, fingerprint="test") as writer:
        for s in samples:
            writer.write(s)
    return shards.read_manifest(uri)


def _collect(ds) -> dict[str, dict]:
    return {r["__key__"]: r for r in ds.iter_rows()}


def test_round_trip_through_s3(ray_local, s3_uri):
    samples = _world(4)
    manifest = _write_split(s3_uri, samples)
    assert all(storage.exists(u) for u in shards.shard_uris(s3_uri)) and s3_uri.startswith("s3://")
    rows = _collect(data.build_dataset(data.DataConfig(uri=s3_uri), TINY, None, keep_meta=True))
    assert set(rows) == {s["__key__"] for s in samples}
    assert manifest["total"] == len(rows)
    assert Counter(r["task"] for r in rows.values()) == Counter(manifest["counts"]["task"])
    by_key = {s["__key__"]: s for s in samples}
    for key, row in rows.items():
        assert json.loads(row["meta"]) == by_key[key]["json"]


def test_epochs_in_one_stream_each_draw_their_own_subset(ray_local, s3_uri):
    """Training reads all its epochs as one stream; each epoch thins the mixed task differently."""
    samples = _world(6, seed=2)
    _write_split(s3_uri, samples)
    arig = sum(s["json"]["task"] == "arig" for s in samples)
    cfg = data.DataConfig(uri=s3_uri, task_weights={"arig": 1.0, "avfact": 1.0})
    rows = list(data.build_dataset(cfg, TINY, None, epochs=3).iter_rows())
    by_epoch = {e: {r["__key__"] for r in rows if r["epoch"] == e} for e in range(3)}
    assert sum(len(keys) for keys in by_epoch.values()) == len(rows)
    assert all(len(keys) > arig for keys in by_epoch.values())  # arig in full, a share of avfact
    assert len({frozenset(keys) for keys in by_epoch.values()}) > 1, "every epoch drew the same subset"
    assert data.samples_per_epoch(cfg) == pytest.approx(2 * arig)
    # an epoch depends only on (seed, epoch): a stream started at epoch 1 continues the first one
    assert set(_collect(data.build_dataset(cfg, TINY, None, start_epoch=1))) == by_epoch[1]


def _by_epoch(rows) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for row in rows:
        out.setdefault(int(row["epoch"]), set()).add(row["__key__"])
    return out


@pytest.mark.parametrize("keep_last", [True, False])
def test_recut_makes_whole_batches_in_order(keep_last):
    """Batches of 3, 0, 5 and 1 rows re-cut to 4: two whole batches, then the one left row only
    when the last partial batch is kept; rows keep their order and every column stays aligned."""
    sizes, start, parts = [3, 0, 5, 1], 0, []
    for n in sizes:
        keys = np.array([f"k{i}" for i in range(start, start + n)], dtype=object)
        parts.append({"__key__": keys, "x": np.arange(start, start + n) * 10})
        start += n
    out = list(data.recut(iter(parts), 4, keep_last=keep_last))
    assert [len(b["__key__"]) for b in out] == ([4, 4, 1] if keep_last else [4, 4])
    keys = [k for b in out for k in b["__key__"]]
    assert keys == [f"k{i}" for i in range(len(keys))]
    assert all((b["x"] == [int(k[1:]) * 10 for k in b["__key__"]]).all() for b in out)
    with pytest.raises(ValueError, match="size must be at least 1"):
        next(data.recut(iter(parts), 0, keep_last=keep_last))


def test_cached_epochs_draw_what_the_stream_draws(ray_local, s3_uri):
    """The cached split, thinned per epoch by the caller's own count, keeps what the stream keeps."""
    samples = _world(5, seed=3)
    _write_split(s3_uri, samples)
    cfg = data.DataConfig(uri=s3_uri, task_weights={"arig": 1.0, "avfact": 1.0}, cache=True)
    ds = data.build_cached_epochs(cfg, TINY, None)
    keep = data.keep_probs(cfg)
    cached = {}
    for epoch in range(2):
        batches = data.cached_batches(
            ds.iter_batches(batch_size=3), keep=keep, seed=0, epoch=epoch, batch_size=1
        )
        cached[epoch] = {str(b["__key__"][0]) for b in batches}
    assert cached == _by_epoch(data.build_dataset(cfg, TINY, None, epochs=2).iter_rows())
    assert cached[0] != cached[1]
    tasks = {s["__key__"]: s["json"]["task"] for s in samples}
    assert {tasks[k] for keys in cached.values() for k in keys} == {"arig", "avfact"}


def test_cache_refuses_a_split_larger_than_the_object_store(ray_local, s3_uri, monkeypatch):
    _write_split(s3_uri, _world(2))
    cfg = data.DataConfig(uri=s3_uri, cache=True)
    need = data.check_cache_fits(cfg, TINY)  # fits the test's object store
    assert need == shards.read_manifest(s3_uri)["total"] * data.row_bytes(TINY)
    monkeypatch.setattr(data.ray, "cluster_resources", lambda: {"object_store_memory": need})
    with pytest.raises(ValueError, match=r"data.cache: .* more than 80% of the cluster's .*stream it"):
        data.build_cached_epochs(cfg, TINY, None)


def test_faults_are_skipped_and_counted(ray_local, s3_uri):
    samples = _world(4, seed=5)
    _write_split(s3_uri, samples, max_count=5)
    uris = shards.shard_uris(s3_uri)
    assert len(uris) >= 3
    # damage three shards in place: truncate one, and corrupt a member of another
    first = storage.read_bytes(uris[0])
    storage.atomic_write_bytes(uris[0], first[: len(first) // 2])
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uris[1]))) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = {}
    for i, (name, payload) in enumerate(members):
        key, ext = name.split(".", 1)
        if ext == "jpg" and "jpg" not in bad:
            members[i], bad["jpg"] = (name, b"\xff\xd8\xffnot a jpeg"), key
        elif ext == "flac" and "flac" not in bad and key not in bad.values():
            members[i], bad["flac"] = (name, b"fLaC\x00broken"), key
        elif ext == "json" and "json" not in bad and key not in bad.values():
            meta = json.loads(payload)
            del meta["task"]
            members[i], bad["json"] = (name, json.dumps(meta).encode()), key
    storage.atomic_write_bytes(uris[1], _tar(members))

    counter = data.skip_counter()
    before = Counter(data.skip_counts())
    rows = _collect(data.build_dataset(data.DataConfig(uri=s3_uri), TINY, None))
    after = Counter(data.skip_counts())
    delta = after - before
    assert counter is not None
    assert delta["corrupt_tar"] >= 1 and delta["bad_media"] == 2 and delta["bad_json"] >= 1
    in_damaged = {s["__key__"] for s in samples[:5]}
    untouched = {s["__key__"] for s in samples[5:]} - set(bad.values())
    assert untouched <= set(rows), "every sample outside the damage is read"
    assert not set(bad.values()) & set(rows)
    assert len(in_damaged & set(rows)) < 5


def test_stream_hands_on_each_yield_as_its_own_block(ray_local, tmp_path):
    """A stream task's rows leave it ``preprocess_batch`` at a time, each yield its own block: Ray
    Data emits a block only once its buffer is above the target, so with the target at a chunk's
    estimated bytes a yield (a little under the estimate) waited for the next (blocks of 5/5/6
    rows here). Yields of whole chunks under mixing: ``test_data_scale``."""
    uri = str(tmp_path / "split")
    samples = _world(6)
    _write_split(uri, samples, max_count=len(samples))  # one shard: one read group
    cfg = data.DataConfig(uri=uri, preprocess_batch=4, mix_shards=1)
    sizes = [len(b["__key__"]) for b in data.build_dataset(cfg, TINY, None).iter_batches(batch_size=None)]
    assert sum(sizes) == len(samples) > 8
    assert sizes[:-1] == [4] * (len(sizes) - 1) and 0 < sizes[-1] <= 4, sizes
