"""WebDataset shards of AVFIT samples, published whole, with a manifest beside them.

A shard is a tar ``{prefix}-{index:06d}.tar`` holding, per sample and contiguously, ``<key>.jpg``,
``<key>.flac``, ``<key>.json`` (see ``pipelines.avfit.sample`` for the contract). Headers are fixed
(mtime 0, uid/gid 0, no user names, mode 0644) and the JSON is canonical (sorted keys, no spaces),
so the same samples give the same bytes: a re-run or a Ray task retry rewrites identical shards.

Atomicity: each shard is written to a local staged file and published only when complete
(``pipelines.storage.StagedFile``: a rename locally, one upload on S3), so a writer killed
mid-shard leaves the shards it finished and nothing else. The manifest is written last; a
directory without ``manifest.json`` is an unfinished build.

One writer, one process::

    with ShardWriter("s3://meerkat/avfit/train", max_count=1000, fingerprint=cfg_hash) as w:
        for sample in source:
            w.write(sample)

Several writers in parallel (the build job's Ray tasks) share a directory: each takes its own
``prefix`` (or ``start_index`` range), passes ``manifest_name=None`` and returns ``w.close()``; the
driver then calls ``merge_manifests(out_uri, manifests, fingerprint=cfg_hash)``, which refuses
clashing shard names and mixed fingerprints.

Media are decoded with ``meerkat_core.media`` (the decoders training uses), so a shard never holds
an image or a sound that training would reject. A JPEG image and mono FLAC audio are then kept
byte for byte; anything else PIL or libsndfile reads is re-encoded (``encode_jpeg``, RGB;
``encode_flac``, mixed down to mono at its own sample rate). Samples that break the contract are
skipped and counted by reason (``invalid_key``, ``duplicate_key``, ``invalid_meta``, ``bad_image``,
``bad_audio``); the first few of each reason are logged with their key.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from collections import Counter
from collections.abc import Iterable
from typing import Any, TypedDict

import soundfile as sf

from meerkat_core.media import encode_flac, encode_jpeg, load_audio, load_image
from pipelines import storage
from pipelines.avfit.sample import SampleError, validate_key, validate_meta

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "meerkat-avfit-shards/1"
COUNTED_FIELDS: tuple[str, ...] = ("task", "source", "split")

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
_TAR_FORMAT = tarfile.PAX_FORMAT
_HEADER_ENCODING = ("utf-8", "surrogateescape")
_LOGGED_SKIPS_PER_REASON = 5


class ShardInfo(TypedDict, total=False):
    name: str  # file name, relative to the manifest's directory
    count: int  # samples
    sources: dict[str, int]  # samples per source (readers spread the sources' shards evenly)
    bytes: int  # file size
    sha256: str  # hex digest of the whole file


class Manifest(TypedDict):
    format: str
    fingerprint: str | None  # build config hash: shards of different configs never mix
    shards: list[ShardInfo]
    total: int  # samples written
    counts: dict[str, dict[str, int]]  # {"task"|"source"|"split": {value: samples}}
    skipped: dict[str, int]  # {reason: samples}


class ShardWriter:
    """Write samples into size- and count-capped WebDataset shards under ``out_uri``.

    Args:
        out_uri: directory, ``s3://bucket/prefix`` or a local path.
        max_count: samples per shard at most.
        max_bytes: shard file size at most, in bytes (tar padding included); a single sample larger
            than this still gets a shard of its own.
        prefix: shard name prefix, ``[A-Za-z0-9_-]``; parallel writers into one directory need
            distinct prefixes or disjoint ``start_index`` ranges.
        start_index: index of the first shard.
        fingerprint: hash of the build config, recorded in the manifest.
        manifest_name: file written on ``close()``; ``None`` writes nothing and leaves the merge to
            ``merge_manifests``.
    """

    def __init__(
        self,
        out_uri: str,
        *,
        max_count: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        prefix: str = "shard",
        start_index: int = 0,
        fingerprint: str | None = None,
        manifest_name: str | None = MANIFEST_NAME,
    ) -> None:
        if max_count < 1 or max_bytes < 1:
            raise ValueError(f"max_count and max_bytes must be positive, got {max_count}, {max_bytes}")
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"shard prefix {prefix!r} must match {_PREFIX_RE.pattern}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.out_uri = out_uri
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.fingerprint = fingerprint
        self.manifest_name = manifest_name
        self._next_index = start_index
        self._shards: list[ShardInfo] = []
        self._counts: dict[str, Counter[str]] = {f: Counter() for f in COUNTED_FIELDS}
        self._skipped: Counter[str] = Counter()
        self._seen_keys: set[str] = set()
        self._open: _OpenShard | None = None
        self._manifest: Manifest | None = None
        self._aborted = False

    def write(self, sample: dict[str, Any]) -> bool:
        """Add one sample; ``False`` when it was skipped (and counted) as invalid."""
        if self._manifest is not None or self._aborted:
            raise RuntimeError("ShardWriter is closed")
        encoded = self._encode(sample)
        if encoded is None:
            return False
        key, members = encoded
        size = sum(_member_size(name, data) for name, data in members)
        shard = self._open
        if shard is not None and _final_size(shard.offset + size) > self.max_bytes:
            self._finish()
            shard = None
        if shard is None:
            shard = self._open = _OpenShard(storage.join_uri(self.out_uri, self._shard_name()))
        shard.add(members)
        shard.sources[str(sample["json"]["source"])] += 1
        self._seen_keys.add(key)
        for field in COUNTED_FIELDS:
            self._counts[field][str(sample["json"][field])] += 1
        if shard.count >= self.max_count:
            self._finish()
        return True

    def close(self) -> Manifest:
        """Publish the last shard and the manifest (unless ``manifest_name`` is None); idempotent."""
        if self._aborted:
            raise RuntimeError("ShardWriter was aborted: it has no manifest")
        if self._manifest is not None:
            return self._manifest
        if self._open is not None:
            self._finish()
        manifest = _manifest(
            self.fingerprint,
            self._shards,
            {f: dict(c) for f, c in self._counts.items()},
            dict(self._skipped),
        )
        if self.manifest_name is not None:
            storage.atomic_write_bytes(storage.join_uri(self.out_uri, self.manifest_name), _dumps(manifest))
        self._manifest = manifest
        return manifest

    def abort(self) -> None:
        """Drop the shard being written; publish no manifest. Finished shards stay."""
        if self._open is not None:
            self._open.discard()
            self._open = None
        self._aborted = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _shard_name(self) -> str:
        return f"{self.prefix}-{self._next_index:06d}.tar"

    def _finish(self) -> None:
        assert self._open is not None
        info = self._open.publish(self._shard_name())
        self._shards.append(info)
        self._open = None
        self._next_index += 1

    def _encode(self, sample: dict[str, Any]) -> tuple[str, list[tuple[str, bytes]]] | None:
        """The sample's key and tar members in order, or None after counting why it is skipped."""
        key = sample.get("__key__") if isinstance(sample, dict) else None
        try:
            validate_key(key)
        except SampleError as err:
            return self._skip("invalid_key", key, err)
        if key in self._seen_keys:
            return self._skip("duplicate_key", key, "already written by this writer")
        try:
            meta = json.dumps(
                validate_meta(sample.get("json")),
                sort_keys=True,
                ensure_ascii=False,
                separators=(",", ":"),
                allow_nan=False,
            ).encode()
        except (SampleError, TypeError, ValueError) as err:
            return self._skip("invalid_meta", key, err)
        try:
            image = _jpeg_bytes(_load(sample.get("image")))
        except (OSError, ValueError) as err:  # SampleError and MediaError are ValueErrors
            return self._skip("bad_image", key, err)
        try:
            audio = _mono_flac_bytes(_load(sample.get("audio")))
        except (OSError, RuntimeError, ValueError) as err:  # libsndfile raises RuntimeErrors
            return self._skip("bad_audio", key, err)
        return key, [(f"{key}.jpg", image), (f"{key}.flac", audio), (f"{key}.json", meta)]

    def _skip(self, reason: str, key: object, err: object) -> None:
        self._skipped[reason] += 1
        if self._skipped[reason] <= _LOGGED_SKIPS_PER_REASON:
            logger.warning("skipping sample %r (%s): %s", key, reason, err)
        return None


