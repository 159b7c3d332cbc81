"""Reference versions: external objects registered as a version without copying them.

Registering lists (or HEADs) the source and records one pin per object (FORMAT.md,
"Reference versions"); it reads no object bytes unless asked to hash. Hashing streams
each object once, a few objects at a time, and records its BLAKE3 digest; indexing also
records its chunks, so that the object becomes a chunk source: a ``packs`` row under
the pin id with ``state = 'reference'``, whose entries are raw byte ranges of the source.
The missing-chunk query then answers those chunks as present, manifests name them like
any pack's, and readers fetch them from the source through pinned URLs, checking every
chunk id as always.

The version itself appears in one transaction, whole or not at all. Pinned objects and
their chunk index are recorded per object as hashing goes (a 400 GB object does not fit
in memory as one batch); a failed registration may leave some behind, which is harmless:
each is a verified chunk source at its pin, like a pack no version uses yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
from sqlalchemy import bindparam, func, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..catalog.db import insert_ignoring_duplicates
from ..catalog.schema import (
    chunks,
    pack_entries,
    packs,
    ref_objects,
    version_files,
    versions,
)
from ..chunking import WINDOW_SIZE
from ..digest import tree_digest
from ..errors import ChunkyardError, IntegrityFailure, InvalidRequest
from ..fingerprint import ChunkEntry
from ..manifest import loads
from ..names import check_name, check_tags
from ..packs import pack_key
from ..pins import Pin, RefURI, check_allowed, parse_uri, pins_digest
from .artifacts import Ref, add_version, apply_tags, artifact_and_latest, find_version, version_json
from .core import Gateway

log = logging.getLogger("chunkyard.references")

#: objects hashed at once: enough to overlap one object's network wait with another's
#: hashing on two cores, few enough to keep memory at a few windows each
PARALLEL_OBJECTS = 4
#: objects that fit in one window (config files, small shards): their cost is latency,
#: not bytes, so more of them go at once
PARALLEL_SMALL = 16
#: chunk index rows per insert while indexing (~1 GB of source per batch at 80 KiB)
INDEX_BATCH = 16384
_IN = 500  # ids per IN (...) query


@dataclass
class Registration:
    """A checked registration request: the pins are taken, nothing is written yet."""

    name: str
    uri: RefURI
    layout: str
    files: list[tuple[str, Pin]]
    tags: dict[str, str]
    hash: bool
    index: bool

    @property
    def size(self) -> int:
        return sum(p.size for _, p in self.files)


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


# -- registration ------------------------------------------------------------------
async def prepare(gw: Gateway, body: dict) -> Registration:
    """Check the request, the allow-list and the source; take the pins. Writes nothing,
    so bad input leaves catalog and store as they were."""
    name = check_name(body.get("name"))
    tags = check_tags(body.get("tags"))
    want_hash, index = body.get("hash", False), body.get("index", False)
    if not isinstance(want_hash, bool) or not isinstance(index, bool):
        raise InvalidRequest("'hash' and 'index' are booleans")
    uri = parse_uri(body.get("uri"))
    check_allowed(uri, gw.settings.ref_allow)
    files = await gw.sources.pin_objects(uri, need_ranges=index)
    layout = "tree" if uri.is_prefix else "file"
    return Registration(name, uri, layout, files, tags, want_hash or index, index)


async def register(gw: Gateway, reg: Registration, progress: Progress | None = None) -> dict:
    """Hash (if asked) and create the version; returns its summary."""
    progress = progress or Progress(len(reg.files), reg.size)
    started = time.monotonic()
    if reg.hash:
        await _hash_all(gw, reg, progress)
    out = await _commit(gw, reg)
    out.update(
        objects=len(reg.files),
        bytes_read=progress.bytes_read,
        seconds=round(time.monotonic() - started, 3),
    )
    return out


async def register_events(gw: Gateway, reg: Registration) -> AsyncIterator[bytes]:
    """NDJSON for a long registration: progress lines about every second, then one
    ``done`` line with the result, or one ``error`` line. If the client goes away the
    work stops (and no version appears)."""
    progress = Progress(len(reg.files), reg.size)
    task = asyncio.create_task(register(gw, reg, progress))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                break
            yield _line({"event": "progress", **progress.to_json()})
        yield _line({"event": "done", "result": task.result()})
    except ChunkyardError as exc:
        yield _line({"event": "error", **exc.to_json()})
    except Exception:
        log.exception("registering %s failed", reg.uri)
        yield _line({"event": "error", "error": {"code": "internal", "message": "internal error"}})
    finally:
        if not task.done():
            progress.cancelled = True
            task.cancel()


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _hash_all(gw: Gateway, reg: Registration, progress: Progress) -> None:
    known = await _known(gw, [p.id for _, p in reg.files])
    large, small = asyncio.Semaphore(PARALLEL_OBJECTS), asyncio.Semaphore(PARALLEL_SMALL)
    digests = _DigestWriter(gw)

    async def one(pin: Pin) -> None:
        digest, indexed = known.get(pin.id, ("", False))
        if digest and (indexed or not reg.index):  # hashed before at this very pin
            progress.finished(pin.size, 0)
            return
        async with large if pin.size > WINDOW_SIZE else small:
            read = 0

            def count(n: int) -> None:
                nonlocal read
                progress.read(n)
                read += n

            t0 = time.monotonic()
            digest = await _hash_one(gw, pin, reg.index, count)
            log.info("hashed %s (%d bytes) in %.1f s", pin.uri, pin.size, time.monotonic() - t0)
            progress.finished(pin.size, read)
        if not reg.index:  # indexing recorded it already
            await digests.add(pin, digest)

    try:
        async with asyncio.TaskGroup() as tg:
            for _, pin in reg.files:
                tg.create_task(one(pin))
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None
    finally:
        await digests.flush()  # what was hashed stays known, even if others failed


class _DigestWriter:
    """Records digests in batches (one write transaction per object cost more than the
    hashing of small objects), at least every few seconds, so that a registration that
    fails late still leaves what it hashed known for the next attempt."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.pending: list[tuple[Pin, str]] = []
        self.last = time.monotonic()
        self.lock = asyncio.Lock()

    async def add(self, pin: Pin, digest: str) -> None:
        self.pending.append((pin, digest))
        if len(self.pending) >= 1000 or time.monotonic() - self.last > 2.0:
            await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            batch, self.pending = self.pending, []
            self.last = time.monotonic()
            if not batch:
                return
            async with self.gw.db.write() as conn:
                await conn.execute(
                    insert_ignoring_duplicates(conn.dialect.name, ref_objects),
                    [_pin_row(pin, d) for pin, d in batch],
                )
                await conn.execute(  # rows that existed without a digest
                    ref_objects.update()
                    .where(ref_objects.c.id == bindparam("pid"), ref_objects.c.digest == "")
                    .values(digest=bindparam("d")),
                    [{"pid": pin.id, "d": d} for pin, d in batch],
                )


