"""pipelines.storage: URIs, settings, atomic writes; locally (unit) and against moto over HTTP."""

from __future__ import annotations

import os
import traceback

import pyarrow.fs as pafs
import pytest

from pipelines import storage

SECRET = "sEcReT-Do-Not-Leak-0123456789"
ACCESS_KEY = "AKIA-NOT-TO-BE-SEEN"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/a/b.tar", ("s3", "bucket", "a/b.tar")),
        ("s3://bucket", ("s3", "bucket", "")),
        ("s3://bucket/dir/", ("s3", "bucket", "dir/")),
        ("/tmp/x/y", ("file", "", "/tmp/x/y")),
        ("file:///tmp/x/y", ("file", "", "/tmp/x/y")),
    ],
)
def test_parse_uri(uri, expected):
    assert storage.parse_uri(uri) == expected


def test_parse_uri_relative_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.parse_uri("data/x") == ("file", "", str(tmp_path / "data" / "x"))


@pytest.mark.parametrize("uri", ["gs://bucket/x", "http://host/x", "s3:///no-bucket"])
def test_parse_uri_rejects(uri):
    with pytest.raises(ValueError):
        storage.parse_uri(uri)


def test_join_uri():
    assert storage.join_uri("s3://b/data/", "shard-000000.tar") == "s3://b/data/shard-000000.tar"
    assert storage.join_uri("s3://b", "x", "y.json") == "s3://b/x/y.json"
    assert storage.join_uri("/tmp/d", "m.json") == "/tmp/d/m.json"


def test_settings_from_env_prefers_the_s3_endpoint_and_defaults_the_region():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2"}
    settings = storage.S3Settings.from_env(env)
    assert settings.endpoint_url == "http://127.0.0.1:2"
    assert settings.region == "us-east-1"
    assert storage.S3Settings.from_env({"AWS_REGION": "eu-west-3"}).region == "eu-west-3"
    assert storage.S3Settings.from_env({}).endpoint_url is None


def test_settings_reject_an_endpoint_without_scheme():
    with pytest.raises(ValueError, match="http"):
        storage.S3Settings.from_env({"AWS_ENDPOINT_URL": "127.0.0.1:9000"})


def test_settings_repr_and_scrub_mask_credentials():
    settings = storage.S3Settings.from_env(
        {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": "tok-123"}
    )
    text = repr(settings) + str(settings)
    assert SECRET not in text and ACCESS_KEY not in text and "tok-123" not in text
    assert settings.scrub(f"a {SECRET} b {ACCESS_KEY} c tok-123") == "a *** b *** c ***"


def test_pyarrow_fs_local_and_s3(monkeypatch, tmp_path):
    fs, path = storage.pyarrow_fs(str(tmp_path / "x"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    fs, path = storage.pyarrow_fs("s3://bucket/a/b/")
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/a/b"


def test_local_roundtrip_exists_and_list(tmp_path):
    root = tmp_path / "data"
    storage.atomic_write_bytes(str(root / "a" / "1.bin"), b"one")
    storage.atomic_write_bytes(str(root / "2.bin"), b"two")
    storage.atomic_write_bytes(str(tmp_path / "data-old" / "3.bin"), b"old")
    assert storage.read_bytes(str(root / "a" / "1.bin")) == b"one"
    assert storage.exists(str(root / "2.bin")) and not storage.exists(str(root / "nope"))
    assert storage.list_prefix(str(root)) == [str(root / "2.bin"), str(root / "a" / "1.bin")]
    assert storage.list_prefix(str(tmp_path / "missing")) == []
    with storage.open_input(str(root / "2.bin")) as f:
        assert f.read() == b"two"


def test_local_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "m.json"
    storage.atomic_write_bytes(str(target), b"old")
    storage.atomic_write_bytes(str(target), b"new content")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["m.json"]


def test_staged_file_failure_keeps_the_old_content(tmp_path):
    target = tmp_path / "m.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), storage.StagedFile(str(target)) as staged:
        staged.path.write_bytes(b"partial")
        assert staged.path.parent == tmp_path and staged.path.name.startswith(".")
        raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.json"]


# ------------------------------------------------------------------------------------- S3 (moto)


def test_s3_roundtrip_exists_and_list(s3_uri):
    storage.atomic_write_bytes(f"{s3_uri}/data/a/1.bin", b"one")
    storage.atomic_write_bytes(f"{s3_uri}/data/2.bin", b"two")
    storage.atomic_write_bytes(f"{s3_uri}/data-old/3.bin", b"old")
    assert storage.read_bytes(f"{s3_uri}/data/a/1.bin") == b"one"
    assert storage.exists(f"{s3_uri}/data/2.bin")
    assert not storage.exists(f"{s3_uri}/data/nope")
    assert storage.list_prefix(f"{s3_uri}/data") == [f"{s3_uri}/data/2.bin", f"{s3_uri}/data/a/1.bin"]
    assert storage.list_prefix(f"{s3_uri}/missing") == []
    with storage.open_input(f"{s3_uri}/data/2.bin") as f:
        assert f.read() == b"two"


def test_s3_pyarrow_fs_reads_what_boto3_wrote(s3_uri):
    storage.atomic_write_bytes(f"{s3_uri}/x.bin", b"\x00\x01payload")
    fs, path = storage.pyarrow_fs(f"{s3_uri}/x.bin")
    with fs.open_input_stream(path) as f:
        assert f.read() == b"\x00\x01payload"


def test_s3_staged_file_appears_only_when_published(s3_uri):
    uri = f"{s3_uri}/shard.tar"
    with storage.StagedFile(uri) as staged:
        staged.path.write_bytes(b"x" * 1000)
        assert not storage.exists(uri)
    assert storage.read_bytes(uri) == b"x" * 1000
    assert not staged.path.exists()

    failed = f"{s3_uri}/failed.tar"
    with pytest.raises(RuntimeError), storage.StagedFile(failed) as staged:
        staged.path.write_bytes(b"partial")
        raise RuntimeError("writer died")
    assert not storage.exists(failed) and not staged.path.exists()


def test_s3_multipart_upload_is_whole(s3_uri, monkeypatch):
    monkeypatch.setattr(storage, "_MULTIPART_THRESHOLD", 5 * 1024 * 1024)  # S3's smallest part
    data = os.urandom(11 * 1024 * 1024)
    with storage.StagedFile(f"{s3_uri}/big.bin") as staged:
        staged.path.write_bytes(data)
    assert storage.read_bytes(f"{s3_uri}/big.bin") == data


def test_s3_errors_carry_no_credentials(s3_uri, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # moto accepts any credentials
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(FileNotFoundError) as missing:
        storage.read_bytes(f"{s3_uri}/{SECRET}/{ACCESS_KEY}")
    with pytest.raises(OSError) as no_bucket:
        storage.atomic_write_bytes("s3://no-such-bucket-here/x", b"x")
    for err in (missing.value, no_bucket.value):
        text = "".join(traceback.format_exception(err))
        assert SECRET not in text and ACCESS_KEY not in text
    assert "***" in str(missing.value)


def test_s3_client_is_shared_per_process_and_settings(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    first = storage.s3_client()
    assert storage.s3_client() is first
    assert storage.s3_client(storage.S3Settings.from_env()) is first
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    other = storage.s3_client()
    assert other is not first and other.meta.endpoint_url == "http://127.0.0.1:10"
