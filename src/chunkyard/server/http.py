"""Request helpers shared by the routes: bounded bodies and typed parameters."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..errors import BodyTooLarge, InvalidRequest
from ..gateway import Gateway

JSON_LIMIT = 64 * 1024 * 1024


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes", limit=limit)
    return bytes(buf)


async def json_body(request: Request, limit: int = JSON_LIMIT) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def int_param(
    request: Request, name: str, default: int | None = None, minimum: int = 0
) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise InvalidRequest(f"query parameter {name!r} must be an integer >= {minimum}")
    return int(raw)