async def _known(gw: Gateway, ids: list[str]) -> dict[str, tuple[str, bool]]:
    """Digest and whether indexed, for pins recorded before."""
    out: dict[str, tuple[str, bool]] = {}
    async with gw.db.read() as conn:
        for i in range(0, len(ids), _IN):
            rows = await conn.execute(
                select(ref_objects.c.id, ref_objects.c.digest, packs.c.state)
                .select_from(ref_objects.outerjoin(packs, packs.c.id == ref_objects.c.id))
                .where(ref_objects.c.id.in_(ids[i : i + _IN]))
            )
            for r in rows:
                out[r.id] = (r.digest, r.state == "reference")
    return out


class _IndexSink:
    """Collects chunk entries on the hashing thread; inserts them in batches through
    the event loop."""

    def __init__(self, gw: Gateway, pack_id: str) -> None:
        self.gw, self.pack_id = gw, pack_id
        self.rows: list[dict] = []
        self.next_idx = 0

    def __call__(self, entries: list[ChunkEntry]) -> None:
        for cid, offset, length in entries:
            self.rows.append(
                {
                    "pack_id": self.pack_id,
                    "idx": self.next_idx,
                    "chunk_id": cid,
                    "offset": offset,
                    "stored_len": length,
                    "raw_len": length,
                    "scheme": 0,
                }
            )
            self.next_idx += 1
        if len(self.rows) >= INDEX_BATCH:
            rows, self.rows = self.rows, []
            anyio.from_thread.run(_insert_entries, self.gw, rows)


async def _insert_entries(gw: Gateway, rows: list[dict]) -> None:
    if rows:
        async with gw.db.write() as conn:
            await conn.execute(insert_ignoring_duplicates(conn.dialect.name, pack_entries), rows)


