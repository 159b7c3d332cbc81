"""Reading reference files and borrowed chunks: always through a request pinned to
the bytes that were registered."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import Connection

from ...catalog import references as refs_q
from ...catalog.references import PinRow
from ...catalog.versions import FileRow, Ref, VersionRow
from ...errors import ChunkyardError, IntegrityFailure, InvalidRequest
from ...pins import Pin
from .. import Repository
from ..access import Principal
from ..artifacts import find_version

#: files per page of pinned requests
MAX_PAGE = 1000


def pin_of(row: PinRow) -> Pin:
    return Pin(
        row.uri, row.size, row.etag, row.source_version, row.last_modified, bool(row.weak_etag)
    )


def pins_of(conn: Connection, pack_ids: Iterable[str]) -> dict[str, Pin]:
    """Pins of those pack ids that are indexed reference objects."""
    return {pid: pin_of(row) for pid, row in refs_q.pins(conn, pack_ids).items()}


def file_pin(conn: Connection, f: FileRow) -> PinRow:
    row = refs_q.pins(conn, [f.ref_object or ""]).get(f.ref_object or "")
    if row is None:  # pragma: no cover - the commit writes both in one transaction
        raise IntegrityFailure(f"{f.path}: its pin is missing from the catalog")
    return row


async def pinned_source(repo: Repository, f: FileRow) -> dict[str, Any]:
    """Where a client reads a reference file: the source itself, through a GET pinned
    to the recorded version (or If-Match on the ETag), after a HEAD shows the pin
    still holds; a drifted object fails here, by name."""
    row = await repo.db.read(file_pin, f)
    pin = pin_of(row)
    try:
        req = await repo.sources.pinned_request(pin)
    except ChunkyardError as exc:
        exc.detail.setdefault("path", f.path)
        raise
    return {**pin.to_json(), "b3sum": row.digest, "request": req.to_json()}


async def sources_page(
    repo: Repository, who: Principal, name: str, ref: Ref, cursor: int = 0, limit: int = MAX_PAGE
) -> dict[str, Any]:
    """Pinned requests for many files of a reference version at once (a tree of 10,000
    shards is 10 calls, not 10,000). No HEAD per object: callers check the tree first
    (``verify``: one listing); the pins still hold at the source and in the client."""
    who.require("read", name)
    limit = max(1, min(limit, MAX_PAGE))

    def tx(conn: Connection) -> tuple[VersionRow, list]:
        v = find_version(conn, name, ref)
        if v.kind != "reference":
            raise InvalidRequest(f"version {v.number} of {name!r} is not a reference")
        return v, refs_q.files_page(conn, v.id, cursor, limit + 1)

    v, rows = await repo.db.read(tx)
    files = []
    for idx, path, digest, row in rows[:limit]:
        pin = pin_of(row)
        req = await repo.sources.pinned_request(pin, check=False)
        files.append(
            {
                "index": idx,
                "path": path,
                "size": pin.size,
                "digest": digest,
                "b3sum": row.digest,
                "reference": {**pin.to_json(), "request": req.to_json()},
            }
        )
    return {
        "name": name,
        "version": v.number,
        "files": files,
        "next": rows[limit][0] if len(rows) > limit else None,
    }


async def stream(repo: Repository, f: FileRow, start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes of a reference file through the gateway (for curl), pinned."""
    pin = pin_of(await repo.db.read(file_pin, f))
    async for piece in repo.sources.read(pin, start, end):
        yield piece
