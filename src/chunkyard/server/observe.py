"""The one middleware: gives every request an id, counts it in the metrics, and logs it.

The id is the caller's ``X-Request-Id`` when it is a short token (a load balancer's),
else a fresh one; it comes back in the answer's ``X-Request-Id`` header and in every
JSON error, and is on every log line written while the request is served, so a user's
"request id 3f2c…" leads straight to the gateway's log lines. Pure ASGI rather than
Starlette's ``BaseHTTPMiddleware``, which would buffer streamed answers (a pull).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from . import logs, metrics

HEADER = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
#: the scope key the id is kept under, for error handlers that run outside the
#: middleware's context (Starlette's handler of unexpected errors)
SCOPE_KEY = "chunkyard.request_id"


def request_id(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _VALID.fullmatch(value):
            return value.decode()
    return secrets.token_hex(8)


class Observe:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope[SCOPE_KEY] = rid
        token = logs.REQUEST_ID.set(rid)
        start = time.perf_counter()
        counts = {"status": 500, "in": 0, "out": 0}  # 500: no answer began (a crash)

        async def receive_counted() -> Any:
            message = await receive()
            counts["in"] += len(message.get("body", b""))
            return message

        async def send_counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message["headers"] = [*message.get("headers", ()), (HEADER, rid.encode())]
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_counted, send_counted)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            metrics.observe(route, method, counts["status"], seconds, counts["in"], counts["out"])
            if logs.access.isEnabledFor(20):  # INFO: only in the json log format
                logs.access.info(
                    "%s %s %d",
                    method,
                    scope["path"],
                    counts["status"],
                    extra={
                        "method": method,
                        "path": logs.redact(_path(scope)),
                        "route": route,
                        "status": counts["status"],
                        "duration_ms": round(seconds * 1000, 2),
                        "bytes_in": counts["in"],
                        "bytes_out": counts["out"],
                    },
                )
            logs.REQUEST_ID.reset(token)


def _path(scope: dict[str, Any]) -> str:
    query = scope.get("query_string", b"")
    return scope["path"] + ("?" + query.decode("latin-1") if query else "")
