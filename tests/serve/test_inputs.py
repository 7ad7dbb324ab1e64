"""serve.inputs: request bodies and media into parameters and decoded inputs, or a clear APIError.

Requests are real Starlette requests over bodies encoded by httpx (JSON and multipart), no Ray.
"""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from serve import inputs
from serve.errors import APIError
from serve.schemas import ChatCompletionRequest, FactcheckParams, GroundParams, LocalizeParams
from tests.serve import bad_media


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = jpeg()
WAV = bad_media.wav(1.0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def starlette_request(**kwargs: Any) -> Request:
    """A Starlette request carrying what httpx would send for ``httpx.Request("POST", ..., **kwargs)``."""
    sent = httpx.Request("POST", "http://testserver/v1/ground", **kwargs)
    body = sent.read()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/ground",
        "headers": [(k.lower().encode(), v.encode()) for k, v in sent.headers.items()],
        "query_string": b"",
    }
    return Request(scope, receive)


def task(params_model: type, max_bytes: int = 1 << 20, **kwargs: Any):
    return asyncio.run(inputs.task_request(starlette_request(**kwargs), params_model, max_bytes))


def refused(status: int, fragment: str, call: Any, *args: Any, **kwargs: Any) -> APIError:
    with pytest.raises(APIError) as info:
        call(*args, **kwargs)
    assert info.value.status == status and fragment in info.value.message, (
        info.value.status,
        info.value.message,
    )
    return info.value


def test_json_and_multipart_give_the_same_request():
    by_json = task(LocalizeParams, json={"image": b64(JPEG), "audio": b64(WAV), "object": "red circle"})
    by_form = task(
        LocalizeParams,
        files={"image": ("a.jpg", JPEG, "image/jpeg"), "audio": ("a.wav", WAV, "audio/wav")},
        data={"object": "red circle"},
    )
    assert by_json == by_form
    params, media = by_json
    assert params.object == "red circle" and media.image == JPEG and media.audio == WAV


def test_multipart_json_array_fields_and_data_urls():
    params, _ = task(
        FactcheckParams,
        files={"image": ("a.jpg", JPEG, "application/octet-stream"), "audio": ("a.wav", WAV, "audio/x-wav")},
        data={"box": "[0.1, 0.2, 0.5, 0.6]", "window": "[1, 2.5]"},
    )
    assert params.box == [0.1, 0.2, 0.5, 0.6] and params.window == [1.0, 2.5]
    _, media = task(
        GroundParams,
        json={"image": f"data:image/jpeg;base64,{b64(JPEG)}", "audio": f"data:audio/wav;base64,{b64(WAV)}"},
    )
    assert media.image == JPEG


