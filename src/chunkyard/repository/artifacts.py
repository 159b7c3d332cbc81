"""Names: artifacts, versions, aliases, tags, listing and stats."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from ..catalog import packs as packs_q
from ..catalog import references as refs_q
from ..catalog import versions as q
from ..catalog.versions import Ref, VersionRow
from ..errors import (
    AliasConflict,
    AliasNotFound,
    ArtifactNotFound,
    InvalidRequest,
    TagConflict,
    VersionNotFound,
)
from ..names import check_alias, check_name, check_tags
from . import Repository, metadata
from .access import Principal

MAX_PAGE = 1000


def find_artifact(conn: Connection, name: str) -> int:
    art_id = q.artifact_id(conn, check_name(name))
    if art_id is None:
        raise ArtifactNotFound(f"no artifact named {name!r}", name=name)
    return art_id


def find_version(conn: Connection, name: str, ref: Ref) -> VersionRow:
    art_id = find_artifact(conn, name)
    v = q.find_version(conn, art_id, ref)
    if v is None:
        removed = q.removal_of(conn, art_id, ref) if isinstance(ref, int) else None
        if removed is not None:
            raise VersionNotFound(
                f"version {ref} of {name!r} was removed (at "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(removed.removed_at))})",
                name=name,
                ref=ref,
                removed_at=removed.removed_at,
            )
        what = "no versions" if ref is None else f"no version {ref!r}"
        raise VersionNotFound(f"artifact {name!r} has {what}", name=name, ref=ref)
    return v


def apply_tags(conn: Connection, version_id: int, new: dict[str, str]) -> None:
    """Tags are write-once: the same value again is a no-op, a different one a conflict."""
    if not new:
        return
    have = q.tags_of(conn, [version_id]).get(version_id, {})
    for key, value in new.items():
        if key in have and have[key] != value:
            raise TagConflict(
                f"tag {key!r} is already set to a different value", key=key, value=have[key]
            )
    q.insert_tags(conn, version_id, {k: v for k, v in new.items() if k not in have})


def summaries(
    conn: Connection, name: str | Sequence[str], rows: list[VersionRow]
) -> list[dict[str, Any]]:
    """What the API says about versions (without their files): of one artifact
    ``name``, or each of the artifact named at the same place in ``name``."""
    ids = [v.id for v in rows]
    tags, aliases = q.tags_of(conn, ids), q.aliases_of(conn, ids)
    names = [name] * len(rows) if isinstance(name, str) else name
    return [
        describe(n, v, tags.get(v.id, {}), aliases.get(v.id, []))
        for n, v in zip(names, rows, strict=True)
    ]


def describe(name: str, v: VersionRow, tags: dict[str, str], aliases: list[str]) -> dict[str, Any]:
    """What the API says about a version whose tags and aliases are known (a version
    just made has the tags it was made with and no alias: no need to ask the catalog)."""
    s: dict[str, Any] = {
        "name": name,
        "version": v.number,
        "kind": v.kind,
        "layout": v.layout,
        "digest": v.digest,
        "size": v.size,
        "files": v.file_count,
        "created_at": v.created_at,
        "digest_of": v.digest_of,  # "content", or "pins" for a reference never hashed
        "format": v.format,  # the repository format: how the digests were made
        "tags": tags,
        "aliases": aliases,
    }
    if v.kind == "reference":
        s["source"] = v.source
    return s


def summary(conn: Connection, name: str, v: VersionRow, files: bool = False) -> dict[str, Any]:
    out = summaries(conn, name, [v])[0]
    if files and v.kind == "reference":
        out["file_list"] = _reference_files(conn, v.id)
    elif files:
        out["file_list"] = [_stored_file(f) for f in q.files_of(conn, v.id)]
    if files and v.layout == "tree":
        out["dirs"] = q.dirs_of(v)
    return out


def _stored_file(f: q.FileRow) -> dict[str, Any]:
    out = {"index": f.idx, "path": f.path, "size": f.size, "digest": f.digest, "b3sum": f.b3sum}
    if f.mode is not None:  # recorded (FORMAT.md, "Pull": others pull as they always did)
        out["mode"] = f.mode
    return out


def _reference_files(conn: Connection, version_id: int) -> list[dict[str, Any]]:
    """The files of a reference version with their pins (and whether each object is
    hashed, indexed as a chunk source, or found drifted by the last verify)."""
    return [
        {
            "index": idx,
            "path": path,
            "size": size,
            "digest": pin.file_id,
            "b3sum": pin.digest,
            "uri": pin.uri,
            "pin": {
                "etag": pin.etag,
                "version_id": pin.source_version,
                "last_modified": pin.last_modified,
            },
            "indexed": index_state in ("reference", "drifted"),
            "state": pin.state,
        }
        for idx, path, size, pin, index_state in refs_q.files_with_pins(conn, version_id)
    ]


async def show(repo: Repository, who: Principal, name: str, ref: Ref) -> dict[str, Any]:
    who.require("read", name)

    def tx(conn: Connection) -> dict[str, Any]:
        return summary(conn, name, find_version(conn, name, ref), files=True)

    return await repo.db.read(tx)


#: names looked at per listing request at most, readable or not (a token that may read
#: little of a large catalog gets short pages with a cursor, not a long scan)
MAX_SCAN = 10_000


async def list_artifacts(
    repo: Repository, who: Principal, prefix: str = "", cursor: str = "", limit: int = 100
) -> dict[str, Any]:
    """Artifacts whose name starts with ``prefix`` and that ``who`` may read, by name,
    paged by a cursor (the last name looked at)."""
    limit = max(1, min(limit, MAX_PAGE))
    items: list[dict[str, Any]] = []
    scanned, after, more = 0, cursor, True
    while len(items) < limit and scanned < MAX_SCAN and more:
        want = limit - len(items)
        rows = await repo.db.read(q.list_artifacts, prefix, after, want + 1)
        more = len(rows) > want
        for n, latest, c in rows[:want]:
            if who.can("read", n):
                items.append({"name": n, "latest": latest, "versions": c})
        scanned += len(rows[:want])
        if rows[:want]:
            after = rows[:want][-1][0]
    return {"artifacts": items, "next": after if more else None}


async def list_versions(
    repo: Repository, who: Principal, name: str, cursor: int = 0, limit: int = 100
) -> dict[str, Any]:
    who.require("read", name)
    limit = max(1, min(limit, MAX_PAGE))

    def tx(conn: Connection) -> dict[str, Any]:
        rows = q.list_versions(conn, find_artifact(conn, name), cursor, limit + 1)
        items = summaries(conn, name, rows[:limit])
        return {"versions": items, "next": items[-1]["version"] if len(rows) > limit else None}

    return await repo.db.read(tx)


#: rows a listing across artifacts reads per query at least
SCAN_BATCH = 200
#: cursor of a listing of versions across artifacts: ``NAME@NUMBER``, the last one given
VERSION_CURSOR_SEP = "@"


def _version_cursor(text: str) -> tuple[str, int] | None:
    if not text:
        return None
    name, sep, number = text.rpartition(VERSION_CURSOR_SEP)
    if not sep or not (number.isascii() and number.isdigit()) or len(number) > 18:
        raise InvalidRequest(f"invalid cursor {text[:300]!r}: NAME@VERSION, as a page's next")
    return check_name(name), int(number)


async def find_versions(
    repo: Repository,
    who: Principal,
    prefix: str = "",
    tags: Sequence[tuple[str, str]] = (),
    cursor: str = "",
    limit: int = 100,
) -> dict[str, Any]:
    """Versions that carry every tag of ``tags`` (none: all versions), of artifacts whose
    name starts with ``prefix`` and that ``who`` may read, by name and number, paged by
    a cursor ``NAME@NUMBER`` (the last version looked at). Like :func:`list_artifacts`,
    a page looks at ``MAX_SCAN`` versions at most, so one may come back short."""
    for key, value in tags:
        check_tags({key: value})
    tags = list(dict.fromkeys(tags))  # the same pair twice is one condition
    limit = max(1, min(limit, MAX_PAGE))
    after = _version_cursor(cursor)

    def tx(conn: Connection) -> dict[str, Any]:
        rows: list[tuple[str, VersionRow]] = []
        scanned, at, more = 0, after, True
        while len(rows) < limit and scanned < MAX_SCAN and more:
            # at least SCAN_BATCH at a time: a token that may read little of the prefix
            # then costs a few queries, not one per page of versions it may not see
            n = min(max(limit - len(rows), SCAN_BATCH), MAX_SCAN - scanned)
            page = q.tagged_versions(conn, prefix, tags, at, n + 1)
            looked = 0
            for art, v in page[:n]:
                looked += 1
                at = (art, v.number)
                if who.can("read", art):
                    rows.append((art, v))
                    if len(rows) == limit:
                        break
            scanned += looked
            more = len(page) > looked
        items = summaries(conn, [art for art, _ in rows], [v for _, v in rows])
        return {"versions": items, "next": f"{at[0]}@{at[1]}" if more and at else None}

    return await repo.db.read(tx)


def _alias_conflict(name: str, alias: str, current: int | None, expect: int) -> AliasConflict:
    """A failed compare-and-set, naming where the alias points now (so the loser of a
    race knows what it lost to)."""
    now = f"points at version {current}" if current else "does not exist"
    wanted = "not to exist" if expect == 0 else f"to point at version {expect}"
    return AliasConflict(
        f"alias {alias!r} of {name!r} {now} (expected it {wanted})",
        name=name,
        alias=alias,
        current=current,
        expected=expect,
    )


async def set_alias(
    repo: Repository,
    who: Principal,
    name: str,
    alias: str,
    number: int,
    expect: int | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at version ``number``; with ``expect``, only if it points there now
    (compare-and-set; ``expect=0`` means the alias must not exist yet). The artifact's
    row is locked before the alias is read, so two moves of one artifact's aliases run
    one after the other (PostgreSQL; SQLite has one writer): the second sees the first.
    The move is recorded in the alias's history in the same transaction."""
    check_alias(alias)
    who.require("write", name)

    def tx(conn: Connection) -> dict[str, Any]:
        v = find_version(conn, name, number)
        q.lock_artifact(conn, v.artifact_id)
        current = q.alias_target(conn, v.artifact_id, alias)
        if expect is not None and (current or 0) != expect:
            raise _alias_conflict(name, alias, current, expect)
        q.point_alias(conn, v.artifact_id, alias, v.id, time.time(), who.token_id)
        return {"name": name, "alias": alias, "version": number, "previous": current}

    return await metadata.write_after(repo, tx)


