"""Request and response bodies of the HTTP API, and the request-body schemas the OpenAPI page shows.

Task endpoints (``/v1/ground``, ``/v1/localize``, ``/v1/factcheck``, ``/v1/answer``,
``/v1/caption``; one row each in :data:`serve.tasks.TASKS`) take their parameters (``*Params``
below) together with the two media, either as a JSON object whose ``image`` and ``audio`` are
base64 strings (or ``data:`` URLs), or as ``multipart/form-data`` with ``image`` and ``audio``
file parts. Their bodies are read by the
ingress itself (so that the size limit applies while reading), so the OpenAPI request bodies are
written here from the same models by :func:`task_request_body`.

Coordinates in responses carry their convention in their names, since that is what users of
grounding models fight over: ``box.normalised`` is ``[x1, y1, x2, y2]`` (left, top, right, bottom)
divided by the sent image's width and height; ``box.pixels`` the same edges in pixels of the sent
image (not of the model's 224-pixel crop); ``window.start_s``/``end_s`` are seconds from the start
of the sent audio.

``/v1/chat/completions`` follows the OpenAI Chat Completions API (``n = 1``; ``stream`` as
server-sent ``chat.completion.chunk`` events), with ``image_url`` parts (data URLs only) and
``input_audio`` parts; its response (the last chunk, when streaming) adds ``grounding``. OpenAI
parameters that would change the answer and that the service cannot honour (``tools``,
``logprobs``, penalties, ``logit_bias``, ``n > 1``, a ``json_schema`` response format, audio output)
are refused with 400 rather than ignored; the others (``user``, ``metadata``, ``store``, ...) are
ignored. ``temperature`` defaults to 1 as in OpenAI's API (task endpoints: 0).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from meerkat_core import grounding

AUDIO_FORMATS = ("wav", "flac", "mp3", "ogg")

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


# -- task requests -------------------------------------------------------------------------------


class TaskParams(BaseModel):
    """Generation settings shared by every task."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; None: the service default. Capped by the service."
    )
    temperature: FiniteFloat = Field(0.0, ge=0.0, le=2.0, description="0: greedy (deterministic).")


BOX_RANGE_MESSAGE = "box values must be normalised to [0, 1]"
BOX_ORDER_MESSAGE = "box corners are out of order: need x1 <= x2 and y1 <= y2"


def _check_box(value: list[float]) -> list[float]:
    """A box sent by a client, by the one rule for boxes (:func:`meerkat_core.grounding.validate_box`,
    exactly [0, 1]); the error says which part of the rule failed without echoing the box."""
    try:
        grounding.validate_box(value)
    except ValueError as err:
        raise ValueError(BOX_ORDER_MESSAGE if "out of order" in str(err) else BOX_RANGE_MESSAGE) from None
    return value


def _check_window(value: list[float]) -> list[float]:
    start, end = value
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or start > end:
        raise ValueError("window must be [start, end] seconds with 0 <= start <= end")
    return value


Box = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4), AfterValidator(_check_box)]
Window = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2), AfterValidator(_check_window)]
ObjectName = Annotated[str, Field(min_length=1, max_length=200)]


class GroundParams(TaskParams):
    """Audio-referred image grounding: which object in the image makes the sound? -> a box."""


class LocalizeParams(TaskParams):
    """Image-guided audio temporal localisation: when is the named object heard? -> a window."""

    object: ObjectName = Field(description="The object in the image, in words, e.g. 'red circle'.")


class FactcheckParams(TaskParams):
    """Audio-visual fact-checking -> a verdict (True/False).

    The claim is built from the fields given, as in the paper's four types: ``box`` and
    ``window`` (type 3: the object in the box makes the sound heard in the window); ``box``
    (type 1); ``object`` and ``window`` (type 2); nothing (type 4: the sound's source is visible).
    ``statement`` is a claim in your own words instead, sent to the model verbatim.
    """

    object: ObjectName | None = Field(None, description="The object named by the claim (type 2).")
    box: Box | None = Field(None, description="[x1, y1, x2, y2] normalised to the image (types 1 and 3).")
    window: Window | None = Field(None, description="[start, end] seconds (types 2 and 3).")
    statement: str | None = Field(
        None, min_length=1, description="A claim in your own words; excludes object, box and window."
    )


class AnswerParams(TaskParams):
    """Audio-visual question answering -> free text."""

    question: str = Field(min_length=1, description="The question about the scene and its sound.")


class CaptionParams(TaskParams):
    """Audio-visual captioning -> free text."""


_MEDIA_JSON = {
    "image": {
        "type": "string",
        "description": "The image (JPEG, PNG, WebP, ...) as base64, or a data:image/...;base64, URL.",
    },
    "audio": {
        "type": "string",
        "description": "The audio clip (WAV, FLAC, OGG, MP3) as base64, or a data:audio/...;base64, URL.",
    },
}
_MEDIA_FORM = {
    "image": {"type": "string", "format": "binary", "description": "The image file."},
    "audio": {"type": "string", "format": "binary", "description": "The audio file."},
}
# Multipart text fields that hold JSON arrays.
FORM_JSON_FIELDS = ("box", "window")


