"""The Meerkat Ray Serve application: grounded answers over HTTP.

Two deployments, one per resource profile, composed by the application builder :func:`app`:

- ``MeerkatModel`` holds a trained model, loaded by :func:`pipelines.registry.load` from a
  registry name and version or alias (``models:/meerkat-tiny/3``, ``models:/meerkat-tiny@prod``),
  a run, an ``s3://`` checkpoint or a local directory, and generates for dynamic batches of
  preprocessed requests (``@serve.batch``). Batch size and wait come from its ``user_config``, so
  they change on a running replica without a restart; GPUs through ``ray_actor_options``.
- ``MeerkatAPI`` is the FastAPI ingress (CPU): authentication, size and type checks, decoding and
  feature extraction, prompt rendering and answer parsing. Every request is fully validated and
  turned into model tensors here, so that nothing that reaches a batch can fail it.

Endpoints: ``POST /v1/{ground,localize,factcheck,answer,caption}`` (JSON or multipart),
``POST /v1/chat/completions`` (OpenAI-compatible), ``GET /v1/models``, ``GET /healthz``, the
OpenAPI page at ``/docs`` (and ``/openapi.json``), a demo page at ``/`` and its example scenes at
``/examples`` (:mod:`serve.examples`). See :mod:`serve.schemas` for the bodies.

Run it::

    serve run serve.app:app model=models:/meerkat-tiny/latest     # a shell on the cluster
    serve deploy serve/config.yaml -a http://127.0.0.1:8265        # a running cluster
    meerkat serve                                                   # the local stack

Decisions made here:

- The ingress asks the model replica for its config and tokenizer at start-up instead of loading
  the model reference a second time: one download, and the two can never disagree.
- Preprocessing runs on one worker thread per ingress replica: the fast tokenizer is not safe to
  call from several threads at once and feature extraction is GIL-bound; to preprocess faster,
  add ingress replicas.
- Batches, sampling settings (``top_p``, ``seed``, ``stop``) and the isolation of a sample that
  makes the model fail (the batch is split and each request retried alone) are
  :mod:`serve.generation`'s.
- The model reference is resolved once, in the application builder (at deploy), to a fixed
  registry version (:func:`pipelines.registry.resolve_version`), and that version is what every
  model replica loads: ``models:/name/latest`` can never mean two versions in one application.
- Overload is refused at once: each deployment has ``max_queued_requests`` (``serve/config.yaml``);
  beyond it the proxy answers 503 for the ingress, and the ingress answers 503 (JSON) when the
  model's queue is full, instead of a 504 a minute later. ``graceful_shutdown_timeout_s`` is above
  ``request_timeout_s``, so a scale-down or redeploy lets admitted requests finish.
- JSON parsing, base64, decoding, features and tokenization all run on the ingress's preprocessing
  thread, never on its event loop (which only reads bodies and awaits).
- Streaming (``stream: true``): the answer is generated in a batch like any other, then sent as
  server-sent events in OpenAI's chunk format (a role chunk, text deltas, a chunk with the
  ``finish_reason``, a last chunk with ``usage`` and ``grounding``, then ``[DONE]``). Clients get the
  OpenAI streaming protocol; the first byte comes when the batch is done, not sooner.
- Optional token auth: the service stores the SHA-256 of the token (``api_token_sha256``, or the
  hash of ``MEERKAT_API_TOKEN`` in the ingress's environment), so the token itself never appears
  in a deploy config, the dashboard or a log. With a token, everything but ``/healthz`` needs it:
  the API as ``Authorization: Bearer <token>``, the demo page and ``/docs`` also as HTTP Basic
  (any user name, the token as password), which browsers ask for and then send along with the
  page's own requests. Without one, the ingress logs a warning at start-up.
"""

# No ``from __future__ import annotations`` here: Serve's class-based FastAPI views read the route
# methods' annotations as objects, and a string "Request" would become a query parameter.
import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from transformers import PreTrainedTokenizerBase

from meerkat_core import batching
from meerkat_core.config import ModelConfig
from pipelines import registry
from serve import auth, examples, inputs, schemas, tasks
from serve.errors import APIError, ErrorResponse, error_body, invalid
from serve.generation import Completion, Generation, Generator, Sampling

