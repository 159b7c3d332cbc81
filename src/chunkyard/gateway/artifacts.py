"""Names: artifacts, versions, aliases, tags, listing and stats."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ..catalog.schema import (
    aliases,
    artifacts,
    chunks,
    packs,
    ref_objects,
    tags,
    version_files,
    versions,
)
from ..errors import (
    AliasConflict,
    ArtifactNotFound,
    InvalidRequest,
    TagConflict,
    VersionNotFound,
)
from ..names import check_alias, check_name, check_tags
from .core import Gateway

Ref = int | str | None  # version number, alias, or None for the latest


def parse_ref(text: str) -> Ref:
    """A version reference from a URL segment: ``3``, ``latest`` or an alias."""
    if text == "latest":
        return None
    if text.isdigit():
        return int(text)
    return check_alias(text)


async def find_artifact(conn: AsyncConnection, name: str) -> Row:
    check_name(name)
    row = (await conn.execute(select(artifacts).where(artifacts.c.name == name))).first()
    if row is None:
        raise ArtifactNotFound(f"no artifact named {name!r}", name=name)
    return row


async def find_version(conn: AsyncConnection, name: str, ref: Ref) -> tuple[Row, Row]:
    art = await find_artifact(conn, name)
    q = select(versions).where(versions.c.artifact_id == art.id)
    if ref is None:
        q = q.order_by(versions.c.number.desc()).limit(1)
    elif isinstance(ref, int):
        q = q.where(versions.c.number == ref)
    else:
        q = q.join(
            aliases,
            and_(
                aliases.c.version_id == versions.c.id,
                aliases.c.artifact_id == art.id,
                aliases.c.name == ref,
            ),
        )
    row = (await conn.execute(q)).first()
    if row is None:
        what = "no versions" if ref is None else f"no version {ref!r}"
        raise VersionNotFound(f"artifact {name!r} has {what}", name=name, ref=ref)
    return art, row


async def artifact_and_latest(
    conn: AsyncConnection, name: str, now: float
) -> tuple[int, Row | None]:
    """In a write transaction: the artifact's id (created if new) and its latest version,
    which a new version is compared with before it gets the next number."""
    art = (await conn.execute(select(artifacts).where(artifacts.c.name == name))).first()
    if art is None:
        art_id = (
            await conn.execute(artifacts.insert().values(name=name, created_at=now))
        ).inserted_primary_key[0]
    else:
        art_id = art.id
    latest = (
        await conn.execute(
            select(versions)
            .where(versions.c.artifact_id == art_id)
            .order_by(versions.c.number.desc())
            .limit(1)
        )
    ).first()
    return art_id, latest


async def add_version(conn: AsyncConnection, art_id: int, **values: Any) -> int:
    """Insert the artifact's next version (number = latest + 1); returns its row id.
    Concurrent writers on PostgreSQL may collide on the number: callers retry."""
    number = (
        (
            await conn.execute(
                select(func.max(versions.c.number)).where(versions.c.artifact_id == art_id)
            )
        ).scalar()
        or 0
    ) + 1
    result = await conn.execute(
        versions.insert().values(artifact_id=art_id, number=number, **values)
    )
    return result.inserted_primary_key[0]


async def apply_tags(conn: AsyncConnection, version_id: int, new: dict[str, str]) -> None:
    """Tags are write-once: the same value again is a no-op, a different one a conflict."""
    if not new:
        return
    rows = await conn.execute(
        select(tags.c.key, tags.c.value).where(tags.c.version_id == version_id)
    )
    have = {r.key: r.value for r in rows}
    for key, value in new.items():
        if key in have and have[key] != value:
            raise TagConflict(
                f"tag {key!r} is already set to a different value", key=key, value=have[key]
            )
    fresh = [
        {"version_id": version_id, "key": k, "value": v} for k, v in new.items() if k not in have
    ]
    if fresh:
        await conn.execute(tags.insert(), fresh)


async def version_json(
    conn: AsyncConnection, name: str, v: Row, files: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "version": v.number,
        "kind": v.kind,
        "layout": v.layout,
        "digest": v.digest,
        "size": v.size,
        "files": v.file_count,
        "created_at": v.created_at,
        "digest_of": v.digest_of,  # "content", or "pins" for a reference never hashed
    }
    if v.kind == "reference":
        out["source"] = v.source
    trows = await conn.execute(select(tags.c.key, tags.c.value).where(tags.c.version_id == v.id))
    out["tags"] = {r.key: r.value for r in trows}
    arows = await conn.execute(select(aliases.c.name).where(aliases.c.version_id == v.id))
    out["aliases"] = sorted(r.name for r in arows)
    if files and v.kind == "reference":
        out["file_list"] = await _reference_files(conn, v.id)
    elif files:
        frows = await conn.execute(
            select(
                version_files.c.idx,
                version_files.c.path,
                version_files.c.size,
                version_files.c.digest,
            )
            .where(version_files.c.version_id == v.id)
            .order_by(version_files.c.idx)
        )
        out["file_list"] = [
            {"index": r.idx, "path": r.path, "size": r.size, "digest": r.digest} for r in frows
        ]
    return out


async def _reference_files(conn: AsyncConnection, version_id: int) -> list[dict[str, Any]]:
    """The files of a reference version with their pins (and whether each object is
    hashed, indexed as a chunk source, or found drifted by the last verify)."""
    rows = await conn.execute(
        select(
            version_files.c.idx,
            version_files.c.path,
            version_files.c.size,
            ref_objects.c.digest,
            ref_objects.c.uri,
            ref_objects.c.etag,
            ref_objects.c.source_version,
            ref_objects.c.last_modified,
            ref_objects.c.state,
            packs.c.state.label("index_state"),
        )
        .select_from(
            version_files.join(
                ref_objects, ref_objects.c.id == version_files.c.ref_object
            ).outerjoin(packs, packs.c.id == ref_objects.c.id)
        )
        .where(version_files.c.version_id == version_id)
        .order_by(version_files.c.idx)
    )
    return [
        {
            "index": r.idx,
            "path": r.path,
            "size": r.size,
            "digest": r.digest,
            "uri": r.uri,
            "pin": {
                "etag": r.etag,
                "version_id": r.source_version,
                "last_modified": r.last_modified,
            },
            "indexed": r.index_state in ("reference", "drifted"),
            "state": r.state,
        }
        for r in rows
    ]


async def show(gw: Gateway, name: str, ref: Ref) -> dict[str, Any]:
    async with gw.db.read() as conn:
        _, v = await find_version(conn, name, ref)
        return await version_json(conn, name, v, files=True)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_artifacts(gw: Gateway, prefix: str = "", cursor: str = "", limit: int = 100) -> dict:
    """Artifacts whose name starts with ``prefix``, by name, paged by a cursor."""
    limit = max(1, min(limit, 1000))
    latest = (
        select(
            versions.c.artifact_id,
            func.max(versions.c.number).label("latest"),
            func.count().label("count"),
        )
        .group_by(versions.c.artifact_id)
        .subquery()
    )
    q = (
        select(artifacts.c.name, latest.c.latest, latest.c.count)
        .join(latest, latest.c.artifact_id == artifacts.c.id)
        .order_by(artifacts.c.name)
        .limit(limit + 1)
    )
    if prefix:
        q = q.where(artifacts.c.name.like(_like_prefix(prefix), escape="\\"))
    if cursor:
        q = q.where(artifacts.c.name > cursor)
    async with gw.db.read() as conn:
        rows = (await conn.execute(q)).all()
    items = [{"name": r.name, "latest": r.latest, "versions": r.count} for r in rows[:limit]]
    return {"artifacts": items, "next": items[-1]["name"] if len(rows) > limit else None}


async def list_versions(gw: Gateway, name: str, cursor: int = 0, limit: int = 100) -> dict:
    limit = max(1, min(limit, 1000))
    async with gw.db.read() as conn:
        art = await find_artifact(conn, name)
        rows = (
            await conn.execute(
                select(versions)
                .where(versions.c.artifact_id == art.id, versions.c.number > cursor)
                .order_by(versions.c.number)
                .limit(limit + 1)
            )
        ).all()
        items = [await version_json(conn, name, v) for v in rows[:limit]]
    return {"versions": items, "next": items[-1]["version"] if len(rows) > limit else None}


async def set_alias(
    gw: Gateway, name: str, alias: str, number: int, expect: int | None = None
) -> dict[str, Any]:
    """Point ``alias`` at version ``number``; with ``expect``, only if it points there now
    (compare-and-set; ``expect=0`` means the alias must not exist yet)."""
    check_alias(alias)
    if not isinstance(number, int) or isinstance(number, bool) or number < 1:
        raise InvalidRequest("version must be a positive integer")
    async with gw.db.write() as conn:
        art, v = await find_version(conn, name, number)
        cur = (
            await conn.execute(
                select(aliases.c.version_id, versions.c.number)
                .join(versions, versions.c.id == aliases.c.version_id)
                .where(aliases.c.artifact_id == art.id, aliases.c.name == alias)
            )
        ).first()
        if expect is not None and (cur.number if cur else 0) != expect:
            raise AliasConflict(
                f"alias {alias!r} does not point at version {expect}",
                current=cur.number if cur else None,
            )
        now = time.time()
        if cur is None:
            await conn.execute(
                aliases.insert().values(
                    artifact_id=art.id, name=alias, version_id=v.id, updated_at=now
                )
            )
        else:
            await conn.execute(
                aliases.update()
                .where(aliases.c.artifact_id == art.id, aliases.c.name == alias)
                .values(version_id=v.id, updated_at=now)
            )
        return {
            "name": name,
            "alias": alias,
            "version": number,
            "previous": cur.number if cur else None,
        }


async def set_tags(gw: Gateway, name: str, ref: Ref, new: dict) -> dict[str, Any]:
    new = check_tags(new)
    async with gw.db.write() as conn:
        _, v = await find_version(conn, name, ref)
        await apply_tags(conn, v.id, new)
        return await version_json(conn, name, v)


async def stats(gw: Gateway) -> dict[str, Any]:
    async with gw.db.read() as conn:
        logical = (
            await conn.execute(
                select(func.coalesce(func.sum(versions.c.size), 0)).where(
                    versions.c.kind == "stored"
                )
            )
        ).scalar_one()
        stored, npacks = (
            await conn.execute(
                select(func.coalesce(func.sum(packs.c.size), 0), func.count()).where(
                    packs.c.state == "verified"
                )
            )
        ).one()
        nchunks = (await conn.execute(select(func.count()).select_from(chunks))).scalar_one()
        nversions = (await conn.execute(select(func.count()).select_from(versions))).scalar_one()
        nart = (await conn.execute(select(func.count()).select_from(artifacts))).scalar_one()
        referenced = (
            await conn.execute(
                select(func.coalesce(func.sum(versions.c.size), 0)).where(
                    versions.c.kind == "reference"
                )
            )
        ).scalar_one()
    return {
        "artifacts": nart,
        "versions": nversions,
        "logical_bytes": int(logical),
        "stored_bytes": int(stored),
        "referenced_bytes": int(referenced),  # left at their sources, not counted above
        "chunks": nchunks,
        "packs": npacks,
        "dedup_ratio": round(int(logical) / int(stored), 3) if stored else None,
    }
