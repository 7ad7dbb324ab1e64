"""The HTTP layer of the ingress: the FastAPI app, its error responses and its event streams.

:data:`api` is the FastAPI application that :class:`serve.ingress.MeerkatAPI` serves. This module
holds what every route shares and what involves no model: the OpenAPI document (which also carries
the request-body schemas the routes read by hand), the error responses each route documents
(:data:`ERRORS`), the exception handlers that turn every failure into the JSON error body of
:mod:`serve.errors`, the request timeout (:func:`within_timeout`) and the server-sent events of a
streamed chat completion (:func:`sse_chunks`).

Streaming (``stream: true``): the answer is generated in a batch like any other, then sent as
server-sent events in OpenAI's chunk format (a role chunk, text deltas, a chunk with the
``finish_reason``, a last chunk with ``usage`` and ``grounding``, then ``[DONE]``). Clients get the
OpenAI streaming protocol; the first byte comes when the batch is done, not sooner.
"""

# No ``from __future__ import annotations``: ``Credentials`` is read by FastAPI as an object.
import asyncio
import json
import logging
import re
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve import inputs, schemas
from serve.errors import APIError, ErrorResponse, error_body
from serve.generation import Completion

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
bearer = HTTPBearer(auto_error=False, description="The service's API token, when it has one.")
Credentials = HTTPAuthorizationCredentials | None
"""What :data:`bearer` gives a route: the routes take it so that OpenAPI shows their security."""
ERRORS: dict[int | str, dict[str, Any]] = {
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
"""The error responses a route that generates documents."""
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
