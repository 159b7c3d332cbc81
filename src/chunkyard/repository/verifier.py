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

from .. import packs as packfmt
from ..catalog import packs as packs_q
from ..chunking import BufferPool
from ..errors import PackCorrupt
from ..packs import pack_key
from . import Repository

log = logging.getLogger("chunkyard.verifier")
#: packs are read whole into these; one byte more than the largest pack, so that an
#: object that is too large shows as such. Anonymous mappings: only the pages a pack
#: fills are ever touched (a bytearray would zero all 64 MiB)
_buffers = BufferPool(packfmt.MAX_SIZE + 1, keep=2, factory=lambda n: mmap.mmap(-1, n))
#: packs taken per look at the catalog
BATCH = 8
#: how often the background verifier looks for work without being woken
IDLE_POLL = 5.0


async def read_index(repo: Repository, pack_id: str, size: int) -> list[packfmt.Entry]:
    """A pack's index from its tail: one ranged read, two for a pack of tiny chunks."""
    want = min(size, 64 * 1024)
    while True:
        tail = await repo.store.get(pack_key(pack_id), size - want, size)
        if len(tail) != want:
            raise PackCorrupt(f"pack {pack_id} is shorter than its declared {size} bytes")
        got = packfmt.index_from_tail(tail, size)
        if not isinstance(got, int):
            return got
        if got > size or got <= want:
            raise PackCorrupt(f"pack {pack_id} has an index that does not fit")
        want = got


async def remove(repo: Repository, pack_id: str) -> None:
    """Forget a pack that was never usable: store object, index rows, catalog row."""
    await repo.store.delete(pack_key(pack_id))
    await repo.db.write(packs_q.forget_unverified, pack_id)


async def verify_pack(repo: Repository, pack_id: str, forget_on_failure: bool = False) -> str:
    """Verify a completed pack; returns its state afterwards (``verified``/``corrupt``)."""
    row = await repo.db.read(packs_q.pack_row, pack_id)
    if row is None or row.state != "complete":
        return row.state if row is not None else "missing"
    buf = _buffers.get()
    try:
        n = await repo.store.read_into(pack_key(pack_id), buf)
        if n != row.size:
            more = "more than " if n == len(buf) else ""
            raise PackCorrupt(f"pack {pack_id} has {more}{n} bytes, expected {row.size}")
        entries = await anyio.to_thread.run_sync(packfmt.verify, pack_id, memoryview(buf)[:n])
        recorded = await repo.db.read(packs_q.index_of, pack_id)
        if recorded != [tuple(e) for e in entries]:
            raise PackCorrupt(f"pack {pack_id} does not hold the index it was completed with")
    except PackCorrupt:
        log.warning("pack %s failed verification", pack_id)
        if forget_on_failure:
            await remove(repo, pack_id)
        else:
            await repo.store.delete(pack_key(pack_id))
            await repo.db.write(packs_q.mark_corrupt, pack_id)
        raise
    finally:
        _buffers.put(buf)
    return await repo.db.write(packs_q.mark_verified, pack_id, time.time())


async def verify_pending(repo: Repository, limit: int = BATCH) -> int:
    """Verify up to ``limit`` completed packs, oldest first; returns how many it tried."""
    ids = await repo.db.read(packs_q.awaiting_verification, limit)
    for pack_id in ids:
        try:
            await verify_pack(repo, pack_id)
        except PackCorrupt:
            pass
        except Exception:  # a store hiccup: the pack stays 'complete' and is retried
            log.exception("verifying pack %s failed; will retry", pack_id)
    return len(ids)


async def run(repo: Repository, once: bool = False) -> None:
    """Verify completed packs until cancelled (or, with ``once``, until none is left);
    :attr:`Repository.verify_wakeup` cuts the wait short when a pack completes."""
    while True:
        if await verify_pending(repo):
            continue
        if once:
            return
        repo.verify_wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(repo.verify_wakeup.wait(), timeout=IDLE_POLL)
