"""Names: artifacts, their numbered versions and files, tags and aliases."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, func, or_, select

from ..version import FORMAT_VERSION
from . import notes
from .db import batched, insert_ignoring_duplicates
from .schema import (
    TAG_INDEXED,
    alias_moves,
    aliases,
    artifacts,
    removals,
    sessions,
    tag_value_prefix,
    tags,
    version_files,
    versions,
)

#: a version reference: a number, an alias, or None for the latest
Ref = int | str | None


class VersionRow(NamedTuple):
    id: int
    artifact_id: int
    number: int
    kind: str  # stored | reference
    layout: str  # file | tree
    digest: str
    size: int
    file_count: int
    created_at: float
    source: str | None
    digest_of: str  # content | pins
    format: int  # the repository format its manifests and digests follow
    dirs: str | None  # a tree's empty directories, JSON (None: none recorded)


class FileRow(NamedTuple):
    version_id: int
    idx: int
    path: str
    size: int
    digest: str  # format 3: the file id; format 2: the uploader's BLAKE3
    b3sum: str  # the uploader's BLAKE3 of the content ("" if none)
    manifest: str
    ref_object: str | None
    mode: int | None  # a tree file's permission bits (None: not recorded)


_VERSION = [versions.c[f] for f in VersionRow._fields]


def dirs_text(dirs: Sequence[str]) -> str | None:
    """``versions.dirs`` of a tree's empty directories (None: it has none)."""
    return json.dumps(list(dirs), ensure_ascii=False, separators=(",", ":")) if dirs else None


def dirs_of(v: VersionRow) -> list[str]:
    """A version's empty directories (none for a version that records none)."""
    return json.loads(v.dirs) if v.dirs else []


_FILE = [version_files.c[f] for f in FileRow._fields]


# -- artifacts ---------------------------------------------------------------------
def artifact_id(conn: Connection, name: str) -> int | None:
    return conn.execute(select(artifacts.c.id).where(artifacts.c.name == name)).scalar()


def ensure_artifact(conn: Connection, name: str, now: float) -> int:
    """The artifact's id, created if new, and locked for the rest of the write
    transaction: version numbers and alias moves of one artifact then happen one at a
    time on PostgreSQL too (SQLite runs one writer at a time anyway)."""
    conn.execute(insert_ignoring_duplicates(conn, artifacts).values(name=name, created_at=now))
    q = select(artifacts.c.id).where(artifacts.c.name == name)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return conn.execute(q).scalar_one()


def lock_artifact(conn: Connection, art_id: int) -> None:
    """Hold the artifact's row until the write transaction ends (PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(artifacts.c.id).where(artifacts.c.id == art_id).with_for_update())


def list_artifacts(
    conn: Connection, prefix: str, after: str, limit: int
) -> list[tuple[str, int, int]]:
    """(name, latest version, number of versions) of up to ``limit`` artifacts whose
    name starts with ``prefix`` and sorts after ``after``, by name. A range over the
    name index, then one grouped query over just that page's versions. An artifact
    whose versions were all removed is not listed."""
    live = select(versions.c.id).where(versions.c.artifact_id == artifacts.c.id).exists()
    q = _name_range(select(artifacts.c.id, artifacts.c.name).where(live), prefix)
    q = q.order_by(artifacts.c.name).limit(limit)
    if after:
        q = q.where(artifacts.c.name > after)
    page = conn.execute(q).all()
    if not page:
        return []
    counts = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            select(versions.c.artifact_id, func.max(versions.c.number), func.count())
            .where(versions.c.artifact_id.in_([r[0] for r in page]))
            .group_by(versions.c.artifact_id)
        )
    }
    return [(name, *counts[aid]) for aid, name in page if aid in counts]


def _name_range(q: Any, prefix: str) -> Any:
    """``q`` limited to artifact names that start with ``prefix``: one range of the
    name index (names compare bytewise on both databases, see ``schema.artifacts``)."""
    if prefix:
        q = q.where(artifacts.c.name >= prefix)
        upper = _successor(prefix)
        if upper is not None:
            q = q.where(artifacts.c.name < upper)
    return q


def _successor(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``."""
    for i in range(len(prefix) - 1, -1, -1):
        if ord(prefix[i]) < 0x10FFFF:
            return prefix[:i] + chr(ord(prefix[i]) + 1)
    return None


