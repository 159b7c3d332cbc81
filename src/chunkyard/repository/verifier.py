"""Pack verification: the trust rule. An uploaded pack's chunks become dedup targets,
and commits may name them, only after its bytes were read back from the store and every
chunk checked against its id.

Modes (``CHUNKYARD_VERIFY``):
- ``inline``: the gateway verifies while completing the pack (default on a local
  store, where reading back is a page-cache copy);
- ``background``: a task in the gateway verifies completed uploads while the client
  goes on uploading (default on cloud stores); a commit verifies whatever of its own
  uploads is still waiting;
- ``external``: a separate ``chunkyard verifier`` process does it; a commit waits for it
  while it makes progress, and verifies its own uploads itself only when no verifier
  seems to run (so the gateway's CPU stays with requests).

An upload that fails is removed from the store and marked ``corrupt`` for its session
(inline: forgotten at once). A verified upload becomes its pack's live copy, or, when
another copy got there first, is deleted as redundant; either way the pack's chunks
enter the uploader's dedup domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import anyio
from sqlalchemy import Connection

from .. import packs as packfmt
from ..buffers import BufferPool
from ..catalog import packs as packs_q
from ..catalog import sessions as sessions_q
from ..catalog.packs import UploadRow
from ..errors import PackCorrupt, StoreError
from . import Repository

log = logging.getLogger("chunkyard.verifier")
#: packs are read whole into these; one byte more than the largest pack, so that an
#: object that is too large shows as such. Anonymous mappings: only the pages a pack
#: fills are ever touched (a bytearray would zero all 64 MiB)
_buffers = BufferPool(packfmt.MAX_SIZE + 1, keep=2)
#: uploads taken per look at the catalog, and verified at once (one reads back while
#: another is hashed: a push's last packs complete together, and its commit waits)
BATCH = 8
PARALLEL = 2
#: how often the background verifier looks for work without being woken
IDLE_POLL = 5.0
#: how often an external verifier looks (nothing wakes it across processes; the query
#: is one index lookup)
EXTERNAL_POLL = 0.2
#: a commit in external mode waits for the verifier as long as it settles some upload
#: at least this often, looking every COMMIT_POLL seconds
STALL = 3.0
COMMIT_POLL = 0.02
_warned = False


async def verify_upload(repo: Repository, upload_id: str, forget_on_failure: bool = False) -> str:
    """Verify a complete upload; returns ``verified``, or raises ``PackCorrupt``.
    Callers in this process that ask for the same upload share one verification."""
    running = repo.verifying.get(upload_id)
    if running is not None:
        return await asyncio.shield(running)
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    repo.verifying[upload_id] = future
    try:
        state = await _verify(repo, upload_id, forget_on_failure)
        future.set_result(state)
        return state
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: nobody else may be waiting
        raise
    finally:
        del repo.verifying[upload_id]


def _upload_and_domain(conn: Connection, repo: Repository, upload_id: str) -> tuple:
    upload = packs_q.upload_by_id(conn, upload_id)
    if upload is None:
        return None, ""
    sess = sessions_q.session_row(conn, upload.session_id)
    return upload, repo.domain(sess.artifact_name) if sess else ""


async def _verify(repo: Repository, upload_id: str, forget_on_failure: bool) -> str:
    upload, domain = await repo.db.read(_upload_and_domain, repo, upload_id)
    if upload is None:  # verified meanwhile (by another process, say)
        return "verified"
    if upload.state == "corrupt":
        raise PackCorrupt(f"pack {upload.pack_id} failed verification", pack=upload.pack_id)
    if upload.state != "complete":
        return upload.state
    buf = _buffers.get()
    try:
        n = await repo.store.read_into(upload.key, buf)
        if n != upload.size:
            more = "more than " if n == len(buf) else ""
            raise PackCorrupt(
                f"pack {upload.pack_id} has {more}{n} bytes, expected {upload.size}",
                pack=upload.pack_id,
            )
        checked = await anyio.to_thread.run_sync(
            packfmt.verify, upload.pack_id, memoryview(buf)[:n]
        )
    except PackCorrupt:
        log.warning("an upload of pack %s failed verification", upload.pack_id)
        await _reject(repo, upload, forget_on_failure)
        raise
    finally:
        _buffers.put(buf)
    entries = [(e.chunk_id, key, e.offset, e.stored_len, e.raw_len, e.scheme) for e, key in checked]
    live = await repo.db.write(packs_q.promote, upload, entries, domain, time.time())
    if live is False:  # another copy of the same pack is live: this one is not needed
        with contextlib.suppress(Exception):
            await repo.store.delete(upload.key)
    return "verified"


async def _reject(repo: Repository, upload: UploadRow, forget: bool) -> None:
    await repo.store.delete(upload.key)
    if forget:
        await repo.db.write(packs_q.drop_upload, upload.id)
    else:  # its session learns of it when it commits
        await repo.db.write(packs_q.mark_upload, upload.id, "corrupt")


async def verify_pending(repo: Repository, limit: int = BATCH) -> int:
    """Verify up to ``limit`` complete uploads, oldest first; returns how many it
    settled (verified or rejected)."""
    ids = await repo.db.read(packs_q.uploads_awaiting_verification, limit)
    turns = asyncio.Semaphore(PARALLEL)

    async def one(upload_id: str) -> int:
        async with turns:
            try:
                await verify_upload(repo, upload_id)
                return 1
            except PackCorrupt:
                return 1
            except StoreError as exc:  # a store hiccup: the upload stays 'complete', retried
                log.warning("verifying upload %s failed; will retry: %s", upload_id, exc.message)
            except Exception:  # anything else is a bug worth its traceback; retried too
                log.exception("verifying upload %s failed; will retry", upload_id)
            return 0

    return sum(await asyncio.gather(*(one(i) for i in ids)))


async def await_external(repo: Repository, upload_ids: list[str]) -> list[str]:
    """Wait while an external verifier settles these uploads; returns those still
    waiting when it stopped making progress (none settled, neither these nor older
    ones, for ``STALL`` seconds): the caller verifies them itself."""
    global _warned
    last, since = None, time.monotonic()
    while True:
        left, oldest = await repo.db.read(packs_q.still_complete, upload_ids)
        if not left:
            return []
        now = time.monotonic()
        if (len(left), oldest) != last:
            last, since = (len(left), oldest), now
        elif now - since > STALL:
            if not _warned:
                _warned = True
                log.warning(
                    "CHUNKYARD_VERIFY=external, but no verifier settled an upload for %.0f s: "
                    "commits verify their own packs in the gateway until `chunkyard "
                    "verifier` runs",
                    STALL,
                )
            return left
        await asyncio.sleep(COMMIT_POLL)


async def run(repo: Repository, once: bool = False, idle: float = IDLE_POLL) -> None:
    """Verify complete uploads until cancelled (or, with ``once``, until none is left);
    :attr:`Repository.verify_wakeup` cuts the wait short when an upload completes in
    this process; others are found every ``idle`` seconds. (Looking every 50 ms while
    a push is under way took ~0.5 ms of CPU a look, 0.1 core-s per GiB pushed, for
    ~0.07 s less of a commit's wait: not worth it.)

    The store's slow first use (S3's presigning client, which reads back through
    presigned GETs) is done first, before any commit waits on it: 0.2-0.5 core-s that
    a new external verifier otherwise spent inside the first push it verified."""
    with contextlib.suppress(Exception):  # a store that is down fails the reads instead
        await anyio.to_thread.run_sync(repo.store.prepare)
    while True:
        if await verify_pending(repo):
            continue
        if once:
            return
        repo.verify_wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(repo.verify_wakeup.wait(), timeout=idle)
