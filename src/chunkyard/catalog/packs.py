"""Uploads, verified packs, their index rows, and the dedup index.

An upload (one session sending one pack to a store key of its own) goes ``uploading``
-> ``complete``; verification then either makes its copy the pack's live copy (a
``packs`` row with the verified index, the chunks entering the uploader's dedup domain),
drops it as redundant (another copy won), or marks it ``corrupt``. A pack found damaged
later is marked ``corrupt``. Garbage collection (:mod:`chunkyard.catalog.gc`) turns
unreferenced packs ``condemned``, then ``deleted`` (a tombstone); a verified upload of
the same pack brings either back to life with its own copy. Indexed reference objects
are packs too (``indexing`` -> ``reference``, ``drifted`` while their source does not
match the pin): see :mod:`chunkyard.catalog.references`.

Locks (PostgreSQL; SQLite runs one writer at a time): whoever relies on a pack being
live in a write transaction (a commit naming it, a copy of it made live) first reads
its row ``FOR KEY SHARE`` (:func:`lock_packs`); garbage collection takes the rows
``FOR UPDATE`` before it condemns or deletes (FORMAT.md, "Deleting").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from sqlalchemy import Connection, func, select, text

from .db import BATCH, batched, insert_ignoring_duplicates, raw_sqlite
from .schema import chunks, pack_entries, packs, uploads

#: packs whose chunks a commit or a read may use as they are
USABLE = ("verified", "reference")
#: packs that must not be read: failed verification, or a drifted reference source
UNUSABLE = ("corrupt", "drifted")
#: packs garbage collection took: a commit naming one is told ``packs_gone``
GONE = ("condemned", "deleted")


class PackRow(NamedTuple):
    id: str
    size: int
    chunk_count: int
    state: str
    created_at: float
    verified_at: float | None
    key: str | None  # the store key of the live copy (None: a reference object)
    artifact: str | None  # reference objects: who registered it


class UploadRow(NamedTuple):
    id: str
    session_id: str
    pack_id: str
    size: int
    store_upload_id: str
    key: str
    state: str
    created_at: float
    part_checksum: str | None = None  # the kind its store upload was created with


class EntryRow(NamedTuple):
    idx: int
    chunk_id: bytes
    chunk_key: bytes
    offset: int
    stored_len: int
    raw_len: int
    scheme: int


_PACK = [packs.c[f] for f in PackRow._fields]
_UPLOAD = [uploads.c[f] for f in UploadRow._fields]
_ENTRY = [pack_entries.c[f] for f in EntryRow._fields]


def _entry(r: Sequence) -> EntryRow:
    return EntryRow(r[0], bytes(r[1]), bytes(r[2]), r[3], r[4], r[5], r[6])


# -- uploads ----------------------------------------------------------------------------
def upload_of(conn: Connection, sid: str, pack_id: str) -> UploadRow | None:
    row = conn.execute(
        select(*_UPLOAD).where(uploads.c.session_id == sid, uploads.c.pack_id == pack_id)
    ).first()
    return None if row is None else UploadRow(*row)


def upload_by_id(conn: Connection, upload_id: str) -> UploadRow | None:
    row = conn.execute(select(*_UPLOAD).where(uploads.c.id == upload_id)).first()
    return None if row is None else UploadRow(*row)


def insert_upload(conn: Connection, row: UploadRow) -> UploadRow | None:
    """Record an upload that just began. If the session began this pack before, change
    nothing and return that upload (the caller resumes or replaces it)."""
    existing = upload_of(conn, row.session_id, row.pack_id)
    if existing is None:
        conn.execute(uploads.insert().values(**row._asdict()))
    return existing


def drop_upload(conn: Connection, upload_id: str) -> None:
    conn.execute(uploads.delete().where(uploads.c.id == upload_id))


def mark_upload(conn: Connection, upload_id: str, state: str) -> None:
    conn.execute(uploads.update().where(uploads.c.id == upload_id).values(state=state))


def uploads_awaiting_verification(conn: Connection, limit: int) -> list[str]:
    """Complete uploads, oldest first."""
    return list(
        conn.execute(
            select(uploads.c.id)
            .where(uploads.c.state == "complete")
            .order_by(uploads.c.created_at)
            .limit(limit)
        ).scalars()
    )


def still_complete(conn: Connection, upload_ids: Sequence[str]) -> tuple[list[str], str | None]:
    """Which of these uploads still wait for verification, and the oldest upload that
    waits (of anyone's: whether a verifier makes progress)."""
    left = []
    for batch in batched(sorted(set(upload_ids))):
        q = select(uploads.c.id).where(uploads.c.id.in_(batch), uploads.c.state == "complete")
        left.extend(conn.execute(q).scalars())
    oldest = uploads_awaiting_verification(conn, 1)
    return left, oldest[0] if oldest else None


def session_uploads(conn: Connection, sid: str, pack_ids: Iterable[str]) -> dict[str, UploadRow]:
    """The session's uploads of those packs."""
    out: dict[str, UploadRow] = {}
    for batch in batched(sorted(set(pack_ids))):
        rows = conn.execute(
            select(*_UPLOAD).where(uploads.c.session_id == sid, uploads.c.pack_id.in_(batch))
        )
        out.update((r[2], UploadRow(*r)) for r in rows)
    return out


# -- verified packs ---------------------------------------------------------------------
def pack_row(conn: Connection, pack_id: str) -> PackRow | None:
    row = conn.execute(select(*_PACK).where(packs.c.id == pack_id)).first()
    return None if row is None else PackRow(*row)


def pack_rows(conn: Connection, ids: Iterable[str], lock: bool = False) -> dict[str, PackRow]:
    """Those packs' rows. ``lock``: read ``FOR KEY SHARE`` (PostgreSQL), in id order,
    so that until the transaction ends garbage collection can neither condemn nor
    delete them, and a condemnation that committed first is seen (:data:`GONE`)."""
    out: dict[str, PackRow] = {}
    for batch in batched(sorted(set(ids))):
        q = select(*_PACK).where(packs.c.id.in_(batch))
        if lock and conn.dialect.name == "postgresql":
            q = q.order_by(packs.c.id).with_for_update(read=True, key_share=True)
        out.update((r[0], PackRow(*r)) for r in conn.execute(q))
    return out


def lock_packs(conn: Connection, ids: Iterable[str]) -> dict[str, PackRow]:
    """:func:`pack_rows` with ``lock``: what a commit reads of the packs it names."""
    return pack_rows(conn, ids, lock=True)


def promote(
    conn: Connection,
    upload: UploadRow,
    entries: Sequence[tuple[bytes, bytes, int, int, int, int]],
    domain: str,
    now: float,
) -> bool | None:
    """A verified upload becomes the pack's live copy, unless the pack has one already;
    either way the upload row goes. See :func:`make_live`. None: another verifier (a
    process, or a committing gateway) settled this upload first; its object may now be
    the live copy, so it must be left alone."""
    taken = conn.execute(
        uploads.delete().where(uploads.c.id == upload.id, uploads.c.state == "complete")
    )
    if taken.rowcount == 0:
        return None
    return make_live(conn, upload.pack_id, upload.size, upload.key, entries, domain, now)


def make_live(
    conn: Connection,
    pack_id: str,
    size: int,
    key: str,
    entries: Sequence[tuple[bytes, bytes, int, int, int, int]],
    domain: str,
    now: float,
) -> bool:
    """A verified copy of a pack (at store ``key``) becomes its live copy, unless the
    pack has a live one already. ``entries``: (chunk id, chunk key, offset, stored_len,
    raw_len, scheme) in order. Either way the pack's chunks enter ``domain``'s index.
    Returns whether this copy became the live one (otherwise it is redundant).

    A copy replaces one found damaged (``corrupt``), or one garbage collection took
    (``condemned``: its old object is GC's to delete; ``deleted``: a tombstone, whose
    index rows come back with it). The row is read locked, so that GC cannot condemn
    the pack between this look and the chunks entering the index."""
    live = lock_packs(conn, [pack_id]).get(pack_id)
    state = None if live is None else live.state
    promoted = False
    # Another session's copy of the same pack may be made live at the same moment (on
    # PostgreSQL, in a concurrent transaction): the row decides, the first copy wins.
    if state in ("corrupt", "condemned", "deleted"):
        promoted = bool(
            conn.execute(
                packs.update()
                .where(packs.c.id == pack_id, packs.c.state == state)
                .values(
                    state="verified",
                    key=key,
                    size=size,
                    chunk_count=len(entries),
                    verified_at=now,
                    swept_at=None,
                )
            ).rowcount
        )
        if promoted and state == "deleted":
            insert_entries(conn, pack_id, entries)
    elif state is None:
        promoted = bool(
            conn.execute(
                insert_ignoring_duplicates(conn, packs).values(
                    id=pack_id,
                    size=size,
                    chunk_count=len(entries),
                    state="verified",
                    created_at=now,
                    verified_at=now,
                    key=key,
                )
            ).rowcount
        )
        if promoted:
            insert_entries(conn, pack_id, entries)
    index_chunks(conn, pack_id, domain)
    return promoted


def insert_entries(
    conn: Connection,
    pack_id: str,
    entries: Sequence[tuple[bytes, bytes, int, int, int, int]],
) -> None:
    """The index rows of one pack: (chunk id, chunk key, offset, stored_len, raw_len,
    scheme) each. Once per pack a push uploads: the sqlite3 fast path where there is
    one."""
    rows = [(pack_id, i, *e) for i, e in enumerate(entries)]
    raw = raw_sqlite(conn)
    if raw is not None:
        raw.executemany(
            'INSERT INTO pack_entries (pack_id, idx, chunk_id, chunk_key, "offset",'
            " stored_len, raw_len, scheme) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return
    names = ("pack_id", "idx", "chunk_id", "chunk_key", "offset", "stored_len", "raw_len", "scheme")
    for batch in batched(rows):
        conn.execute(
            insert_ignoring_duplicates(conn, pack_entries),
            [dict(zip(names, r, strict=True)) for r in batch],
        )


def mark_corrupt(conn: Connection, pack_id: str) -> None:
    """A pack found damaged after versions may have named it: they fail loudly, and its
    chunks stop being dedup targets."""
    conn.execute(packs.update().where(packs.c.id == pack_id).values(state="corrupt"))
    conn.execute(chunks.delete().where(chunks.c.pack_id == pack_id))


def index_chunks(
    conn: Connection, pack_id: str, domain: str, first: int = 0, end: int | None = None
) -> None:
    """Chunks ``first .. end-1`` of the pack become dedup targets in ``domain``, where
    no other copy is one there already. Inserted in key order: transactions indexing
    the same new chunks at once (two pushes of the same content, packed in another
    order) then wait for one another on PostgreSQL instead of deadlocking."""
    q = select(pack_entries.c.chunk_key, pack_entries.c.pack_id, pack_entries.c.idx).where(
        pack_entries.c.pack_id == pack_id, pack_entries.c.idx >= first
    )
    if end is not None:
        q = q.where(pack_entries.c.idx < end)
    q = q.order_by(pack_entries.c.chunk_key)
    conn.execute(
        insert_ignoring_duplicates(conn, chunks).from_select(
            ["key", "pack_id", "idx", "domain"], q.add_columns(_literal(domain))
        )
    )


def _literal(value: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import literal

    return literal(value).label("domain")


def chunk_locations(
    conn: Connection, domain: str, keys: Iterable[bytes]
) -> dict[bytes, tuple[str, int]]:
    """Chunk key -> (pack id, index in pack) for the keys ``domain``'s index holds. Run on
    every missing-chunk query: the sqlite3 fast path where there is one."""
    found: dict[bytes, tuple[str, int]] = {}
    raw = raw_sqlite(conn)
    postgres = conn.dialect.name == "postgresql"
    # PostgreSQL: one array parameter per query (``= ANY``), 20,000 keys at a time; 500
    # keys per statement cost 200 statements for a 100,000-key query, over a second
    for batch in batched(set(keys), ANY_BATCH if postgres else BATCH):
        if raw is not None:
            marks = ",".join("?" * len(batch))
            rows = raw.execute(
                f"SELECT key, pack_id, idx FROM chunks WHERE domain = ? AND key IN ({marks})",
                [domain, *batch],
            ).fetchall()
        elif postgres:
            rows = conn.execute(_ANY_KEY, {"domain": domain, "keys": batch}).all()
        else:
            rows = conn.execute(
                select(chunks.c.key, chunks.c.pack_id, chunks.c.idx).where(
                    chunks.c.domain == domain, chunks.c.key.in_(batch)
                )
            ).all()
        for key, pack_id, idx in rows:
            found[bytes(key)] = (pack_id, idx)
    return found


ANY_BATCH = 20_000
_ANY_KEY = text("SELECT key, pack_id, idx FROM chunks WHERE domain = :domain AND key = ANY(:keys)")


def held_in_domain(conn: Connection, domain: str, pack_id: str) -> bool:
    """Whether ``domain``'s index holds any chunk of the pack."""
    return (
        conn.execute(
            select(chunks.c.idx)
            .where(chunks.c.pack_id == pack_id, chunks.c.domain == domain)
            .limit(1)
        ).first()
        is not None
    )


def entries(conn: Connection, pack_id: str, first: int, end: int) -> list[EntryRow]:
    """Index rows ``first .. end-1`` of a pack, in order."""
    rows = conn.execute(
        select(*_ENTRY)
        .where(
            pack_entries.c.pack_id == pack_id,
            pack_entries.c.idx >= first,
            pack_entries.c.idx < end,
        )
        .order_by(pack_entries.c.idx)
    )
    return [_entry(r) for r in rows]


def index_of(conn: Connection, pack_id: str) -> list[EntryRow]:
    """Every index row of a pack, in order, for a commit's checks."""
    rows = conn.execute(
        select(*_ENTRY).where(pack_entries.c.pack_id == pack_id).order_by(pack_entries.c.idx)
    )
    return [_entry(r) for r in rows]


def unusable(conn: Connection, ids: Iterable[str]) -> list[tuple[str, str]]:
    """(pack id, state) of those packs that failed verification or drifted."""
    out: list[tuple[str, str]] = []
    for batch in batched(sorted(set(ids))):
        rows = conn.execute(
            select(packs.c.id, packs.c.state).where(
                packs.c.id.in_(batch), packs.c.state.in_(UNUSABLE)
            )
        )
        out += [(r[0], r[1]) for r in rows]
    return out


def stored_totals(conn: Connection) -> tuple[int, int, int]:
    """(bytes, packs) of verified packs, and the number of entries in the dedup index."""
    size, count = conn.execute(
        select(func.coalesce(func.sum(packs.c.size), 0), func.count()).where(
            packs.c.state == "verified"
        )
    ).one()
    nchunks = conn.execute(select(func.count()).select_from(chunks)).scalar_one()
    return int(size), int(count), int(nchunks)


def awaiting_verification(conn: Connection) -> int:
    """Uploads complete in the store and not yet verified: the verifier's backlog."""
    return conn.execute(
        select(func.count()).select_from(uploads).where(uploads.c.state == "complete")
    ).scalar_one()
