"""Garbage collection (``chunkyard gc``): delete the packs no version names, abort the
uploads of sessions past their lifetime and the multipart uploads no catalog row knows.

It runs while pushes go on and loses nothing, because of the order of its steps
(FORMAT.md, "Deleting"), each of which may be cut short and run again:

1. sessions past their lifetime: their upload rows and session rows go in one
   transaction, then their multipart uploads are aborted (and complete, unverified
   copies deleted) in the store;
2. mark: every file's manifest is read, a page per transaction; the packs its terms
   name are live;
3. condemn (one transaction): unreferenced packs verified before the grace period and
   before the oldest open session began are locked, spared if a version committed
   since the mark names them, else turned ``condemned`` and taken out of the dedup
   index. From here no missing-chunk answer offers them and every commit that names
   one is refused ``packs_gone`` (and its client uploads what is missing instead);
4. sweep: the objects of condemned packs (this run's and any an earlier run left) are
   deleted, then their rows become tombstones;
5. tombstones no open session can name any more are removed;
6. the store is listed: multipart uploads no row knows are aborted, objects under
   ``packs/`` no row knows are counted (and deleted only when asked: after losing a
   catalog they are what ``db rebuild`` needs). Both only once older than the grace
   period and :data:`ORPHAN_MIN_AGE`.

``dry_run`` does the reading (2, and what 1, 3, 4 and 6 would take) and changes
nothing. The steps are functions of their own, so tests can run pushes between them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import anyio

from ..catalog import gc as gc_q
from ..catalog.packs import PackRow, UploadRow
from ..errors import InvalidRequest, StoreError
from . import Repository
from .access import Principal

log = logging.getLogger("chunkyard.gc")

#: the grace period of ``chunkyard gc`` unless told: a pack verified less than this
#: long ago is kept, unreferenced or not
DEFAULT_GRACE = 24 * 3600.0
#: store objects and multipart uploads that no catalog row names are left alone until
#: at least this old (and older than the grace period): between writing a small
#: push's pack and committing it, and between creating a multipart upload and
#: recording it, the store holds what no row names yet
ORPHAN_MIN_AGE = 3600.0
#: files' manifests read per catalog transaction in the mark
MARK_PAGE = 2000
#: store deletions and aborts in flight
CONCURRENCY = 16
#: store errors a report quotes (the log has them all)
MAX_ERRORS = 20
#: where packs and their uploads live in the store (FORMAT.md, global rule 2)
PACKS_PREFIX = "packs/"


@dataclass
class Progress:
    """What a run has done so far, for progress lines."""

    phase: str = "starting"
    files: int = 0  # manifests read by the mark
    objects: int = 0  # store objects and uploads listed
    deleted: int = 0  # packs and upload objects deleted or aborted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """The summary of one run (what it would do, with ``dry_run``)."""

    dry_run: bool
    grace: float
    versions: int = 0  # versions whose manifests the mark read
    files: int = 0  # manifests read
    packs_scanned: int = 0  # packs with an object in the store, looked at
    packs_live: int = 0  # of those, named by a version
    packs_kept: int = 0  # unreferenced but too young, or maybe an open session's
    packs_deleted: int = 0  # objects of condemned packs deleted (dry run: would be)
    bytes_freed: int = 0  # their bytes, and those of upload objects deleted
    sessions_expired: int = 0  # sessions past their lifetime removed
    uploads_aborted: int = 0  # their multipart uploads aborted
    upload_objects_deleted: int = 0  # their complete, unverified copies deleted
    tombstones_removed: int = 0
    objects_listed: int = 0  # store objects under packs/ listed
    store_lists_uploads: bool = False  # whether the store can list multipart uploads
    orphan_uploads_aborted: int = 0  # multipart uploads no row knew
    orphan_objects: int = 0  # objects under packs/ no row names, old enough
    orphan_bytes: int = 0
    orphans_deleted: int = 0  # of those, deleted (``delete_orphans``)
    errors: list[str] = field(default_factory=list)  # store calls that failed: next run
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Marked:
    """What the mark found: the packs versions name, the versions it read."""

    packs: frozenset[str]
    versions: frozenset[int]
    files: int


async def collect(
    repo: Repository,
    who: Principal,
    grace: float = DEFAULT_GRACE,
    dry_run: bool = False,
    delete_orphans: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One garbage collection run (for admins); its :class:`Report` as JSON."""
    who.require("admin")
    if not grace >= 0:  # also refuses nan
        raise InvalidRequest(f"the grace period must be 0 seconds or more, not {grace}")
    progress = progress or Progress()
    started, now = time.monotonic(), time.time()
    r = Report(dry_run, grace, store_lists_uploads=repo.store.lists_uploads)
    progress.phase = "sessions"
    await expire_sessions(repo, now, dry_run, r, progress)
    progress.phase = "mark"
    marked = await mark(repo, progress)
    r.versions, r.files = len(marked.versions), marked.files
    progress.phase = "condemn"
    doomed = await condemn(repo, marked, grace, now, dry_run, r)
    progress.phase = "sweep"
    await sweep(repo, doomed, dry_run, r, progress)
    if not dry_run:
        r.tombstones_removed = await repo.db.write(gc_q.drop_tombstones, time.time())
    progress.phase = "orphans"
    await orphans(repo, now - max(grace, ORPHAN_MIN_AGE), dry_run, delete_orphans, r, progress)
    progress.phase = "done"
    r.seconds = round(time.monotonic() - started, 3)
    log.info("gc%s: %s", " (dry run)" if dry_run else "", json.dumps(r.to_json()))
    return r.to_json()