# -- versions -------------------------------------------------------------------------
def find_version(conn: Connection, art_id: int, ref: Ref) -> VersionRow | None:
    q = select(*_VERSION).where(versions.c.artifact_id == art_id)
    if ref is None:
        q = q.order_by(versions.c.number.desc()).limit(1)
    elif isinstance(ref, int):
        q = q.where(versions.c.number == ref)
    else:
        q = q.join(
            aliases,
            and_(
                aliases.c.version_id == versions.c.id,
                aliases.c.artifact_id == art_id,
                aliases.c.name == ref,
            ),
        )
    row = conn.execute(q).first()
    return None if row is None else VersionRow(*row)


def version_by_id(conn: Connection, version_id: int) -> VersionRow | None:
    """A version by id; None if it was removed."""
    row = conn.execute(select(*_VERSION).where(versions.c.id == version_id)).first()
    return None if row is None else VersionRow(*row)


def add_version(
    conn: Connection, art_id: int, number: int | None = None, **values: Any
) -> VersionRow:
    """Insert the artifact's next version (``number``, from :func:`next_number`, or
    found here) and note its record for the store. Call with the artifact locked
    (:func:`ensure_artifact`), so that concurrent commits take distinct numbers."""
    if number is None:
        latest = conn.execute(
            select(func.max(versions.c.number)).where(versions.c.artifact_id == art_id)
        ).scalar()
        number = next_number(conn, art_id, latest or 0)
    q = versions.insert().values(artifact_id=art_id, number=number, format=FORMAT_VERSION, **values)
    v = VersionRow(*conn.execute(q.returning(*_VERSION)).one())
    notes.note(conn, art_id, "version", v.id)
    return v


def next_number(conn: Connection, art_id: int, latest: int) -> int:
    """The number a new version takes, ``latest`` being the artifact's latest version's
    (0: none): above every removed one too, since numbers are never taken twice."""
    removed = conn.execute(
        select(func.max(removals.c.last)).where(removals.c.artifact_id == art_id)
    ).scalar()
    return max(latest, removed or 0) + 1


def list_versions(conn: Connection, art_id: int, after: int, limit: int) -> list[VersionRow]:
    rows = conn.execute(
        select(*_VERSION)
        .where(versions.c.artifact_id == art_id, versions.c.number > after)
        .order_by(versions.c.number)
        .limit(limit)
    )
    return [VersionRow(*r) for r in rows]


def tagged_versions(
    conn: Connection,
    prefix: str,
    tagged: Sequence[tuple[str, str]],
    after: tuple[str, int] | None,
    limit: int,
) -> list[tuple[str, VersionRow]]:
    """(name, version) of up to ``limit`` versions that carry every ``(key, value)`` of
    ``tagged``, of artifacts whose name starts with ``prefix``, after ``after`` in
    (name, number) order.

    From the tag side: the first tag's versions come from ``ix_tags_key_value``, each
    further tag is a look-up of the tags key (version, key), then the version and its
    artifact by id; only the matches are sorted. Without tags: the artifacts of the name
    range in index order, and their versions from the (artifact, number) index."""
    q = select(artifacts.c.name, *_VERSION)
    if tagged:
        first = None
        for i, (key, value) in enumerate(tagged):
            t = tags.alias(f"t{i}")
            match = and_(t.c.key == key, tag_value_prefix(t.c.value) == value[:TAG_INDEXED])
            if len(value) >= TAG_INDEXED:  # the index holds a prefix: compare the rest too
                match = and_(match, t.c.value == value)
            if first is None:
                first = t
                q = q.select_from(t).where(match)
            else:
                q = q.join(t, and_(t.c.version_id == first.c.version_id, match))
        assert first is not None
        q = q.join(versions, versions.c.id == first.c.version_id)
        q = q.join(artifacts, artifacts.c.id == versions.c.artifact_id)
    else:
        q = q.select_from(artifacts).join(versions, versions.c.artifact_id == artifacts.c.id)
    q = _name_range(q, prefix)
    if after is not None:  # name >= on its own too: where the name index's range starts
        name, number = after
        q = q.where(
            artifacts.c.name >= name,
            or_(artifacts.c.name > name, versions.c.number > number),
        )
    rows = conn.execute(q.order_by(artifacts.c.name, versions.c.number).limit(limit))
    return [(r[0], VersionRow(*r[1:])) for r in rows]