class _OpenShard:
    """The tar being filled: a staged local file, published under its final name when done."""

    def __init__(self, uri: str) -> None:
        self._staged = storage.StagedFile(uri)
        self._file = open(self._staged.path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=_TAR_FORMAT)
        self.count = 0
        self.sources: Counter[str] = Counter()

    @property
    def offset(self) -> int:
        return self._tar.offset

    def add(self, members: list[tuple[str, bytes]]) -> None:
        for name, data in members:
            self._tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        self.count += 1

    def publish(self, name: str) -> ShardInfo:
        self._tar.close()
        self._file.close()
        size = self._staged.path.stat().st_size
        digest = _sha256(self._staged.path)
        self._staged.publish()
        return {
            "name": name,
            "count": self.count,
            "bytes": size,
            "sha256": digest,
            "sources": dict(sorted(self.sources.items())),
        }

    def discard(self) -> None:
        self._file.close()
        self._staged.discard()


def read_manifest(uri: str) -> Manifest:
    """The manifest at ``uri``: a ``.json`` file, or a shard directory holding ``manifest.json``."""
    path = uri if uri.endswith(".json") else storage.join_uri(uri, MANIFEST_NAME)
    manifest = json.loads(storage.read_bytes(path))
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest (format={manifest.get('format')!r})")
    return manifest


