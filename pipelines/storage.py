"""Storage URIs: ``s3://bucket/prefix`` on S3 or an S3-compatible server, or local paths.

S3 settings come only from the standard AWS environment variables, read at call time (so a test
fixture or a Ray runtime env that sets them takes effect without re-importing):

- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``: when unset, each client
  falls back to its own default chain (profile, instance role), so a cluster with IAM roles needs
  nothing here;
- ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``), ``us-east-1`` when unset;
- ``AWS_ENDPOINT_URL_S3`` or else ``AWS_ENDPOINT_URL``: e.g. ``http://127.0.0.1:29000`` for the local
  stack's S3 server. Set, it also switches to path-style addressing, since an IP endpoint cannot
  carry the bucket as a subdomain.

Atomicity, the property the shard writer and the manifests are built on: a reader sees a whole
object or none. On S3 a single PUT and a multipart upload both become visible only when they
complete. Locally the bytes go to a hidden temporary file in the destination directory (same
filesystem, so the rename is atomic), are fsynced, and ``os.replace`` gives them their name; a
killed writer can leave a ``.<name>.*.tmp`` file behind but never a partial file under the real
name (Ray Data skips names that start with ``.`` when it lists a directory).

Clients: every S3 operation here goes through :func:`s3_client`, one boto3 client per process and
settings, shared by the process's threads (shard readers, Serve's thread pool).

Credentials never appear in reprs or in the errors raised here: S3 errors are re-raised as
``OSError``/``FileNotFoundError`` with any credential value masked. The ``pyarrow`` filesystem from
``pyarrow_fs`` pickles its keys (Ray ships it to workers that way); on clusters prefer the default
credential chain over keys in the environment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import pyarrow.fs

_DEFAULT_REGION = "us-east-1"
# boto3 switches to multipart above this size; each part is uploaded separately but the object
# appears only on CompleteMultipartUpload, so atomicity holds either way.
_MULTIPART_THRESHOLD = 64 * 1024 * 1024


@dataclass(frozen=True)
class S3Settings:
    """S3 connection settings read from the environment; the repr masks every credential."""

    region: str
    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"S3 endpoint must look like http(s)://host:port, got {endpoint!r}")
        return cls(
            region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or _DEFAULT_REGION,
            endpoint_url=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def __repr__(self) -> str:
        creds = "from-env" if self.access_key else "default-chain"
        return f"S3Settings(region={self.region!r}, endpoint_url={self.endpoint_url!r}, credentials={creds})"

    def scrub(self, text: str) -> str:
        """``text`` with every credential value replaced by ``***``."""
        for secret in (self.access_key, self.secret_key, self.session_token):
            if secret:
                text = text.replace(secret, "***")
        return text


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a storage URI into ``(scheme, bucket, key)``.

    ``s3://bucket/a/b`` -> ``("s3", "bucket", "a/b")``; a local path or ``file://`` URI ->
    ``("file", "", "/absolute/path")``. Other schemes raise ``ValueError``.
    """
    if "://" not in uri:
        return "file", "", os.path.abspath(os.path.expanduser(uri))
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return "file", "", os.path.abspath(parts.path)
    if parts.scheme != "s3":
        raise ValueError(f"unsupported storage URI {uri!r}: expected s3://bucket/prefix or a local path")
    if not parts.netloc:
        raise ValueError(f"S3 URI {uri!r} has no bucket")
    return "s3", parts.netloc, parts.path.lstrip("/")


def join_uri(uri: str, *names: str) -> str:
    """``uri`` with path components appended (``/`` separators on S3, ``os.path.join`` locally)."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return os.path.join(key, *names)
    return "s3://" + "/".join([bucket, *[p.strip("/") for p in (key, *names) if p.strip("/")]])


def pyarrow_fs(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem for ``uri`` and the path to pass to it (``bucket/key`` on S3).

    This is what Ray Data (``filesystem=``) and Ray Train (``storage_filesystem=``) take; without it
    they would ignore the endpoint override and talk to AWS.
    """
    import pyarrow.fs as pafs

    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return pafs.LocalFileSystem(), key
    settings = S3Settings.from_env()
    kwargs: dict[str, object] = {"region": settings.region}
    if settings.access_key and settings.secret_key:
        kwargs.update(access_key=settings.access_key, secret_key=settings.secret_key)
        if settings.session_token:
            kwargs["session_token"] = settings.session_token
    if settings.endpoint_url:
        endpoint = urlsplit(settings.endpoint_url)
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key}".rstrip("/")