def totals(conn: Connection) -> dict[str, int]:
    """Counts and logical sizes for ``stats``."""
    stored = conn.execute(
        select(func.coalesce(func.sum(versions.c.size), 0)).where(versions.c.kind == "stored")
    ).scalar_one()
    referenced = conn.execute(
        select(func.coalesce(func.sum(versions.c.size), 0)).where(versions.c.kind == "reference")
    ).scalar_one()
    return {
        "artifacts": conn.execute(select(func.count()).select_from(artifacts)).scalar_one(),
        "versions": conn.execute(select(func.count()).select_from(versions)).scalar_one(),
        "logical_bytes": int(stored),
        "referenced_bytes": int(referenced),
    }


# -- files ------------------------------------------------------------------------------
def insert_files(conn: Connection, version_id: int, rows: list[dict[str, Any]]) -> None:
    """``rows``: idx, path, size, digest, manifest (and ref_object for references, mode
    for the files of a stored tree)."""
    for batch in batched(rows, 5000):
        conn.execute(version_files.insert(), [{"version_id": version_id, **r} for r in batch])


def files_of(conn: Connection, version_id: int) -> list[FileRow]:
    rows = conn.execute(
        select(*_FILE).where(version_files.c.version_id == version_id).order_by(version_files.c.idx)
    )
    return [FileRow(*r) for r in rows]


def file_of(
    conn: Connection, version_id: int, index: int | None = None, path: str | None = None
) -> FileRow | None:
    q = select(*_FILE).where(version_files.c.version_id == version_id)
    q = q.where(version_files.c.path == path) if path is not None else q
    q = q.where(version_files.c.idx == index) if index is not None else q
    row = conn.execute(q.limit(1)).first()
    return None if row is None else FileRow(*row)


def files_by_index(conn: Connection, version_id: int, indices: Iterable[int]) -> list[FileRow]:
    out: list[FileRow] = []
    for batch in batched(sorted(set(indices))):
        rows = conn.execute(
            select(*_FILE).where(
                version_files.c.version_id == version_id, version_files.c.idx.in_(batch)
            )
        )
        out += [FileRow(*r) for r in rows]
    return out


def stored_files_by_id(
    conn: Connection, art_id: int, number: int
) -> dict[tuple[str, int], FileRow]:
    """(file id, size) -> file, for every stored file of version ``number`` of an
    artifact whose file ids the gateway computed (format 3 and later)."""
    rows = conn.execute(
        select(*_FILE)
        .join(versions, versions.c.id == version_files.c.version_id)
        .where(
            versions.c.artifact_id == art_id,
            versions.c.number == number,
            versions.c.kind == "stored",
            versions.c.format >= 3,
        )
    )
    return {(r.digest, r.size): FileRow(*r) for r in rows}


