"""The one place where errors become HTTP responses with stable JSON codes."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ChunkyardError, RangeNotSatisfiable, RequestTimeout, Unauthorized

log = logging.getLogger("chunkyard.server")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def chunkyard_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChunkyardError)
    headers = {}
    if isinstance(exc, RangeNotSatisfiable) and "size" in exc.detail:
        headers["content-range"] = f"bytes */{exc.detail['size']}"
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = 'Bearer realm="chunkyard"'
    if isinstance(exc, RequestTimeout):
        # the rest of the body may never come: close, instead of reading on for it
        headers["connection"] = "close"
    if exc.status >= 500:
        log.error(
            "%s %s: %s", request.method, request.url.path, exc.message, exc_info=exc.__cause__
        )
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (no such route, method not allowed, with ``Allow``)."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": exc.detail}},
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(
        {"error": {"code": "internal", "message": "internal error"}}, status_code=500
    )


handlers = {ChunkyardError: chunkyard_error, HTTPException: http_error, Exception: unexpected_error}
