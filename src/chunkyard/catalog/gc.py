"""Garbage collection's catalog work: the mark (every manifest's packs), condemning
unreferenced packs, tombstones, expired sessions, and what the store may hold that no
row names. The order of these steps, and why it loses nothing while pushes run, is
FORMAT.md's "Deleting"; :mod:`chunkyard.repository.gc` runs them.

Locks (PostgreSQL, READ COMMITTED): :func:`condemn` and :func:`settle` take the pack
rows they change ``FOR UPDATE``, in id order; commits and copies made live read the
rows they rely on ``FOR KEY SHARE`` (:func:`chunkyard.catalog.packs.lock_packs`). So a
commit either holds its packs first (the condemnation waits for it, then sees its
version and spares them) or reads them after (and sees them condemned).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Connection, func, select, tuple_

from ..manifest import loads
from .db import batched
from .packs import PackRow, UploadRow
from .schema import chunks, pack_entries, packs, sessions, uploads, version_files, versions

_PACK = [packs.c[f] for f in PackRow._fields]
_UPLOAD = [uploads.c[f] for f in UploadRow._fields]
#: packs with an object in the store that garbage collection may take
STORED = ("verified", "corrupt")


class ManifestRow(NamedTuple):
    version_id: int
    idx: int
    size: int
    manifest: str  # JSON terms; "[]" for a reference file or an empty one


# -- the mark -------------------------------------------------------------------------
def manifest_page(conn: Connection, after: tuple[int, int], limit: int) -> list[ManifestRow]:
    """Up to ``limit`` files' manifests after ``(version_id, idx)``, in that order (the
    primary key's): the mark (and ``fsck``) reads every one, a page per transaction."""
    q = (
        select(
            version_files.c.version_id,
            version_files.c.idx,
            version_files.c.size,
            version_files.c.manifest,
        )
        .where(tuple_(version_files.c.version_id, version_files.c.idx) > tuple_(*after))
        .order_by(version_files.c.version_id, version_files.c.idx)
        .limit(limit)
    )
    return [ManifestRow(*r) for r in conn.execute(q)]


def version_ids(conn: Connection) -> set[int]:
    return set(conn.execute(select(versions.c.id)).scalars())


def packs_named(manifests: Iterable[str]) -> set[str]:
    """The packs (and indexed reference objects) that manifests' terms name."""
    out: set[str] = set()
    for text in manifests:
        if text != "[]":
            out.update(t.pack for t in loads(text))
    return out


def manifests_of(conn: Connection, ids: Iterable[int]) -> list[str]:
    out: list[str] = []
    for batch in batched(sorted(set(ids))):
        q = select(version_files.c.manifest).where(version_files.c.version_id.in_(batch))
        out.extend(conn.execute(q).scalars())
    return out


# -- condemning -----------------------------------------------------------------------
def _stamp():  # type: ignore[no-untyped-def]
    """When a pack became what it is: verified, or made live again."""
    return func.coalesce(packs.c.verified_at, packs.c.created_at)


def stored_packs(conn: Connection) -> list[PackRow]:
    """Every pack with an object in the store (not reference objects, not tombstones)."""
    q = select(*_PACK).where(packs.c.key.is_not(None), packs.c.state.in_((*STORED, "condemned")))
    return [PackRow(*r) for r in conn.execute(q)]


def oldest_open_session(conn: Connection, now: float) -> float | None:
    """When the oldest session that may still commit began: packs verified since then
    may be its uploads, which the catalog no longer tells apart once verified."""
    return conn.execute(
        select(func.min(sessions.c.created_at)).where(
            sessions.c.state == "open", sessions.c.expires_at >= now
        )
    ).scalar()


def cutoff(conn: Connection, now: float, grace: float) -> float:
    """Packs verified before this may be condemned: older than the grace period and
    than every open session."""
    oldest = oldest_open_session(conn, now)
    return min(now - grace, oldest) if oldest is not None else now - grace


