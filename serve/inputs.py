"""Untrusted request bodies -> validated parameters and decoded media, or an :class:`APIError`.

Everything here runs in the ingress, before a request can reach the model's batch (where one bad
input would fail every request batched with it). The order of checks is the order of cost:

1. content type: ``application/json`` or ``multipart/form-data`` (415);
2. size: ``Content-Length`` and then the bytes actually read against ``max_request_bytes`` (413);
   then in multipart the declared type of each file part (415);
3. shape: the fields and their types (422, with the field named);
4. media: base64, data-URL syntax (remote URLs are never fetched: 400), then decoding with
   :mod:`meerkat_core.media`, which checks pixel counts and audio length from the headers before
   decoding and rejects truncated or lying files (400, ``invalid_media``); audio is also bounded
   in decoded samples (channels x frames, from the header) before decoding.

Messages name the field and echo at most a short excerpt of what was sent (:func:`excerpt`);
decoder messages are cleaned of object reprs, memory addresses and paths (:func:`clean`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from meerkat_core import media
from serve.errors import APIError, invalid
from serve.schemas import FORM_JSON_FIELDS, AudioPart, ChatCompletionRequest, ImagePart, TaskParams, TextPart

_DATA_URL = re.compile(
    r"data:(?P<mime>[\w.+-]{1,64}/[\w.+-]{1,64})(?:;[\w.+-]{1,64}=[\w.+-]{1,64}){0,8};base64,(?P<data>.*)",
    re.S,
)
_EXCERPT_CHARS = 40
_MESSAGE_CHARS = 300
# "<_io.BytesIO object at 0x7f...>", "0x7f3a2c...", absolute paths: never sent to a client.
_OBJECT_REPR = re.compile(r"<[^<>]{0,200} at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+[\w.+-]*")
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


def excerpt(value: Any, limit: int = _EXCERPT_CHARS) -> str:
    """``repr`` of a client's value, cut to ``limit`` characters (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clean(message: str) -> str:
    """A decoder's or parser's message without object reprs, addresses or paths, and short."""
    message = _PATH.sub("<path>", _ADDRESS.sub("<address>", _OBJECT_REPR.sub("the data", message)))
    return message if len(message) <= _MESSAGE_CHARS else message[: _MESSAGE_CHARS - 3] + "..."


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
    return validation_message(err.errors(include_url=False, include_input=False))


def validation_message(errors: Any) -> str:
    """Pydantic's errors as ``field: message; ...``: the first five, field names and messages cut
    short (both may hold text the client sent: unknown keys, discriminator tags)."""
    parts = []
    for e in list(errors)[:5]:
        where = ".".join(
            p if isinstance(p, str) and len(p) <= _EXCERPT_CHARS else excerpt(p) for p in e["loc"]
        )
        parts.append(f"{where or 'body'}: {clean(str(e['msg']))[:200]}")
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
        raise invalid(f"the body is not valid JSON: {clean(str(err))}") from err
    except RecursionError as err:
        raise invalid("the body is not valid JSON: nested too deeply") from err
    except ValueError as err:  # an integer of more digits than int() converts (sys.get_int_max_str_digits)
        raise invalid("the body is not valid JSON: a number has too many digits") from err
    if not isinstance(data, dict):
        raise APIError(422, "invalid_request_error", "the body must be a JSON object")
    return data


