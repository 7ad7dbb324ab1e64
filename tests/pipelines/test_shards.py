"""pipelines.avfit.shards: deterministic WebDataset shards, caps, manifests, atomic publication."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from pipelines import storage
from pipelines.avfit import shards
from pipelines.avfit.shards import ShardWriter, merge_manifests, read_manifest, shard_uris

REPO = Path(__file__).resolve().parents[2]
TASK_META = {
    "arig": {"boxes": [[0.1, 0.2, 0.5, 0.6]]},
    "igatl": {"segments": [[1.0, 2.5]], "duration": 10.0},
    "avfact": {"fact_type": 2, "label": True},
    "avqa": {"qa_category": "Count"},
    "avc": {"references": ["a dog barks"]},
}


def png(seed: int = 0, size: int = 16) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def wav(seed: int = 0, channels: int = 1, frames: int = 1600, rate: int = 16000) -> bytes:
    signal_ = np.random.default_rng(seed).uniform(-0.5, 0.5, (frames, channels)).astype(np.float32)
    out = io.BytesIO()
    sf.write(out, signal_, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def sample(i: int, task: str = "avc", source: str = "procedural", split: str = "train", **over) -> dict:
    meta = {"task": task, "source": source, "split": split, "instruction": f"q{i}", "answer": f"a{i}"}
    meta.update(TASK_META[task])
    return {"__key__": f"{source}-{i:05d}", "image": png(i), "audio": wav(i), "json": meta, **over}


def members(path: str | Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def write_all(out: str, samples: list[dict], **kwargs) -> shards.Manifest:
    with ShardWriter(out, **kwargs) as writer:
        for s in samples:
            writer.write(s)
    return writer.close()


def test_same_samples_give_the_same_bytes(tmp_path):
    samples = [sample(i, task=t) for i, t in enumerate(TASK_META)]
    a = write_all(str(tmp_path / "a"), samples, max_count=3, fingerprint="cfg1")
    b = write_all(str(tmp_path / "b"), samples, max_count=3, fingerprint="cfg1")
    assert a == b and len(a["shards"]) == 2
    for info in a["shards"]:
        assert (tmp_path / "a" / info["name"]).read_bytes() == (tmp_path / "b" / info["name"]).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_members_are_contiguous_in_order_with_fixed_headers(tmp_path):
    write_all(str(tmp_path), [sample(i) for i in range(3)])
    infos = members(tmp_path / "shard-000000.tar")
    keys = [f"procedural-{i:05d}" for i in range(3)]
    assert [m.name for m in infos] == [f"{k}.{ext}" for k in keys for ext in ("jpg", "flac", "json")]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in infos} == {
        (0, 0, 0, "", "", 0o644, tarfile.REGTYPE)
    }


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        out, format="JPEG"
    )
    return out.getvalue()


def test_media_are_reencoded_only_when_needed(tmp_path):
    jpeg = io.BytesIO(_jpeg())
    flac = io.BytesIO()
    sf.write(flac, np.zeros(800, np.float32), 8000, format="FLAC")
    image_path = tmp_path / "in.png"
    image_path.write_bytes(png(7, size=20))
    converted = sample(0, image=image_path, audio=wav(1, channels=2, frames=3200, rate=22050))
    kept = sample(1, image=jpeg.getvalue(), audio=flac.getvalue())
    write_all(str(tmp_path / "out"), [converted, kept])

    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        data = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    with Image.open(io.BytesIO(data["procedural-00000.jpg"])) as image:
        assert image.format == "JPEG" and image.size == (20, 20) and image.mode == "RGB"
    info = sf.info(io.BytesIO(data["procedural-00000.flac"]))
    assert (info.format, info.channels, info.samplerate, info.frames) == ("FLAC", 1, 22050, 3200)
    assert data["procedural-00001.jpg"] == jpeg.getvalue()
    assert data["procedural-00001.flac"] == flac.getvalue()
    assert json.loads(data["procedural-00001.json"]) == kept["json"]


def test_count_cap_and_names(tmp_path):
    manifest = write_all(str(tmp_path), [sample(i) for i in range(7)], max_count=3, prefix="part-a")
    assert [(s["name"], s["count"]) for s in manifest["shards"]] == [
        ("part-a-000000.tar", 3),
        ("part-a-000001.tar", 3),
        ("part-a-000002.tar", 1),
    ]
    assert len(members(tmp_path / "part-a-000001.tar")) == 9


def _footprint(infos: list[tarfile.TarInfo]) -> int:
    """Bytes these members take in a tar: headers (PAX included) and data padded to 512."""
    return sum(m.offset_data - m.offset + -(-m.size // 512) * 512 for m in infos)


def _closed_size(content: int) -> int:
    """A tar's file size: content, two zero blocks, padding to 10240-byte records."""
    return -(-(content + 1024) // 10240) * 10240


def test_byte_cap_holds_for_every_shard_and_an_oversized_sample_gets_its_own(tmp_path):
    samples = [sample(i) for i in range(10)]  # ~6.5 KiB each in the tar
    max_bytes = 20 * 1024
    big = sample(99, audio=wav(99, frames=40000))  # ~80 KB of audio: over the cap on its own
    manifest = write_all(str(tmp_path), [*samples[:5], big, *samples[5:]], max_bytes=max_bytes)
    counts = [s["count"] for s in manifest["shards"]]
    assert sum(counts) == 11 and len(counts) >= 5 and 1 in counts
    for info in manifest["shards"]:
        size = (tmp_path / info["name"]).stat().st_size
        assert size == info["bytes"]
        assert size <= max_bytes or info["count"] == 1
    # Shards are filled as far as the cap allows: one more sample would have broken it.
    for cur, nxt in zip(manifest["shards"], manifest["shards"][1:], strict=False):
        content = _footprint(members(tmp_path / cur["name"]))
        assert _closed_size(content) == cur["bytes"]
        assert _closed_size(content + _footprint(members(tmp_path / nxt["name"])[:3])) > max_bytes


def test_manifest_counts_and_checksums(tmp_path):
    samples = [sample(i, task=t, source=src, split=sp) for i, (t, src, sp) in enumerate([
        ("arig", "vggss", "train"),
        ("arig", "vggss", "test"),
        ("avqa", "music-avqa", "train"),
        ("avc", "procedural", "val"),
        ("avfact", "procedural", "train"),
    ])]  # fmt: skip
    manifest = write_all(str(tmp_path), samples, max_count=2, fingerprint="abc123")
    assert manifest == read_manifest(str(tmp_path)) == read_manifest(str(tmp_path / "manifest.json"))
    assert manifest["format"] == shards.MANIFEST_FORMAT and manifest["fingerprint"] == "abc123"
    assert manifest["total"] == 5 and manifest["skipped"] == {}
    assert manifest["counts"] == {
        "task": {"arig": 2, "avc": 1, "avfact": 1, "avqa": 1},
        "source": {"music-avqa": 1, "procedural": 2, "vggss": 2},
        "split": {"test": 1, "train": 3, "val": 1},
    }
    for info in manifest["shards"]:
        data = (tmp_path / info["name"]).read_bytes()
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
    assert shard_uris(str(tmp_path)) == [str(tmp_path / s["name"]) for s in manifest["shards"]]


def test_manifest_says_each_shards_sources(tmp_path):
    """Readers spread the sources' shards through an epoch: the manifest says each shard's sources;
    an older manifest without them falls back to the shard name's prefix (the build's source name)."""
    samples = [sample(i, source=src) for i, src in enumerate(["vggss", "vggss", "vggss", "avqa", "avqa"])]
    manifest = write_all(str(tmp_path), samples, max_count=2)
    assert [s["sources"] for s in manifest["shards"]] == [{"vggss": 2}, {"avqa": 1, "vggss": 1}, {"avqa": 1}]
    assert [shards.shard_source(s) for s in manifest["shards"]] == ["vggss", "avqa", "avqa"]
    assert shards.shard_source({"name": "valor-000003.tar", "count": 1, "bytes": 1, "sha256": ""}) == "valor"


def test_invalid_samples_are_skipped_and_counted(tmp_path):
    good = [sample(i) for i in range(3)]
    bad_box = sample(10, task="arig")
    bad_box["json"]["boxes"] = [[0.5, 0.5, 0.2, 0.9]]
    no_answer = sample(11)
    del no_answer["json"]["answer"]
    bad = [
        sample(12, __key__="has.dot"),
        {**sample(13), "__key__": good[0]["__key__"]},
        bad_box,
        no_answer,
        sample(14, task="avc", json={**sample(14)["json"], "task": "unknown"}),
        sample(15, json={**sample(15)["json"], "score": float("nan")}),
        sample(16, image=b"not an image"),
        sample(17, audio=b"not audio"),
        sample(18, image="/a/str/is/not/a/path"),
        sample(19, image=_jpeg()[:200]),  # a JPEG header over truncated data
    ]
    with ShardWriter(str(tmp_path)) as writer:
        assert [writer.write(s) for s in good[:1] + bad + good[1:]] == [True] + [False] * len(bad) + [
            True
        ] * 2
    manifest = read_manifest(str(tmp_path))
    assert manifest["total"] == 3
    assert manifest["skipped"] == {
        "bad_audio": 1,
        "bad_image": 3,
        "duplicate_key": 1,
        "invalid_key": 1,
        "invalid_meta": 4,
    }
    assert [m.name for m in members(tmp_path / "shard-000000.tar")][::3] == [
        f"{s['__key__']}.jpg" for s in good
    ]


def test_exception_inside_the_writer_publishes_no_partial_shard_and_no_manifest(tmp_path):
    with (
        pytest.raises(RuntimeError, match="source failed"),
        ShardWriter(str(tmp_path), max_count=2) as writer,
    ):
        for i in range(3):
            writer.write(sample(i))
        raise RuntimeError("source failed")
    assert sorted(os.listdir(tmp_path)) == ["shard-000000.tar"]  # finished before the failure
    with pytest.raises(RuntimeError):
        writer.close()


def test_close_is_idempotent_and_a_closed_writer_refuses_samples(tmp_path):
    writer = ShardWriter(str(tmp_path))
    assert writer.close() == writer.close()
    assert read_manifest(str(tmp_path))["shards"] == []
    with pytest.raises(RuntimeError):
        writer.write(sample(0))


def test_merge_manifests_of_parallel_writers(tmp_path):
    parts = [
        write_all(str(tmp_path), [sample(i + 10 * w) for i in range(3)], max_count=2, prefix=f"w{w}",
                  fingerprint="f", manifest_name=None)
        for w in (1, 0)
    ]  # fmt: skip
    assert not (tmp_path / "manifest.json").exists()
    merged = merge_manifests(str(tmp_path), parts, fingerprint="f")
    assert merged == read_manifest(str(tmp_path))
    assert [s["name"] for s in merged["shards"]] == [
        "w0-000000.tar",
        "w0-000001.tar",
        "w1-000000.tar",
        "w1-000001.tar",
    ]
    assert merged["total"] == 6 and merged["counts"]["task"] == {"avc": 6}

    with pytest.raises(ValueError, match="more than one writer"):
        merge_manifests(str(tmp_path), [parts[0], parts[0]])
    with pytest.raises(ValueError, match="fingerprint"):
        merge_manifests(str(tmp_path), parts, fingerprint="other")
    part_uri = str(tmp_path / "part.json")
    storage.atomic_write_bytes(part_uri, json.dumps(parts[0]).encode())
    assert merge_manifests(str(tmp_path / "sub"), [part_uri])["total"] == 3


def test_bad_writer_arguments():
    for kwargs in ({"max_count": 0}, {"max_bytes": 0}, {"prefix": "a.b"}, {"start_index": -1}):
        with pytest.raises(ValueError):
            ShardWriter("/tmp/unused", **kwargs)


# A writer in a child process, killed with SIGKILL while it fills a shard.
_KILLED_WRITER = textwrap.dedent(
    """
    import sys, itertools
    sys.path.insert(0, sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from test_shards import sample
    from pipelines.avfit.shards import ShardWriter

    with ShardWriter(sys.argv[1], max_count=3) as writer:
        for i in itertools.count():
            writer.write(sample(i))
            print(i, flush=True)
    """
)


def _kill_writer_mid_shard(out_uri: str, stage_dir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, out_uri, str(REPO), str(Path(__file__).parent)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(stage_dir)},  # where an S3 writer stages (and leaves) its shard
    )
    try:
        for line in proc.stdout:
            if int(line) >= 7:  # two shards finished, the third one half written
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