async def remove_alias(
    repo: Repository, who: Principal, name: str, alias: str, expect: int | None = None
) -> dict[str, Any]:
    """Remove ``alias``; with ``expect``, only if it points at that version now. The
    removal stays in the alias's history."""
    check_alias(alias)
    who.require("write", name)

    def tx(conn: Connection) -> dict[str, Any]:
        art_id = find_artifact(conn, name)
        q.lock_artifact(conn, art_id)
        current = q.alias_target(conn, art_id, alias)
        if current is None:
            raise AliasNotFound(f"artifact {name!r} has no alias {alias!r}", name=name, alias=alias)
        if expect is not None and current != expect:
            raise _alias_conflict(name, alias, current, expect)
        q.remove_alias(conn, art_id, alias, time.time(), who.token_id)
        return {"name": name, "alias": alias, "previous": current}

    return await metadata.write_after(repo, tx)


async def show_alias(repo: Repository, who: Principal, name: str, alias: str) -> dict[str, Any]:
    """Where ``alias`` points now, and since when."""
    check_alias(alias)
    who.require("read", name)

    def tx(conn: Connection) -> dict[str, Any]:
        row = q.alias_row(conn, find_artifact(conn, name), alias)
        if row is None:
            raise AliasNotFound(f"artifact {name!r} has no alias {alias!r}", name=name, alias=alias)
        return {"name": name, **row._asdict()}

    return await repo.db.read(tx)