def boto3_client(settings: S3Settings | None = None):
    """A new boto3 S3 client configured from the environment (or from ``settings``).

    Every operation of this module goes through :func:`s3_client`, the process's shared one; a
    new client is for code that must not share it (a server started in a test, say)."""
    import boto3
    from botocore.config import Config

    settings = settings or S3Settings.from_env()
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        s3={"addressing_style": "path"} if settings.endpoint_url else {},
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def s3_client(settings: S3Settings | None = None):
    """This process's shared boto3 S3 client for ``settings`` (default: read from the environment).

    One client per process and settings: making one builds a session and loads the service model,
    which a shard reader would otherwise pay on every read. boto3 clients are thread-safe and
    retry by their config, so the readers of one process share it. Settings are still read at call
    time, so changed environment variables take effect (with a client of their own).
    """
    return _shared_client(settings or S3Settings.from_env())


@functools.lru_cache(maxsize=8)
def _shared_client(settings: S3Settings):
    return boto3_client(settings)


@contextlib.contextmanager
def _s3_errors(uri: str, settings: S3Settings) -> Iterator[None]:
    """Re-raise botocore errors as OSError with credentials masked.

    ``from None`` on purpose: the original exception (and its request context) is not chained into
    the traceback, so nothing unmasked leaks through it.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        message = settings.scrub(f"{uri}: {err}")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(message) from None
        raise OSError(message) from None
    except (BotoCoreError, Boto3Error) as err:
        raise OSError(settings.scrub(f"{uri}: {err}")) from None


def read_bytes(uri: str) -> bytes:
    """The whole object or file at ``uri``; ``FileNotFoundError`` when there is none."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return Path(key).read_bytes()
    settings = S3Settings.from_env()
    with _s3_errors(uri, settings):
        return s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()


def open_input(uri: str) -> IO[bytes]:
    """A readable binary stream over ``uri`` (a pyarrow stream on S3), for streaming readers."""
    scheme, _, key = parse_uri(uri)
    if scheme == "file":
        return open(key, "rb")
    fs, path = pyarrow_fs(uri)
    return fs.open_input_stream(path)


def exists(uri: str) -> bool:
    """Whether an object (S3) or a file or directory (local) exists at ``uri``."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        return os.path.exists(key)
    settings = S3Settings.from_env()
    try:
        with _s3_errors(uri, settings):
            s3_client(settings).head_object(Bucket=bucket, Key=key)
    except FileNotFoundError:
        return False
    return True


def list_prefix(uri: str) -> list[str]:
    """URIs of every object (S3) or file (local) below ``uri`` taken as a directory, sorted.

    ``s3://b/data`` lists ``data/...`` but not ``data-old/...``. A missing prefix gives ``[]``.
    """
    scheme, bucket, key = parse_uri(uri)
    if scheme == "file":
        found = [os.path.join(root, name) for root, _, files in os.walk(key) for name in files]
        return sorted(found)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    settings = S3Settings.from_env()
    found = []
    with _s3_errors(uri, settings):
        pages = s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            found.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    return sorted(found)


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` so that readers see the old content or all of the new, never part."""
    scheme, bucket, key = parse_uri(uri)
    if scheme == "s3":
        settings = S3Settings.from_env()
        with _s3_errors(uri, settings):
            s3_client(settings).put_object(Bucket=bucket, Key=key, Body=data)
        return
    with StagedFile(uri) as staged:
        staged.path.write_bytes(data)


class StagedFile:
    """A local file that becomes visible at ``uri`` only when published, whole.

    Write to ``path``, then ``publish()``, or ``discard()`` to drop it; as a context manager it
    publishes when the block succeeds and discards on an exception. Locally the stage is a hidden
    temporary file beside the destination (renamed into place); for S3 it lives in the system temp
    dir and is uploaded (single PUT or multipart, both all-or-nothing).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._scheme, self._bucket, self._key = parse_uri(uri)
        if self._scheme == "file":
            directory, name = os.path.split(self._key)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        else:
            fd, tmp = tempfile.mkstemp(prefix="meerkat-stage-", suffix=".tmp")
        os.close(fd)
        self.path = Path(tmp)

    def publish(self) -> None:
        try:
            if self._scheme == "file":
                with open(self.path, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(self.path, self._key)
                _fsync_dir(os.path.dirname(self._key))
            else:
                _upload(str(self.path), self.uri, self._bucket, self._key)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> StagedFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()

    def __repr__(self) -> str:
        return f"StagedFile({self.uri!r})"


def _upload(path: str, uri: str, bucket: str, key: str) -> None:
    from boto3.s3.transfer import TransferConfig

    settings = S3Settings.from_env()
    config = TransferConfig(
        multipart_threshold=_MULTIPART_THRESHOLD, multipart_chunksize=_MULTIPART_THRESHOLD
    )
    with _s3_errors(uri, settings):
        s3_client(settings).upload_file(path, bucket, key, Config=config)


def _fsync_dir(directory: str) -> None:
    """Persist the rename itself; without it a power cut can lose a file that was already visible."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
