"""Packs, their index rows, and the dedup index (chunk id -> one verified location).

A pack's ``state`` goes ``uploading`` -> ``complete`` (its parts are one object and
its index is recorded) -> ``verified`` (read back, every chunk id checked: only now do
its chunks enter ``chunks``) or ``corrupt``. Indexed reference objects are packs too
(``indexing`` -> ``reference``, ``drifted`` while their source does not match the
pin): see :mod:`chunkyard.catalog.references`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, func, select

from .db import batched, insert_ignoring_duplicates, raw_sqlite
from .schema import chunks, pack_entries, packs

#: packs whose chunks a commit or a read may use as they are
USABLE = ("verified", "reference")
#: packs that must not be read: failed verification, or a drifted reference source
UNUSABLE = ("corrupt", "drifted")


class PackRow(NamedTuple):
    id: str
    size: int
    chunk_count: int
    state: str
    session_id: str | None
    upload_id: str | None
    created_at: float
    verified_at: float | None


class EntryRow(NamedTuple):
    idx: int
    chunk_id: bytes
    offset: int
    stored_len: int
    raw_len: int
    scheme: int


_PACK = [packs.c[f] for f in PackRow._fields]
_ENTRY = [pack_entries.c[f] for f in EntryRow._fields]


def pack_row(conn: Connection, pack_id: str) -> PackRow | None:
    row = conn.execute(select(*_PACK).where(packs.c.id == pack_id)).first()
    return None if row is None else PackRow(*row)


def insert_uploading(
    conn: Connection, pack_id: str, size: int, sid: str, upload_id: str, now: float
) -> PackRow | None:
    """Record a pack upload that just began; if another session began the same pack
    first, change nothing and return its row (the caller joins that upload)."""
    existing = pack_row(conn, pack_id)
    if existing is None:
        conn.execute(
            packs.insert().values(
                id=pack_id,
                size=size,
                chunk_count=0,
                state="uploading",
                session_id=sid,
                upload_id=upload_id,
                created_at=now,
            )
        )
    return existing


def mark_complete(conn: Connection, pack_id: str, entries: Sequence[Any]) -> str | None:
    """An uploaded pack is whole: record its index (``entries``:
    :class:`chunkyard.packs.Entry`). Returns None, or the state it was already in when
    another completion of the same pack got there first (then nothing changes)."""
    state = conn.execute(select(packs.c.state).where(packs.c.id == pack_id)).scalar()
    if state != "uploading":
        return state
    conn.execute(
        packs.update()
        .where(packs.c.id == pack_id)
        .values(state="complete", chunk_count=len(entries))
    )
    rows = [
        (pack_id, i, e.chunk_id, e.offset, e.stored_len, e.raw_len, e.scheme)
        for i, e in enumerate(entries)
    ]
    raw = raw_sqlite(conn)
    if raw is not None:  # a push runs this once per pack: the sqlite3 fast path
        raw.executemany(
            'INSERT INTO pack_entries (pack_id, idx, chunk_id, "offset", stored_len,'
            " raw_len, scheme) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    elif rows:
        names = ("pack_id", "idx", "chunk_id", "offset", "stored_len", "raw_len", "scheme")
        conn.execute(pack_entries.insert(), [dict(zip(names, r, strict=True)) for r in rows])
    return None


def mark_verified(conn: Connection, pack_id: str, now: float) -> str:
    """A complete pack passed verification: its chunks become dedup targets (where no
    other copy is one already). Returns the state it ends in."""
    state = conn.execute(select(packs.c.state).where(packs.c.id == pack_id)).scalar()
    if state != "complete":
        return state or "missing"
    conn.execute(
        packs.update().where(packs.c.id == pack_id).values(state="verified", verified_at=now)
    )
    index_chunks(conn, pack_id)
    return "verified"


def mark_corrupt(conn: Connection, pack_id: str) -> None:
    """A pack found damaged after versions may have named it: they fail loudly."""
    conn.execute(packs.update().where(packs.c.id == pack_id).values(state="corrupt"))


def forget_unverified(conn: Connection, pack_id: str) -> None:
    """Remove a pack that never became usable: its index rows and its row."""
    conn.execute(pack_entries.delete().where(pack_entries.c.pack_id == pack_id))
    conn.execute(packs.delete().where(packs.c.id == pack_id, packs.c.state != "verified"))


def index_chunks(conn: Connection, pack_id: str) -> None:
    """Every chunk of the pack becomes a dedup target, where no other copy is one."""
    conn.execute(
        insert_ignoring_duplicates(conn, chunks).from_select(
            ["id", "pack_id", "idx"],
            select(pack_entries.c.chunk_id, pack_entries.c.pack_id, pack_entries.c.idx).where(
                pack_entries.c.pack_id == pack_id
            ),
        )
    )


def awaiting_verification(conn: Connection, limit: int) -> list[str]:
    """Complete packs, oldest first."""
    return list(
        conn.execute(
            select(packs.c.id)
            .where(packs.c.state == "complete")
            .order_by(packs.c.created_at)
            .limit(limit)
        ).scalars()
    )


def index_of(conn: Connection, pack_id: str) -> list[tuple[bytes, int, int, int, int]]:
    """The recorded index of a pack: (chunk id, offset, stored_len, raw_len, scheme)."""
    rows = conn.execute(
        select(*_ENTRY[1:]).where(pack_entries.c.pack_id == pack_id).order_by(pack_entries.c.idx)
    )
    return [(bytes(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


def chunk_locations(conn: Connection, ids: Iterable[bytes]) -> dict[bytes, tuple[str, int]]:
    """Chunk id -> (pack id, index in pack) for the ids the dedup index knows. Run on
    every missing-chunk query: the sqlite3 fast path where there is one."""
    found: dict[bytes, tuple[str, int]] = {}
    raw = raw_sqlite(conn)
    for batch in batched(set(ids)):
        if raw is not None:
            marks = ",".join("?" * len(batch))
            rows = raw.execute(
                f"SELECT id, pack_id, idx FROM chunks WHERE id IN ({marks})", batch
            ).fetchall()
        else:
            rows = conn.execute(
                select(chunks.c.id, chunks.c.pack_id, chunks.c.idx).where(chunks.c.id.in_(batch))
            ).all()
        for cid, pack_id, idx in rows:
            found[bytes(cid)] = (pack_id, idx)
    return found


def pack_rows(conn: Connection, ids: Iterable[str]) -> dict[str, PackRow]:
    out: dict[str, PackRow] = {}
    for batch in batched(sorted(set(ids))):
        out.update(
            (r[0], PackRow(*r)) for r in conn.execute(select(*_PACK).where(packs.c.id.in_(batch)))
        )
    return out


def chunk_ends(conn: Connection, ids: Iterable[str]) -> dict[str, list[int]]:
    """Pack id -> raw bytes before each chunk and after the last (``[0, n0, n0+n1, ...]``),
    for the packs that have recorded entries."""
    ends: dict[str, list[int]] = {}
    for batch in batched(sorted(set(ids))):
        rows = conn.execute(
            select(pack_entries.c.pack_id, pack_entries.c.raw_len)
            .where(pack_entries.c.pack_id.in_(batch))
            .order_by(pack_entries.c.pack_id, pack_entries.c.idx)
        )
        for pack_id, raw_len in rows:
            run = ends.setdefault(pack_id, [0])
            run.append(run[-1] + raw_len)
    return ends


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
    return [EntryRow(r[0], bytes(r[1]), *r[2:]) for r in rows]


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


def with_state(conn: Connection, ids: Iterable[str], state: str) -> list[PackRow]:
    """Those of ``ids`` whose pack is in ``state``."""
    out: list[PackRow] = []
    for batch in batched(sorted(set(ids))):
        rows = conn.execute(select(*_PACK).where(packs.c.id.in_(batch), packs.c.state == state))
        out += [PackRow(*r) for r in rows]
    return out


def stored_totals(conn: Connection) -> tuple[int, int, int]:
    """(bytes, packs) of verified packs, and the number of chunks in the dedup index."""
    size, count = conn.execute(
        select(func.coalesce(func.sum(packs.c.size), 0), func.count()).where(
            packs.c.state == "verified"
        )
    ).one()
    nchunks = conn.execute(select(func.count()).select_from(chunks)).scalar_one()
    return int(size), int(count), int(nchunks)
