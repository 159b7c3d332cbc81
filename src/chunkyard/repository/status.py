"""What a gateway reports about its repository to the machines that watch it: whether
it can serve (readiness, for a load balancer) and the totals its metrics expose."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ..catalog import packs as packs_q
from ..catalog import sessions as sessions_q
from ..catalog import versions as versions_q
from ..catalog.db import ping
from . import Repository

#: seconds each of the catalog and the store has to answer a readiness check: a load
#: balancer polls every few seconds and must not pile up checks behind a hung store
READY_TIMEOUT = 2.0
#: a key no one writes: asking the store for it proves it answers and accepts our
#: credentials, without writing anything
READY_PROBE_KEY = ".chunkyard-ready"


async def _timed(what: str, aw: Any) -> str:
    try:
        await asyncio.wait_for(aw, READY_TIMEOUT)
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g} s"
    except Exception as exc:  # any failure means not ready; say which
        return f"{type(exc).__name__}: {exc}"[:300]
    return "ok"


async def readiness(repo: Repository) -> dict[str, str]:
    """``{"catalog": "ok"|why, "store": "ok"|why}``, both checked at once."""
    catalog, store = await asyncio.gather(
        _timed("catalog", repo.db.read(ping)),
        _timed("store", repo.store.stat(READY_PROBE_KEY)),
    )
    return {"catalog": catalog, "store": store}


@dataclass
class Totals:
    logical_bytes: int = 0  # bytes of every stored version, as pulled
    stored_bytes: int = 0  # bytes of the verified packs that hold them
    sessions_open: int = 0
    verification_backlog: int = 0  # packs uploaded and not yet verified
    at: float = 0.0  # time.monotonic() when read


async def totals(repo: Repository) -> Totals:
    """The catalog's totals (they sum every version and pack: callers cache them)."""
    now = time.time()

    def tx(conn: Any) -> Totals:
        stored, _, _ = packs_q.stored_totals(conn)
        return Totals(
            logical_bytes=versions_q.totals(conn)["logical_bytes"],
            stored_bytes=stored,
            sessions_open=sessions_q.count_open(conn, now),
            verification_backlog=packs_q.awaiting_verification(conn),
            at=time.monotonic(),
        )

    return await repo.db.read(tx)