def decode_base64(text: str, what: str, family: str | None = None) -> bytes:
    """Bytes of a base64 string or a ``data:<family>/...;base64,`` URL (400 for anything else or empty)."""
    if text.startswith("data:"):
        text = data_url(text, what, family)
    try:
        try:  # the common case, without copying a megabyte to strip whitespace first
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            data = base64.b64decode(_WHITESPACE.sub(b"", text.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as err:
        raise invalid(f"{what}: not valid base64 ({clean(str(err))})") from err
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
        raise APIError(
            415, "unsupported_media_type", f"{what}: expected {family}/*, got {excerpt(match['mime'])}"
        )
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
        raise invalid(f"malformed multipart body: {clean(err.message)}") from err
    except Exception as err:  # noqa: BLE001 - python-multipart raises several kinds on bad bytes
        raise invalid(f"malformed multipart body ({type(err).__name__})") from err


async def _file_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, UploadFile):
        raise APIError(422, "invalid_request_error", f"{name}: must be a file part")
    declared = (value.content_type or "").split(";")[0].strip().lower()
    if declared not in _GENERIC_PART_TYPES and not declared.startswith(_PART_TYPES[name]):
        expected = " or ".join(t + ("*" if t.endswith("/") else "") for t in _PART_TYPES[name])
        raise APIError(415, "unsupported_media_type", f"{name}: expected {expected}, got {excerpt(declared)}")
    data = await value.read()
    if not data:
        raise invalid(f"{name}: empty")
    return data


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def task_request(
    request: Request,
    params_model: type[TaskParams],
    max_bytes: int,
    offload: Callable[..., Awaitable[Any]] = _inline,
) -> tuple[TaskParams, Media]:
    """The parameters and media of a task request, sent as JSON or as multipart/form-data.

    ``offload(fn, *args)`` runs the CPU-bound part of a JSON body (parsing, base64) off the event
    loop (the ingress passes its preprocessing thread); by default it runs inline.
    """
    kind = media_type(request)
    if kind not in ("application/json", "multipart/form-data"):
        raise APIError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json or multipart/form-data, got {excerpt(kind or 'none')}",
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
    return await offload(json_task_request, body, params_model)


def json_task_request(body: bytes, params_model: type[TaskParams]) -> tuple[TaskParams, Media]:
    """The parameters and media of a JSON task body (``image``/``audio`` as base64 or data URLs)."""
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
            raise APIError(422, "invalid_request_error", f"{excerpt(name)}: given more than once")
        if name in ("image", "audio"):
            files[name] = await _file_bytes(name, value)
        elif isinstance(value, UploadFile):
            raise APIError(422, "invalid_request_error", f"{excerpt(name)}: must be a text field, not a file")
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
    except (json.JSONDecodeError, RecursionError) as err:
        raise APIError(422, "invalid_request_error", f"{name}: expected a JSON array") from err
    except ValueError as err:  # an integer of too many digits
        raise APIError(422, "invalid_request_error", f"{name}: a number has too many digits") from err


def decode_media(
    raw: Media, *, sample_rate: int, max_pixels: int, max_seconds: float, max_samples: int
) -> Decoded:
    """Decode both inputs within the limits; 400 ``invalid_media`` naming the input at fault.

    ``max_samples`` bounds the decoded audio, channels x frames, read from the header before
    decoding (``max_seconds`` alone lets a 1000-channel file through).
    """
    try:
        image = media.load_image(raw.image, max_pixels=max_pixels)
    except media.MediaError as err:
        raise APIError(400, "invalid_media", f"image: {clean(str(err))}") from err
    try:
        header = sf.info(io.BytesIO(raw.audio))
    except Exception:  # noqa: BLE001 - libsndfile's errors vary; load_audio reports them
        header = None
    too_long = header is None or header.frames > max_seconds * header.samplerate  # load_audio says so
    if not too_long and header.channels * header.frames > max_samples:
        raise APIError(
            400,
            "invalid_media",
            f"audio: {header.channels} channels x {header.frames} frames exceeds the limit of "
            f"{max_samples} decoded samples",
        )
    try:
        wave = media.load_audio(raw.audio, target_sr=sample_rate, max_seconds=max_seconds)
    except media.MediaError as err:
        raise APIError(400, "invalid_media", f"audio: {clean(str(err))}") from err
    return Decoded(image, wave, sample_rate)


_ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


def chat_refusals(request: ChatCompletionRequest) -> None:
    """400 for OpenAI parameters the service cannot honour, rather than ignoring them."""
    refusals = {
        "n": request.n not in (None, 1) and "only one choice per request is supported",
        "tools": bool(request.tools or request.functions) and "the model does not call tools",
        "tool_choice": request.tool_choice not in (None, "none") and "the model does not call tools",
        "logprobs": bool(request.logprobs or request.top_logprobs) and "log probabilities are not returned",
        "presence_penalty": bool(request.presence_penalty) and "penalties are not supported",
        "frequency_penalty": bool(request.frequency_penalty) and "penalties are not supported",
        "logit_bias": bool(request.logit_bias) and "logit_bias is not supported",
        "modalities": bool(set(request.modalities or ()) - {"text"}) and "the model answers in text only",
        "response_format": request.response_format is not None
        and request.response_format.type == "json_schema"
        and "json_schema cannot be enforced on this model; use json_object for the grounding as JSON",
    }
    for name, reason in refusals.items():
        if reason:
            raise invalid(f"{name}: {reason}")
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    if len(stop) > 4:
        raise invalid(f"stop: at most 4 strings, got {len(stop)}")


def stop_strings(request: ChatCompletionRequest) -> tuple[str, ...]:
    stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
    return tuple(s for s in stop if s)


def _message_text(index: int, content: Any) -> tuple[str, list[bytes], list[bytes]]:
    """The text, images and audio clips of one message's content."""
    if content is None:
        return "", [], []
    if isinstance(content, str):
        return content.strip(), [], []
    texts, images, audios = [], [], []
    for part in content:
        where = f"messages.{index}"
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, ImagePart):
            url = data_url(part.image_url.url, f"{where}.image_url", "image")
            images.append(decode_base64(url, f"{where}.image_url"))
        elif isinstance(part, AudioPart):
            audios.append(decode_base64(part.input_audio.data, f"{where}.input_audio"))
    return "\n".join(t.strip() for t in texts if t.strip()), images, audios


