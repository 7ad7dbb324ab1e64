"""The one error type of the HTTP API and its JSON body.

Every failure a client can cause is raised as :class:`APIError` with an HTTP status, a short
machine-readable ``type`` and a message meant for a person; the ingress turns it into
``{"error": {"message": ..., "type": ...}}`` (the OpenAI error shape, so OpenAI clients raise
their usual exceptions). Messages name the field and the limit at fault and never echo request
data or secrets.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class APIError(Exception):
    """A request the service refuses: ``status`` (4xx, or 5xx for our own faults), ``type``, message."""

    def __init__(self, status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.headers = headers


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a person to read.")
    type: str = Field(
        description="A stable category: invalid_request_error, invalid_media, prompt_too_long, "
        "request_too_large, unsupported_media_type, authentication_error, model_not_found, "
        "not_found, timeout, service_unavailable or server_error."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(type_: str, message: str) -> dict:
    """The JSON body of an error response."""
    return {"error": {"message": message, "type": type_}}


def invalid(message: str) -> APIError:
    """400 for a request that is well-formed but cannot be served as sent."""
    return APIError(400, "invalid_request_error", message)