def _pin_row(pin: Pin, digest: str = "") -> dict[str, Any]:
    return {
        "id": pin.id,
        "uri": pin.uri,
        "size": pin.size,
        "etag": pin.etag,
        "source_version": pin.version_id,
        "last_modified": pin.last_modified,
        "weak_etag": pin.weak_etag,
        "digest": digest,
        "state": "pinned",
        "created_at": time.time(),
    }


async def _hash_one(gw: Gateway, pin: Pin, index: bool, progress: Callable[[int], None]) -> str:
    """Stream one object; with ``index``, record it as a chunk source as it goes."""
    req = await gw.sources.pinned_request(pin, check=False)
    sink = None
    if index:  # the pin and its pseudo-pack exist before any entry refers to them
        async with gw.db.write() as conn:
            dialect = conn.dialect.name
            await conn.execute(insert_ignoring_duplicates(dialect, ref_objects), [_pin_row(pin)])
            await conn.execute(
                insert_ignoring_duplicates(dialect, packs),
                [
                    {
                        "id": pin.id,
                        "size": pin.size,
                        "chunk_count": 0,
                        "state": "indexing",
                        "created_at": time.time(),
                    }
                ],
            )
        sink = _IndexSink(gw, pin.id)
    fp = await anyio.to_thread.run_sync(
        gw.sources.fingerprint, pin, req, sink, progress, abandon_on_cancel=True
    )
    if sink is None:
        return fp.digest
    await _insert_entries(gw, sink.rows)
    async with gw.db.write() as conn:
        n = (
            await conn.execute(
                select(func.count())
                .select_from(pack_entries)
                .where(pack_entries.c.pack_id == pin.id)
            )
        ).scalar_one()
        if n != fp.chunks:
            raise IntegrityFailure(f"indexing {pin.uri}: {n} chunk entries, expected {fp.chunks}")
        await conn.execute(
            packs.update()
            .where(packs.c.id == pin.id)
            .values(state="reference", chunk_count=n, verified_at=time.time())
        )
        await conn.execute(
            ref_objects.update()
            .where(ref_objects.c.id == pin.id)
            .values(digest=fp.digest, state="pinned")
        )
        await _index_chunks(conn, pin.id)
    return fp.digest


async def _index_chunks(conn: AsyncConnection, pack_id: str) -> None:
    """Make an indexed object's chunks dedup targets (where no other copy is one)."""
    await conn.execute(
        insert_ignoring_duplicates(conn.dialect.name, chunks).from_select(
            ["id", "pack_id", "idx"],
            select(pack_entries.c.chunk_id, pack_entries.c.pack_id, pack_entries.c.idx).where(
                pack_entries.c.pack_id == pack_id
            ),
        )
    )


async def _commit(gw: Gateway, reg: Registration) -> dict[str, Any]:
    for attempt in range(5):
        try:
            return await _commit_once(gw, reg)
        except IntegrityError:  # a concurrent writer took the number (PostgreSQL); retry
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _commit_once(gw: Gateway, reg: Registration) -> dict[str, Any]:
    known = await _known(gw, [p.id for _, p in reg.files])
    files = [(path, pin, known.get(pin.id, ("", False))[0]) for path, pin in reg.files]
    if all(d for _, _, d in files):
        digest_of = "content"
        digest = (
            files[0][2]
            if reg.layout == "file"
            else tree_digest((path, pin.size, d) for path, pin, d in files)
        )
    else:
        digest_of, digest = "pins", pins_digest((path, pin) for path, pin, _ in files)
    source, now = str(reg.uri), time.time()
    async with gw.db.write() as conn:
        dialect = conn.dialect.name
        art_id, latest = await artifact_and_latest(conn, reg.name, now)
        if (
            latest is not None
            and latest.kind == "reference"
            and latest.source == source
            and latest.digest == digest
            and latest.digest_of == digest_of
        ):  # the same objects at the same pins: that version already says it all
            await apply_tags(conn, latest.id, reg.tags)
            return {**await version_json(conn, reg.name, latest), "created": False}
        rows = [_pin_row(pin, d) for _, pin, d in files]
        for i in range(0, len(rows), 5000):
            await conn.execute(insert_ignoring_duplicates(dialect, ref_objects), rows[i : i + 5000])
        vid = await add_version(
            conn,
            art_id,
            kind="reference",
            layout=reg.layout,
            digest=digest,
            size=reg.size,
            file_count=len(files),
            created_at=now,
            source=source,
            digest_of=digest_of,
        )
        vrows = [
            {
                "version_id": vid,
                "idx": i,
                "path": path,
                "size": pin.size,
                "digest": d,
                "manifest": "[]",
                "ref_object": pin.id,
            }
            for i, (path, pin, d) in enumerate(files)
        ]
        for i in range(0, len(vrows), 5000):
            await conn.execute(version_files.insert(), vrows[i : i + 5000])
        await apply_tags(conn, vid, reg.tags)
        v = (await conn.execute(select(versions).where(versions.c.id == vid))).one()
        return {**await version_json(conn, reg.name, v), "created": True}