def _assert_only_whole_shards(uris: list[str]) -> None:
    names = [u.rsplit("/", 1)[-1] for u in uris]
    assert "manifest.json" not in names
    visible = [u for u, n in zip(uris, names, strict=True) if not n.startswith(".")]
    assert visible and all(u.endswith(".tar") for u in visible)
    for uri in visible:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(uri))) as tar:
            assert len(tar.getmembers()) == 9  # a whole shard of max_count=3 samples


def test_killed_writer_leaves_no_partial_shard_and_no_manifest(tmp_path):
    out = tmp_path / "out"
    _kill_writer_mid_shard(str(out), tmp_path)
    _assert_only_whole_shards(storage.list_prefix(str(out)))


# ------------------------------------------------------------------------------------- S3 (moto)


def test_killed_writer_on_s3_leaves_no_partial_shard_and_no_manifest(s3_uri, tmp_path):
    _kill_writer_mid_shard(s3_uri, tmp_path)
    _assert_only_whole_shards(storage.list_prefix(s3_uri))
    assert [p.name for p in tmp_path.iterdir()] != []  # the killed writer's stage stayed local


def test_s3_shards_list_with_boto3_and_read_back_with_pyarrow_and_webdataset(s3_uri, tmp_path, monkeypatch):
    import webdataset as wds

    gopen = importlib.import_module("webdataset.gopen")  # `wds.gopen` is the function, not the module

    samples = [sample(i, task=t) for i, t in enumerate(list(TASK_META) * 2)]
    manifest = write_all(s3_uri, samples, max_count=4, fingerprint="s3")
    local = write_all(str(tmp_path), samples, max_count=4, fingerprint="s3")
    assert manifest == local

    _, bucket, prefix = storage.parse_uri(s3_uri)
    listed = storage.boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == [
        "manifest.json",
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]

    fs, root = storage.pyarrow_fs(s3_uri)
    for info in manifest["shards"]:
        with fs.open_input_stream(f"{root}/{info['name']}") as f:
            data = f.read()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert data == (tmp_path / info["name"]).read_bytes()

    def open_s3(url, mode="rb", bufsize=8192, **kw):
        return storage.open_input(url)

    monkeypatch.setitem(gopen.gopen_schemes, "s3", open_s3)
    read = list(wds.WebDataset(shard_uris(s3_uri), shardshuffle=False, empty_check=False))
    assert [r["__key__"] for r in read] == [s["__key__"] for s in samples]
    assert [json.loads(r["json"]) for r in read] == [s["json"] for s in samples]
    assert all(r["jpg"][:3] == b"\xff\xd8\xff" and r["flac"][:4] == b"fLaC" for r in read)


