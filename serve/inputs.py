"""Untrusted request bodies -> validated parameters and decoded media, or an :class:`APIError`.

Everything here runs in the ingress, before a request can reach the model's batch (where one bad
input would fail every request batched with it). The order of checks is the order of cost:

1. content type: ``application/json`` or ``multipart/form-data`` (415);
2. size: ``Content-Length`` and then the bytes actually read against ``max_request_bytes`` (413);
   then in multipart the declared type of each file part (415);
3. shape: the fields and their types (422, with the field named);
4. media: base64, data-URL syntax (remote URLs are never fetched: 400), then decoding with
   :mod:`meerkat_core.media`, which checks pixel counts and audio length from the headers before
   decoding and rejects truncated or lying files (400, ``invalid_media``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from meerkat_core import media
from serve.errors import APIError, invalid
from serve.schemas import FORM_JSON_FIELDS, ChatCompletionRequest, ImagePart, TaskParams, TextPart

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w.+-]+=[\w.+-]+)*;base64,(?P<data>.*)", re.S)
_WHITESPACE = re.compile(rb"\s+")
# Declared types accepted for file parts; the bytes are then sniffed by the decoders anyway.
_PART_TYPES = {"image": ("image/",), "audio": ("audio/", "video/ogg")}
_GENERIC_PART_TYPES = ("application/octet-stream", "")
_MAX_FORM_FIELDS = 16


@dataclass(frozen=True)
class Media:
    """The raw bytes of the two inputs of a request."""

    image: bytes
    audio: bytes


@dataclass(frozen=True)
class Decoded:
    """Decoded media: the image as sent, the mono waveform at the model's rate."""

    image: Image.Image
    wave: np.ndarray  # [T] float32 at ``sample_rate``
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / self.sample_rate


def media_type(request: Request) -> str:
    """The request's media type without parameters, lower case ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refusing (413) to read more than ``max_bytes``, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise invalid("Content-Length is not a number")
        if int(declared) > max_bytes:
            raise APIError(
                413, "request_too_large", f"request body of {declared} bytes exceeds the limit of {max_bytes}"
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, "request_too_large", f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


def validate(model: type[BaseModel], data: Any) -> Any:
    """``model`` validated from ``data``; 422 naming the fields at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise APIError(422, "invalid_request_error", _validation_message(err)) from err


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object from the body (400 for invalid JSON, 422 for another JSON value)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid(f"the body is not valid JSON: {err}") from err
    except RecursionError as err:
        raise invalid("the body is not valid JSON: nested too deeply") from err
    if not isinstance(data, dict):
        raise APIError(422, "invalid_request_error", "the body must be a JSON object")
    return data


