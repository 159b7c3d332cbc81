"""Registering references from the client: one request, or for hashing a stream of
NDJSON progress lines (so a progress bar can show the gateway's hashing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import GatewayUnavailable, from_json
from .transport import Transport

NDJSON = "application/x-ndjson"


def register(
    transport: Transport,
    body: dict[str, Any],
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """POST /v1/references; with hashing, follow the progress lines to the result."""
    if not (body.get("hash") or body.get("index")):
        return transport.call("POST", "/v1/references", json=body)
    advance: Callable[[int], None] | None = None
    shown = 0
    try:
        with transport.http.stream(
            "POST", transport.url + "/v1/references", json=body, headers={"accept": NDJSON}
        ) as resp:
            if not resp.is_success or NDJSON not in resp.headers.get("content-type", ""):
                resp.read()
                if resp.is_success:  # nothing to hash after all: a plain answer
                    return resp.json()
                try:
                    err = resp.json()
                except ValueError:
                    err = {}
                raise from_json(resp.status_code, err)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("event")
                if kind == "progress":
                    if advance is None and progress_factory is not None:
                        advance = progress_factory(event["bytes"])
                    if advance is not None:
                        advance(event["bytes_done"] - shown)
                    shown = event["bytes_done"]
                elif kind == "done":
                    result = event["result"]
                    if advance is not None:
                        advance(result.get("size", shown) - shown)
                    return result
                elif kind == "error":
                    raise from_json(500, event)
    except _transport_errors() as exc:
        raise GatewayUnavailable(
            f"lost the gateway at {transport.url} while registering: {exc}", url=transport.url
        ) from exc
    raise GatewayUnavailable(
        f"the gateway at {transport.url} ended the registration without an answer",
        url=transport.url,
    )


def _transport_errors() -> type[Exception]:
    import httpx  # only the reference paths use httpx: keep it off the CLI's start-up

    return httpx.TransportError
