"""NDJSON progress for long requests (hashing a reference, garbage collection): the
work runs as a task, a ``progress`` line goes out about every second, then one
``done`` line with the result or one ``error`` line. If the client goes away the task
is cancelled, so work that may be cut short anywhere is what this serves."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from ..errors import ChunkyardError

log = logging.getLogger("chunkyard.events")


async def ndjson(
    work: Coroutine[Any, Any, dict[str, Any]],
    progress: Callable[[], dict[str, Any]],
    what: str,
    on_cancel: Callable[[], None] = lambda: None,
    every: float = 1.0,
) -> AsyncIterator[bytes]:
    """Run ``work``; lines of ``progress()`` while it runs, then its result (``what``
    names the work in the log when it fails unexpectedly)."""
    task = asyncio.create_task(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every)
            if done:
                break
            yield line({"event": "progress", **progress()})
        yield line({"event": "done", "result": task.result()})
    except ChunkyardError as exc:
        yield line({"event": "error", **exc.to_json()})
    except Exception:
        log.exception("%s failed", what)
        yield line({"event": "error", "error": {"code": "internal", "message": "internal error"}})
    finally:
        if not task.done():
            on_cancel()
            task.cancel()


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