async def expire_sessions(
    repo: Repository, now: float, dry_run: bool, r: Report, progress: Progress
) -> None:
    """Step 1: sessions past their lifetime go, with their uploads. Rows first: an
    upload row removed is one no verifier promotes any more, so its object is ours to
    delete; if the store then fails, the listing of step 6 finds the upload later
    (where the store can list), or the store discards it (GCS, Azure: a week)."""
    if dry_run:
        found = await repo.db.read(gc_q.expired, now)
        r.sessions_expired = found.sessions
        _count_uploads(found.uploads, r)
        return
    while True:
        batch = await repo.db.write(gc_q.drop_expired, now)
        if not batch.sessions:
            return
        r.sessions_expired += batch.sessions
        _count_uploads(batch.uploads, r)
        await _each(batch.uploads, lambda u: _discard_upload(repo, u), r, progress)


def _count_uploads(found: Iterable[UploadRow], r: Report) -> None:
    for u in found:
        if u.state == "uploading":
            r.uploads_aborted += 1
        elif u.state == "complete":
            r.upload_objects_deleted += 1
            r.bytes_freed += u.size


async def _discard_upload(repo: Repository, u: UploadRow) -> None:
    if u.state == "uploading":
        await repo.store.abort_upload(u.key, u.store_upload_id)
    else:  # complete and never verified, or corrupt (deleted already; no harm)
        await repo.store.delete(u.key)


async def mark(repo: Repository, progress: Progress | None = None) -> Marked:
    """Step 2: the packs (and reference objects) every version's manifests name, a page
    of files per read transaction. The manifests are parsed off the event loop."""
    named: set[str] = set()
    seen: set[int] = set()
    files = 0
    async for page in manifest_pages(repo):
        seen.update(row.version_id for row in page)
        named |= await anyio.to_thread.run_sync(_packs_of_page, [row.manifest for row in page])
        files += len(page)
        if progress is not None:
            progress.files = files
    return Marked(frozenset(named), frozenset(seen), files)


async def manifest_pages(
    repo: Repository, size: int = MARK_PAGE
) -> AsyncIterator[list[gc_q.ManifestRow]]:
    """Every file's manifest, in primary key order, a page per read transaction."""
    after = (-1, -1)
    while page := await repo.db.read(gc_q.manifest_page, after, size):
        yield page
        after = (page[-1].version_id, page[-1].idx)


def _packs_of_page(manifests: list[str]) -> set[str]:
    """The packs a page of manifests names, parsed as one JSON document (one C call
    instead of one per file)."""
    useful = [m for m in manifests if m != "[]"]
    if not useful:
        return set()
    return {t[0] for terms in json.loads("[" + ",".join(useful) + "]") for t in terms}


