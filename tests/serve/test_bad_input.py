"""Hostile and broken requests against the deployed application (integration).

Each is refused with a 4xx and a JSON error that says what is wrong, naming the field, in a short
message with no memory address, path or traceback; afterwards the service is healthy and every
replica is the one that was running before (same replica id, actor and pid).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.serve import bad_media, service


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Case:
    path: str
    request: Callable[[Any], dict[str, Any]]  # scene -> httpx request arguments
    status: int
    message: str  # a fragment of the error message


def _media(scene: Any, image: bytes | None = None, audio: bytes | None = None) -> dict[str, str]:
    return {
        "image": b64(scene.image if image is None else image),
        "audio": b64(scene.audio if audio is None else audio),
    }


def _channels(channels: int, seconds: float) -> bytes:
    """A 16-bit WAV of silence with ``channels`` channels at 8 kHz."""
    buffer = io.BytesIO()
    sf.write(
        buffer, np.zeros((int(seconds * 8000), channels), np.int16), 8000, format="WAV", subtype="PCM_16"
    )
    return buffer.getvalue()


def _chat(scene: Any, image_url: str, **extra: Any) -> dict[str, Any]:
    content = [
        {"type": "text", "text": "Where is the sound?"},
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "input_audio", "input_audio": {"data": b64(scene.audio), "format": "flac"}},
    ]
    return {
        "json": {"model": "meerkat-serve-test/1", "messages": [{"role": "user", "content": content}], **extra}
    }


CASES = {
    "garbage base64": Case(
        "/v1/ground",
        lambda s: {"json": {"image": "%%% not base64 %%%", "audio": b64(s.audio)}},
        400,
        "image: not valid base64",
    ),
    "truncated jpeg": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, image=bad_media.truncated(s.image))},
        400,
        "image: cannot decode image",
    ),
    "wav whose header lies": Case(
        "/v1/ground", lambda s: {"json": _media(s, audio=bad_media.lying_wav())}, 400, "declares"
    ),
    "zero-length audio": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, audio=bad_media.zero_length_wav())},
        400,
        "audio: audio has no samples",
    ),
    "empty audio": Case(
        "/v1/ground", lambda s: {"json": {"image": b64(s.image), "audio": ""}}, 400, "audio: empty"
    ),
    "ten-minute audio": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, audio=bad_media.flac(600.0))},
        400,
        "exceeds max_seconds=60",
    ),
    "50-megapixel image": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, image=bad_media.png(10_000, 5_000))},
        400,
        "exceeds max_pixels",
    ),
    "1 x 5000 image": Case(
        "/v1/ground", lambda s: {"json": _media(s, image=bad_media.png(1, 5_000))}, 400, "more elongated"
    ),
    "wrong content type": Case(
        "/v1/ground",
        lambda s: {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
        415,
        "Content-Type must be",
    ),
    "image part typed as text": Case(
        "/v1/ground",
        lambda s: {
            "files": {"image": ("a.txt", s.image, "text/plain"), "audio": ("a.flac", s.audio, "audio/flac")}
        },
        415,
        "image: expected image/*",
    ),
    "invalid json": Case(
        "/v1/ground",
        lambda s: {"content": b"{", "headers": {"Content-Type": "application/json"}},
        400,
        "not valid JSON",
    ),
    "missing audio": Case(
        "/v1/ground", lambda s: {"json": {"image": b64(s.image)}}, 422, "audio: a base64 string is required"
    ),
    "missing object": Case("/v1/localize", lambda s: {"json": _media(s)}, 422, "object: Field required"),
    "unknown field": Case("/v1/ground", lambda s: {"json": {**_media(s), "colour": "red"}}, 422, "colour"),
    "window without object": Case(
        "/v1/factcheck", lambda s: {"json": {**_media(s), "window": [1, 2]}}, 422, "needs the object"
    ),
    "box out of range": Case(
        "/v1/factcheck", lambda s: {"json": {**_media(s), "box": [0.1, 0.1, 2.0, 0.5]}}, 422, "normalised"
    ),
    "huge prompt": Case(
        "/v1/answer",
        lambda s: {"json": {**_media(s), "question": "why " * 25_000}},
        400,
        "exceeds the limit of 2000",
    ),
    "prompt over the token budget": Case(
        "/v1/answer", lambda s: {"json": {**_media(s), "question": "why " * 400}}, 400, "the limit is 160"
    ),
    "too many new tokens": Case(
        "/v1/caption",
        lambda s: {"json": {**_media(s), "max_new_tokens": 100_000}},
        400,
        "max_new_tokens: at most 256",
    ),
    "request too large": Case(
        "/v1/ground",
        lambda s: {"json": {**_media(s), "padding": "x" * (33 * 1024 * 1024)}},
        413,
        "exceeds the limit",
    ),
    "remote image_url": Case(
        "/v1/chat/completions",
        lambda s: _chat(s, "https://example.com/cat.jpg"),
        400,
        "remote URLs are not fetched",
    ),
    "data url of the wrong type": Case(
        "/v1/chat/completions", lambda s: _chat(s, "data:text/plain;base64,aGk="), 415, "expected image/*"
    ),
    "json_schema response format": Case(
        "/v1/chat/completions",
        lambda s: _chat(
            s,
            f"data:image/jpeg;base64,{b64(s.image)}",
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        ),
        400,
        "response_format: json_schema cannot",
    ),
    "tools": Case(
        "/v1/chat/completions",
        lambda s: _chat(
            s,
            f"data:image/jpeg;base64,{b64(s.image)}",
            tools=[{"type": "function", "function": {"name": "f"}}],
        ),
        400,
        "tools:",
    ),
    "huge integer in json": Case(
        "/v1/ground",
        lambda s: {
            "content": b'{"image": "", "audio": "", "max_new_tokens": ' + b"9" * 5000 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "too many digits",
    ),
    "huge integer in a chat body": Case(
        "/v1/chat/completions",
        lambda s: {
            "content": b'{"model": "m", "messages": [], "seed": ' + b"1" * 4400 + b"}",
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "too many digits",
    ),
    "huge integer in a multipart box": Case(
        "/v1/factcheck",
        lambda s: {
            "files": {"image": ("a.jpg", s.image, "image/jpeg"), "audio": ("a.flac", s.audio, "audio/flac")},
            "data": {"box": "[" + "1" * 5000 + ", 0, 0, 0]"},
        },
        422,
        "box: a number has too many digits",
    ),
    "huge integer in a multipart window": Case(
        "/v1/factcheck",
        lambda s: {
            "files": {"image": ("a.jpg", s.image, "image/jpeg"), "audio": ("a.flac", s.audio, "audio/flac")},
            "data": {"window": "[0, " + "2" * 5000 + "]", "object": "x"},
        },
        422,
        "window: a number has too many digits",
    ),
    "seed out of range": Case(
        "/v1/chat/completions",
        lambda s: _chat(s, f"data:image/jpeg;base64,{b64(s.image)}", seed=2**70),
        422,
        "seed",
    ),
    "long data url mime type": Case(
        "/v1/chat/completions",
        lambda s: _chat(s, "data:image/" + "x" * 100_000 + ";base64,aGk="),
        400,
        "expected a data URL",
    ),
    "image that is not one (decoder repr)": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, image=b"not an image at all")},
        400,
        "image: cannot read image header",
    ),
    "audio that is not audio (libsndfile)": Case(
        "/v1/ground",
        lambda s: {"json": _media(s, audio=b"OggS not really")},
        400,
        "audio: cannot decode audio",
    ),
    "many-channel audio": Case(
        "/v1/ground",
        lambda s: {
            "files": {
                "image": ("a.jpg", s.image, "image/jpeg"),
                "audio": ("a.wav", _channels(256, 3.0), "audio/wav"),
            }
        },
        400,
        "audio: 256 channels x 24000 frames exceeds the limit",
    ),
    "multipart without boundary": Case(
        "/v1/ground",
        lambda s: {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "malformed multipart body",
    ),
    "truncated multipart": Case(
        "/v1/ground",
        lambda s: {
            "content": b'--b\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\nabc',
            "headers": {"Content-Type": "multipart/form-data; boundary=b"},
        },
        422,
        "a file part is required",
    ),
    "multipart field with a long name": Case(
        "/v1/ground",
        lambda s: {
            "files": {"image": ("a.jpg", s.image, "image/jpeg"), "audio": ("a.flac", s.audio, "audio/flac")},
            "data": {"n" * 5000: "1"},
        },
        400,
        "malformed multipart body",
    ),
    "unknown discriminator tag": Case(
        "/v1/chat/completions",
        lambda s: {
            "json": {"model": "m", "messages": [{"role": "user", "content": [{"type": "t" * 100_000}]}]}
        },
        422,
        "messages.0.content",
    ),
    "lone surrogate in a question": Case(
        "/v1/answer",
        lambda s: {
            # json.dumps escapes the surrogate as \ud800, which JSON allows and Python decodes
            "content": json.dumps({**_media(s), "question": "why \ud800?"}).encode(),
            "headers": {"Content-Type": "application/json"},
        },
        422,
        "question: Input should be a valid string",
    ),
    "json array body": Case(
        "/v1/chat/completions", lambda s: {"json": [1, 2]}, 422, "the body must be a JSON object"
    ),
    "deeply nested json": Case(
        "/v1/ground",
        lambda s: {
            "content": b"[" * 200_000 + b"]" * 200_000,
            "headers": {"Content-Type": "application/json"},
        },
        400,
        "not valid JSON",
    ),
    "system message carrying media": Case(
        "/v1/chat/completions",
        lambda s: {
            "json": {
                "model": "meerkat-serve-test/1",
                "messages": [
                    {
                        "role": "system",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": f"data:image/jpeg;base64,{b64(s.image)}"},
                            }
                        ],
                    },
                    {"role": "user", "content": "hi"},
                ],
            }
        },
        400,
        "only a user message may carry",
    ),
    "unknown model": Case(
        "/v1/chat/completions",
        lambda s: {"json": {**_chat(s, f"data:image/jpeg;base64,{b64(s.image)}")["json"], "model": "gpt-4o"}},
        404,
        "is not served here",
    ),
    "two user turns without media": Case(
        "/v1/chat/completions",
        lambda s: {
            "json": {
                "model": "meerkat-serve-test/1",
                "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}],
            }
        },
        400,
        "exactly one user message must carry one image_url and one input_audio",
    ),
}


@pytest.fixture(scope="module")
def replicas_before(meerkat_service):
    return service.settled_replicas(meerkat_service)


@pytest.fixture(scope="module")
def client(meerkat_service):
    with httpx.Client(base_url=meerkat_service.url, headers=meerkat_service.headers, timeout=120.0) as c:
        yield c


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_is_a_clear_4xx(client, scenes, replicas_before, name):
    case = CASES[name]
    response = client.post(case.path, **case.request(scenes[0]))
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert case.message in error["message"], error
    assert error["type"] and "Traceback" not in response.text
    # short, and nothing of the process: no object repr, memory address or path
    assert len(error["message"]) <= 600, len(error["message"])
    assert not re.search(r"0x[0-9a-f]{6,}|BytesIO|/usr/|/tmp/|site-packages", error["message"]), error


def test_service_stays_healthy_and_no_replica_restarted(client, meerkat_service, replicas_before, scenes):
    assert client.get("/healthz").json()["status"] == "ok"
    response = client.post("/v1/ground", json=_media(scenes[0]))
    assert response.status_code == 200 and response.json()["grounding"]["parsed"] is True
    after = service.replicas(meerkat_service)
    assert after == replicas_before
    assert {name: len(r) for name, r in after.items()} == {"ModelReplica": 1, "MeerkatAPI": 2}, after
