"""Writing the store's description of the catalog: metadata records (FORMAT.md,
"Metadata objects").

Every transaction that makes a fact the store must describe notes it
(``catalog.notes``); a request runs such a transaction through :func:`write_after`,
which builds the records in the transaction and writes them once it committed, before
the request answers; every gateway sweeps notes left behind by a crash or a failed
write (:func:`sweep`, :func:`run`). A record is built from the catalog: the same fact
always gives the same bytes under the same key, so writing one twice (two gateways
sweeping, a retry) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Connection

from .. import records
from ..catalog import Database
from ..catalog import metadata as facts_q
from ..catalog import notes as notes_q
from ..catalog import versions as versions_q
from ..catalog.notes import Note
from ..catalog.references import PinRow
from ..errors import CatalogLost, ChunkyardError
from ..records import Encoded
from ..stores.base import Store
from . import Repository

log = logging.getLogger("chunkyard.metadata")
T = TypeVar("T")

#: a note this old is taken as left behind: its request is done or dead (a request
#: writes its records within a second or so of its commit)
SWEEP_AGE = 60.0
#: how often each gateway sweeps
SWEEP_EVERY = 60.0
#: notes taken per look at the catalog
SWEEP_BATCH = 200
#: how often the notes of written records are dropped, in one transaction for all: a
#: transaction per request cost a fifth of a small push's catalog work
DROP_EVERY = 1.0
#: ... or at once, when this many wait
DROP_BATCH = 1000


@dataclass
class Planned:
    """What one note comes to: a record to write (None: its fact is gone), then, for a
    tombstone, the folders whose records of versions ``first .. last`` go."""

    note: Note
    record: Encoded | None
    name: str = ""
    removed: tuple[int, int] | None = None
    folders: list[str] = field(default_factory=list)


async def write_after(repo: Repository, fn: Callable[..., T], *args: Any) -> T:
    """``fn(connection, *args)`` in a write transaction, then the records its notes
    made due, written before this returns (rule 2). The records are built inside the
    transaction, from what it committed: a read transaction more cost half a
    millisecond a push. A store that fails is logged, not raised: the fact is
    committed, and the sweep writes the record later."""

    def tx(conn: Connection) -> tuple[T, list[Planned]]:
        notes_q.collect(conn)
        try:
            out = fn(conn, *args)
        finally:
            found = notes_q.made(conn)
        return out, _plan(conn, repo, found)

    out, planned = await repo.db.write(tx)
    try:
        await _write(repo, planned)
    except ChunkyardError as exc:
        log.warning("writing metadata records failed, the sweep retries: %s", exc)
    except Exception:  # the commit stands whatever happens here
        log.exception("writing metadata records failed, the sweep retries")
    return out


async def sweep(repo: Repository, min_age: float = SWEEP_AGE) -> int:
    """Write every record noted at least ``min_age`` seconds ago; how many notes were
    settled."""
    done, after = 0, 0
    before = time.time() - min_age
    while True:
        found = await repo.db.read(notes_q.notes_before, before, after, SWEEP_BATCH)
        if not found:
            return done
        after = found[-1].id
        planned = await repo.db.read(_plan, repo, found)
        done += await _write(repo, planned)


async def run(repo: Repository, every: float = SWEEP_EVERY) -> None:
    """Until cancelled: drop the notes of written records every ``DROP_EVERY`` seconds,
    and sweep at start (every note, however young: this gateway may be the one that
    died holding them; another one writing the same record meanwhile is harmless) and
    then every ``every`` seconds."""
    age, due = 0.0, 0.0
    while True:
        try:
            await drop_settled(repo)
            if time.monotonic() >= due:
                n = await sweep(repo, min_age=age)
                if n:
                    log.info("wrote %d metadata records left pending", n)
                age, due = SWEEP_AGE, time.monotonic() + every
        except Exception:  # a catalog or store hiccup: next time
            log.exception("sweeping pending metadata records failed; will retry")
        await asyncio.sleep(DROP_EVERY)


async def drop_settled(repo: Repository) -> None:
    """Drop the notes of the records this process wrote (at shutdown too)."""
    ids, repo.settled = repo.settled, []
    if not ids:
        return
    try:
        await repo.db.write(notes_q.drop_notes, ids)
    except BaseException:
        repo.settled.extend(ids)
        raise
    repo.describing.difference_update(ids)


async def refuse_lost_catalog(db: Database, store: Store) -> None:
    """A gateway must not start numbering versions from 1 on an empty catalog over a
    store that describes versions already (FORMAT.md, "Metadata objects", rule 6)."""
    if await db.read(facts_q.any_artifact):
        return
    async for info in store.list(records.PREFIX):
        if records.parse_key(info.key) is not None:
            raise CatalogLost(
                f"the catalog is empty but the store {store.url} describes versions "
                f"(such as {info.key}): the catalog was lost or is the wrong one. Rebuild it "
                "with `chunkyard db rebuild --from-store` (same CHUNKYARD_DB and "
                "CHUNKYARD_STORE), or give this gateway a store of its own",
                key=info.key,
            )


# -- planning: notes into records (inside a transaction) ------------------------------
def _plan(conn: Connection, repo: Repository, found: list[Note]) -> list[Planned]:
    names: dict[int, str | None] = {}
    out = []
    for n in found:
        if n.id in repo.describing:
            continue  # this process is writing it now
        if n.artifact_id not in names:
            names[n.artifact_id] = facts_q.artifact_name(conn, n.artifact_id)
        name = names[n.artifact_id]
        out.append(_plan_one(conn, repo, n, name) if name else Planned(n, None))
    return out


def _plan_one(conn: Connection, repo: Repository, n: Note, name: str) -> Planned:
    if n.kind == "version":
        got = facts_q.version_facts(conn, n.ref)
        return Planned(n, None if got is None else records.encode(version_record(repo, name, *got)))
    if n.kind == "tags":
        tagged = facts_q.tag_facts(conn, n.ref)
        if tagged is None or not tagged[1]:
            return Planned(n, None)
        return Planned(n, records.encode(records.tags_record(name, *tagged)))
    if n.kind == "alias":
        m = facts_q.move_facts(conn, n.ref)
        if m is None:
            return Planned(n, None)
        rec = records.alias_record(
            name, m.alias, m.seq, m.number, m.previous, m.moved_at, m.moved_by
        )
        return Planned(n, records.encode(rec))
    if n.kind == "removed":
        r = facts_q.removal_facts(conn, n.ref)
        if r is None:
            return Planned(n, None)
        rec = records.removed_record(name, r.first, r.last, r.removed_at, r.removed_by)
        folders = [records.folder(name, "version"), records.folder(name, "tags")]
        return Planned(n, records.encode(rec), name, (r.first, r.last), folders)
    log.warning("unknown kind of pending record %r (note %d): dropped", n.kind, n.id)
    return Planned(n, None)


def version_record(
    repo: Repository,
    name: str,
    v: Any,
    files: list[Any],
    pins: dict[str, PinRow],
) -> dict[str, Any]:
    """The record of a version (``catalog.metadata.version_facts``)."""
    out = []
    for f in files:
        if f.ref_object is None:
            out.append(records.stored_file(f.path, f.size, f.digest, f.b3sum, f.manifest, f.mode))
            continue
        p = pins[f.ref_object]
        out.append(
            records.reference_file(
                f.path,
                f.size,
                f.digest,
                f.b3sum,
                p.uri,
                p.size,
                p.etag,
                p.source_version,
                p.last_modified,
                p.weak_etag,
            )
        )
    return records.version_record(
        name,
        v.number,
        v.kind,
        v.layout,
        v.digest,
        v.digest_of,
        v.size,
        v.created_at,
        v.format,
        v.source,
        repo.domain_depth,
        out,
        versions_q.dirs_of(v),
    )


# -- writing -------------------------------------------------------------------------
async def _write(repo: Repository, planned: list[Planned]) -> int:
    """Put each planned record in note order (a tombstone before the deletions it
    allows); the notes settled are dropped in a batch (:func:`drop_settled`). Stops at
    the first store failure (the rest stay noted)."""
    ids = [p.note.id for p in planned]
    repo.describing.update(ids)
    settled: list[int] = []
    try:
        for p in planned:
            if p.record is not None:
                await repo.store.put(p.record.key, p.record.data)
            if p.removed is not None:
                await _delete_removed(repo, p)
            settled.append(p.note.id)
    finally:
        repo.settled.extend(settled)
        repo.describing.difference_update(set(ids) - set(settled))
    if len(repo.settled) >= DROP_BATCH:
        await drop_settled(repo)
    return len(settled)


async def _delete_removed(repo: Repository, p: Planned) -> None:
    """The version and tags records of removed versions go, now that their tombstone is
    in the store (FORMAT.md, "Metadata objects", rule 4)."""
    assert p.removed is not None
    first, last = p.removed
    doomed = []
    for prefix in p.folders:
        async for info in repo.store.list(prefix):
            k = records.parse_key(info.key)
            numbered = k is not None and k.name == p.name and k.number is not None
            if numbered and first <= k.number <= last:  # type: ignore[union-attr,operator]
                doomed.append(info.key)
    for key in doomed:
        with contextlib.suppress(ChunkyardError):  # left over: the tombstone covers it
            await repo.store.delete(key)