def _body_schema(params: type[TaskParams], media: dict[str, Any], *, form: bool) -> dict[str, Any]:
    schema = params.model_json_schema()
    properties = dict(schema["properties"])
    if form:
        for name in FORM_JSON_FIELDS:
            if name in properties:
                properties[name] = {
                    "type": "string",
                    "description": properties[name].get("description", "") + " As a JSON array.",
                }
    return {
        "type": "object",
        "title": schema["title"].replace("Params", "Request"),
        "properties": {**media, **properties},
        "required": ["image", "audio", *schema.get("required", [])],
        "additionalProperties": False,
    }


def task_request_body(params: type[TaskParams]) -> dict[str, Any]:
    """``openapi_extra`` documenting the JSON and multipart request bodies of a task endpoint that
    takes ``params``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _body_schema(params, _MEDIA_JSON, form=False)},
                "multipart/form-data": {
                    "schema": _body_schema(params, _MEDIA_FORM, form=True),
                    "encoding": {"image": {"contentType": "image/*"}, "audio": {"contentType": "audio/*"}},
                },
            },
        }
    }


# -- typed grounding and responses ---------------------------------------------------------------


class BoxOut(BaseModel):
    normalised: list[float] = Field(
        description="[x1, y1, x2, y2] (left, top, right, bottom) divided by the image width/height."
    )
    pixels: list[int] = Field(description="[x1, y1, x2, y2] edges in pixels of the image that was sent.")


class WindowOut(BaseModel):
    start_s: float = Field(description="Start, seconds from the beginning of the audio that was sent.")
    end_s: float = Field(description="End, seconds from the beginning of the audio that was sent.")


class Grounding(BaseModel):
    parsed: bool = Field(
        description="Whether the model's text held what the task asks for: a box (ground), a window "
        "(localize), a verdict (factcheck), non-empty text (answer, caption), any of box, window or "
        "verdict (chat)."
    )
    box: BoxOut | None = None
    window: WindowOut | None = None
    verdict: bool | None = Field(None, description="True/False read from a fact-check answer.")


class ImageInfo(BaseModel):
    width: int
    height: int


class AudioInfo(BaseModel):
    seconds: float = Field(description="Duration of the audio that was sent.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Text tokens plus the image and audio tokens the LLM reads.")
    completion_tokens: int
    total_tokens: int


class TaskResponse(BaseModel):
    id: str
    object: Literal["meerkat.task"] = "meerkat.task"
    created: int
    model: str
    task: Literal["ground", "localize", "factcheck", "answer", "caption"]
    instruction: str = Field(description="The instruction the model was given.")
    fact_type: int | None = Field(
        None, description="Fact-check type 1-4; None for other tasks or a statement."
    )
    text: str = Field(description="The model's raw answer.")
    grounding: Grounding
    image: ImageInfo
    audio: AudioInfo
    usage: Usage


# -- OpenAI-compatible chat ----------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str = Field(description="A data URL: data:image/<format>;base64,<data>. Remote URLs are refused.")
    detail: str | None = None


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(BaseModel):
    data: str = Field(description="The audio file, base64.")
    format: Literal["wav", "flac", "mp3", "ogg"]


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(None, max_length=64)


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


MAX_STOP = 4


class ChatCompletionRequest(BaseModel):
    """Messages (system, user, assistant); one user message holds one image and one audio clip."""

    # Unknown OpenAI parameters are ignored, as other OpenAI-compatible servers do; the ones that
    # would change the meaning of the answer are refused explicitly (serve.inputs.chat_refusals).
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: FiniteFloat | None = Field(
        None, ge=0.0, le=2.0, description="Default 1 (OpenAI's); 0 is greedy (deterministic)."
    )
    top_p: FiniteFloat | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling; default 1.")
    seed: int | None = Field(
        None,
        ge=-(2**63),
        le=2**64 - 1,
        description="Sampling seed: the same request with the same seed gives the same answer.",
    )
    stop: Annotated[str, Field(max_length=64)] | list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, description=f"Up to {MAX_STOP} strings; the answer ends before the first one."
    )
    response_format: ResponseFormat | None = Field(
        None, description="json_object: the message content is the grounding as a JSON object."
    )
    n: int | None = Field(None, ge=1, le=128)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: FiniteFloat | None = None
    frequency_penalty: FiniteFloat | None = None
    logit_bias: dict[str, Any] | None = None
    modalities: list[str] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    grounding: Grounding


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion; the last carries usage and grounding."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    grounding: Grounding | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "meerkat"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