def test_parallel_ray_writers_merge_and_ray_data_reads_them(ray_local, s3_uri):
    import ray

    @ray.remote
    def write_part(out_uri: str, prefix: str, samples: list[dict]) -> shards.Manifest:
        # Runs in a Ray worker: S3 settings come from the environment it inherited.
        with ShardWriter(out_uri, max_count=2, prefix=prefix, fingerprint="ray", manifest_name=None) as w:
            for s in samples:
                w.write(s)
        return w.close()

    work = {
        f"part{w:03d}": [sample(100 * w + i, split=("train", "val")[i % 2]) for i in range(5)]
        for w in range(2)
    }
    parts = ray.get([write_part.remote(s3_uri, prefix, samples) for prefix, samples in work.items()])
    merged = merge_manifests(s3_uri, parts, fingerprint="ray")
    assert merged["total"] == 10 and merged["counts"]["split"] == {"train": 6, "val": 4}

    fs, _ = storage.pyarrow_fs(s3_uri)
    paths = [storage.pyarrow_fs(u)[1] for u in shard_uris(s3_uri)]
    rows = ray.data.read_webdataset(paths, filesystem=fs).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(
        f"procedural-{100 * w + i:05d}" for w in range(2) for i in range(5)
    )
    assert {r["json"]["split"] for r in rows} == {"train", "val"}
    assert rows[0]["jpg"].shape == (16, 16, 3)
