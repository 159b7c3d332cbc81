"""The one place where errors become HTTP responses with stable JSON codes."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ChunkyardError, RangeNotSatisfiable, RequestTimeout, StoreError, Unauthorized
from . import metrics
from .observe import HEADER, SCOPE_KEY

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
    if isinstance(exc, StoreError):
        metrics.store_error(str(exc.detail.get("operation", "")))
    if exc.status >= 500:
        log.error(
            "%s %s: %s", request.method, request.url.path, exc.message, exc_info=exc.__cause__
        )
    return JSONResponse(_with_id(exc.to_json(), request), status_code=exc.status, headers=headers)


def _with_id(body: dict, request: Request) -> dict:
    """The error object with the request's id, which the client prints with it."""
    rid = request.scope.get(SCOPE_KEY)
    if rid:
        body["error"]["request_id"] = rid
    return body


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (no such route, method not allowed, with ``Allow``)."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return JSONResponse(
        _with_id({"error": {"code": code, "message": exc.detail}}, request),
        status_code=exc.status_code,
        headers=exc.headers,
    )


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette calls this outside the middleware, whose context (and request id) is gone
    rid = request.scope.get(SCOPE_KEY)
    log.exception(
        "unhandled error on %s %s", request.method, request.url.path, extra={"request_id": rid}
    )
    return JSONResponse(
        _with_id({"error": {"code": "internal", "message": "internal error"}}, request),
        status_code=500,
        headers={HEADER.decode(): rid} if rid else None,
    )


handlers = {ChunkyardError: chunkyard_error, HTTPException: http_error, Exception: unexpected_error}
