"""Pack verification: the trust rule. A pack's chunks become dedup targets for other
uploads only after its bytes were read back from the store and every chunk id checked.

Modes (``CHUNKYARD_VERIFY``):
- ``inline``: the gateway verifies while completing the pack (default on a local
  store, where reading back is a page-cache copy);
- ``background``: a task in the gateway verifies completed packs while the client
  goes on uploading (default on cloud stores: a push never waits for it);
- ``external``: a separate ``chunkyard verifier`` process does it.

A pack that fails verification is removed from the store. Completed inline, it also
leaves the catalog as it was; found later, it is marked ``corrupt`` so that the
versions its (lying) uploader committed fail loudly instead of serving wrong bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import time

import anyio
from sqlalchemy import select

from .. import packs as packfmt
from ..catalog.db import insert_ignoring_duplicates
from ..catalog.schema import chunks, pack_entries, packs
from ..chunking import BufferPool
from ..errors import PackCorrupt
from ..packs import pack_key
from .core import Gateway

log = logging.getLogger("chunkyard.verifier")
#: packs are read whole into these; one byte more than the largest pack, so that an
#: object that is too large shows as such. Anonymous mappings: only the pages a pack
#: fills are ever touched (a bytearray would zero all 64 MiB)
_buffers = BufferPool(packfmt.MAX_SIZE + 1, keep=2, factory=lambda n: mmap.mmap(-1, n))
BATCH = 8


async def read_index(gw: Gateway, pack_id: str, size: int) -> list[packfmt.Entry]:
    """A pack's index from its tail: one ranged read, two for a pack of tiny chunks."""
    want = min(size, 64 * 1024)
    while True:
        tail = await gw.store.get(pack_key(pack_id), size - want, size)
        if len(tail) != want:
            raise PackCorrupt(f"pack {pack_id} is shorter than its declared {size} bytes")
        got = packfmt.index_from_tail(tail, size)
        if not isinstance(got, int):
            return got
        if got > size or got <= want:
            raise PackCorrupt(f"pack {pack_id} has an index that does not fit")
        want = got


async def remove(gw: Gateway, pack_id: str) -> None:
    """Forget a pack that was never usable: store object, index rows, catalog row."""
    await gw.store.delete(pack_key(pack_id))
    async with gw.db.write() as conn:
        await conn.execute(pack_entries.delete().where(pack_entries.c.pack_id == pack_id))
        await conn.execute(packs.delete().where(packs.c.id == pack_id, packs.c.state != "verified"))


async def verify_pack(gw: Gateway, pack_id: str, forget_on_failure: bool = False) -> str:
    """Verify a completed pack; returns its state afterwards (``verified``/``corrupt``)."""
    async with gw.db.read() as conn:
        row = (await conn.execute(select(packs).where(packs.c.id == pack_id))).first()
    if row is None or row.state != "complete":
        return row.state if row is not None else "missing"
    buf = _buffers.get()
    try:
        n = await gw.store.read_into(pack_key(pack_id), buf)
        if n != row.size:
            more = "more than " if n == len(buf) else ""
            raise PackCorrupt(f"pack {pack_id} has {more}{n} bytes, expected {row.size}")
        entries = await anyio.to_thread.run_sync(packfmt.verify, pack_id, memoryview(buf)[:n])
        if not await _index_matches(gw, pack_id, entries):
            raise PackCorrupt(f"pack {pack_id} does not hold the index it was completed with")
    except PackCorrupt:
        log.warning("pack %s failed verification", pack_id)
        if forget_on_failure:
            await remove(gw, pack_id)
        else:
            await gw.store.delete(pack_key(pack_id))
            async with gw.db.write() as conn:
                await conn.execute(
                    packs.update().where(packs.c.id == pack_id).values(state="corrupt")
                )
        raise
    finally:
        _buffers.put(buf)
    async with gw.db.write() as conn:
        state = (await conn.execute(select(packs.c.state).where(packs.c.id == pack_id))).scalar()
        if state != "complete":
            return state or "missing"
        await conn.execute(
            packs.update()
            .where(packs.c.id == pack_id)
            .values(state="verified", verified_at=time.time())
        )
        await conn.execute(
            insert_ignoring_duplicates(conn.dialect.name, chunks),
            [{"id": e.chunk_id, "pack_id": pack_id, "idx": i} for i, e in enumerate(entries)],
        )
    return "verified"


async def _index_matches(gw: Gateway, pack_id: str, entries: list[packfmt.Entry]) -> bool:
    """The catalog's copy of the index (sent by the uploader, or read at completion)
    must be the pack's own."""
    async with gw.db.read() as conn:
        rows = (
            await conn.execute(
                select(
                    pack_entries.c.chunk_id,
                    pack_entries.c.offset,
                    pack_entries.c.stored_len,
                    pack_entries.c.raw_len,
                    pack_entries.c.scheme,
                )
                .where(pack_entries.c.pack_id == pack_id)
                .order_by(pack_entries.c.idx)
            )
        ).all()
    return [tuple(r) for r in rows] == [
        (e.chunk_id, e.offset, e.stored_len, e.raw_len, e.scheme) for e in entries
    ]


async def verify_pending(gw: Gateway, limit: int = BATCH) -> int:
    """Verify up to ``limit`` completed packs, oldest first; returns how many it tried."""
    async with gw.db.read() as conn:
        ids = (
            (
                await conn.execute(
                    select(packs.c.id)
                    .where(packs.c.state == "complete")
                    .order_by(packs.c.created_at)
                    .limit(limit)
                )
            )
            .scalars()
            .all()
        )
    for pack_id in ids:
        try:
            await verify_pack(gw, pack_id)
        except PackCorrupt:
            pass
        except Exception:  # a store hiccup: the pack stays 'complete' and is retried
            log.exception("verifying pack %s failed; will retry", pack_id)
    return len(ids)


async def run(gw: Gateway, wakeup: asyncio.Event, once: bool = False) -> None:
    """Verify completed packs until cancelled (or, with ``once``, until none is left)."""
    while True:
        n = await verify_pending(gw)
        if n:
            continue
        if once:
            return
        wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), timeout=5.0)