logger = logging.getLogger(__name__)

MODEL_REF_ENV = "MEERKAT_MODEL_REF"
DEMO_PAGE = Path(__file__).with_name("static") / "index.html"
HEALTH_TIMEOUT_S = 5.0
T = TypeVar("T")


class AppArgs(BaseModel):
    """Arguments of the application builder (``args:`` in ``serve/config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """Model reference for :func:`pipelines.registry.load`; None: ``$MEERKAT_MODEL_REF``."""
    served_model_name: str | None = None
    """The ``model`` name of the OpenAI API; None: derived from the reference."""
    device: str = "auto"
    """Torch device of the model replica; ``auto``: CUDA when the replica was given a GPU."""
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    """Largest request body (413 beyond): base64 media take 4/3 of their size."""
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Largest image, width x height, checked from the header before decoding (400 beyond)."""
    max_aspect_ratio: float = Field(20.0, ge=1.0)
    """Longest over shortest image side: the encoder's resize scales the short side to the crop
    size, so a 1 x 10000 image would otherwise be resized to a 224 x 2 240 000 one."""
    max_audio_seconds: float = Field(60.0, gt=0)
    """Longest audio clip, checked from the header before decoding; the model itself reads the
    first ``num_windows * window_seconds`` (10 s for the presets)."""
    max_audio_samples: int = Field(60 * 48_000 * 2, ge=1)
    """Most decoded audio samples, channels x frames, checked from the header before decoding
    (default: a minute of 48 kHz stereo, 23 MB as float32)."""
    max_prompt_chars: int = Field(2000, ge=1)
    """Longest instruction text; the model's token budget (``max_text_tokens``) applies after."""
    default_max_new_tokens: int = Field(48, ge=1)
    max_new_tokens_limit: int = Field(256, ge=1)
    request_timeout_s: float = Field(60.0, gt=0)
    """Per request, from the first byte read to the answer (504 beyond)."""
    api_token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    """Hex SHA-256 of the bearer token clients must send; None: ``$MEERKAT_API_TOKEN`` or no auth."""


def served_name(ref: str) -> str:
    """The public name of a model reference: the registry name/version or the directory name."""
    for scheme in ("models:/", "runs:/"):
        if ref.startswith(scheme):
            return ref[len(scheme) :].strip("/")
    return Path(ref.rstrip("/")).name or ref


# -- the model deployment ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to build requests for the model."""

    name: str
    config: ModelConfig
    tokenizer: PreTrainedTokenizerBase


class BatchingConfig(BaseModel):
    """``user_config`` of ``MeerkatModel``: applied to running replicas without restarting them."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1)
    """Keep it below the deployment's ``max_ongoing_requests``, or batches never fill."""
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    """How long the first request of a batch waits for others."""


_BATCHING = BatchingConfig()
# Above the default request_timeout_s (60 s), so that admitted requests finish on a scale-down.
GRACEFUL_SHUTDOWN_S = 75.0
# A batch running longer than this means a stuck replica: check_health fails and Serve replaces it.
STUCK_AFTER_S = 300.0


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=64,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    user_config=_BATCHING.model_dump(),
    ray_actor_options={"num_cpus": 1},
)
class MeerkatModel:
    """A loaded Meerkat model generating answers for batches of preprocessed requests."""

    def __init__(self, model_ref: str, name: str, device: str = "auto") -> None:
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = registry.load(model_ref, device=self.device)
        self.generator = Generator(self.model, self.device)
        self.info = ModelInfo(name, self.model.config, self.model.tokenizer)
        self.busy_since: float | None = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchingConfig.model_validate(user_config)
        self.generate.set_max_batch_size(config.max_batch_size)
        self.generate.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    def describe(self) -> ModelInfo:
        return self.info

    def ping(self) -> str:
        return self.info.name

    def check_health(self) -> None:
        """Serve's periodic check: a batch stuck for ``STUCK_AFTER_S`` fails it (the replica is replaced)."""
        if self.busy_since is not None and time.monotonic() - self.busy_since > STUCK_AFTER_S:
            raise RuntimeError(f"a batch has been generating for over {STUCK_AFTER_S:g} s")

    @serve.batch(max_batch_size=_BATCHING.max_batch_size, batch_wait_timeout_s=_BATCHING.batch_wait_timeout_s)
    async def generate(self, requests: list[Generation]) -> list[Completion]:
        # A worker thread, so that the replica keeps queueing the next batch while this one runs.
        self.busy_since = time.monotonic()
        try:
            return await asyncio.to_thread(self.generator, requests)
        finally:
            self.busy_since = None


