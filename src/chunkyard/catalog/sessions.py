"""Upload sessions: an upload in progress, so that a push can resume."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, func, select

from .db import raw_sqlite
from .schema import sessions


class SessionRow(NamedTuple):
    id: str
    artifact_name: str
    state: str  # open | committed
    version_id: int | None  # set on commit: a retried commit answers it
    created_at: float
    expires_at: float
    token_id: str | None  # who opened it (None: a gateway without auth)
    proof_key: str | None  # hex: keys the possession proofs of its commit


_COLUMNS = "id, artifact_name, state, version_id, created_at, expires_at, token_id, proof_key"


def insert_session(conn: Connection, row: SessionRow) -> None:
    conn.execute(sessions.insert().values(**row._asdict()))


def session_row(conn: Connection, sid: str) -> SessionRow | None:
    """Run on every request of a push: the sqlite3 fast path where there is one."""
    raw = raw_sqlite(conn)
    if raw is not None:
        row = raw.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id = ?", (sid,)).fetchone()
    else:
        row = conn.execute(
            select(*(sessions.c[c] for c in _COLUMNS.split(", "))).where(sessions.c.id == sid)
        ).first()
    return None if row is None else SessionRow(*row)


def mark_committed(conn: Connection, sid: str, version_id: int) -> None:
    conn.execute(
        sessions.update()
        .where(sessions.c.id == sid)
        .values(state="committed", version_id=version_id)
    )


def count_open(conn: Connection, now: float) -> int:
    """Sessions still open and not yet expired: pushes in progress, for ``/metrics``."""
    return conn.execute(
        select(func.count())
        .select_from(sessions)
        .where(sessions.c.state == "open", sessions.c.expires_at > now)
    ).scalar_one()
