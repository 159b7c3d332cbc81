"""Small pushes in one request: training jobs log many small files (configs, tokenizers,
metric snapshots), and for them the upload protocol's six round trips and its presigned
part cost far more than the bytes. A client sends such files whole in one body; the
gateway cuts, hashes and deduplicates them itself, builds the pack of new chunks,
writes it to the store and commits the version, all in one request.

The rules do not bend: the bytes go to the store (the gateway writes them there), the
dedup index is consulted with chunk keys the gateway computed from the bytes it holds,
the pack is checked before it is written, and the version's digests come from those
verified chunks. The gateway carries the bytes here, so their size is bounded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import blake3
from sqlalchemy import Connection

from .. import packs as packfmt
from ..catalog import packs as packs_q
from ..catalog import versions as versions_q
from ..chunking import new_chunker
from ..digest import FileIdHasher, chunk_id, chunk_key
from ..errors import BodyTooLarge, InvalidManifest, PacksGone
from ..manifest import Term, dumps
from ..names import MAX_PATH, check_name, check_tags, check_tree_dirs, check_tree_paths
from . import Repository, metadata
from .access import Principal
from .artifacts import describe, summary
from .uploads import (
    add_version,
    check_tree_extras,
    readable_locations,
    require_live,
    tree_mode,
)

#: the most content one small push carries (its body is base64: a third more)
MAX_BYTES = 4 * 1024 * 1024
MAX_FILES = 1000
#: tries of one small push when garbage collection takes a pack it found meanwhile
ATTEMPTS = 3
#: content up to this size is cut and packed on the event loop (~0.1 ms for 64 KiB: less
#: than a trip to a worker thread and back)
INLINE_BYTES = 64 * 1024
#: empty directories one small push lists
MAX_DIRS = 1000
#: its body: base64 content, paths (of files and empty directories) and JSON around them
MAX_BODY = MAX_BYTES * 4 // 3 + (MAX_FILES + MAX_DIRS) * (MAX_PATH + 64) + 64 * 1024


@dataclass(frozen=True)
class SmallFile:
    path: str
    data: bytes
    mode: int | None = None  # a tree file's permission bits (None: DEFAULT_MODE)


@dataclass
class _Prepared:
    """What the bytes say, computed off the event loop: the files' chunks (keys, sizes),
    the file ids, and the pack of the chunks that were new to the domain."""

    files: list[tuple[SmallFile, list[tuple[bytes, int]], str, str]]  # file, chunks, id, b3
    pack: packfmt.Pack | None
    new_keys: set[bytes]


async def push(
    repo: Repository,
    who: Principal,
    name: str,
    layout: str,
    files: list[SmallFile],
    tags: dict[str, str],
    dirs: Sequence[str] = (),
) -> dict[str, Any]:
    """Store small files (and a tree's empty directories ``dirs``) as a new version of
    ``name`` (or answer the latest version if its content is the same). Returns what a
    push of the upload protocol returns, with ``chunks_total``, ``chunks_new`` and
    ``bytes_uploaded``."""
    name, tags = check_name(name), check_tags(tags)
    who.require("write", name)
    if layout == "file" and len(files) != 1:
        raise InvalidManifest("a 'file' version has exactly one file")
    if len(files) > MAX_FILES or sum(len(f.data) for f in files) > MAX_BYTES:
        raise BodyTooLarge(
            f"a small push holds at most {MAX_FILES} files and {MAX_BYTES} bytes: "
            "push larger content through an upload session",
            limit=MAX_BYTES,
        )
    if len({f.path for f in files}) != len(files):
        raise InvalidManifest("a path appears twice")
    check_tree_extras(layout, (f.mode for f in files), dirs)
    check_tree_paths(f.path for f in files)
    check_tree_dirs(dirs, (f.path for f in files))
    domain = repo.domain(name)
    total = sum(len(f.data) for f in files)
    cut = _cut(files) if total <= INLINE_BYTES else await anyio.to_thread.run_sync(_cut, files)
    wanted = {k for _, chunks, _, _ in cut for k, _ in chunks}

    def lookup(conn: Connection) -> dict[bytes, tuple[str, int]]:
        return readable_locations(conn, who, packs_q.chunk_locations(conn, domain, wanted))

    for attempt in range(1, ATTEMPTS + 1):
        known = await repo.db.read(lookup)
        if total <= INLINE_BYTES:
            prepared = _pack(cut, known)
        else:
            prepared = await anyio.to_thread.run_sync(_pack, cut, known)
        key = None
        if prepared.pack is not None:
            key = f"{packfmt.pack_key(prepared.pack.id)}.{uuid.uuid4().hex[:16]}"
            await repo.store.put(key, bytes(prepared.pack.data))
        try:
            result, live = await metadata.write_after(
                repo, _commit, repo, who, name, prepared, layout, key, tags, dirs
            )
            break
        except PacksGone:
            # garbage collection took a pack the lookup found: the pack written is not
            # live (the transaction rolled back); look again, and pack what is missing
            if key is not None:
                await repo.store.delete(key)
            if attempt == ATTEMPTS:
                raise
    if key is not None and not live:  # another copy of the same pack is live
        await repo.store.delete(key)
    return {
        **result,
        "chunks_total": sum(len(chunks) for _, chunks, _, _ in cut),
        "chunks_new": len(prepared.new_keys),
        "bytes_uploaded": prepared.pack.size if prepared.pack is not None and live else 0,
    }


def _cut(files: list[SmallFile]) -> list[tuple[SmallFile, list[tuple[bytes, int]], str, str]]:
    """Each file's chunks (key, length), file id and b3sum."""
    cdc, out = new_chunker(), []
    for f in files:
        view = memoryview(f.data)
        chunks = [
            (chunk_key(view[c.offset : c.offset + c.length]), c.length)
            for c in (cdc.cut_buf(f.data) if f.data else ())
        ]
        ids = FileIdHasher()
        for key, n in chunks:
            ids.update(chunk_id(key), n)
        out.append((f, chunks, ids.hexdigest(), blake3.blake3(f.data).hexdigest()))
    return out


def _pack(
    cut: list[tuple[SmallFile, list[tuple[bytes, int]], str, str]],
    known: dict[bytes, tuple[str, int]],
) -> _Prepared:
    """The pack of the chunks the domain lacks, each once, checked as verification
    would check an upload (the gateway built it, but a bug must not become a dedup
    target)."""
    writer, cctx, placed = None, packfmt.new_compressor(), set()
    # a buffer the size of this content, not of the largest pack (zeroing 64 MiB cost
    # 40 ms, two thirds of a small push)
    most = sum(n for _, chunks, _, _ in cut for _, n in chunks)
    count = sum(len(chunks) for _, chunks, _, _ in cut)
    target = min(packfmt.MAX_SIZE, packfmt.HEADER_SIZE + packfmt.FOOTER_SIZE + most + 1)
    target += min(packfmt.MAX_SIZE - target, count * packfmt.ENTRY.size)
    for f, chunks, _, _ in cut:
        pos = 0
        for key, n in chunks:
            if key not in known and key not in placed:
                writer = writer or packfmt.PackWriter(target)
                scheme, stored = packfmt.compress(cctx, f.data[pos : pos + n])
                writer.add(key, n, scheme, stored)
                placed.add(key)
            pos += n
    pack = writer.finish() if writer is not None else None
    if pack is not None:
        packfmt.verify(pack.id, pack.data)
    return _Prepared(cut, pack, placed)


def _commit(
    conn: Connection,
    repo: Repository,
    who: Principal,
    name: str,
    prepared: _Prepared,
    layout: str,
    key: str | None,
    tags: dict[str, str],
    dirs: Sequence[str] = (),
) -> tuple[dict[str, Any], bool]:
    """In one transaction: the new pack becomes live (or, if another copy of it is,
    redundant), and the version appears whole, or the latest is answered unchanged."""
    now = time.time()
    domain = repo.domain(name)
    live = False
    where: dict[bytes, tuple[str, int]] = {}
    if key is not None and prepared.pack is not None:
        p = prepared.pack
        by_id = {chunk_id(k): k for k in prepared.new_keys}
        rows = [
            (e.chunk_id, by_id[e.chunk_id], e.offset, e.stored_len, e.raw_len, e.scheme)
            for e in p.entries
        ]
        live = packs_q.make_live(conn, p.id, p.size, key, rows, domain, now)
        where = {by_id[e.chunk_id]: (p.id, i) for i, e in enumerate(p.entries)}
    keys = {k for _, chunks, _, _ in prepared.files for k, _ in chunks}
    where.update(
        readable_locations(conn, who, packs_q.chunk_locations(conn, domain, keys - where.keys()))
    )
    if keys - where.keys():  # a chunk's pack was found damaged, or condemned, meanwhile
        raise PacksGone("some chunks stopped being stored while this push ran")
    # the packs the version names stay live until this transaction ends (FORMAT.md,
    # "Deleting"): locked, and refused if garbage collection condemned one meanwhile
    require_live(packs_q.lock_packs(conn, {pack for pack, _ in where.values()}))
    art_id = versions_q.ensure_artifact(conn, name, now)
    rows_out = []
    for idx, (f, chunks, fid, b3) in enumerate(prepared.files):
        terms: list[Term] = []
        for key, n in chunks:
            pack, i = where[key]
            last = terms[-1] if terms else None
            if last is not None and last.pack == pack and last.end == i:
                terms[-1] = Term(pack, last.first, i + 1, last.size + n)
            else:
                terms.append(Term(pack, i, i + 1, n))
        rows_out.append(
            {
                "idx": idx,
                "path": f.path,
                "size": len(f.data),
                "digest": fid,
                "b3sum": b3,
                "manifest": dumps(terms),
                "mode": tree_mode(layout, f.mode),
            }
        )
    v, created = add_version(conn, art_id, layout, rows_out, tags, dirs=dirs)
    if not created:
        return {**summary(conn, name, v), "created": False}, live
    return {**describe(name, v, tags, []), "created": True}, live
