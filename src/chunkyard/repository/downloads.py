"""Reconstruction: which byte ranges of which packs rebuild a file (or a range of it).

Clients fetch those ranges straight from the store. Each range comes with a GET of its
own, signed for exactly those bytes where the store can sign a range (the local store,
S3, GCS), so a reader gets the chunks of what it may read and no others of the same
pack. The gateway's own streaming ``content`` endpoint uses the same plan and reads
through the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import zstandard
from sqlalchemy import Connection

from .. import packs as packfmt
from ..catalog import packs as packs_q
from ..catalog import versions as versions_q
from ..catalog.packs import EntryRow, PackRow
from ..catalog.versions import FileRow, Ref, VersionRow
from ..errors import FormatTooNew, InvalidRequest, NotFound, PackCorrupt
from ..manifest import loads
from ..pins import Pin, drifted
from ..version import FORMAT_VERSION
from . import Repository
from .access import Principal
from .artifacts import find_version
from .references import reading

#: content bytes described by one reconstruction answer; clients page through the rest
PAGE_BYTES = 512 * 1024 * 1024
#: content bytes the streaming endpoint plans at a time
STREAM_PAGE = 64 * 1024 * 1024
#: the most stored (and raw) bytes one signed read covers: the unit a client fetches
#: and decodes at once, so its memory stays bounded
READ_BYTES = 8 * 1024 * 1024
#: files per batch reconstruction answer, and the largest file it may hold (larger
#: files page through answers of their own)
BATCH_FILES = 1024
BATCH_FILE_MAX = 8 * 1024 * 1024


def find_file(
    conn: Connection, name: str, ref: Ref, index: int | None = None, path: str | None = None
) -> tuple[VersionRow, FileRow]:
    v = find_version(conn, name, ref)
    if v.format > FORMAT_VERSION:
        raise FormatTooNew(
            f"version {v.number} of {name!r} is in repository format {v.format}; this gateway "
            f"reads formats up to {FORMAT_VERSION}: upgrade it to read this version"
        )
    if index is None and path is None:
        if v.file_count != 1:
            raise InvalidRequest(
                f"version {v.number} of {name!r} holds {v.file_count} files: name one with ?path="
            )
        index = 0
    f = versions_q.file_of(conn, v.id, index=index, path=path)
    if f is None:
        raise NotFound(f"version {v.number} of {name!r} has no such file", path=path, index=index)
    return v, f


def file_header(name: str, v: VersionRow, f: FileRow) -> dict[str, Any]:
    """What every reconstruction answer says first: which file of which version."""
    return {
        "name": name,
        "version": v.number,
        "index": f.idx,
        "path": f.path,
        "size": f.size,
        "digest": f.digest,
        "b3sum": f.b3sum,
    }


def _term_json(pack: str, chosen: list[EntryRow], skip: int, take: int) -> dict[str, Any]:
    return {
        "pack": pack,
        "range": [chosen[0].offset, chosen[-1].offset + chosen[-1].stored_len],
        "chunks": [[r.chunk_id.hex(), r.stored_len, r.raw_len, r.scheme] for r in chosen],
        "skip": skip,
        "take": take,
    }


def _pieces(rows: list[tuple[int, EntryRow]]) -> Iterable[list[tuple[int, EntryRow]]]:
    """Consecutive records (each with where its bytes start in the file) cut into
    reads of at most READ_BYTES stored and raw."""
    piece: list[tuple[int, EntryRow]] = []
    stored = raw = 0
    for item in rows:
        r = item[1]
        if piece and (stored + r.stored_len > READ_BYTES or raw + r.raw_len > READ_BYTES):
            yield piece
            piece, stored, raw = [], 0, 0
        piece.append(item)
        stored += r.stored_len
        raw += r.raw_len
    if piece:
        yield piece


def plan(
    conn: Connection, f: FileRow, start: int, end: int, page: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Terms covering content bytes ``[start, end)`` of file ``f`` (at most ``page``
    bytes of it, PAGE_BYTES by default), each at most one read, and where the next
    page starts (None: done). A chunk cut by a page boundary is in both pages."""
    out: list[dict[str, Any]] = []
    stop = min(end, start + (page or PAGE_BYTES))
    pos = 0
    for t in loads(f.manifest):
        t_start, pos = pos, pos + t.size
        if pos <= start:
            continue
        if t_start >= stop:
            break
        cpos, chosen = t_start, []
        for r in packs_q.entries(conn, t.pack, t.first, t.end):
            c_start, cpos = cpos, cpos + r.raw_len
            if cpos > start and c_start < stop:
                chosen.append((c_start, r))
        for piece in _pieces(chosen):
            rows = [r for _, r in piece]
            first_pos = piece[0][0]
            last_pos = first_pos + sum(r.raw_len for r in rows)
            skip = max(0, start - first_pos)
            take = min(last_pos, stop) - (first_pos + skip)
            out.append(_term_json(t.pack, rows, skip, take))
    refuse_unusable(conn, {t["pack"] for t in out}, f.path)
    return out, (stop if stop < end else None)


