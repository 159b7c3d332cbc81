"""References on the client side: registering one (a single request, or for hashing a
stream of NDJSON progress lines, so a progress bar can show the gateway's hashing), and
the one place the client builds a :class:`~chunkyard.errors.ReferenceDrifted`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import urllib3

from .. import pins
from ..errors import GatewayUnavailable, ReferenceDrifted, StoreError, from_json
from .transport import Transport

NDJSON = "application/x-ndjson"
#: what a source's refusal of a pinned read says about the object
DRIFT_STATUS = {404: "missing", 410: "missing", 412: "changed"}


def register(
    transport: Transport,
    body: dict[str, Any],
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """POST /v1/references; with hashing, follow the progress lines to the result."""
    if not (body.get("hash") or body.get("index")):
        return transport.call("POST", "/v1/references", json=body)
    advance: Callable[[int], None] | None = None
    shown = 0  # kept across tries: a retried registration hashes from 0 again

    def follow(resp: urllib3.BaseHTTPResponse) -> dict[str, Any]:
        nonlocal advance, shown
        if NDJSON not in resp.headers.get("content-type", ""):
            return json.loads(resp.read() or b"null")  # nothing to hash after all
        for line in resp:
            if not line.strip():
                continue
            event = json.loads(line)
            kind = event.get("event")
            if kind == "progress":
                if advance is None and progress_factory is not None:
                    advance = progress_factory(event["bytes"])
                if advance is not None and event["bytes_done"] > shown:
                    advance(event["bytes_done"] - shown)
                shown = max(shown, event["bytes_done"])
            elif kind == "done":
                result = event["result"]
                if advance is not None and result.get("size", shown) > shown:
                    advance(result.get("size", shown) - shown)
                return result
            elif kind == "error":
                raise from_json(500, event)
        raise GatewayUnavailable(
            f"the gateway at {transport.url} ended the registration without an answer",
            url=transport.url,
        )

    return transport.call(
        "POST", "/v1/references", json=body, headers={"accept": NDJSON}, read=follow
    )


def drifted(
    uri: str,
    state: str,
    path: str | None = None,
    *,
    pin: pins.Pin | None = None,
    why: str = "",
    **found: object,
) -> ReferenceDrifted:
    """The error for a reference object that no longer matches what was registered:
    ``state`` ``missing``, ``changed`` or ``content``. With its ``pin``, in the words the
    gateway uses (:func:`chunkyard.pins.drifted`); ``why`` adds what the client saw."""
    if pin is not None:
        return pins.drifted(pin, state, path=path, **found)
    what = "is gone" if state == "missing" else "changed"
    return ReferenceDrifted(
        f"reference drifted: {uri} {what}" + (f" ({why})" if why else ""),
        uri=uri,
        state=state,
        **({"path": path} if path else {}),
        **{k: v for k, v in found.items() if v is not None},
    )


@contextmanager
def refusals_as_drift(
    uri: str, path: str | None = None, *, pin: pins.Pin | None = None, why: str = ""
) -> Iterator[None]:
    """A pinned read the source refuses with 404, 410 (gone) or 412 (If-Match failed)
    is drift, not a store failure: raise it as such."""
    try:
        yield
    except StoreError as exc:
        status = exc.detail.get("status")
        state = DRIFT_STATUS.get(status) if isinstance(status, int) else None
        if state is None:
            raise
        raise drifted(uri, state, path, pin=pin, why=why, status=status) from exc