# -- the HTTP ingress ----------------------------------------------------------------------------


class _MeerkatFastAPI(FastAPI):
    """FastAPI whose OpenAPI document also holds the request-body schemas the routes read by hand."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title, version=self.version, description=self.description, routes=self.routes
            )
            _, defs = models_json_schema(
                [(schemas.ChatCompletionRequest, "validation")], ref_template="#/components/schemas/{model}"
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            self.openapi_schema = schema
        return self.openapi_schema


api = _MeerkatFastAPI(
    title="Meerkat",
    version="1.0",
    description="Audio-visual LLM with grounded answers: boxes on the image, time windows in the audio, "
    "as typed JSON. Media are sent inline (base64, data URLs or multipart); remote URLs are not fetched.",
    # Served by MeerkatAPI's own routes, behind the token when there is one.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
_bearer = HTTPBearer(auto_error=False, description="The service's API token, when it has one.")
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request or media",
        401: "Missing or wrong API token",
        404: "Unknown model",
        413: "Request too large",
        415: "Unsupported content type",
        422: "Missing or malformed fields",
        500: "The model failed on this request (other requests are not affected)",
        503: "Overloaded: the model's queue is full; retry later",
        504: "No answer within the request timeout",
    }.items()
}
_STATUS_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
_WORDS = re.compile(r"\s*\S+|\s+")


@api.exception_handler(APIError)
async def _api_error(_: Request, err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.type, err.message), status_code=err.status, headers=err.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    type_ = _STATUS_TYPES.get(err.status_code, "invalid_request_error")
    message = inputs.clean(str(err.detail))
    return JSONResponse(error_body(type_, message), status_code=err.status_code, headers=err.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        error_body("invalid_request_error", inputs.validation_message(err.errors())), status_code=422
    )


@api.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    # The traceback goes to the replica's log; the client gets no internals.
    logger.error("unhandled error in %s %s", request.method, request.url.path, exc_info=err)
    return JSONResponse(error_body("server_error", "internal error; see the service log"), status_code=500)


async def within_timeout(work: Coroutine[Any, Any, T], seconds: float) -> T:
    """``await work``, or 504 after ``seconds`` (``work`` is then cancelled)."""
    try:
        return await asyncio.wait_for(work, seconds)
    except asyncio.TimeoutError:
        raise APIError(504, "timeout", f"no answer within the request timeout of {seconds:g} s") from None


def sse_chunks(
    chunk_id: str,
    created: int,
    model: str,
    completion: Completion,
    content: str,
    usage: schemas.Usage,
    grounding: schemas.Grounding,
) -> list[str]:
    """The server-sent events of a streamed chat completion (OpenAI's ``chat.completion.chunk``
    format): the role, the content in word-sized deltas, the finish reason, then usage and grounding."""

    def event(choices: list[schemas.ChunkChoice], **extra: Any) -> str:
        chunk = schemas.ChatCompletionChunk(
            id=chunk_id, created=created, model=model, choices=choices, **extra
        )
        data = chunk.model_dump(mode="json", exclude_none=True)
        if chunk.grounding is not None:  # every field, nulls included, as in the non-streamed answer
            data["grounding"] = chunk.grounding.model_dump(mode="json")
        return f"data: {json.dumps(data)}\n\n"

    events = [event([schemas.ChunkChoice(delta=schemas.Delta(role="assistant", content=""))])]
    events += [event([schemas.ChunkChoice(delta=schemas.Delta(content=w))]) for w in _WORDS.findall(content)]
    events.append(event([schemas.ChunkChoice(delta=schemas.Delta(), finish_reason=completion.finish_reason)]))
    events.append(event([], usage=usage, grounding=grounding))
    events.append("data: [DONE]\n\n")
    return events


@dataclass(frozen=True)
class _Prepared:
    row: dict[str, Any]
    width: int
    height: int
    seconds: float


Credentials = HTTPAuthorizationCredentials | None


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=64,
    graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    ray_actor_options={"num_cpus": 1},
)
@serve.ingress(api)
class MeerkatAPI:
    """The HTTP front: validates and preprocesses every request, then awaits the model's batch."""

    async def __init__(self, model: DeploymentHandle, settings: AppArgs) -> None:
        self.model = model
        self.settings = settings
        info: ModelInfo = await model.describe.remote()
        self.name = info.name
        self.config = info.config
        self.prep = batching.SamplePreprocessor(info.config, info.tokenizer)
        self.media_tokens = info.config.llm_image_tokens + info.config.audio.num_tokens
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess")
        self.token_sha256 = settings.api_token_sha256 or auth.digest_from_env()
        if self.token_sha256 is None:
            logger.warning(
                "no API token: the API, its docs and the demo page are open to anyone who can reach "
                "this port; set %s when deploying to require one",
                auth.TOKEN_ENV,
            )
        self.demo_page = DEMO_PAGE.read_text()
        self.started = int(time.time())

    # -- plumbing shared by the routes

    def _authorize(self, request: Request, *, page: bool = False) -> None:
        auth.check(auth.presented_token(request.headers.get("authorization")), self.token_sha256, page=page)

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the preprocessing thread, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _max_new_tokens(self, requested: int | None) -> int:
        limit = self.settings.max_new_tokens_limit
        if requested is not None and requested > limit:
            raise invalid(f"max_new_tokens: at most {limit}, got {requested}")
        return requested or self.settings.default_max_new_tokens

    def _prepare_sync(self, instruction: str, raw: inputs.Media) -> _Prepared:
        settings = self.settings
        decoded = inputs.decode_media(
            raw,
            sample_rate=self.config.audio.sampling_rate,
            max_pixels=settings.max_image_pixels,
            max_seconds=settings.max_audio_seconds,
            max_samples=settings.max_audio_samples,
        )
        width, height = decoded.image.size
        if max(width, height) > settings.max_aspect_ratio * min(width, height):
            raise APIError(
                400,
                "invalid_media",
                f"image: {width} x {height} pixels is more elongated than the limit of "
                f"{settings.max_aspect_ratio:g}:1",
            )
        try:
            row = self.prep(decoded.image, decoded.wave, {"instruction": instruction}, with_answer=False)
        except batching.PromptTooLongError as err:
            raise APIError(400, "prompt_too_long", f"instruction: {err}") from err
        return _Prepared(row, width, height, decoded.seconds)

    async def _run(
        self, instruction: str, raw: inputs.Media, sampling: Sampling
    ) -> tuple[_Prepared, Completion]:
        """Preprocess on the worker thread, then generate in the model's next batch."""
        if len(instruction) > self.settings.max_prompt_chars:
            raise APIError(
                400,
                "prompt_too_long",
                f"instruction of {len(instruction)} characters exceeds the limit of "
                f"{self.settings.max_prompt_chars}",
            )
        try:
            instruction.encode("utf-8")
        except UnicodeEncodeError as err:
            raise invalid("instruction: not valid Unicode (a lone surrogate)") from err
        prepared = await self._offload(self._prepare_sync, instruction, raw)
        try:
            response = self.model.generate.remote(Generation(prepared.row, sampling))
            completion: Completion = await response
        except BackPressureError:
            raise APIError(
                503, "service_unavailable", "the model's queue is full; retry shortly", {"Retry-After": "1"}
            ) from None
        except asyncio.CancelledError:
            # A timed-out or abandoned request leaves the model's queue rather than use a batch slot.
            response.cancel()
            raise
        if completion.error is not None:
            raise APIError(500, "server_error", "the model failed on this request; see the service log")
        return prepared, completion

    def _usage(self, prepared: _Prepared, completion: Completion) -> schemas.Usage:
        # The <image> and <audio> placeholders each become the LLM's media tokens.
        prompt = int(np.asarray(prepared.row["input_ids"]).shape[0]) - 2 + self.media_tokens
        return schemas.Usage(
            prompt_tokens=prompt, completion_tokens=completion.tokens, total_tokens=prompt + completion.tokens
        )

    async def _task(self, task: str, request: Request) -> schemas.TaskResponse:
        self._authorize(request)

        async def work() -> schemas.TaskResponse:
            params, raw = await inputs.task_request(
                request, schemas.TASK_PARAMS[task], self.settings.max_request_bytes, self._offload
            )
            instruction, fact_type = tasks.instruction(task, params)
            sampling = Sampling(self._max_new_tokens(params.max_new_tokens), params.temperature)
            prepared, completion = await self._run(instruction, raw, sampling)
            return schemas.TaskResponse(
                id=f"task-{uuid.uuid4().hex}",
                created=int(time.time()),
                model=self.name,
                task=task,
                instruction=instruction,
                fact_type=fact_type,
                text=completion.text,
                grounding=tasks.task_grounding(task, completion.text, prepared.width, prepared.height),
                image=schemas.ImageInfo(width=prepared.width, height=prepared.height),
                audio=schemas.AudioInfo(seconds=prepared.seconds),
                usage=self._usage(prepared, completion),
            )

        return await within_timeout(work(), self.settings.request_timeout_s)

    # -- pages

    @api.get("/", include_in_schema=False)
    def demo(self, request: Request) -> HTMLResponse:
        self._authorize(request, page=True)
        return HTMLResponse(self.demo_page)

    @api.get("/docs", include_in_schema=False)
    def docs(self, request: Request) -> HTMLResponse:
        self._authorize(request, page=True)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Meerkat API")

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self, request: Request) -> JSONResponse:
        self._authorize(request, page=True)
        return JSONResponse(api.openapi())

    @api.get("/examples", include_in_schema=False)
    def examples(self, request: Request) -> JSONResponse:
        """The demo page's example scenes (see :mod:`serve.examples`)."""
        self._authorize(request, page=True)
        return JSONResponse(examples.index())

    @api.get("/examples/{name}", include_in_schema=False)
    def example_file(self, name: str, request: Request) -> Response:
        self._authorize(request, page=True)
        found = examples.file(name)
        if found is None:
            raise APIError(404, "not_found", "no such example file")
        data, media_type = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    # -- routes

    @api.get("/healthz", response_model=schemas.Health, responses={503: {"model": ErrorResponse}})
    async def healthz(self) -> schemas.Health:
        """Liveness of the whole path: this ingress and a model replica."""
        try:
            name = await asyncio.wait_for(self.model.ping.remote(), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, BackPressureError):
            raise APIError(
                503, "service_unavailable", f"the model did not answer within {HEALTH_TIMEOUT_S:g} s"
            ) from None
        return schemas.Health(status="ok", model=name)

    @api.get("/v1/models", response_model=schemas.ModelList, responses={401: _ERRORS[401]})
    def models(self, request: Request, credentials: Credentials = Depends(_bearer)) -> schemas.ModelList:
        """The served model (OpenAI ``GET /v1/models``)."""
        self._authorize(request)
        return schemas.ModelList(data=[schemas.ModelCard(id=self.name, created=self.started)])

    @api.post(
        "/v1/ground",
        response_model=schemas.TaskResponse,
        responses=_ERRORS,
        openapi_extra=schemas.task_request_body("ground"),
    )
    async def ground(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.TaskResponse:
        """Box the object in the image that makes the sound (``grounding.box``)."""
        return await self._task("ground", request)

    @api.post(
        "/v1/localize",
        response_model=schemas.TaskResponse,
        responses=_ERRORS,
        openapi_extra=schemas.task_request_body("localize"),
    )
    async def localize(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.TaskResponse:
        """When the named object of the image is heard (``grounding.window``, seconds)."""
        return await self._task("localize", request)

    @api.post(
        "/v1/factcheck",
        response_model=schemas.TaskResponse,
        responses=_ERRORS,
        openapi_extra=schemas.task_request_body("factcheck"),
    )
    async def factcheck(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.TaskResponse:
        """Whether a claim about the image and the sound holds (``grounding.verdict``)."""
        return await self._task("factcheck", request)

    @api.post(
        "/v1/answer",
        response_model=schemas.TaskResponse,
        responses=_ERRORS,
        openapi_extra=schemas.task_request_body("answer"),
    )
    async def answer(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.TaskResponse:
        """Answer a question about the scene and its sound."""
        return await self._task("answer", request)

    @api.post(
        "/v1/caption",
        response_model=schemas.TaskResponse,
        responses=_ERRORS,
        openapi_extra=schemas.task_request_body("caption"),
    )
    async def caption(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.TaskResponse:
        """Describe what is seen and heard."""
        return await self._task("caption", request)

    @api.post(
        "/v1/chat/completions",
        response_model=schemas.ChatCompletion,
        responses=_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
                },
            }
        },
    )
    async def chat_completions(
        self, request: Request, credentials: Credentials = Depends(_bearer)
    ) -> schemas.ChatCompletion:
        """OpenAI Chat Completions (also ``stream: true``): one user message carries an image_url
        and an input_audio part; system messages and earlier turns are text context."""
        self._authorize(request)

        async def work() -> schemas.ChatCompletion | StreamingResponse:
            kind = inputs.media_type(request)
            if kind != "application/json":
                raise APIError(
                    415,
                    "unsupported_media_type",
                    f"Content-Type must be application/json, got {inputs.excerpt(kind or 'none')}",
                )
            body = await inputs.read_body(request, self.settings.max_request_bytes)
            chat, instruction, raw = await self._offload(self._chat_sync, body)
            if chat.model != self.name:
                raise APIError(
                    404,
                    "model_not_found",
                    f"model {inputs.excerpt(chat.model)} is not served here; GET /v1/models lists it",
                )
            sampling = Sampling(
                self._max_new_tokens(chat.max_completion_tokens or chat.max_tokens),
                1.0 if chat.temperature is None else chat.temperature,
                1.0 if chat.top_p is None else chat.top_p,
                chat.seed,
                inputs.stop_strings(chat),
            )
            prepared, completion = await self._run(instruction, raw, sampling)
            grounding = tasks.chat_grounding(completion.text, prepared.width, prepared.height)
            content = completion.text
            if chat.response_format is not None and chat.response_format.type == "json_object":
                content = json.dumps({"text": completion.text, **grounding.model_dump()})
            chat_id, created, usage = (
                f"chatcmpl-{uuid.uuid4().hex}",
                int(time.time()),
                self._usage(prepared, completion),
            )
            if chat.stream:
                events = sse_chunks(chat_id, created, self.name, completion, content, usage, grounding)

                async def stream() -> AsyncIterator[str]:
                    for event in events:
                        yield event

                return StreamingResponse(
                    stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
                )
            return schemas.ChatCompletion(
                id=chat_id,
                created=created,
                model=self.name,
                choices=[
                    schemas.Choice(
                        index=0,
                        message=schemas.AssistantMessage(content=content),
                        finish_reason=completion.finish_reason,
                    )
                ],
                usage=usage,
                grounding=grounding,
            )

        return await within_timeout(work(), self.settings.request_timeout_s)

    @staticmethod
    def _chat_sync(body: bytes) -> tuple[schemas.ChatCompletionRequest, str, inputs.Media]:
        chat = inputs.validate(schemas.ChatCompletionRequest, inputs.parse_json(body))
        inputs.chat_refusals(chat)
        instruction, raw = inputs.chat_inputs(chat)
        return chat, instruction, raw


def app(args: dict[str, Any] | AppArgs) -> Application:
    """The application builder: ``serve run serve.app:app model=<ref>`` or ``import_path: serve.app:app``."""
    settings = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)
    ref = settings.model or os.environ.get(MODEL_REF_ENV)
    if not ref:
        raise ValueError(f"no model reference: pass the argument model=<ref> or set ${MODEL_REF_ENV}")
    ref = registry.resolve_version(ref)  # once, at deploy: every replica loads this version
    name = settings.served_model_name or served_name(ref)
    settings = settings.model_copy(update={"model": ref, "served_model_name": name})
    return MeerkatAPI.bind(MeerkatModel.bind(ref, name, settings.device), settings)
