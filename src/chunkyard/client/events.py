"""Following a gateway's NDJSON progress (a long request: hashing a reference, garbage
collection): ``progress`` lines go to a callback, then a ``done`` line carries the
result or an ``error`` line the typed error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import urllib3

from ..errors import GatewayUnavailable, from_json
from .transport import Transport

NDJSON = "application/x-ndjson"


def call(
    transport: Transport,
    path: str,
    body: dict[str, Any],
    on_progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """``POST path`` asking for progress lines; each goes to ``on_progress``; the result.
    A gateway that answers plain JSON instead (nothing long to do) is answered as is."""

    def follow(resp: urllib3.BaseHTTPResponse) -> dict[str, Any]:
        if NDJSON not in resp.headers.get("content-type", ""):
            return json.loads(resp.read() or b"null")
        for line in resp:
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("event")
            if kind == "progress":
                on_progress(event)
            elif kind == "done":
                return event["result"]
            elif kind == "error":
                raise from_json(500, event)
        raise GatewayUnavailable(
            f"the gateway at {transport.url} ended {path} without an answer", url=transport.url
        )

    return transport.call("POST", path, json=body, headers={"accept": NDJSON}, read=follow)