@pytest.mark.parametrize(
    ("kwargs", "status", "fragment"),
    [
        ({"content": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type must be"),
        ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400, "not valid JSON"),
        ({"json": [1, 2]}, 422, "must be a JSON object"),
        ({"json": {"image": b64(JPEG)}}, 422, "audio: a base64 string is required"),
        ({"json": {"image": "@@@", "audio": b64(WAV)}}, 400, "image: not valid base64"),
        ({"json": {"image": "", "audio": b64(WAV)}}, 400, "image: empty"),
        ({"json": {"image": b64(JPEG), "audio": b64(WAV), "extra": 1}}, 422, "extra"),
        ({"json": {"image": b64(JPEG), "audio": b64(WAV), "temperature": 9}}, 422, "temperature"),
        ({"json": {"image": "data:audio/wav;base64,AAAA", "audio": b64(WAV)}}, 415, "expected image/*"),
        ({"json": {"image": "data:image/png,raw", "audio": b64(WAV)}}, 400, "expected a data URL"),
        ({"files": {"image": ("a.jpg", JPEG, "image/jpeg")}}, 422, "audio: a file part is required"),
        (
            {"files": {"image": ("a", JPEG, "text/html"), "audio": ("a", WAV, "audio/wav")}},
            415,
            "image: expected",
        ),
        (
            {"files": {"image": ("a", JPEG, "image/jpeg"), "audio": ("a", WAV, "image/png")}},
            415,
            "audio: expected",
        ),
        (
            {"files": {"image": ("a", b"", "image/jpeg"), "audio": ("a", WAV, "audio/wav")}},
            400,
            "image: empty",
        ),
        (
            {
                "files": {"image": ("a", JPEG, "image/jpeg"), "audio": ("a", WAV, "audio/wav")},
                "data": {"temperature": ["0", "1"]},
            },
            422,
            "given more than once",
        ),
        (
            {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "malformed multipart",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_task_requests(kwargs, status, fragment):
    refused(status, fragment, task, GroundParams, **kwargs)


def test_body_limit_applies_to_declared_and_streamed_sizes():
    refused(
        413, "exceeds the limit of 1024", task, GroundParams, 1024, json={"image": "A" * 2000, "audio": ""}
    )
    request = starlette_request(content=iter([b"a" * 600, b"b" * 600]))  # chunked: no Content-Length
    assert "content-length" not in request.headers
    refused(413, "exceeds the limit of 1000", asyncio.run, inputs.read_body(request, 1000))


def test_remote_urls_are_never_fetched():
    for url in ("https://example.com/a.jpg", "http://127.0.0.1/a.jpg", "ftp://x/y", "file:///etc/passwd"):
        refused(400, "remote URLs are not fetched", inputs.data_url, url, "image_url", "image")


LIMITS = {
    "sample_rate": 48_000,
    "max_pixels": 4096 * 4096,
    "max_seconds": 60.0,
    "max_samples": 60 * 48_000 * 2,
}


def test_decode_media_resamples_and_reports_the_sent_sizes():
    decoded = inputs.decode_media(inputs.Media(jpeg(300, 200), bad_media.wav(2.0, 16_000)), **LIMITS)
    assert decoded.image.size == (300, 200)
    assert decoded.wave.dtype == np.float32 and decoded.seconds == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("image", "audio", "fragment"),
    [
        (bad_media.truncated(jpeg(640, 480)), WAV, "image: cannot decode image"),
        (bad_media.png(10_000, 5_000), WAV, "image: image of 10000 x 5000 pixels exceeds max_pixels"),
        (b"GIF89a garbage", WAV, "image: cannot read image header"),
        (JPEG, bad_media.lying_wav(), "audio: WAV chunk b'data' declares"),
        (JPEG, bad_media.zero_length_wav(), "audio: audio has no samples"),
        (JPEG, bad_media.flac(600.0), "audio: audio of 600.0 s exceeds max_seconds=60"),
        (JPEG, b"RIFF....WAVEjunk", "audio: cannot decode audio"),
    ],
    ids=[
        "truncated-jpeg",
        "50-megapixels",
        "garbage-image",
        "lying-wav",
        "zero-length",
        "ten-minutes",
        "junk-wav",
    ],
)
def test_bad_media_is_invalid_media(image, audio, fragment):
    err = refused(400, fragment, inputs.decode_media, inputs.Media(image, audio), **LIMITS)
    assert err.type == "invalid_media"


def chat(*parts: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> ChatCompletionRequest:
    content = list(parts)
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages or [{"role": "user", "content": content}]}
    )


TEXT = {"type": "text", "text": "Where is the sound?"}
IMAGE = {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(JPEG)}"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}


def test_chat_inputs_take_one_user_turn_with_one_image_and_one_clip():
    text, media = inputs.chat_inputs(chat(TEXT, IMAGE, AUDIO, {"type": "text", "text": " Be brief. "}))
    assert text == "Where is the sound?\nBe brief." and media == inputs.Media(JPEG, WAV)


@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (chat(TEXT, IMAGE), "exactly one user message must carry one image_url and one input_audio"),
        (chat(TEXT, IMAGE, IMAGE, AUDIO), "exactly one user message must carry one image_url"),
        (chat(IMAGE, AUDIO), "has no text"),
        (chat(messages=[{"role": "user", "content": "hi"}]), "exactly one user message must carry"),
        (
            chat(
                messages=[
                    {"role": "user", "content": [TEXT, IMAGE, AUDIO]},
                    {"role": "assistant", "content": "[0.1, 0.2, 0.3, 0.4]"},
                ]
            ),
            "the last message must be the user's",
        ),
        (
            chat(
                messages=[
                    {"role": "user", "content": [TEXT, IMAGE, AUDIO]},
                    {"role": "user", "content": [TEXT, IMAGE, AUDIO]},
                ]
            ),
            "exactly one user message must carry",
        ),
        (
            chat(
                messages=[
                    {"role": "system", "content": [IMAGE]},
                    {"role": "user", "content": [TEXT, IMAGE, AUDIO]},
                ]
            ),
            "only a user message may carry",
        ),
        (
            chat(
                messages=[{"role": "tool", "content": "x"}, {"role": "user", "content": [TEXT, IMAGE, AUDIO]}]
            ),
            "tool messages are not supported",
        ),
        (
            chat(TEXT, {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}, AUDIO),
            "remote URLs are not fetched",
        ),
        (
            chat(TEXT, IMAGE, {"type": "input_audio", "input_audio": {"data": "%%", "format": "wav"}}),
            "input_audio",
        ),
    ],
    ids=[
        "no-audio",
        "two-images",
        "no-text",
        "no-media",
        "assistant-last",
        "media-twice",
        "media-in-system",
        "tool",
        "remote-url",
        "bad-base64",
    ],
)
def test_chat_inputs_refuse_what_the_model_cannot_answer(request_, fragment):
    refused(400, fragment, inputs.chat_inputs, request_)


def test_chat_request_schema_rejects_unknown_audio_formats_and_ignores_unknown_parameters():
    with pytest.raises(ValueError, match="format"):
        chat(TEXT, IMAGE, {"type": "input_audio", "input_audio": {"data": "", "format": "aiff"}})
    parsed = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [TEXT]}], "top_p": 0.5, "user": "u"}
    )
    assert parsed.model == "m"