def condemn(
    conn: Connection, ids: Iterable[str], grace: float, seen: set[int], now: float
) -> list[PackRow]:
    """Condemn those packs that are still unreferenced and old enough, in one
    transaction: lock their rows, read the manifests of versions the mark did not see
    (``seen``: the version ids it read), spare what they name, and turn the rest
    ``condemned`` with their chunks out of the dedup index. From then on the
    missing-chunk query does not offer them and no commit may name them."""
    limit = cutoff(conn, now, grace)
    locked: list[PackRow] = []
    for batch in batched(sorted(set(ids))):
        q = (
            select(*_PACK)
            .where(
                packs.c.id.in_(batch),
                packs.c.key.is_not(None),
                packs.c.state.in_(STORED),
                _stamp() < limit,
            )
            .order_by(packs.c.id)
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        locked += [PackRow(*r) for r in conn.execute(q)]
    if not locked:
        return []
    # committed since the mark (commits that held these rows have finished by now)
    spared = packs_named(manifests_of(conn, version_ids(conn) - seen))
    doomed = [r for r in locked if r.id not in spared]
    for batch in batched([r.id for r in doomed]):
        conn.execute(
            packs.update().where(packs.c.id.in_(batch)).values(state="condemned", swept_at=now)
        )
        conn.execute(chunks.delete().where(chunks.c.pack_id.in_(batch)))
    return [r._replace(state="condemned") for r in doomed]


def condemned(conn: Connection) -> list[PackRow]:
    """Condemned packs whose objects are still to delete (of this run or one cut short)."""
    q = select(*_PACK).where(packs.c.state == "condemned").order_by(packs.c.id)
    return [PackRow(*r) for r in conn.execute(q)]


def settle(conn: Connection, ids: Iterable[str]) -> list[str]:
    """Packs whose objects are deleted become tombstones: no key, no index rows. Only
    those still condemned (a verified upload may have brought one back meanwhile)."""
    out: list[str] = []
    for batch in batched(sorted(set(ids))):
        q = (
            select(packs.c.id)
            .where(packs.c.id.in_(batch), packs.c.state == "condemned")
            .order_by(packs.c.id)
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        still = list(conn.execute(q).scalars())
        if not still:
            continue
        conn.execute(chunks.delete().where(chunks.c.pack_id.in_(still)))
        conn.execute(pack_entries.delete().where(pack_entries.c.pack_id.in_(still)))
        conn.execute(packs.update().where(packs.c.id.in_(still)).values(state="deleted", key=None))
        out += still
    return out


def drop_tombstones(conn: Connection, now: float) -> int:
    """Remove the tombstones no open session can name any more: condemned before the
    oldest open session began (a session's missing-chunk answers come after it began,
    and a condemned pack is in no answer)."""
    oldest = oldest_open_session(conn, now)
    q = packs.delete().where(packs.c.state == "deleted")
    if oldest is not None:
        q = q.where(packs.c.swept_at < oldest)
    return conn.execute(q).rowcount


def tombstones(conn: Connection) -> int:
    return conn.execute(
        select(func.count()).select_from(packs).where(packs.c.state == "deleted")
    ).scalar_one()


# -- sessions and uploads -------------------------------------------------------------
class Expired(NamedTuple):
    sessions: int
    uploads: list[UploadRow]


def expired(conn: Connection, now: float) -> Expired:
    """Sessions past their lifetime and their uploads (nothing changes)."""
    sids = list(conn.execute(select(sessions.c.id).where(sessions.c.expires_at < now)).scalars())
    found: list[UploadRow] = []
    for batch in batched(sids):
        found += [
            UploadRow(*r)
            for r in conn.execute(select(*_UPLOAD).where(uploads.c.session_id.in_(batch)))
        ]
    return Expired(len(sids), found)


def drop_expired(conn: Connection, now: float, limit: int = 1000) -> Expired:
    """Remove up to ``limit`` sessions past their lifetime and their uploads' rows;
    the uploads removed (the caller aborts or deletes them in the store: an upload row
    removed here is one the verifier will not promote any more)."""
    sids = list(
        conn.execute(
            select(sessions.c.id)
            .where(sessions.c.expires_at < now)
            .order_by(sessions.c.id)
            .limit(limit)
        ).scalars()
    )
    gone: list[UploadRow] = []
    for batch in batched(sids):
        q = uploads.delete().where(uploads.c.session_id.in_(batch)).returning(*_UPLOAD)
        gone += [UploadRow(*r) for r in conn.execute(q)]
        conn.execute(sessions.delete().where(sessions.c.id.in_(batch), sessions.c.expires_at < now))
    return Expired(len(sids), gone)


# -- what the store may hold that no row names ------------------------------------------
def known_keys(conn: Connection) -> set[str]:
    """Every store key a row names: live and condemned packs' copies, and uploads."""
    keys = set(conn.execute(select(packs.c.key).where(packs.c.key.is_not(None))).scalars())
    keys.update(conn.execute(select(uploads.c.key)).scalars())
    return keys


def known_store_uploads(conn: Connection) -> set[str]:
    """The store's upload ids of every upload the catalog knows."""
    return set(conn.execute(select(uploads.c.store_upload_id)).scalars())
