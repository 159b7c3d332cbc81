"""Hashing and indexing source objects: each streamed once, a few at a time, on worker
threads. Digests are recorded in batches as they come, chunk indexes per object, so a
registration that fails late still leaves what it hashed known for the next attempt
(harmless otherwise: each is a verified chunk source at its pin, like a pack no version
uses yet)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread

from ...catalog import references as refs_q
from ...chunking import WINDOW_SIZE
from ...digest import chunk_id
from ...errors import IntegrityFailure
from ...fingerprint import ChunkEntry, Fingerprint
from ...pins import Pin
from .. import Repository

log = logging.getLogger("chunkyard.references")

#: objects hashed at once: enough to overlap one object's network wait with another's
#: hashing on two cores, few enough to keep memory at a few windows each
PARALLEL_OBJECTS = 4
#: objects that fit in one window (config files, small shards): their cost is latency,
#: not bytes, so more of them go at once
PARALLEL_SMALL = 16
#: chunk index rows per insert while indexing (~1 GB of source per batch at 80 KiB)
INDEX_BATCH = 16384
#: digests recorded per write, and at least this often (seconds): one write transaction
#: per object cost more than hashing small objects
DIGEST_BATCH, DIGEST_EVERY = 1000, 2.0


class Stopped(Exception):
    """Raised on a hashing thread once nobody waits for its result."""


@dataclass
class Progress:
    """Shared between the hashing threads and whoever reports progress."""

    objects: int
    bytes: int
    objects_done: int = 0
    bytes_done: int = 0
    bytes_read: int = 0
    cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, n: int) -> None:
        if self.cancelled:  # the client went away: stop reading the source
            raise Stopped("registration cancelled")
        with self._lock:
            self.bytes_read += n
            self.bytes_done += n

    def finished(self, size: int, read: int) -> None:
        with self._lock:
            self.objects_done += 1
            self.bytes_done += size - read

    def to_json(self) -> dict[str, int]:
        return {
            "objects": self.objects,
            "objects_done": self.objects_done,
            "bytes": self.bytes,
            "bytes_done": self.bytes_done,
            "bytes_read": self.bytes_read,
        }


def pin_row(pin: Pin, digest: str = "", fid: str = "") -> dict[str, Any]:
    """The catalog row of a pin (with its digest and file id once hashed)."""
    return {
        "id": pin.id,
        "uri": pin.uri,
        "size": pin.size,
        "etag": pin.etag,
        "source_version": pin.version_id,
        "last_modified": pin.last_modified,
        "weak_etag": pin.weak_etag,
        "digest": digest,
        "file_id": fid,
        "state": "pinned",
        "created_at": time.time(),
    }


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def hash_all(
    repo: Repository, pins: list[Pin], index: str | None, progress: Progress
) -> None:
    """Hash every pinned object not hashed before; with ``index`` (the name of the
    artifact registering them), also index each as a chunk source."""
    known = await repo.db.read(refs_q.known, [p.id for p in pins])
    large, small = asyncio.Semaphore(PARALLEL_OBJECTS), asyncio.Semaphore(PARALLEL_SMALL)
    digests = _DigestWriter(repo)

    async def one(pin: Pin) -> None:
        k = known.get(pin.id)
        if k is not None and k.digest and k.file_id and (k.indexed or not index):
            progress.finished(pin.size, 0)  # hashed before at this very pin
            return
        async with large if pin.size > WINDOW_SIZE else small:
            read = 0

            def count(n: int) -> None:
                nonlocal read
                progress.read(n)
                read += n

            t0 = time.monotonic()
            fp = await _hash_one(repo, pin, index, count)
            log.info("hashed %s (%d bytes) in %.1f s", pin.uri, pin.size, time.monotonic() - t0)
            progress.finished(pin.size, read)
        if not index:  # indexing recorded it already
            await digests.add(pin, fp)

    try:
        async with asyncio.TaskGroup() as tg:
            for pin in pins:
                tg.create_task(one(pin))
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None
    finally:
        await digests.flush()  # what was hashed stays known, even if others failed


class _DigestWriter:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.pending: list[tuple[Pin, Fingerprint]] = []
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def add(self, pin: Pin, fp: Fingerprint) -> None:
        self.pending.append((pin, fp))
        if len(self.pending) >= DIGEST_BATCH or time.monotonic() - self.last > DIGEST_EVERY:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            batch, self.pending = self.pending, []
            self.last = time.monotonic()
            if batch:
                await self.repo.db.write(_record_digests, batch)


def _record_digests(conn: Any, batch: list[tuple[Pin, Fingerprint]]) -> None:
    refs_q.insert_pins(conn, [pin_row(pin, fp.digest, fp.file_id) for pin, fp in batch])
    # rows that had none
    refs_q.set_digests(conn, [(pin.id, fp.digest, fp.file_id) for pin, fp in batch])


class _IndexSink:
    """Collects chunk entries on the hashing thread; inserts them in batches through
    the event loop."""

    def __init__(self, repo: Repository, pin_id: str) -> None:
        self.repo, self.pin_id = repo, pin_id
        self.rows: list[tuple[str, int, bytes, bytes, int, int]] = []
        self.next_idx = 0

    def __call__(self, entries: list[ChunkEntry]) -> None:
        for key, offset, length in entries:
            self.rows.append((self.pin_id, self.next_idx, chunk_id(key), key, offset, length))
            self.next_idx += 1
        if len(self.rows) >= INDEX_BATCH:
            rows, self.rows = self.rows, []
            anyio.from_thread.run(self.repo.db.write, refs_q.insert_index_entries, rows)


async def _hash_one(
    repo: Repository, pin: Pin, index: str | None, progress: Callable[[int], None]
) -> Fingerprint:
    """Stream one object; with ``index`` (the registering artifact), record it as a
    chunk source of that artifact's dedup domain as it goes."""
    req = await repo.sources.pinned_request(pin, check=False)
    sink = None
    if index:
        await repo.db.write(refs_q.begin_index, pin_row(pin), time.time())
        sink = _IndexSink(repo, pin.id)
    fp = await anyio.to_thread.run_sync(
        repo.sources.fingerprint, pin, req, sink, progress, abandon_on_cancel=True
    )
    if sink is None or index is None:
        return fp
    if sink.rows:
        await repo.db.write(refs_q.insert_index_entries, sink.rows)

    def finish(conn: Any) -> None:
        n = refs_q.count_entries(conn, pin.id)
        if n != fp.chunks:
            raise IntegrityFailure(f"indexing {pin.uri}: {n} chunk entries, expected {fp.chunks}")
        digests = (fp.digest, fp.file_id)
        refs_q.finish_index(conn, pin.id, n, digests, index, repo.domain(index), time.time())

    await repo.db.write(finish)
    return fp
