"""Writing the store's description of the catalog: metadata records (FORMAT.md,
"Metadata objects").

Every transaction that makes a fact the store must describe notes it
(``catalog.notes``); after it commits, the request writes its artifact's pending
records (:func:`flush`) before answering, and every gateway sweeps notes left behind
by a crash or a failed write (:func:`sweep`, :func:`run`). A record is built from the
catalog when it is written: the same fact always gives the same bytes under the same
key, so writing one twice (two gateways sweeping, a retry) is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from .. import records
from ..catalog import Database
from ..catalog import metadata as facts_q
from ..catalog import notes as notes_q
from ..catalog.notes import Note
from ..errors import CatalogLost, ChunkyardError
from ..records import Encoded
from ..stores.base import Store
from . import Repository

log = logging.getLogger("chunkyard.metadata")

#: a note this old is taken as left behind: its request is done or dead (a request
#: writes its records within a second or so of its commit)
SWEEP_AGE = 60.0
#: how often each gateway sweeps
SWEEP_EVERY = 60.0
#: notes taken per look at the catalog
SWEEP_BATCH = 200


@dataclass
class Planned:
    """What one note comes to: a record to write (None: its fact is gone), then, for a
    tombstone, the folders whose records of versions ``first .. last`` go."""

    note: Note
    record: Encoded | None
    name: str = ""
    removed: tuple[int, int] | None = None
    folders: list[str] = field(default_factory=list)


async def flush(repo: Repository, name: str) -> None:
    """Write the records pending for artifact ``name`` (those the caller's transaction
    noted, and any older ones of the same artifact). A store that fails is logged, not
    raised: the fact is committed, and the sweep writes the record later."""
    try:
        planned = await repo.db.read(_plan_artifact, repo, name)
        await _write(repo, planned)
    except ChunkyardError as exc:
        log.warning("describing %s in the store failed, the sweep retries: %s", name, exc)
    except Exception:  # the commit stands whatever happens here
        log.exception("describing %s in the store failed, the sweep retries", name)


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
    """Sweep at start (every note, however young: this gateway may be the one that died
    holding them; another one writing the same record meanwhile is harmless) and then
    every ``every`` seconds, until cancelled."""
    age = 0.0
    while True:
        try:
            n = await sweep(repo, min_age=age)
            if n:
                log.info("wrote %d metadata records left pending", n)
        except Exception:  # a catalog or store hiccup: next time
            log.exception("sweeping pending metadata records failed; will retry")
        age = SWEEP_AGE
        await asyncio.sleep(every)


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


# -- planning: notes into records (one read transaction) --------------------------------
def _plan_artifact(conn: Connection, repo: Repository, name: str) -> list[Planned]:
    return _plan(conn, repo, notes_q.notes_of(conn, name))


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
    pins: dict[str, facts_q.PinFacts],
) -> dict[str, Any]:
    """The record of a version (``catalog.metadata.version_facts``)."""
    out = []
    for f in files:
        if f.ref_object is None:
            out.append(records.stored_file(f.path, f.size, f.digest, f.b3sum, f.manifest))
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
    )


# -- writing -------------------------------------------------------------------------
async def _write(repo: Repository, planned: list[Planned]) -> int:
    """Put each planned record in note order (a tombstone before the deletions it
    allows), then drop the notes settled; stops at the first store failure (the rest
    stay noted)."""
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
        try:
            if settled:
                await repo.db.write(notes_q.drop_notes, settled)
        finally:
            repo.describing.difference_update(ids)
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