# -- reading ------------------------------------------------------------------------
def pin_of(row: Row) -> Pin:
    """A pin from a ``ref_objects`` row."""
    return Pin(
        row.uri, row.size, row.etag, row.source_version, row.last_modified, bool(row.weak_etag)
    )


async def pins_of_packs(conn: AsyncConnection, pack_ids: Iterable[str]) -> dict[str, Row]:
    """``ref_objects`` rows of those pack ids that are indexed reference objects."""
    ids = list(pack_ids)
    out: dict[str, Row] = {}
    for i in range(0, len(ids), _IN):
        rows = await conn.execute(select(ref_objects).where(ref_objects.c.id.in_(ids[i : i + _IN])))
        out.update({r.id: r for r in rows})
    return out


async def file_pin(conn: AsyncConnection, f: Row) -> Pin:
    row = (await conn.execute(select(ref_objects).where(ref_objects.c.id == f.ref_object))).first()
    if row is None:  # pragma: no cover - the commit writes both in one transaction
        raise IntegrityFailure(f"{f.path}: its pin is missing from the catalog")
    return pin_of(row)


async def reconstruction(gw: Gateway, name: str, v: Row, f: Row) -> dict[str, Any]:
    """Where a client reads a reference file: the source itself, through a GET pinned
    to the recorded version (or If-Match on the ETag), after a HEAD shows the pin
    still holds; a drifted object fails here, by name."""
    async with gw.db.read() as conn:
        pin = await file_pin(conn, f)
    try:
        req = await gw.sources.pinned_request(pin)
    except ChunkyardError as exc:
        exc.detail.setdefault("path", f.path)
        raise
    return {
        "name": name,
        "version": v.number,
        "index": f.idx,
        "path": f.path,
        "size": f.size,
        "digest": f.digest,
        "start": 0,
        "end": f.size,
        "next": None,
        "terms": [],
        "urls": {},
        "reference": {**pin.to_json(), "request": req.to_json()},
    }


async def sources_page(
    gw: Gateway, name: str, ref: Ref, cursor: int = 0, limit: int = 1000
) -> dict[str, Any]:
    """Pinned requests for many files of a reference version at once (a tree of 10,000
    shards is 10 calls, not 10,000). No HEAD per object: callers check the tree first
    (``verify``: one listing); the pins still hold at the source and in the client."""
    limit = max(1, min(limit, 1000))
    async with gw.db.read() as conn:
        _, v = await find_version(conn, name, ref)
        if v.kind != "reference":
            raise InvalidRequest(f"version {v.number} of {name!r} is not a reference")
        rows = (
            await conn.execute(
                select(
                    version_files.c.idx, version_files.c.path, version_files.c.digest, ref_objects
                )
                .join(ref_objects, ref_objects.c.id == version_files.c.ref_object)
                .where(version_files.c.version_id == v.id, version_files.c.idx >= cursor)
                .order_by(version_files.c.idx)
                .limit(limit + 1)
            )
        ).all()
    files = []
    for r in rows[:limit]:
        pin = pin_of(r)
        req = await gw.sources.pinned_request(pin, check=False)
        files.append(
            {
                "index": r.idx,
                "path": r.path,
                "size": pin.size,
                "digest": r.digest,
                "reference": {**pin.to_json(), "request": req.to_json()},
            }
        )
    return {
        "name": name,
        "version": v.number,
        "files": files,
        "next": rows[limit].idx if len(rows) > limit else None,
    }