# -- tags and aliases ----------------------------------------------------------------
def tags_of(conn: Connection, version_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    for batch in batched(sorted(set(version_ids))):
        rows = conn.execute(
            select(tags.c.version_id, tags.c.key, tags.c.value).where(tags.c.version_id.in_(batch))
        )
        for vid, key, value in rows:
            out.setdefault(vid, {})[key] = value
    return out


def insert_tags(conn: Connection, version_id: int, new: dict[str, str], note: bool = True) -> None:
    """Add tags the version does not carry yet, and note its tags record (unless
    ``note`` is false: a rebuild, from records the store holds)."""
    if new:
        conn.execute(
            tags.insert(),
            [{"version_id": version_id, "key": k, "value": v} for k, v in new.items()],
        )
    if new and note:
        art_id = conn.execute(
            select(versions.c.artifact_id).where(versions.c.id == version_id)
        ).scalar_one()
        notes.note(conn, art_id, "tags", version_id)


def aliases_of(conn: Connection, version_ids: Iterable[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for batch in batched(sorted(set(version_ids))):
        rows = conn.execute(
            select(aliases.c.version_id, aliases.c.name)
            .where(aliases.c.version_id.in_(batch))
            .order_by(aliases.c.name)
        )
        for vid, name in rows:
            out.setdefault(vid, []).append(name)
    return out


def alias_target(conn: Connection, art_id: int, alias: str) -> int | None:
    """The version number an alias points at, or None."""
    return conn.execute(
        select(versions.c.number)
        .join(aliases, aliases.c.version_id == versions.c.id)
        .where(aliases.c.artifact_id == art_id, aliases.c.name == alias)
    ).scalar()


class AliasRow(NamedTuple):
    alias: str
    version: int  # the number of the version it points at
    updated_at: float


class AliasMove(NamedTuple):
    id: int
    version: int | None  # the version number it points at since; None: removed
    previous: int | None  # the version number it pointed at before; None: none
    moved_at: float
    moved_by: str | None  # the token id (None: a gateway without auth)


_ALIAS_ROW = select(aliases.c.name, versions.c.number, aliases.c.updated_at).join(
    versions, versions.c.id == aliases.c.version_id
)


def list_aliases(conn: Connection, art_id: int, after: str, limit: int) -> list[AliasRow]:
    """An artifact's aliases after ``after``, by name, and where they point."""
    rows = conn.execute(
        _ALIAS_ROW.where(aliases.c.artifact_id == art_id, aliases.c.name > after)
        .order_by(aliases.c.name)
        .limit(limit)
    )
    return [AliasRow(*r) for r in rows]


def alias_row(conn: Connection, art_id: int, alias: str) -> AliasRow | None:
    row = conn.execute(
        _ALIAS_ROW.where(aliases.c.artifact_id == art_id, aliases.c.name == alias)
    ).first()
    return None if row is None else AliasRow(*row)


def point_alias(
    conn: Connection, art_id: int, alias: str, version_id: int, now: float, by: str | None = None
) -> int | None:
    """Create or move an alias, and record the move; the version number it pointed at
    before (None: it did not exist). Pointing it where it points already changes and
    records nothing. Call with the artifact locked (:func:`lock_artifact`)."""
    current = conn.execute(
        select(aliases.c.version_id, versions.c.number)
        .join(versions, versions.c.id == aliases.c.version_id)
        .where(aliases.c.artifact_id == art_id, aliases.c.name == alias)
    ).first()
    if current is None:
        conn.execute(
            aliases.insert().values(
                artifact_id=art_id, name=alias, version_id=version_id, updated_at=now
            )
        )
    elif current.version_id != version_id:
        conn.execute(
            aliases.update()
            .where(aliases.c.artifact_id == art_id, aliases.c.name == alias)
            .values(version_id=version_id, updated_at=now)
        )
    else:
        return current.number
    previous = None if current is None else current.number
    number = conn.execute(select(versions.c.number).where(versions.c.id == version_id)).scalar()
    _record_move(conn, art_id, alias, version_id, number, previous, now, by)
    return previous


def remove_alias(
    conn: Connection, art_id: int, alias: str, now: float, by: str | None = None
) -> int | None:
    """Remove an alias and record it; the version number it pointed at (None: there was
    no such alias, and nothing changed). Call with the artifact locked."""
    previous = alias_target(conn, art_id, alias)
    if previous is not None:
        conn.execute(
            aliases.delete().where(aliases.c.artifact_id == art_id, aliases.c.name == alias)
        )
        _record_move(conn, art_id, alias, None, None, previous, now, by)
    return previous


def _record_move(
    conn: Connection,
    art_id: int,
    alias: str,
    version_id: int | None,
    number: int | None,
    previous: int | None,
    now: float,
    by: str | None,
) -> None:
    """Record a move (and note its record for the store)."""
    move = conn.execute(
        alias_moves.insert()
        .values(
            artifact_id=art_id,
            alias=alias,
            version_id=version_id,
            number=number,
            previous=previous,
            moved_at=now,
            moved_by=by,
        )
        .returning(alias_moves.c.id)
    ).scalar_one()
    notes.note(conn, art_id, "alias", move)


def alias_history(
    conn: Connection, art_id: int, alias: str, after: int, limit: int
) -> list[AliasMove]:
    """The moves of an alias after move ``after`` (a move's id), oldest first."""
    rows = conn.execute(
        select(
            alias_moves.c.id,
            alias_moves.c.number,
            alias_moves.c.previous,
            alias_moves.c.moved_at,
            alias_moves.c.moved_by,
        )
        .where(
            alias_moves.c.artifact_id == art_id,
            alias_moves.c.alias == alias,
            alias_moves.c.id > after,
        )
        .order_by(alias_moves.c.id)
        .limit(limit)
    )
    return [AliasMove(*r) for r in rows]


# -- removals --------------------------------------------------------------------------
class RemovalRow(NamedTuple):
    first: int  # versions first .. last were removed
    last: int
    removed_at: float
    removed_by: str | None


def removal_of(conn: Connection, art_id: int, number: int) -> RemovalRow | None:
    """The removal that took version ``number`` of an artifact, if one did."""
    row = conn.execute(
        select(removals.c.first, removals.c.last, removals.c.removed_at, removals.c.removed_by)
        .where(
            removals.c.artifact_id == art_id,
            removals.c.first <= number,
            removals.c.last >= number,
        )
        .order_by(removals.c.id)
        .limit(1)
    ).first()
    return None if row is None else RemovalRow(*row)


def live_versions(conn: Connection, art_id: int) -> list[VersionRow]:
    """Every version of an artifact, by number."""
    rows = conn.execute(
        select(*_VERSION).where(versions.c.artifact_id == art_id).order_by(versions.c.number)
    )
    return [VersionRow(*r) for r in rows]


def remove_versions(
    conn: Connection,
    art_id: int,
    version_ids: Sequence[int],
    first: int,
    last: int,
    now: float,
    by: str | None,
) -> None:
    """Remove versions with their files, tags and aliases (the caller removes aliases
    first, recording the moves), record the removal of numbers ``first .. last`` and
    note its tombstone for the store. The alias history keeps the numbers of the moves
    that pointed at them. Call with the artifact locked."""
    for batch in batched(sorted(set(version_ids))):
        conn.execute(tags.delete().where(tags.c.version_id.in_(batch)))
        conn.execute(version_files.delete().where(version_files.c.version_id.in_(batch)))
        conn.execute(aliases.delete().where(aliases.c.version_id.in_(batch)))
        conn.execute(
            alias_moves.update().where(alias_moves.c.version_id.in_(batch)).values(version_id=None)
        )
        # a retried commit of a session that made one must not answer whatever version
        # takes the id next (SQLite reuses the largest)
        conn.execute(
            sessions.update().where(sessions.c.version_id.in_(batch)).values(version_id=None)
        )
        conn.execute(versions.delete().where(versions.c.id.in_(batch)))
    notes.drop_version_notes(conn, version_ids)
    removal = conn.execute(
        removals.insert()
        .values(artifact_id=art_id, first=first, last=last, removed_at=now, removed_by=by)
        .returning(removals.c.id)
    ).scalar_one()
    notes.note(conn, art_id, "removed", removal)