def refuse_unusable(conn: Connection, ids: Iterable[str], path: str) -> None:
    """A clear error for a file that needs a pack that failed verification, or chunks
    of a reference object that verify found drifted."""
    for pack_id, state in packs_q.unusable(conn, ids):
        if state == "drifted":
            raise drifted(reading.pins_of(conn, [pack_id])[pack_id], "changed", path=path)
        raise PackCorrupt(
            f"{path} uses pack {pack_id}, which failed verification: this version's "
            "uploader sent bytes that do not match their chunk ids",
            pack=pack_id,
        )


def _where(
    conn: Connection, terms: list[dict[str, Any]]
) -> tuple[dict[str, Pin], dict[str, PackRow]]:
    """Where each term's pack is: a reference's source, or a store key."""
    ids = {t["pack"] for t in terms}
    return reading.pins_of(conn, ids), packs_q.pack_rows(conn, ids)


async def _sign(
    repo: Repository,
    terms: list[dict[str, Any]],
    pins: dict[str, Pin],
    rows: dict[str, PackRow],
    same_host: bool = False,
) -> None:
    """Give every term its GET: signed for its byte range in the store, or pinned at a
    reference's source (where the client adds the range). A client on this machine
    (``same_host``) also learns the pack's file, where the store is a directory: it
    reads the range there, and sends the GET only if it cannot."""
    pinned: dict[str, dict[str, Any]] = {}
    for t in terms:
        pin = pins.get(t["pack"])
        if pin is not None:  # chunks borrowed from an indexed reference object
            if t["pack"] not in pinned:
                req = await repo.sources.pinned_request(pin, check=False)
                pinned[t["pack"]] = {**req.to_json(), "reference": pin.uri}
            t["url"] = pinned[t["pack"]]
            continue
        a, b = t["range"]
        key = rows[t["pack"]].key or packfmt.pack_key(t["pack"])
        req = await repo.store.presign_get(key, repo.settings.url_expiry, byte_range=(a, b))
        t["url"] = req.to_json()
        file = repo.store.local_path(key) if same_host and repo.settings.local_reads else None
        if file is not None:
            t["url"]["file"] = file


async def reconstruction(
    repo: Repository,
    who: Principal,
    name: str,
    ref: Ref,
    index: int,
    start: int = 0,
    length: int | None = None,
    same_host: bool = False,
) -> dict[str, Any]:
    """A page of the file's terms; ``same_host``: the client runs on this machine and
    may read local packs itself (see :func:`_sign`)."""
    who.require("read", name)

    def tx(conn: Connection) -> tuple:
        v, f = find_file(conn, name, ref, index=index)
        if v.kind == "reference":  # read whole from its source
            return v, f, [], None, f.size, {}, {}
        if start > f.size:
            raise InvalidRequest(f"range starts outside the file's {f.size} bytes")
        end = f.size if length is None else min(f.size, start + length)
        terms, nxt = plan(conn, f, start, end)
        return (v, f, terms, nxt, end, *_where(conn, terms))

    v, f, terms, nxt, end, pins, rows = await repo.db.read(tx)
    if v.kind == "reference":  # the whole file, from its source
        head = {**file_header(name, v, f), "start": 0, "end": f.size, "next": None, "terms": []}
        return {**head, "reference": await reading.pinned_source(repo, f)}
    await _sign(repo, terms, pins, rows, same_host)
    return {**file_header(name, v, f), "start": start, "end": end, "next": nxt, "terms": terms}


