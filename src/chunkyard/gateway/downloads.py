"""Reconstruction: which byte ranges of which packs rebuild a file (or a range of it).

Clients fetch those ranges straight from the store with presigned GETs; the gateway's
own streaming ``content`` endpoint uses the same plan and reads through the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import zstandard
from sqlalchemy import Connection, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import packs as packfmt
from ..catalog.schema import pack_entries, packs, version_files
from ..errors import InvalidRequest, NotFound, PackCorrupt
from ..manifest import loads
from ..packs import pack_key
from ..pins import drifted
from . import references
from .artifacts import Ref, find_version
from .core import Gateway

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
    await _refuse_unusable(conn, {t["pack"] for t in out}, f.path)
    return out, (stop if stop < end else None)


async def _refuse_unusable(conn: AsyncConnection, ids: set[str], path: str) -> None:
    """A clear error for a file that needs a pack that failed verification, or chunks
    of a reference object that verify found drifted."""
    for pack_id, state in await _unusable_packs(conn, ids):
        if state == "drifted":
            row = (await references.pins_of_packs(conn, [pack_id]))[pack_id]
            raise drifted(references.pin_of(row), "changed", path=path)
        raise PackCorrupt(
            f"{path} uses pack {pack_id}, which failed verification: this version's "
            "uploader sent bytes that do not match their chunk ids",
            pack=pack_id,
        )


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
    urls = await _urls(gw, [t["pack"] for t in terms], sources)
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


async def _urls(gw: Gateway, pack_ids: list[str], sources: dict) -> dict[str, dict]:
    """One signed GET per pack: from the store, or pinned at a reference's source."""
    urls: dict[str, dict] = {}
    for pack_id in pack_ids:
        if pack_id in urls:
            continue
        if pack_id in sources:  # chunks borrowed from an indexed reference object
            pin = references.pin_of(sources[pack_id])
            req = await gw.sources.pinned_request(pin, check=False)
            urls[pack_id] = {**req.to_json(), "reference": pin.uri}
        else:
            req = await gw.store.presign_get(pack_key(pack_id), gw.settings.url_expiry)
            urls[pack_id] = req.to_json()
    return urls


#: files per batch reconstruction answer, and the largest file it may hold (larger
#: files page through answers of their own)
BATCH_FILES = 1024
BATCH_FILE_MAX = 8 * 1024 * 1024


async def reconstructions(gw: Gateway, name: str, ref: Ref, indices: object) -> dict[str, Any]:
    """Whole small files of a version in one answer: a pull of 10,000 small files
    asked once per file, and the gateway's per-request work was most of its time. The
    pack entries of all files come from one query per pack; each pack gets one URL."""
    if (
        not isinstance(indices, list)
        or not 0 < len(indices) <= BATCH_FILES
        or not all(type(i) is int for i in indices)
    ):
        raise InvalidRequest(f"files must be a list of 1 to {BATCH_FILES} file indices")
    async with gw.db.read() as conn:
        _, v = await find_version(conn, name, ref)
    if v.kind == "reference":
        raise InvalidRequest("a reference version is read from its sources, file by file")

    def query(conn: Connection) -> tuple[list[Row], list[list[dict[str, Any]]]]:
        rows = conn.execute(
            select(version_files).where(
                version_files.c.version_id == v.id, version_files.c.idx.in_(set(indices))
            )
        ).all()
        by_idx = {r.idx: r for r in rows}
        missing = [i for i in indices if i not in by_idx]
        if missing:
            raise NotFound(f"version {v.number} of {name!r} has no file {missing[0]}")
        large = [i for i in indices if by_idx[i].size > BATCH_FILE_MAX]
        if large:
            raise InvalidRequest(
                f"file {large[0]} is larger than {BATCH_FILE_MAX} bytes: ask for its own "
                "reconstruction"
            )
        files = [by_idx[i] for i in indices]
        return files, _whole_file_terms(conn, files)

    files, terms = await gw.db.run(query)
    used = [t["pack"] for file_terms in terms for t in file_terms]
    async with gw.db.read() as conn:
        bad = {pack_id for pack_id, _ in await _unusable_packs(conn, set(used))}
        for f, file_terms in zip(files, terms, strict=True):  # name the first file hit
            if bad & {t["pack"] for t in file_terms}:
                await _refuse_unusable(conn, {t["pack"] for t in file_terms}, f.path)
        sources = await references.pins_of_packs(conn, set(used))
    return {
        "name": name,
        "version": v.number,
        "files": [
            {"index": f.idx, "path": f.path, "size": f.size, "digest": f.digest, "terms": ts}
            for f, ts in zip(files, terms, strict=True)
        ],
        "urls": await _urls(gw, used, sources),
    }


def _whole_file_terms(conn: Connection, files: list[Row]) -> list[list[dict[str, Any]]]:
    """Each file's terms with their pack ranges and chunks (as :func:`plan` gives them
    for a whole file), from one query per pack for all files."""
    manifests = [loads(f.manifest) for f in files]
    spans: dict[str, list[int]] = {}
    for terms in manifests:
        for t in terms:
            span = spans.setdefault(t.pack, [t.first, t.end])
            span[0], span[1] = min(span[0], t.first), max(span[1], t.end)
    entries: dict[str, dict[int, Row]] = {}
    for pack_id, (lo, hi) in spans.items():
        rows = conn.execute(
            select(
                pack_entries.c.idx,
                pack_entries.c.chunk_id,
                pack_entries.c.offset,
                pack_entries.c.stored_len,
                pack_entries.c.raw_len,
                pack_entries.c.scheme,
            ).where(
                pack_entries.c.pack_id == pack_id,
                pack_entries.c.idx >= lo,
                pack_entries.c.idx < hi,
            )
        )
        entries[pack_id] = {r.idx: r for r in rows}
    out = []
    for f, terms in zip(files, manifests, strict=True):
        file_terms = []
        for t in terms:
            chosen = [entries[t.pack].get(i) for i in range(t.first, t.end)]
            if any(r is None for r in chosen):
                raise PackCorrupt(f"{f.path}: the catalog lacks entries of pack {t.pack}")
            file_terms.append(
                {
                    "pack": t.pack,
                    "range": [chosen[0].offset, chosen[-1].offset + chosen[-1].stored_len],
                    "chunks": [
                        [bytes(r.chunk_id).hex(), r.stored_len, r.raw_len, r.scheme] for r in chosen
                    ],
                    "skip": 0,
                    "take": sum(r.raw_len for r in chosen),
                }
            )
        out.append(file_terms)
    return out


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
