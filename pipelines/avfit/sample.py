"""The AVFIT sample contract shared by every source, the shard writer and the readers.

A *sample* is what a source (a converter or the procedural world) yields::

    {
        "__key__": "vggss-UyCw7pCgYg8_000055-arig-0",   # unique, [A-Za-z0-9_-] only (no dots)
        "image": bytes | pathlib.Path,                    # encoded image (JPEG/PNG) or a file path
        "audio": bytes | pathlib.Path,                    # encoded audio (FLAC/WAV) or a file path
        "json": {...},                                    # the metadata below
    }

and a shard holds it as three tar members ``<key>.jpg``, ``<key>.flac``, ``<key>.json``
(the shard writer re-encodes other formats).

The ``json`` metadata always has ``task``, ``source``, ``split``, ``instruction`` and ``answer``;
per task it also carries:

=========  ================================================================================
task       extra fields
=========  ================================================================================
arig       ``boxes``: list of ``[x1, y1, x2, y2]`` normalised to [0, 1] (ground truth of the
           sounding object; several for several annotators/instances)
igatl      ``segments``: list of ``[t_start, t_end]`` seconds; ``duration`` seconds
avfact     ``fact_type`` 1-4, ``label`` bool; ``boxes``/``segments`` given in the statement
avqa       ``qa_category`` (Existential, Temporal, Localisation, Count, World Knowledge, ...)
avc        ``references``: list of reference captions
=========  ================================================================================

Optional everywhere: ``duration`` (s), ``paired`` (bool, False when the audio was deliberately
mismatched with the image: such a pair is excluded from the OT loss), ``boxes`` (any task may
carry the sounding object's box; the AC loss uses it), ``objects`` (procedural world: every
object's ``class`` and ``box`` and whether it ``sounds``), ``sound_events`` (procedural world:
each event's ``class``, ``segment`` and on-screen ``object``, or an empty list; with ``objects``,
what the match loss labels its pairs by), ``label_text`` (class names),
``annotator_boxes`` (arig: one list of boxes per annotator, where the benchmark scores against their
consensus, Flickr-SoundNet), ``clip_id`` (igatl: the clip the rows of one video share, for the
per-video LLP protocol).

Reading a sample back from a shard is one function for every reader (training's data stream and
evaluation): :func:`decode_sample` takes the untarred members (``__key__``, ``jpg``, ``flac``,
``json``), checks the metadata against this contract, decodes and preprocesses the media, and
raises :class:`CorruptSample` with one of :data:`SKIP_REASONS` for a sample that cannot be used.
Readers skip such a sample and count it with :func:`count_skip`, so every job counts the same
damage under the same names.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from meerkat_core.media import MediaError

if TYPE_CHECKING:
    from meerkat_core.batching import SamplePreprocessor

logger = logging.getLogger(__name__)

TASKS: tuple[str, ...] = ("arig", "igatl", "avfact", "avqa", "avc")
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_FIELDS: tuple[str, ...] = ("task", "source", "split", "instruction", "answer")
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "arig": ("boxes",),
    "igatl": ("segments", "duration"),
    "avfact": ("fact_type", "label"),
    "avqa": ("qa_category",),
    "avc": ("references",),
}
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


class SampleError(ValueError):
    """A sample that breaks the contract (missing field, bad key, malformed box)."""


def validate_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Check a sample's metadata against the contract; return it unchanged or raise SampleError."""
    if not isinstance(meta, dict):
        raise SampleError(f"sample metadata must be a dict, got {type(meta).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise SampleError(f"sample metadata lacks {missing}")
    task = meta["task"]
    if task not in TASKS:
        raise SampleError(f"unknown task {task!r}; expected one of {TASKS}")
    missing = [f for f in TASK_FIELDS[task] if f not in meta]
    if missing:
        raise SampleError(f"{task} sample lacks {missing}")
    annotator_boxes = meta.get("annotator_boxes")
    if annotator_boxes is not None and (
        not isinstance(annotator_boxes, list)
        or not all(isinstance(a, list) and all(isinstance(b, list) for b in a) for a in annotator_boxes)
    ):
        raise SampleError(f"annotator_boxes must be a list of box lists, got {annotator_boxes!r}")
    for box in [*(meta.get("boxes", []) or []), *(b for a in annotator_boxes or [] for b in a)]:
        if (
            len(box) != 4
            or not all(0.0 <= float(v) <= 1.0 for v in box)
            or box[0] > box[2]
            or box[1] > box[3]
        ):
            raise SampleError(f"box {box} is not [x1, y1, x2, y2] normalised to [0, 1]")
    for seg in meta.get("segments", []) or []:
        if len(seg) != 2 or float(seg[0]) < 0 or float(seg[0]) > float(seg[1]):
            raise SampleError(f"segment {seg} is not [t_start, t_end] seconds with start <= end")
    if task == "avfact" and int(meta["fact_type"]) not in (1, 2, 3, 4):
        raise SampleError(f"fact_type must be 1-4, got {meta['fact_type']!r}")
    return meta


def validate_key(key: str) -> str:
    """WebDataset splits member names at the first dot: keys must be dot-free and tar-safe."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise SampleError(f"sample key {key!r} must match {_KEY_RE.pattern}")
    return key


SKIP_REASONS: dict[str, str] = {
    "bad_json": "no json member, or metadata that is not JSON or breaks the contract",
    "missing_media": "no jpg or no flac member",
    "bad_media": "an image or audio member that does not decode",
    "bad_sample": "metadata the preprocessor cannot use (e.g. a prompt longer than the text budget)",
}
"""Why a shard sample is skipped: the keys readers count under (:func:`count_skip`)."""


class CorruptSample(Exception):
    """A shard sample that cannot be used; ``reason`` is one of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; expected one of {sorted(SKIP_REASONS)}")
        super().__init__(detail)
        self.reason = reason


def read_meta(raw_json: bytes | str | None) -> dict[str, Any]:
    """A shard sample's ``json`` member, parsed and checked against the contract.

    Raises :class:`CorruptSample` (``bad_json``) when the member is missing, is not JSON or breaks
    the contract.
    """
    if raw_json is None:
        raise CorruptSample("bad_json", "no json member")
    try:
        return validate_meta(json.loads(raw_json))
    except (SampleError, ValueError, TypeError) as exc:
        raise CorruptSample("bad_json", str(exc)) from exc


def decode_sample(
    sample: Mapping[str, Any],
    preprocess: SamplePreprocessor | Callable[..., dict[str, Any]],
    *,
    with_answer: bool = True,
    wanted: Callable[[dict[str, Any]], bool] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """One untarred shard sample -> ``(meta, row)``: its checked metadata and its model row.

    ``sample`` holds the members by extension (``jpg``, ``flac``, ``json``; a missing one is
    None), as the shard readers untar them. ``preprocess`` is the model's
    :class:`meerkat_core.batching.SamplePreprocessor` (or anything called the same way).
    ``wanted(meta)`` False (task mixing, a task filter) returns None before any media is decoded:
    such a sample is not damaged and is not counted.

    Raises :class:`CorruptSample` with the reason: ``bad_json`` (:func:`read_meta`),
    ``missing_media``, ``bad_media`` (a :class:`meerkat_core.media.MediaError`) or ``bad_sample``
    (any other ``ValueError`` or ``TypeError`` from the preprocessor: metadata it cannot use).
    """
    meta = read_meta(sample.get("json"))
    if wanted is not None and not wanted(meta):
        return None
    jpg, flac = sample.get("jpg"), sample.get("flac")
    if jpg is None or flac is None:
        missing = [name for name, member in (("jpg", jpg), ("flac", flac)) if member is None]
        raise CorruptSample("missing_media", f"no {' or '.join(missing)} member")
    try:
        row = preprocess(bytes(jpg), bytes(flac), meta, with_answer=with_answer)
    except MediaError as exc:
        raise CorruptSample("bad_media", str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise CorruptSample("bad_sample", str(exc)) from exc
    return meta, row


def count_skip(counts: Counter[str], key: str, exc: CorruptSample) -> None:
    """Count a skipped sample under its reason in ``counts`` and log why (one line per sample)."""
    counts[exc.reason] += 1
    logger.warning("skipping %s (%s): %s", key, exc.reason, exc)
