"""References on the client side: registering one (a single request, or for hashing a
stream of NDJSON progress lines, so a progress bar can show the gateway's hashing), and
the one place the client builds a :class:`~chunkyard.errors.ReferenceDrifted`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .. import pins
from ..errors import ReferenceDrifted, StoreError
from . import events
from .events import NDJSON as NDJSON  # what a registration with hashing asks for
from .transport import Transport

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

    def on_progress(event: dict[str, Any]) -> None:
        nonlocal advance, shown
        if advance is None and progress_factory is not None:
            advance = progress_factory(event["bytes"])
        if advance is not None and event["bytes_done"] > shown:
            advance(event["bytes_done"] - shown)
        shown = max(shown, event["bytes_done"])

    result = events.call(transport, "/v1/references", body, on_progress)
    if advance is not None and result.get("size", shown) > shown:
        advance(result.get("size", shown) - shown)
    return result


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