def chat_inputs(request: ChatCompletionRequest) -> tuple[str, Media]:
    """The instruction, image and audio of a chat request.

    The model answers one user turn about one image and one clip, under its own system prompt
    (its training format). So: the last message must be the user's; exactly one user message
    carries the media, one ``image_url`` and one ``input_audio`` part (assistant and system
    messages carry text only); the earlier messages (system and developer ones included) become
    text context written ahead of the last user message's text, one ``Role: text`` line each. A
    single user message is sent as it is, so that it reads exactly like a task instruction.
    Anything else is refused with a message saying so rather than being silently dropped.
    """
    messages = request.messages
    if messages[-1].role != "user":
        raise invalid(f"messages: the last message must be the user's (got {messages[-1].role!r})")
    lines: list[str] = []
    media_found: list[tuple[int, list[bytes], list[bytes]]] = []
    for index, message in enumerate(messages):
        if message.role == "tool":
            raise invalid(
                f"messages.{index}: tool messages are not supported (the model does not call tools)"
            )
        text, images, audios = _message_text(index, message.content)
        if images or audios:
            if message.role != "user":
                raise invalid(f"messages.{index}: only a user message may carry an image or audio")
            media_found.append((index, images, audios))
        if index < len(messages) - 1:
            if text:
                lines.append(f"{_ROLE_NAMES[message.role]}: {text}")
        elif not text:
            raise invalid(f"messages.{index}: the last user message has no text")
        else:
            last = text
    if len(media_found) != 1 or len(media_found[0][1]) != 1 or len(media_found[0][2]) != 1:
        counts = [(i, len(im), len(au)) for i, im, au in media_found]
        raise invalid(
            "messages: exactly one user message must carry one image_url and one input_audio part "
            f"(got (message, images, audio clips) = {counts[:4]})"
        )
    _, images, audios = media_found[0]
    instruction = "\n".join([*lines, f"User: {last}"]) if lines else last
    return instruction, Media(images[0], audios[0])
