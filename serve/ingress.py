"""The HTTP ingress: authentication, validation and preprocessing, then the model's next batch.

:class:`MeerkatAPI` is the FastAPI ingress (CPU) of :data:`serve.api.api`. Every request is fully
validated and turned into model tensors here (size and type checks, decoding and feature
extraction, prompt rendering), then generated in the model replica's next batch
(:class:`serve.replica.ModelReplica`), and its answer parsed into typed grounding.

Routes: ``POST /v1/{ground,localize,factcheck,answer,caption}`` (JSON or multipart; one route per
row of :data:`serve.tasks.TASKS`, made by :func:`task_route`, all served by one handler),
``POST /v1/chat/completions`` (OpenAI-compatible), ``GET /v1/models``, ``GET /healthz``, the
OpenAPI page at ``/docs`` (and ``/openapi.json``), a demo page at ``/`` and its example scenes at
``/examples`` (:mod:`serve.examples`). See :mod:`serve.schemas` for the bodies.

Decisions made here:

- Preprocessing runs on one worker thread per ingress replica: the fast tokenizer is not safe to
  call from several threads at once and feature extraction is GIL-bound; to preprocess faster,
  add ingress replicas. JSON parsing, base64, decoding, features and tokenization all run on that
  thread, never on the event loop (which only reads bodies and awaits).
- Overload is refused at once: the ingress answers 503 (JSON) when the model's queue is full,
  instead of a 504 a minute later; beyond the ingress's own ``max_queued_requests``, the proxy
  answers 503.
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
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import Depends, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from meerkat_core import batching, generation, media
from serve import auth, examples, inputs, schemas, tasks
from serve.api import ERRORS, Credentials, api, bearer, sse_chunks, within_timeout
from serve.errors import APIError, ErrorResponse, invalid
from serve.generation import Completion, Generation, Sampling
from serve.replica import GRACEFUL_SHUTDOWN_S, ModelInfo
from serve.settings import AppArgs

logger = logging.getLogger(__name__)

DEMO_PAGE = Path(__file__).with_name("static") / "index.html"
HEALTH_TIMEOUT_S = 5.0
T = TypeVar("T")


def task_route(task: tasks.Task) -> Callable[..., Coroutine[Any, Any, schemas.TaskResponse]]:
    """``POST /v1/<task>``, registered on :data:`serve.api.api` as a route of :class:`MeerkatAPI`
    (Serve finds a class's routes by their qualified name) and handled by ``MeerkatAPI._task``."""

    async def route(
        self, request: Request, credentials: Credentials = Depends(bearer)
    ) -> schemas.TaskResponse:
        return await self._task(task, request)

    route.__name__ = task.name  # the OpenAPI operation: its summary and id
    route.__qualname__ = f"MeerkatAPI.{task.name}"
    route.__doc__ = task.description
    return api.post(
        task.path,
        response_model=schemas.TaskResponse,
        responses=ERRORS,
        openapi_extra=schemas.task_request_body(task.params),
    )(route)


@dataclass(frozen=True)
class _Prepared:
    row: dict[str, Any]
    width: int
    height: int
    seconds: float


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
            row = generation.prompt_row(self.prep, decoded.image, decoded.wave, instruction)
        except batching.PromptTooLongError as err:
            raise APIError(400, "prompt_too_long", f"instruction: {err}") from err
        # to the model replica as 8-bit pixels and 16-bit mels (a third of the bytes), as the
        # training stream ships them; the replica makes the float tensors (media.float_row)
        row.update(media.lean_media(row["pixel_values"], row["audio_features"], self.prep.image))
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

    async def _task(self, task: tasks.Task, request: Request) -> schemas.TaskResponse:
        """The one handler of every task route (see :func:`task_route`)."""
        self._authorize(request)

        async def work() -> schemas.TaskResponse:
            params, raw = await inputs.task_request(
                request, task.params, self.settings.max_request_bytes, self._offload
            )
            instruction, fact_type = tasks.instruction(task.name, params)
            sampling = Sampling(self._max_new_tokens(params.max_new_tokens), params.temperature)
            prepared, completion = await self._run(instruction, raw, sampling)
            return schemas.TaskResponse(
                id=f"task-{uuid.uuid4().hex}",
                created=int(time.time()),
                model=self.name,
                task=task.name,
                instruction=instruction,
                fact_type=fact_type,
                text=completion.text,
                grounding=tasks.task_grounding(task.name, completion.text, prepared.width, prepared.height),
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

    @api.get("/v1/models", response_model=schemas.ModelList, responses={401: ERRORS[401]})
    def models(self, request: Request, credentials: Credentials = Depends(bearer)) -> schemas.ModelList:
        """The served model (OpenAI ``GET /v1/models``)."""
        self._authorize(request)
        return schemas.ModelList(data=[schemas.ModelCard(id=self.name, created=self.started)])

    # -- the task routes: one per row of serve.tasks.TASKS, all served by _task (PEP 667: a class
    # body's locals() is its namespace; the routes are registered here, between /v1/models and
    # /v1/chat/completions, so that the OpenAPI document keeps its order)
    locals().update({task.name: task_route(task) for task in tasks.TASKS.values()})

    @api.post(
        "/v1/chat/completions",
        response_model=schemas.ChatCompletion,
        responses=ERRORS,
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
        self, request: Request, credentials: Credentials = Depends(bearer)
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