def shard_uris(uri: str) -> list[str]:
    """URIs of the shards listed in the manifest of directory ``uri``, in manifest order.

    Prefer this to listing the directory: it holds only finished builds' shards and never the
    manifest itself (which ``ray.data.read_webdataset`` on the bare directory would try to read).
    """
    return [storage.join_uri(uri, shard["name"]) for shard in read_manifest(uri)["shards"]]


def shard_source(shard: ShardInfo) -> str:
    """The source most of a shard's samples come from (older manifests: the shard name's prefix,
    which the build job sets to the source's name)."""
    sources = shard.get("sources")
    if sources:
        return max(sorted(sources), key=lambda s: sources[s])
    return shard["name"].rsplit("-", 1)[0]


def merge_manifests(
    out_uri: str,
    parts: Iterable[Manifest | str],
    *,
    fingerprint: str | None = None,
    manifest_name: str = MANIFEST_NAME,
) -> Manifest:
    """Combine parallel writers' manifests (dicts or URIs of ``.json`` files) into one under ``out_uri``.

    Raises ``ValueError`` when two parts list the same shard name or a part's fingerprint differs
    from ``fingerprint`` (or, when that is None, from the first part's).
    """
    loaded = [read_manifest(p) if isinstance(p, str) else p for p in parts]
    if fingerprint is None and loaded:
        fingerprint = loaded[0]["fingerprint"]
    shards: list[ShardInfo] = []
    counts: dict[str, Counter[str]] = {f: Counter() for f in COUNTED_FIELDS}
    skipped: Counter[str] = Counter()
    for part in loaded:
        if part.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest: format={part.get('format')!r}")
        if part["fingerprint"] != fingerprint:
            raise ValueError(f"manifest fingerprint {part['fingerprint']!r} differs from {fingerprint!r}")
        shards.extend(part["shards"])
        for field in COUNTED_FIELDS:
            counts[field].update(part["counts"].get(field, {}))
        skipped.update(part["skipped"])
    names = Counter(s["name"] for s in shards)
    clashes = sorted(n for n, c in names.items() if c > 1)
    if clashes:
        raise ValueError(f"shard names written by more than one writer: {clashes[:5]}")
    shards.sort(key=lambda s: s["name"])
    manifest = _manifest(fingerprint, shards, {f: dict(c) for f, c in counts.items()}, dict(skipped))
    storage.atomic_write_bytes(storage.join_uri(out_uri, manifest_name), _dumps(manifest))
    return manifest


def _manifest(
    fingerprint: str | None,
    shards: list[ShardInfo],
    counts: dict[str, dict[str, int]],
    skipped: dict[str, int],
) -> Manifest:
    return {
        "format": MANIFEST_FORMAT,
        "fingerprint": fingerprint,
        "shards": list(shards),
        "total": sum(s["count"] for s in shards),
        "counts": {f: dict(sorted(counts.get(f, {}).items())) for f in COUNTED_FIELDS},
        "skipped": dict(sorted(skipped.items())),
    }


def _dumps(manifest: Manifest) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_size(name: str, data: bytes) -> int:
    """Bytes a member takes in the tar: its header(s) (long names add a PAX header) and padded data."""
    header = len(_tarinfo(name, len(data)).tobuf(_TAR_FORMAT, *_HEADER_ENCODING))
    return header + -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _final_size(offset: int) -> int:
    """File size of a tar closed at ``offset``: two zero blocks, then padding to a whole record."""
    end = offset + 2 * tarfile.BLOCKSIZE
    return -(-end // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _sha256(path: os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load(media: object) -> bytes:
    if isinstance(media, (bytes, bytearray, memoryview)):
        return bytes(media)
    if isinstance(media, os.PathLike):
        with open(media, "rb") as f:
            return f.read()
    raise SampleError(f"media must be bytes or a path, got {type(media).__name__}")


def _jpeg_bytes(data: bytes) -> bytes:
    image = load_image(data)
    return data if data[:3] == b"\xff\xd8\xff" else encode_jpeg(image)


def _mono_flac_bytes(data: bytes) -> bytes:
    info = sf.info(io.BytesIO(data))
    wave = load_audio(data, target_sr=info.samplerate)  # [T] mono; the target rate keeps it as is
    if info.format == "FLAC" and info.channels == 1:
        return data
    return encode_flac(wave, info.samplerate)