async def condemn(
    repo: Repository, marked: Marked, grace: float, now: float, dry_run: bool, r: Report
) -> list[PackRow]:
    """Step 3: condemn what the mark left unreferenced, if old enough (see
    :func:`chunkyard.catalog.gc.condemn`); returns every condemned pack, of this run
    and of runs cut short (dry run: what would be)."""
    stored = await repo.db.read(gc_q.stored_packs)
    earlier = [p for p in stored if p.state == "condemned"]
    current = [p for p in stored if p.state != "condemned"]
    r.packs_scanned = len(current)
    r.packs_live = sum(p.id in marked.packs for p in current)
    unreferenced = [p for p in current if p.id not in marked.packs]
    if dry_run:
        limit = await repo.db.read(gc_q.cutoff, now, grace)
        doomed = [p for p in unreferenced if (p.verified_at or p.created_at) < limit]
    else:
        doomed = await repo.db.write(
            gc_q.condemn, [p.id for p in unreferenced], grace, set(marked.versions), now
        )
    r.packs_kept = len(unreferenced) - len(doomed)
    return earlier + doomed


async def sweep(
    repo: Repository, doomed: list[PackRow], dry_run: bool, r: Report, progress: Progress
) -> None:
    """Step 4: delete the condemned packs' objects, then make their rows tombstones
    (only those whose object is gone; a store error leaves a pack condemned for the
    next run)."""
    if dry_run:
        r.packs_deleted = len(doomed)
        r.bytes_freed += sum(p.size for p in doomed)
        return
    done: list[PackRow] = []

    async def delete(p: PackRow) -> None:
        assert p.key is not None  # stored packs only
        await repo.store.delete(p.key)
        done.append(p)

    await _each(doomed, delete, r, progress)
    settled = set(await repo.db.write(gc_q.settle, [p.id for p in done]))
    r.packs_deleted = len(done)
    r.bytes_freed += sum(p.size for p in done)
    if len(settled) < len(done):  # brought back by an upload of the same pack meanwhile
        log.info("gc: %d condemned packs came back to life", len(done) - len(settled))


async def orphans(
    repo: Repository,
    before: float,
    dry_run: bool,
    delete_objects: bool,
    r: Report,
    progress: Progress,
) -> None:
    """Step 6: what the store holds under ``packs/`` that no row names, begun or written
    before ``before``: multipart uploads are aborted (they hold nothing a catalog could
    be rebuilt from), objects counted and deleted only with ``delete_objects``. The
    store is listed before the catalog is read, so whatever was recorded meanwhile
    counts as known."""
    store = repo.store
    pending = [u async for u in store.list_uploads(PACKS_PREFIX)]
    listed = []
    async for info in store.list(PACKS_PREFIX):
        listed.append(info)
        progress.objects = len(listed) + len(pending)
    r.objects_listed = len(listed)
    known_ids = await repo.db.read(gc_q.known_store_uploads)
    known = await repo.db.read(gc_q.known_keys)
    stale = [u for u in pending if u.upload_id not in known_ids and _older(u.started, before)]
    old = [o for o in listed if o.key not in known and _older(_time(o.last_modified), before)]
    r.orphan_objects, r.orphan_bytes = len(old), sum(o.size for o in old)
    if dry_run:
        r.orphan_uploads_aborted = len(stale)
        return
    aborted = await _each(stale, lambda u: store.abort_upload(u.key, u.upload_id), r, progress)
    r.orphan_uploads_aborted = aborted
    if delete_objects:
        r.orphans_deleted = await _each(old, lambda o: store.delete(o.key), r, progress)


def _time(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _older(t: float | None, before: float) -> bool:
    """Whether ``t`` is known and before ``before`` (of unknown age: left alone)."""
    return t is not None and t < before


async def _each(
    items: list, fn: Callable[[Any], Any], r: Report, progress: Progress | None = None
) -> int:
    """``fn`` on every item, :data:`CONCURRENCY` at a time; how many succeeded. A store
    error is recorded in the report and left for the next run."""
    sem = asyncio.Semaphore(CONCURRENCY)
    ok = 0

    async def one(item: Any) -> None:
        nonlocal ok
        async with sem:
            try:
                await fn(item)
            except StoreError as exc:
                if len(r.errors) < MAX_ERRORS:
                    r.errors.append(exc.message)
                log.warning("gc: %s", exc.message)
                return
        ok += 1
        if progress is not None:
            progress.deleted += 1

    await asyncio.gather(*(one(item) for item in items))
    return ok