async def reconstructions(
    repo: Repository,
    who: Principal,
    name: str,
    ref: Ref,
    indices: list[int],
    same_host: bool = False,
) -> dict[str, Any]:
    """Whole small files of a version in one answer: for small files the work per
    request outweighs the work per byte, so a pull of 10,000 of them asks ten times, not
    10,000. The pack entries of all files come from one query per pack, and the terms
    of consecutive records are joined into one read."""
    who.require("read", name)
    if not 0 < len(indices) <= BATCH_FILES:
        raise InvalidRequest(f"files must be a list of 1 to {BATCH_FILES} file indices")

    def tx(conn: Connection) -> tuple:
        v = find_version(conn, name, ref)
        if v.kind == "reference":
            raise InvalidRequest("a reference version is read from its sources, file by file")
        by_idx = {f.idx: f for f in versions_q.files_by_index(conn, v.id, indices)}
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
        terms = _whole_file_terms(conn, files)
        for f, file_terms in zip(files, terms, strict=True):  # names the first file hit
            refuse_unusable(conn, {t["pack"] for t in file_terms}, f.path)
        return (v, files, terms, *_where(conn, [t for ts in terms for t in ts]))

    v, files, terms, pins, rows = await repo.db.read(tx)
    reads = _joined([t for ts in terms for t in ts])
    await _sign(repo, reads, pins, rows, same_host)
    return {
        "name": name,
        "version": v.number,
        "files": [
            {
                "index": f.idx,
                "path": f.path,
                "size": f.size,
                "digest": f.digest,
                "b3sum": f.b3sum,
                "terms": ts,
            }
            for f, ts in zip(files, terms, strict=True)
        ],
        "reads": reads,
    }


def _joined(terms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reads that fetch these terms: terms whose records lie back to back in one
    pack share one read, up to READ_BYTES; each term gets the index of its read."""
    reads: list[dict[str, Any]] = []
    by_pack: dict[str, list[dict[str, Any]]] = {}
    for t in terms:
        by_pack.setdefault(t["pack"], []).append(t)
    for pack, ts in by_pack.items():
        current: dict[str, Any] | None = None
        for t in sorted(ts, key=lambda t: t["range"][0]):
            a, b = t["range"]
            if (
                current is not None
                and current["range"][0] <= a <= current["range"][1]
                and max(b, current["range"][1]) - current["range"][0] <= READ_BYTES
            ):
                current["range"][1] = max(b, current["range"][1])
            else:
                current = {"pack": pack, "range": [a, b]}
                reads.append(current)
            t["read"] = len(reads) - 1
    return reads


def _whole_file_terms(conn: Connection, files: list[FileRow]) -> list[list[dict[str, Any]]]:
    """Each file's terms with their pack ranges and chunks (as :func:`plan` gives them
    for a whole file), from one query per pack for all files."""
    manifests = [loads(f.manifest) for f in files]
    spans: dict[str, list[int]] = {}
    for terms in manifests:
        for t in terms:
            span = spans.setdefault(t.pack, [t.first, t.end])
            span[0], span[1] = min(span[0], t.first), max(span[1], t.end)
    entries = {
        pack_id: {r.idx: r for r in packs_q.entries(conn, pack_id, lo, hi)}
        for pack_id, (lo, hi) in spans.items()
    }
    out = []
    for f, terms in zip(files, manifests, strict=True):
        file_terms = []
        for t in terms:
            chosen = [entries[t.pack].get(i) for i in range(t.first, t.end)]
            if any(r is None for r in chosen):
                raise PackCorrupt(f"{f.path}: the catalog lacks entries of pack {t.pack}")
            rows = [r for r in chosen if r is not None]
            file_terms.append(_term_json(t.pack, rows, 0, sum(r.raw_len for r in rows)))
        out.append(file_terms)
    return out


async def open_content(
    repo: Repository, who: Principal, name: str, ref: Ref, path: str | None
) -> tuple[VersionRow, FileRow]:
    """The file a plain ``GET …/content`` names (checked before any byte is sent)."""
    who.require("read", name)
    return await repo.db.read(lambda conn: find_file(conn, name, ref, path=path))


async def stream(
    repo: Repository, v: VersionRow, f: FileRow, start: int, end: int
) -> AsyncIterator[bytes]:
    """Content bytes ``[start, end)`` read through the gateway, every chunk verified on
    the way. The version is the one :func:`open_content` resolved, so an alias moved
    meanwhile does not switch files mid-stream."""
    if v.kind == "reference":
        async for piece in reading.stream(repo, f, start, end):
            yield piece
        return
    dctx = zstandard.ZstdDecompressor()
    pos: int | None = start
    while pos is not None and pos < end:

        def tx(conn: Connection, at: int) -> tuple:
            terms, nxt = plan(conn, f, at, end, page=STREAM_PAGE)
            return (terms, nxt, *_where(conn, terms))

        terms, pos, pins, rows = await repo.db.read(tx, pos)
        for t in terms:
            a, b = t["range"]
            pin = pins.get(t["pack"])
            if pin is not None:
                data = b"".join([p async for p in repo.sources.read(pin, a, b, check=False)])
            else:
                key = rows[t["pack"]].key or packfmt.pack_key(t["pack"])
                data = await repo.store.get(key, a, b)
            out = await anyio.to_thread.run_sync(
                packfmt.decode_run, t["chunks"], data, t["skip"], t["take"], dctx
            )
            yield bytes(out)
