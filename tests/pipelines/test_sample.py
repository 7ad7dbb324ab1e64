"""pipelines.avfit.sample: the contract check, and reading a shard sample back (decode, skip reasons)."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from meerkat_core.media import MediaError
from pipelines.avfit.sample import (
    SKIP_REASONS,
    CorruptSample,
    SampleError,
    count_skip,
    decode_sample,
    read_meta,
    validate_key,
    validate_meta,
)

META = {"task": "arig", "source": "world", "split": "train", "instruction": "Where?", "answer": "[0,0,1,1]"}


def _sample(meta: dict | None = META, jpg: bytes | None = b"jpg", flac: bytes | None = b"flac") -> dict:
    return {
        "__key__": "k-0",
        "jpg": jpg,
        "flac": flac,
        "json": None if meta is None else json.dumps({**meta, "boxes": [[0, 0, 1, 1]]}).encode(),
    }


def _preprocess(image: bytes, audio: bytes, meta: dict, *, with_answer: bool = True) -> dict:
    return {"image": image, "audio": audio, "with_answer": with_answer}


def test_contract_rejects_a_missing_task_field_and_a_dotted_key():
    with pytest.raises(SampleError, match="lacks"):
        validate_meta(dict(META))  # arig without boxes
    with pytest.raises(SampleError):
        validate_key("a.b")
    assert validate_key("world-train-000000-arig-0") == "world-train-000000-arig-0"


def test_decode_returns_the_checked_meta_and_the_preprocessed_row():
    meta, row = decode_sample(_sample(), _preprocess, with_answer=False)
    assert meta["task"] == "arig" and meta["boxes"] == [[0, 0, 1, 1]]
    assert row == {"image": b"jpg", "audio": b"flac", "with_answer": False}


def test_unwanted_samples_are_neither_decoded_nor_errors():
    def never(*args, **kwargs):
        raise AssertionError("an unwanted sample's media must not be decoded")

    assert decode_sample(_sample(flac=None), never, wanted=lambda meta: meta["task"] != "arig") is None


def _reason(sample: dict, preprocess=_preprocess) -> str:
    with pytest.raises(CorruptSample) as caught:
        decode_sample(sample, preprocess)
    assert caught.value.reason in SKIP_REASONS
    return caught.value.reason


def _raises(exc: Exception):
    def preprocess(*args, **kwargs):
        raise exc

    return preprocess


def test_each_kind_of_damage_has_its_reason():
    assert _reason(_sample(meta=None)) == "bad_json"
    assert _reason({**_sample(), "json": b"{not json"}) == "bad_json"
    assert _reason(_sample(meta={k: v for k, v in META.items() if k != "task"})) == "bad_json"
    assert _reason(_sample(jpg=None)) == "missing_media"
    assert _reason(_sample(flac=None)) == "missing_media"
    assert _reason(_sample(), _raises(MediaError("cannot decode image"))) == "bad_media"
    assert _reason(_sample(), _raises(ValueError("prompt too long"))) == "bad_sample"
    assert _reason(_sample(), _raises(TypeError("boxes is None"))) == "bad_sample"


def test_read_meta_and_unknown_reasons():
    assert read_meta(_sample()["json"])["source"] == "world"
    with pytest.raises(ValueError, match="unknown skip reason"):
        CorruptSample("oops", "x")


def test_count_skip_counts_by_reason_and_logs_the_key(caplog):
    counts: Counter[str] = Counter()
    with caplog.at_level(logging.WARNING):
        count_skip(counts, "k-1", CorruptSample("bad_media", "truncated flac"))
        count_skip(counts, "k-2", CorruptSample("bad_media", "garbage jpeg"))
    assert counts == {"bad_media": 2}
    assert "k-1 (bad_media): truncated flac" in caplog.text
