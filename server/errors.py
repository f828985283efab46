"""OpenAI-shaped error responses: ``{"error": {"message", "type", "param", "code"}}``, and the app's handlers."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pegboard.core.async_engine import EngineDeadError, EngineOverloadedError
from pegboard.core.errors import InvalidParameterError, PegboardError, PromptTooLongError, RequestFailedError

logger = logging.getLogger("pegboard.server")

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error answered with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


class ClientDisconnected(Exception):
    """The client went away before its answer was ready (its engine requests were aborted)."""


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object for an HTTP status."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """An OpenAI-shaped JSON error response."""
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def as_api_error(exc: BaseException) -> APIError:
    """The APIError an exception raised while serving a request stands for."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidParameterError):
        return APIError(400, str(exc), param=exc.param)
    if isinstance(exc, EngineOverloadedError):
        return APIError(503, str(exc), code="engine_overloaded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_dead")
    if isinstance(exc, RequestFailedError):
        return APIError(500, str(exc), code="engine_step_failed")
    if isinstance(exc, PegboardError):
        return APIError(400, str(exc))
    logger.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error: {type(exc).__name__}")


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer any exception a route raised with OpenAI's error shape."""
    error = as_api_error(exc)
    return error_response(error.status, error.message, param=error.param, code=error.code, headers=error.headers)


async def handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (unknown route, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    elif exc.status_code == 405:
        message = f"Method {request.method} not allowed for {request.url.path}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def handle_disconnect(request: Request, exc: Exception) -> Response:
    """Nobody is listening any more: an empty answer (nginx's 499, 'client closed request')."""
    return Response(status_code=499)


# APIError and PegboardError are answered inside the app; anything else is a bug, answered by Starlette's
# outermost middleware (which also logs it) with the same shape and status 500.
EXCEPTION_HANDLERS = {HTTPException: handle_http_exception, APIError: handle_error, PegboardError: handle_error,
                      ClientDisconnected: handle_disconnect, Exception: handle_error}
