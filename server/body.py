"""Reading a request body as one JSON object: size limit (413), UTF-8, strict JSON (no NaN/Infinity)."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import ClientDisconnect, Request

from pegboard.server.errors import APIError, ClientDisconnected

MAX_BODY_BYTES = 8 * 2**20
_DRAIN_LIMIT = 8 * MAX_BODY_BYTES  # read (and drop) an oversized body up to this, so the client gets the 413
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON may spell a lone UTF-16 surrogate, which is no text


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or a 400/413 APIError saying what is wrong with it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_LIMIT:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > _DRAIN_LIMIT:
                break
    except ClientDisconnect:
        raise ClientDisconnected() from None
    if size > limit:
        raise _too_large(limit)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError(400, "the request body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)") from None
    return body


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit // 2**20} MiB", code="request_too_large")
