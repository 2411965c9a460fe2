"""Errors in OpenAI's JSON shape, and what each failure of Triton or the SDK becomes.

``{"error": {"message", "type", "param", "code"}}`` with the HTTP status: 400 bad input (the
server's one-line message), 401 a wrong or missing API key, 413 a body over the limit, 429 the
engine is full (``Retry-After``), 503 Triton cannot take requests now (down, not ready, draining;
``Retry-After``), 504 no answer within the request timeout.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from blip2_triton.client.errors import (
    Blip2ClientError,
    InferenceTimeoutError,
    InvalidRequestError,
    ServerUnavailableError,
)
from blip2_triton.runtime.errors import QUEUE_REFUSALS, EngineOverloadedError, one_line

OVERLOAD_RETRY_AFTER_S = 1
UNAVAILABLE_RETRY_AFTER_S = 5
# Triton's answer for a model being unloaded, as during serve's drain (see server/drain.py).
_UNLOADING = "has no available versions"


class ApiError(Exception):
    """A failure answered with ``status`` and OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: object,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        self.status = status
        self.message = one_line(message)
        self.kind = kind
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def bad_request(message: object, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unavailable(message: object) -> ApiError:
    return ApiError(
        503, message, kind="server_error", code="unavailable", retry_after_s=UNAVAILABLE_RETRY_AFTER_S
    )


def from_client_error(error: Blip2ClientError) -> ApiError:
    """The API error for what the SDK raised on a call to Triton."""
    message = error.message
    if isinstance(error, InvalidRequestError):
        return bad_request(message)
    if isinstance(error, ServerUnavailableError):
        if message.startswith(EngineOverloadedError.prefix) or any(r in message for r in QUEUE_REFUSALS):
            return ApiError(
                429, message, kind="rate_limit_error", code="overloaded", retry_after_s=OVERLOAD_RETRY_AFTER_S
            )
        return unavailable(message)
    if _UNLOADING in message:
        return unavailable(f"the model is not being served now (draining or loading): {message}")
    if isinstance(error, InferenceTimeoutError):
        return ApiError(504, message, kind="timeout_error", code="timeout")
    return ApiError(500, message, kind="server_error", code="internal_error")