def test_chat_history_and_system_messages_become_text_context():
    messages = [
        {"role": "system", "content": "Answer tersely."},
        {"role": "user", "content": [TEXT, IMAGE, AUDIO]},
        {"role": "assistant", "content": [{"type": "text", "text": "[0.10, 0.20, 0.50, 0.60]"}]},
        {"role": "user", "content": "And when is it heard?"},
    ]
    text, media = inputs.chat_inputs(chat(messages=messages))
    assert text == (
        "System: Answer tersely.\nUser: Where is the sound?\nAssistant: [0.10, 0.20, 0.50, 0.60]\n"
        "User: And when is it heard?"
    )
    assert media == inputs.Media(JPEG, WAV)
    # a single user message is sent as it is (as the task endpoints send their instructions)
    text, _ = inputs.chat_inputs(chat(messages=[{"role": "user", "content": [TEXT, IMAGE, AUDIO]}]))
    assert text == "Where is the sound?"


def _chat_body(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": [TEXT, IMAGE, AUDIO]}], **extra}
    )


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"n": 2}, "n: only one choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools: the model does not call tools",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1}, "frequency_penalty"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"modalities": ["text", "audio"]}, "text only"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "json_schema cannot"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4"),
    ],
)
def test_chat_parameters_that_cannot_be_honoured_are_refused(extra, fragment):
    refused(400, fragment, inputs.chat_refusals, _chat_body(**extra))


def test_chat_parameters_that_are_honoured_pass():
    body = _chat_body(
        stop="\n",
        top_p=0.9,
        seed=3,
        response_format={"type": "json_object"},
        tool_choice="none",
        n=1,
        user="u",
    )
    inputs.chat_refusals(body)
    assert inputs.stop_strings(body) == ("\n",) and inputs.stop_strings(_chat_body(stop=["a", ""])) == ("a",)
    assert _chat_body().temperature is None  # the ingress applies OpenAI's default, 1


def test_huge_integers_and_deep_nesting_are_400_not_500():
    refused(
        400, "a number has too many digits", inputs.parse_json, b'{"max_new_tokens": ' + b"9" * 5000 + b"}"
    )
    refused(400, "nested too deeply", inputs.parse_json, b"[" * 100_000 + b"]" * 100_000)
    refused(
        422, "box: a number has too many digits", inputs._json_field, "box", "[" + "1" * 5000 + ", 0, 0, 0]"
    )


def test_messages_echo_short_excerpts_only():
    long_mime = "data:image/" + "x" * 5000 + ";base64,aGk="
    err = refused(400, "expected a data URL", inputs.data_url, long_mime, "image_url", "image")
    assert len(err.message) < 200
    err = refused(
        415,
        "expected image/*",
        inputs.data_url,
        "data:text/" + "y" * 60 + ";base64,aGk=",
        "image_url",
        "image",
    )
    assert len(err.message) < 200
    err = refused(
        422,
        "",
        inputs.validate,
        ChatCompletionRequest,
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "z" * 5000}]}]},
    )
    assert len(err.message) < 1000


def test_decoder_messages_are_cleaned_of_addresses_and_paths():
    message = "cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e50> in /usr/lib/python3/x.py at 0xdeadbeef00"
    cleaned = inputs.clean(message)
    assert "0x" not in cleaned and "/usr" not in cleaned and "BytesIO" not in cleaned
    assert cleaned.startswith("cannot identify image file the data")
    err = refused(
        400,
        "image: cannot read image header",
        inputs.decode_media,
        inputs.Media(b"not an image", WAV),
        **LIMITS,
    )
    assert "0x" not in err.message and "BytesIO" not in err.message


def test_many_channel_audio_is_refused_before_decoding():
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((16_000, 64), np.float32), 16_000, format="WAV", subtype="PCM_16")
    limits = {**LIMITS, "max_samples": 16_000 * 8}
    err = refused(
        400,
        "audio: 64 channels x 16000 frames exceeds the limit",
        inputs.decode_media,
        inputs.Media(JPEG, buffer.getvalue()),
        **limits,
    )
    assert err.type == "invalid_media"