async def list_aliases(
    repo: Repository, who: Principal, name: str, cursor: str = "", limit: int = 100
) -> dict[str, Any]:
    """An artifact's aliases by name, where each points and since when, paged by a
    cursor (the last alias given)."""
    who.require("read", name)
    limit = max(1, min(limit, MAX_PAGE))

    def tx(conn: Connection) -> dict[str, Any]:
        rows = q.list_aliases(conn, find_artifact(conn, name), cursor, limit + 1)
        items = [r._asdict() for r in rows[:limit]]
        return {
            "name": name,
            "aliases": items,
            "next": rows[limit - 1].alias if len(rows) > limit else None,
        }

    return await repo.db.read(tx)


async def alias_history(
    repo: Repository, who: Principal, name: str, alias: str, cursor: int = 0, limit: int = 100
) -> dict[str, Any]:
    """Every move of ``alias`` (removals too), oldest first, paged by a cursor (the id
    of the last move given): when, from which version to which, and by which token."""
    check_alias(alias)
    who.require("read", name)
    limit = max(1, min(limit, MAX_PAGE))

    def tx(conn: Connection) -> dict[str, Any]:
        rows = q.alias_history(conn, find_artifact(conn, name), alias, cursor, limit + 1)
        return {
            "name": name,
            "alias": alias,
            "moves": [r._asdict() for r in rows[:limit]],
            "next": rows[limit - 1].id if len(rows) > limit else None,
        }

    return await repo.db.read(tx)


async def set_tags(
    repo: Repository, who: Principal, name: str, ref: Ref, new: dict[str, str]
) -> dict[str, Any]:
    new = check_tags(new)
    who.require("write", name)

    def tx(conn: Connection) -> dict[str, Any]:
        v = find_version(conn, name, ref)
        apply_tags(conn, v.id, new)
        return summary(conn, name, v)

    return await metadata.write_after(repo, tx)


async def stats(repo: Repository, who: Principal) -> dict[str, Any]:
    """Totals over the whole catalog: for admins (they count what others may not see)."""
    who.require("admin")

    def tx(conn: Connection) -> dict[str, Any]:
        out: dict[str, Any] = q.totals(conn)
        stored, npacks, nchunks = packs_q.stored_totals(conn)
        out.update(stored_bytes=stored, chunks=nchunks, packs=npacks)
        return out

    s = await repo.db.read(tx)
    s["dedup_ratio"] = (
        round(s["logical_bytes"] / s["stored_bytes"], 3) if s["stored_bytes"] else None
    )
    return s
