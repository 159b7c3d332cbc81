"""Pending metadata records (``meta_pending``): what a transaction made due for the
store to describe (a version, its tags, an alias move, a removal). The note is made in
the transaction that makes the fact and goes once the record is in the store
(FORMAT.md, "Metadata objects", rules 1-2). A note names its fact by id; the record is
built from the catalog when it is written, so a note is a few bytes whatever the
version's size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Connection, func, select

from .db import batched
from .schema import meta_pending


class Note(NamedTuple):
    id: int
    artifact_id: int
    kind: str  # version | tags | alias | removed
    ref: int
    created_at: float


_NOTE = [meta_pending.c[f] for f in Note._fields]


#: where on a connection the notes of its current transaction are kept
_MADE = "chunkyard.notes"


def note(conn: Connection, artifact_id: int, kind: str, ref: int) -> None:
    """Note a record due; the transaction's :func:`made` lists it too."""
    now = time.time()
    values = {"artifact_id": artifact_id, "kind": kind, "ref": ref, "created_at": now}
    nid = conn.execute(meta_pending.insert().values(**values).returning(meta_pending.c.id))
    made = conn.info.get(_MADE)
    if made is not None:
        made.append(Note(nid.scalar_one(), artifact_id, kind, ref, now))


def collect(conn: Connection) -> None:
    """From now on, list the notes made on this connection (see :func:`made`)."""
    conn.info[_MADE] = []


def made(conn: Connection) -> list[Note]:
    """The notes made on this connection since :func:`collect`, in order."""
    return conn.info.pop(_MADE, None) or []


def notes_before(conn: Connection, before: float, after: int, limit: int) -> list[Note]:
    """Notes made before ``before`` (a time), after note ``after``, oldest first."""
    rows = conn.execute(
        select(*_NOTE)
        .where(meta_pending.c.id > after, meta_pending.c.created_at < before)
        .order_by(meta_pending.c.id)
        .limit(limit)
    )
    return [Note(*r) for r in rows]


def count_notes(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(meta_pending)).scalar_one())


def drop_notes(conn: Connection, ids: Iterable[int]) -> None:
    for batch in batched(sorted(set(ids))):
        conn.execute(meta_pending.delete().where(meta_pending.c.id.in_(batch)))


def drop_version_notes(conn: Connection, version_ids: Iterable[int]) -> None:
    """Forget the records of versions being removed: there is nothing left to describe."""
    for batch in batched(sorted(set(version_ids))):
        conn.execute(
            meta_pending.delete().where(
                meta_pending.c.kind.in_(("version", "tags")), meta_pending.c.ref.in_(batch)
            )
        )
