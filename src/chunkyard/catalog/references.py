"""Pinned source objects of reference versions (``ref_objects``, keyed by pin id).

An *indexed* object is also a pack under the same id with ``state = 'reference'``,
whose entries are its chunks as raw byte ranges of the source object, so that the
missing-chunk query, manifests and reconstructions treat it as one more pack. Its
``state`` turns ``drifted`` while ``verify`` finds the source changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, func, select

from .db import batched, insert_ignoring_duplicates
from .packs import index_chunks
from .schema import chunks, pack_entries, packs, ref_objects, version_files


class PinRow(NamedTuple):
    id: str
    uri: str
    size: int
    etag: str
    source_version: str | None
    last_modified: str | None
    weak_etag: bool
    digest: str  # BLAKE3 of the content, "" until hashed
    file_id: str  # "" until hashed
    state: str  # pinned | drifted


_PIN = [ref_objects.c[f] for f in PinRow._fields]


class Known(NamedTuple):
    digest: str  # BLAKE3 of the content ("" until hashed)
    file_id: str  # "" until hashed
    indexed: bool  # a chunk source


def known(conn: Connection, ids: Iterable[str]) -> dict[str, Known]:
    """What was recorded before about these pins."""
    out: dict[str, Known] = {}
    for batch in batched(ids):
        rows = conn.execute(
            select(ref_objects.c.id, ref_objects.c.digest, ref_objects.c.file_id, packs.c.state)
            .select_from(ref_objects.outerjoin(packs, packs.c.id == ref_objects.c.id))
            .where(ref_objects.c.id.in_(batch))
        )
        out.update((r[0], Known(r[1], r[2], r[3] == "reference")) for r in rows)
    return out


def insert_pins(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Record pins (``ref_objects`` rows); pins recorded before stay as they are."""
    for batch in batched(rows):
        conn.execute(insert_ignoring_duplicates(conn, ref_objects), batch)


def set_digests(conn: Connection, digests: list[tuple[str, str, str]]) -> None:
    """(pin id, digest, file id) for pins recorded without them."""
    if digests:
        conn.execute(
            ref_objects.update()
            .where(ref_objects.c.id == bindparam("pid"), ref_objects.c.digest == "")
            .values(digest=bindparam("d"), file_id=bindparam("f")),
            [{"pid": pid, "d": d, "f": f} for pid, d, f in digests],
        )


def begin_index(conn: Connection, pin_row: dict[str, Any], now: float) -> None:
    """The pin and its pseudo-pack exist before any index entry refers to them."""
    insert_pins(conn, [pin_row])
    conn.execute(
        insert_ignoring_duplicates(conn, packs),
        [
            {
                "id": pin_row["id"],
                "size": pin_row["size"],
                "chunk_count": 0,
                "state": "indexing",
                "created_at": now,
            }
        ],
    )


def insert_index_entries(
    conn: Connection, rows: list[tuple[str, int, bytes, bytes, int, int]]
) -> None:
    """Index entries of objects being indexed: (pin id, idx, chunk id, chunk key, offset,
    length); records are the raw bytes of the source."""
    names = ("pack_id", "idx", "chunk_id", "chunk_key", "offset", "raw_len")
    for batch in batched(rows):
        values = [dict(zip(names, r, strict=True)) for r in batch]
        for v in values:
            v.update(stored_len=v["raw_len"], scheme=0)
        conn.execute(insert_ignoring_duplicates(conn, pack_entries), values)


def count_entries(conn: Connection, pin_id: str) -> int:
    return conn.execute(
        select(func.count()).select_from(pack_entries).where(pack_entries.c.pack_id == pin_id)
    ).scalar_one()


def finish_index(
    conn: Connection,
    pin_id: str,
    chunk_count: int,
    digests: tuple[str, str],
    artifact: str,
    domain: str,
    now: float,
) -> None:
    """An object was hashed whole into its index: it becomes a chunk source for
    ``domain``, usable by those who may read ``artifact`` (which registered it).
    ``digests``: its BLAKE3 and its file id."""
    conn.execute(
        packs.update()
        .where(packs.c.id == pin_id)
        .values(state="reference", chunk_count=chunk_count, verified_at=now, artifact=artifact)
    )
    digest, fid = digests
    conn.execute(
        ref_objects.update()
        .where(ref_objects.c.id == pin_id)
        .values(digest=digest, file_id=fid, state="pinned")
    )
    index_chunks(conn, pin_id, domain)


def pins(conn: Connection, ids: Iterable[str]) -> dict[str, PinRow]:
    """The pins among ``ids`` (pack ids or pin ids): those that are reference objects."""
    out: dict[str, PinRow] = {}
    for batch in batched(sorted(set(ids))):
        rows = conn.execute(select(*_PIN).where(ref_objects.c.id.in_(batch)))
        out.update((r[0], PinRow(*r)) for r in rows)
    return out


def files_with_pins(conn: Connection, version_id: int) -> list[tuple[Any, ...]]:
    """(idx, path, size, PinRow, index state or None) per file of a reference version."""
    rows = conn.execute(
        select(
            version_files.c.idx,
            version_files.c.path,
            version_files.c.size,
            *_PIN,
            packs.c.state,
        )
        .select_from(
            version_files.join(
                ref_objects, ref_objects.c.id == version_files.c.ref_object
            ).outerjoin(packs, packs.c.id == ref_objects.c.id)
        )
        .where(version_files.c.version_id == version_id)
        .order_by(version_files.c.idx)
    )
    n = len(_PIN)
    return [(r[0], r[1], r[2], PinRow(*r[3 : 3 + n]), r[3 + n]) for r in rows]


def files_page(
    conn: Connection, version_id: int, first: int, limit: int
) -> list[tuple[int, str, str, PinRow]]:
    """(idx, path, digest, PinRow) of files ``first``, ... of a reference version."""
    rows = conn.execute(
        select(version_files.c.idx, version_files.c.path, version_files.c.digest, *_PIN)
        .join(ref_objects, ref_objects.c.id == version_files.c.ref_object)
        .where(version_files.c.version_id == version_id, version_files.c.idx >= first)
        .order_by(version_files.c.idx)
        .limit(limit)
    )
    return [(r[0], r[1], r[2], PinRow(*r[3:])) for r in rows]


def record_checks(
    conn: Connection, drifted: list[str], intact: list[str], now: float, domain: str
) -> list[str]:
    """Store what ``verify`` found. Drifted indexed objects leave the dedup index,
    restored ones come back (to ``domain``). Returns the indexed objects that just
    drifted."""
    for ids, state in ((drifted, "drifted"), (intact, "pinned")):
        for batch in batched(ids):
            conn.execute(
                ref_objects.update()
                .where(ref_objects.c.id.in_(batch))
                .values(state=state, checked_at=now)
            )
    hit: list[str] = []
    for batch in batched(drifted):
        ids = list(
            conn.execute(
                select(packs.c.id).where(packs.c.id.in_(batch), packs.c.state == "reference")
            ).scalars()
        )
        if ids:
            conn.execute(packs.update().where(packs.c.id.in_(ids)).values(state="drifted"))
            conn.execute(chunks.delete().where(chunks.c.pack_id.in_(ids)))
            hit += ids
    for batch in batched(intact):
        back = conn.execute(
            select(packs.c.id).where(packs.c.id.in_(batch), packs.c.state == "drifted")
        ).scalars()
        for pid in list(back):
            conn.execute(packs.update().where(packs.c.id == pid).values(state="reference"))
            index_chunks(conn, pid, domain)
    return hit
