"""The facts a metadata record is written from (FORMAT.md, "Metadata objects"): a
version with its files and pins, its tags, an alias move, a removal. Read when the
record is written, after the commit that made the fact (:mod:`.notes` says which)."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, bindparam, select

from . import references as refs_q
from .references import PinRow
from .schema import (
    alias_moves,
    artifacts,
    removals,
    tags,
    version_files,
    versions,
)
from .versions import FileRow, VersionRow

_VERSION = [versions.c[f] for f in VersionRow._fields]
_FILE = [version_files.c[f] for f in FileRow._fields]


# Statements built once: a record is built on every commit, and building a select
# costs more than running it (SQLAlchemy's coercions, then its cache key)
_NAME = select(artifacts.c.name).where(artifacts.c.id == bindparam("id"))
_VERSION_BY_ID = select(*_VERSION).where(versions.c.id == bindparam("id"))
_FILES = (
    select(*_FILE)
    .where(version_files.c.version_id == bindparam("id"))
    .order_by(version_files.c.idx)
)
_NUMBER = select(versions.c.number).where(versions.c.id == bindparam("id"))
_TAGS = select(tags.c.key, tags.c.value).where(tags.c.version_id == bindparam("id"))


def artifact_name(conn: Connection, artifact_id: int) -> str | None:
    return conn.execute(_NAME, {"id": artifact_id}).scalar()


def any_artifact(conn: Connection) -> bool:
    """Whether the catalog holds any artifact (a gateway's check of an empty catalog)."""
    return conn.execute(select(artifacts.c.id).limit(1)).first() is not None


# -- facts ---------------------------------------------------------------------------
def version_facts(
    conn: Connection, version_id: int
) -> tuple[VersionRow, list[FileRow], dict[str, PinRow]] | None:
    """A version, its files in order and the pins its reference files name; None if it
    is gone (removed since)."""
    row = conn.execute(_VERSION_BY_ID, {"id": version_id}).first()
    if row is None:
        return None
    files = [FileRow(*r) for r in conn.execute(_FILES, {"id": version_id})]
    pins = refs_q.pins(conn, {f.ref_object for f in files if f.ref_object})
    return VersionRow(*row), files, pins


def tag_facts(conn: Connection, version_id: int) -> tuple[int, dict[str, str]] | None:
    """A version's number and every tag it carries now; None if it is gone."""
    number = conn.execute(_NUMBER, {"id": version_id}).scalar()
    if number is None:
        return None
    rows = conn.execute(_TAGS, {"id": version_id})
    return number, {k: v for k, v in rows}


class MoveFacts(NamedTuple):
    alias: str
    seq: int
    number: int | None
    previous: int | None
    moved_at: float
    moved_by: str | None


def move_facts(conn: Connection, move_id: int) -> MoveFacts | None:
    row = conn.execute(
        select(
            alias_moves.c.alias,
            alias_moves.c.id,
            alias_moves.c.number,
            alias_moves.c.previous,
            alias_moves.c.moved_at,
            alias_moves.c.moved_by,
        ).where(alias_moves.c.id == move_id)
    ).first()
    return None if row is None else MoveFacts(*row)


class RemovalFacts(NamedTuple):
    first: int
    last: int
    removed_at: float
    removed_by: str | None


def removal_facts(conn: Connection, removal_id: int) -> RemovalFacts | None:
    row = conn.execute(
        select(
            removals.c.first, removals.c.last, removals.c.removed_at, removals.c.removed_by
        ).where(removals.c.id == removal_id)
    ).first()
    return None if row is None else RemovalFacts(*row)
