"""The stream at cluster scale: lean rows, per-rank shares, exact resumption, read-time mixing."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

from meerkat_core import batching
from meerkat_core.config import PRESETS
from meerkat_core.tokenizer import load_tokenizer
from pipelines import data, mixing
from pipelines.avfit import shards
from pipelines.avfit.world import WORLD_PRESETS, iter_samples

TINY = PRESETS["tiny"]


def _world(n_scenes: int, seed: int = 0) -> list[dict]:
    return list(iter_samples(WORLD_PRESETS["easy"], "train", n_scenes, seed))


def _batch(samples: list[dict]) -> dict[str, np.ndarray]:
    def col(values):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr

    return {
        "__key__": col([s["__key__"] for s in samples]),
        "jpg": col([s["image"] for s in samples]),
        "flac": col([s["audio"] for s in samples]),
        "json": col([json.dumps(s["json"]).encode() for s in samples]),
    }


def test_lean_rows_normalise_to_what_the_model_was_fed():
    """uint8 pixels and float16 mels in the rows; the collate gives back the float32 tensors of
    the shared preprocessor (pixels to float32 rounding, mels to float16's)."""
    samples = _world(1)[:3]
    rows = data.ShardRows(TINY, None)(_batch(samples))
    assert rows["pixel_values"].dtype == np.uint8 and rows["audio_features"].dtype == np.float16
    pad = load_tokenizer(None).pad_token_id
    batch = data.MeerkatCollate(pad)(rows)
    prep = batching.SamplePreprocessor(TINY, load_tokenizer(None))
    ref = [prep(s["image"], s["audio"], s["json"]) for s in samples]
    want_px = torch.from_numpy(np.stack([r["pixel_values"] for r in ref]))
    want_mel = torch.from_numpy(np.stack([r["audio_features"] for r in ref]))
    assert batch["pixel_values"].dtype == torch.float32 and "pixel_norm" not in batch
    torch.testing.assert_close(batch["pixel_values"], want_px, atol=2e-6, rtol=0)
    torch.testing.assert_close(batch["audio_features"], want_mel, atol=0, rtol=1e-3)
    lean = sum(rows[c][0].nbytes for c in ("pixel_values", "audio_features", "pixel_norm"))
    fat = ref[0]["pixel_values"].nbytes + ref[0]["audio_features"].nbytes
    assert lean < 0.4 * fat


def test_rank_groups_cover_each_epoch_once_and_differ_by_epoch():
    uris = [f"s{i}" for i in range(23)]
    for world in (1, 2, 3):
        for epoch in (0, 1):
            got = [
                u
                for r in range(world)
                for g in data.rank_groups(uris, seed=7, epoch=epoch, rank=r, world=world, group=4)
                for u in g
            ]
            assert sorted(got) == sorted(uris)
    assert data.rank_groups(uris, seed=7, epoch=0, group=4) != data.rank_groups(
        uris, seed=7, epoch=1, group=4
    )
    assert data.rank_groups(uris, seed=7, epoch=1, group=4) == data.rank_groups(
        uris, seed=7, epoch=1, group=4
    )


def _write(uri: str, samples: list[dict], max_count: int) -> None:
    with shards.ShardWriter(uri, max_count=max_count, fingerprint="test") as writer:
        for s in samples:
            writer.write(s)


def test_missing_shard_is_an_error_at_start(tmp_path):
    uri = str(tmp_path / "split")
    _write(uri, _world(2), max_count=3)
    os.remove(shards.shard_uris(uri)[1])
    with pytest.raises(FileNotFoundError, match="1 of the .* shards .* missing"):
        data.check_shards(uri)


def test_resumed_stream_continues_exactly_where_it_stopped(ray_local, s3_uri):
    """Rank 1 of 2: stop after k rows, restart at the recorded position: the rows that follow are
    the ones the uninterrupted stream would have given, and the prefix is not read again."""
    _write(s3_uri, _world(6, seed=4), max_count=3)
    cfg = data.DataConfig(uri=s3_uri, task_weights={"arig": 1.0, "avfact": 1.0}, mix_shards=2)
    full = list(data.build_dataset(cfg, TINY, None, epochs=2, rank=1, world=2).iter_batches(batch_size=4))
    pairs = [(str(k), int(e)) for b in full for k, e in zip(b["__key__"], b["epoch"], strict=True)]
    assert len(set(pairs)) == len(pairs) and {e for _, e in pairs} == {0, 1}
    other = list(data.build_dataset(cfg, TINY, None, epochs=1, rank=0, world=2).iter_rows())
    first_epoch = {
        str(b) for batch in full for b, e in zip(batch["__key__"], batch["epoch"], strict=True) if e == 0
    }
    assert not first_epoch & {r["__key__"] for r in other}, "the ranks' shares overlap"
    for cut in (1, len(full) - 2):
        pos = data.stream_position(full[cut - 1])
        rest = data.build_dataset(cfg, TINY, None, epochs=2 - pos["epoch"], rank=1, world=2, position=pos)
        got = [(str(r["__key__"]), int(r["epoch"])) for r in rest.iter_rows()]
        want = [(str(k), int(e)) for b in full[cut:] for k, e in zip(b["__key__"], b["epoch"], strict=True)]
        assert got == want


def test_read_time_mixing_evens_out_sources(tmp_path):
    """Sources written as runs of shards (as the build writes them): a worker's 256-sample windows
    come near the configured mix once a read group interleaves several shards."""
    base = _world(8, seed=1)
    samples = []
    for src in ("a", "b", "c"):
        for i in range(512):
            s = base[i % len(base)]
            samples.append({**s, "__key__": f"{src}_{i:05d}", "json": {**s["json"], "source": src}})
    uri = str(tmp_path / "split")
    _write(uri, samples, max_count=64)
    target = shards.read_manifest(uri)["counts"]["source"]
    tvd = {}
    for name, group, stratify in (("before", 1, False), ("after", data.DataConfig().mix_shards, True)):
        stream = data.raw_stream(uri, seed=0, epoch=0, mix_shards=group, stratify=stratify)
        labels = [s["meta"]["source"] for s in stream]
        assert Counter(labels) == Counter(target)
        tvd[name] = mixing.window_tvd(labels, target, 256)
    # before: a plain shuffle of the shards, read one at a time; after: sources spread through the
    # epoch and mix_shards shards interleaved per read task
    print(f"worst 256-window source TVD: before {tvd['before']:.3f}, after {tvd['after']:.3f}")
    assert tvd["after"] < 0.5 * tvd["before"] and tvd["after"] < 0.2


def test_one_stream_task_gives_what_read_then_preprocess_give(tmp_path):
    """``stream_group`` (the stream's one operator) on a read group of two shards: the rows, in
    order and position, of ``group_samples`` then ``preprocess_batch`` over the same samples."""
    uri = str(tmp_path / "split")
    _write(uri, _world(3, seed=2), max_count=5)
    uris = shards.shard_uris(uri)[:2]
    item = {"uris": json.dumps(uris), "epoch": 1, "group": 0, "skip": 2, "seed": 7}
    kwargs = {"model_config": TINY, "tokenizer_dir": None, "keep_probs": {"arig": 1.0, "avfact": 0.5}}
    got = list(data.stream_group({k: np.array([v]) for k, v in item.items()}, chunk=3, **kwargs))

    samples = list(data.group_samples(item))
    assert len(samples) == 10 - 2  # two shards of five, from the third sample on
    want = data.preprocess_batch(
        {
            **{
                c: np.array([s[c] for s in samples], dtype=object) for c in ("__key__", "jpg", "flac", "json")
            },
            **{c: np.array([s[c] for s in samples]) for c in data.POSITION_COLUMNS},
        },
        **kwargs,
    )
    # every yield a whole chunk (one Ray Data block each) but the last: what mixing drops from
    # one call is made up from the next
    sizes = [len(b["__key__"]) for b in got]
    assert sizes[:-1] == [3] * (len(sizes) - 1) and 0 < sizes[-1] <= 3, sizes
    assert len(want["__key__"]) < len(samples)  # mixing dropped some
    for column in ("__key__", "task", "epoch", "group", "index"):
        assert [v for b in got for v in b[column]] == list(want[column]), column
    np.testing.assert_array_equal(np.concatenate([b["pixel_values"] for b in got]), want["pixel_values"])
    assert set(want["task"]) <= {"arig", "avfact"} and len(want["__key__"]) > 0
    # a group whose every sample task mixing drops yields no batch (not an empty one)
    none = {**kwargs, "keep_probs": {"no-such-task": 1.0}}
    assert list(data.stream_group({k: np.array([v]) for k, v in item.items()}, chunk=3, **none)) == []