def decode_base64(text: str, what: str, family: str | None = None) -> bytes:
    """Bytes of a base64 string or a ``data:<family>/...;base64,`` URL (400 for anything else or empty)."""
    if text.startswith("data:"):
        text = data_url(text, what, family)
    try:
        data = base64.b64decode(_WHITESPACE.sub(b"", text.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as err:
        raise invalid(f"{what}: not valid base64 ({err})") from err
    if not data:
        raise invalid(f"{what}: empty")
    return data


def data_url(url: str, what: str, family: str | None = None) -> str:
    """The base64 payload of a data URL; 400 for a remote URL (never fetched) or bad syntax."""
    if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        raise invalid(
            f"{what}: remote URLs are not fetched; send the data inline as a data URL "
            "(data:<type>;base64,<data>)"
        )
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise invalid(f"{what}: expected a data URL of the form data:<type>;base64,<data>")
    if family is not None and not match["mime"].lower().startswith(family + "/"):
        raise APIError(415, "unsupported_media_type", f"{what}: expected {family}/*, got {match['mime']}")
    return match["data"]


async def _form(request: Request, body: bytes, max_bytes: int) -> FormData:
    """The multipart form of ``body`` (already read within the size limit); 400 when malformed."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(
        request.headers, stream(), max_files=2, max_fields=_MAX_FORM_FIELDS, max_part_size=max_bytes
    )
    try:
        return await parser.parse()
    except MultiPartException as err:
        raise invalid(f"malformed multipart body: {err.message}") from err
    except UnicodeDecodeError as err:
        raise invalid(f"malformed multipart body: {err}") from err


async def _file_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, UploadFile):
        raise APIError(422, "invalid_request_error", f"{name}: must be a file part")
    declared = (value.content_type or "").split(";")[0].strip().lower()
    if declared not in _GENERIC_PART_TYPES and not declared.startswith(_PART_TYPES[name]):
        expected = " or ".join(t + ("*" if t.endswith("/") else "") for t in _PART_TYPES[name])
        raise APIError(415, "unsupported_media_type", f"{name}: expected {expected}, got {declared}")
    data = await value.read()
    if not data:
        raise invalid(f"{name}: empty")
    return data


async def task_request(
    request: Request, params_model: type[TaskParams], max_bytes: int
) -> tuple[TaskParams, Media]:
    """The parameters and media of a task request, sent as JSON or as multipart/form-data."""
    kind = media_type(request)
    if kind not in ("application/json", "multipart/form-data"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json or multipart/form-data, got {kind or 'none'}",
        )
    body = await read_body(request, max_bytes)
    if kind == "multipart/form-data":
        form = await _form(request, body, max_bytes)
        files: dict[str, bytes] = {}
        try:
            fields = await _form_fields(form, files)
        finally:
            await form.close()
        return validate(params_model, fields), Media(files["image"], files["audio"])
    fields = parse_json(body)
    encoded = {name: fields.pop(name, None) for name in ("image", "audio")}
    for name, value in encoded.items():
        if not isinstance(value, str):
            raise APIError(422, "invalid_request_error", f"{name}: a base64 string is required")
    params = validate(params_model, fields)
    return params, Media(*(decode_base64(encoded[n], n, n) for n in ("image", "audio")))


async def _form_fields(form: FormData, files: dict[str, bytes]) -> dict[str, Any]:
    """The text fields of ``form``; its ``image`` and ``audio`` file parts go into ``files``."""
    fields: dict[str, Any] = {}
    for name, value in form.multi_items():
        if name in files or name in fields:
            raise APIError(422, "invalid_request_error", f"{name}: given more than once")
        if name in ("image", "audio"):
            files[name] = await _file_bytes(name, value)
        elif isinstance(value, UploadFile):
            raise APIError(422, "invalid_request_error", f"{name}: must be a text field, not a file")
        elif name in FORM_JSON_FIELDS:
            fields[name] = _json_field(name, value)
        else:
            fields[name] = value
    for name in ("image", "audio"):
        if name not in files:
            raise APIError(422, "invalid_request_error", f"{name}: a file part is required")
    return fields


def _json_field(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise APIError(422, "invalid_request_error", f"{name}: expected a JSON array ({err})") from err


def decode_media(raw: Media, *, sample_rate: int, max_pixels: int, max_seconds: float) -> Decoded:
    """Decode both inputs within the limits; 400 ``invalid_media`` naming the input at fault."""
    try:
        image = media.load_image(raw.image, max_pixels=max_pixels)
    except media.MediaError as err:
        raise APIError(400, "invalid_media", f"image: {err}") from err
    try:
        wave = media.load_audio(raw.audio, target_sr=sample_rate, max_seconds=max_seconds)
    except media.MediaError as err:
        raise APIError(400, "invalid_media", f"audio: {err}") from err
    return Decoded(image, wave, sample_rate)


def chat_inputs(request: ChatCompletionRequest) -> tuple[str, Media]:
    """The instruction, image and audio of a chat request.

    The model answers one user turn about one image and one clip (its training format), so the
    messages must be exactly one user message with text, one ``image_url`` part and one
    ``input_audio`` part; anything else is refused with a message saying so rather than being
    silently dropped.
    """
    roles = [m.role for m in request.messages]
    if roles != ["user"]:
        raise invalid(
            f"expected exactly one message, from the user (got roles {roles}): the model answers a "
            "single turn with its own system prompt"
        )
    content = request.messages[0].content
    if isinstance(content, str) or content is None:
        raise invalid("the user message must be a list of parts: text, one image_url and one input_audio")
    texts, images, audios = [], [], []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            images.append(decode_base64(data_url(part.image_url.url, "image_url", "image"), "image_url"))
        else:
            audios.append(decode_base64(part.input_audio.data, "input_audio"))
    if len(images) != 1 or len(audios) != 1:
        raise invalid(
            f"the user message needs exactly one image_url and one input_audio part "
            f"(got {len(images)} and {len(audios)})"
        )
    text = "\n".join(t.strip() for t in texts if t.strip())
    if not text:
        raise invalid("the user message has no text")
    return text, Media(images[0], audios[0])
