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
from .schema import artifacts, meta_pending


class Note(NamedTuple):
    id: int
    artifact_id: int
    kind: str  # version | tags | alias | removed
    ref: int
    created_at: float


_NOTE = [meta_pending.c[f] for f in Note._fields]


def note(conn: Connection, artifact_id: int, kind: str, ref: int) -> None:
    conn.execute(
        meta_pending.insert().values(
            artifact_id=artifact_id, kind=kind, ref=ref, created_at=time.time()
        )
    )


def notes_of(conn: Connection, name: str, limit: int = 1000) -> list[Note]:
    """The pending notes of one artifact, oldest first."""
    rows = conn.execute(
        select(*_NOTE)
        .join(artifacts, artifacts.c.id == meta_pending.c.artifact_id)
        .where(artifacts.c.name == name)
        .order_by(meta_pending.c.id)
        .limit(limit)
    )
    return [Note(*r) for r in rows]


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
