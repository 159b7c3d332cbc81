"""Reconstruction: which byte ranges of which packs rebuild a file (or a range of it).

Clients fetch those ranges straight from the store with presigned GETs; the gateway's
own streaming ``content`` endpoint uses the same plan and reads through the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import zstandard
from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import packs as packfmt
from ..catalog.schema import pack_entries, packs, version_files
from ..errors import InvalidRequest, NotFound, PackCorrupt
from ..manifest import loads
from ..pins import drifted
from . import references
from .artifacts import Ref, find_version
from .core import Gateway, pack_key

#: content bytes described by one reconstruction answer; clients page through the rest
PAGE_BYTES = 512 * 1024 * 1024


async def find_file(
    conn: AsyncConnection, name: str, ref: Ref, index: int | None = None, path: str | None = None
) -> tuple[Row, Row]:
    _, v = await find_version(conn, name, ref)
    q = select(version_files).where(version_files.c.version_id == v.id)
    if path is not None:
        q = q.where(version_files.c.path == path)
    elif index is not None:
        q = q.where(version_files.c.idx == index)
    elif v.file_count == 1:
        q = q.where(version_files.c.idx == 0)
    else:
        raise InvalidRequest(
            f"version {v.number} of {name!r} holds {v.file_count} files: name one with ?path="
        )
    f = (await conn.execute(q)).first()
    if f is None:
        raise NotFound(f"version {v.number} of {name!r} has no such file", path=path, index=index)
    return v, f


async def plan(
    conn: AsyncConnection, f: Row, start: int, end: int, page: int = PAGE_BYTES
) -> tuple[list[dict[str, Any]], int | None]:
    """Terms covering content bytes ``[start, end)`` of file ``f`` (at most ``page``
    bytes of it), and where the next page starts (None when done)."""
    out: list[dict[str, Any]] = []
    stop = min(end, start + page)
    pos = 0
    for t in loads(f.manifest):
        t_start, pos = pos, pos + t.size
        if pos <= start:
            continue
        if t_start >= stop:
            break
        rows = (
            await conn.execute(
                select(
                    pack_entries.c.chunk_id,
                    pack_entries.c.offset,
                    pack_entries.c.stored_len,
                    pack_entries.c.raw_len,
                    pack_entries.c.scheme,
                )
                .where(
                    pack_entries.c.pack_id == t.pack,
                    pack_entries.c.idx >= t.first,
                    pack_entries.c.idx < t.end,
                )
                .order_by(pack_entries.c.idx)
            )
        ).all()
        cpos, chosen, skip = t_start, [], 0
        for r in rows:
            c_start, cpos = cpos, cpos + r.raw_len
            if cpos <= start or c_start >= stop:
                continue
            if not chosen:
                skip = max(0, start - c_start)
                first_pos = c_start
            chosen.append(r)
        if not chosen:
            continue
        last_pos = first_pos + sum(r.raw_len for r in chosen)
        take = min(last_pos, stop) - (first_pos + skip)
        out.append(
            {
                "pack": t.pack,
                "range": [chosen[0].offset, chosen[-1].offset + chosen[-1].stored_len],
                "chunks": [
                    [bytes(r.chunk_id).hex(), r.stored_len, r.raw_len, r.scheme] for r in chosen
                ],
                "skip": skip,
                "take": take,
            }
        )
    bad = await _unusable_packs(conn, {t["pack"] for t in out})
    for pack_id, state in bad:
        if state == "drifted":
            row = (await references.pins_of_packs(conn, [pack_id]))[pack_id]
            raise drifted(references.pin_of(row), "changed", path=f.path)
        raise PackCorrupt(
            f"{f.path} uses pack {pack_id}, which failed verification: this version's "
            "uploader sent bytes that do not match their chunk ids",
            pack=pack_id,
        )
    return out, (stop if stop < end else None)


async def _unusable_packs(conn: AsyncConnection, ids: set[str]) -> list[tuple[str, str]]:
    """Packs that failed verification, and reference objects that verify found drifted."""
    if not ids:
        return []
    rows = await conn.execute(
        select(packs.c.id, packs.c.state).where(
            packs.c.id.in_(list(ids)), packs.c.state.in_(("corrupt", "drifted"))
        )
    )
    return [(r.id, r.state) for r in rows]


async def reconstruction(
    gw: Gateway, name: str, ref: Ref, index: int, start: int = 0, length: int | None = None
) -> dict[str, Any]:
    async with gw.db.read() as conn:
        v, f = await find_file(conn, name, ref, index=index)
        if v.kind == "reference":
            return await references.reconstruction(gw, name, v, f)
        if start < 0 or start > f.size or (length is not None and length < 0):
            raise InvalidRequest(f"range starts outside the file's {f.size} bytes")
        end = f.size if length is None else min(f.size, start + length)
        terms, nxt = await plan(conn, f, start, end)
        sources = await references.pins_of_packs(conn, {t["pack"] for t in terms})
    urls = {}
    for t in terms:
        if t["pack"] in urls:
            continue
        if t["pack"] in sources:  # chunks borrowed from an indexed reference object
            pin = references.pin_of(sources[t["pack"]])
            req = await gw.sources.pinned_request(pin, check=False)
            urls[t["pack"]] = {**req.to_json(), "reference": pin.uri}
        else:
            req = await gw.store.presign_get(pack_key(t["pack"]), gw.settings.url_expiry)
            urls[t["pack"]] = req.to_json()
    return {
        "name": name,
        "version": v.number,
        "index": f.idx,
        "path": f.path,
        "size": f.size,
        "digest": f.digest,
        "start": start,
        "end": end,
        "next": nxt,
        "terms": terms,
        "urls": urls,
    }


async def stream(
    gw: Gateway, name: str, ref: Ref, path: str | None, start: int, end: int
) -> AsyncIterator[bytes]:
    """Content bytes ``[start, end)`` read through the gateway, verified on the way."""
    dctx = zstandard.ZstdDecompressor()
    pos = start
    while pos < end:
        async with gw.db.read() as conn:
            v, f = await find_file(conn, name, ref, path=path)
            if v.kind == "reference":
                async for piece in references.stream(gw, f, start, end):
                    yield piece
                return
            terms, nxt = await plan(conn, f, pos, end, page=64 * 1024 * 1024)
            sources = await references.pins_of_packs(conn, {t["pack"] for t in terms})
        for t in terms:
            a, b = t["range"]
            if t["pack"] in sources:
                pin = references.pin_of(sources[t["pack"]])
                data = b"".join([p async for p in gw.sources.read(pin, a, b, check=False)])
            else:
                data = await gw.store.get(pack_key(t["pack"]), a, b)
            out = await anyio.to_thread.run_sync(
                packfmt.decode_run, t["chunks"], data, t["skip"], t["take"], dctx
            )
            yield bytes(out)
        if nxt is None:
            break
        pos = nxt