async def stream(gw: Gateway, f: Row, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes of a reference file through the gateway (for curl), pinned."""
    async with gw.db.read() as conn:
        pin = await file_pin(conn, f)
    async for piece in gw.sources.read(pin, start, end):
        yield piece


# -- verify -------------------------------------------------------------------------
async def verify(gw: Gateway, name: str, ref: Ref) -> dict[str, Any]:
    """Check a version against its sources: a reference's every object against its pin;
    a stored version's every pack (present, right size) and every reference object it
    borrows chunks from. Records what it found, so that a drifted object stops being a
    dedup target (and becomes one again if it is restored)."""
    async with gw.db.read() as conn:
        _, v = await find_version(conn, name, ref)
        frows = (
            await conn.execute(
                select(version_files.c.path, version_files.c.manifest, version_files.c.ref_object)
                .where(version_files.c.version_id == v.id)
                .order_by(version_files.c.idx)
            )
        ).all()
        if v.kind == "reference":
            pin_rows = await pins_of_packs(conn, [f.ref_object for f in frows])
            targets = [(f.path, pin_of(pin_rows[f.ref_object])) for f in frows]
            stored: list[Row] = []
        else:
            used = {t.pack for f in frows for t in loads(f.manifest)}
            pin_rows = await pins_of_packs(conn, used)
            targets = [("", pin_of(r)) for r in pin_rows.values()]
            stored = []
            ids = sorted(used - set(pin_rows))
            for i in range(0, len(ids), _IN):
                stored += (
                    await conn.execute(
                        select(packs.c.id, packs.c.size).where(packs.c.id.in_(ids[i : i + _IN]))
                    )
                ).all()
    prefix = parse_uri(v.source) if v.source else None
    checks = await gw.sources.check_all([p for _, p in targets], prefix)
    objects: list[dict[str, Any]] = []
    for (path, pin), (state, found, superseded) in zip(targets, checks, strict=True):
        entry: dict[str, Any] = {"uri": pin.uri, "state": state, "pin": pin.to_json()}
        if path:
            entry["path"] = path
        else:
            entry["pack"] = pin.id
        if state != "ok":
            entry["found"] = found.to_json()
        if superseded:
            entry["superseded"] = True
        objects.append(entry)
    objects += await _check_packs(gw, stored)
    await _record(gw, [(p.id, c[0]) for (_, p), c in zip(targets, checks, strict=True)])
    bad = sum(o["state"] != "ok" for o in objects)
    return {
        "name": name,
        "version": v.number,
        "kind": v.kind,
        "source": v.source,
        "ok": bad == 0,
        "checked": len(objects),
        "drifted": bad,
        "objects": objects,
    }


async def _check_packs(gw: Gateway, rows: list[Row]) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(16)

    async def one(r: Row) -> dict[str, Any]:
        async with sem:
            info = await gw.store.stat(pack_key(r.id))
        state = "missing" if info is None else ("ok" if info.size == r.size else "changed")
        return {"pack": r.id, "state": state}

    return list(await asyncio.gather(*(one(r) for r in rows)))


async def _record(gw: Gateway, results: list[tuple[str, str]]) -> None:
    """Store what verify found: drifted objects leave the dedup index, restored ones
    come back."""
    now = time.time()
    bad = [pid for pid, state in results if state != "ok"]
    good = [pid for pid, state in results if state == "ok"]
    async with gw.db.write() as conn:
        for ids, state in ((bad, "drifted"), (good, "pinned")):
            for i in range(0, len(ids), _IN):
                await conn.execute(
                    ref_objects.update()
                    .where(ref_objects.c.id.in_(ids[i : i + _IN]))
                    .values(state=state, checked_at=now)
                )
        for i in range(0, len(bad), _IN):
            batch = bad[i : i + _IN]
            hit = (
                (
                    await conn.execute(
                        select(packs.c.id).where(
                            packs.c.id.in_(batch), packs.c.state == "reference"
                        )
                    )
                )
                .scalars()
                .all()
            )
            if hit:
                await conn.execute(
                    packs.update().where(packs.c.id.in_(hit)).values(state="drifted")
                )
                await conn.execute(chunks.delete().where(chunks.c.pack_id.in_(hit)))
                log.warning("reference objects drifted, no longer dedup targets: %s", hit)
        for i in range(0, len(good), _IN):
            batch = good[i : i + _IN]
            back = (
                (
                    await conn.execute(
                        select(packs.c.id).where(packs.c.id.in_(batch), packs.c.state == "drifted")
                    )
                )
                .scalars()
                .all()
            )
            for pid in back:
                await conn.execute(
                    packs.update().where(packs.c.id == pid).values(state="reference")
                )
                await _index_chunks(conn, pid)
