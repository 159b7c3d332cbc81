"""Push: chunk and hash locally, upload only what the gateway lacks, commit.

The pipeline per file, with bounded memory whatever the file size:

    read+cut (main) → hash + ask gateway (pool) → classify (main)
      → compress new chunks (pool) → pack (main) → upload pack parts (io pool)

Windows of a few MiB flow through it, at most ``DEPTH`` per stage; at most
``PACKS_IN_FLIGHT`` finished packs are uploading while the next is built. All CPU work
(BLAKE3, zstd, FastCDC) runs in C with the GIL released, so two cores are used.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from .. import packs as packfmt
from ..chunking import MAX_SIZE, WINDOW_SIZE, BufferPool, Window, windows
from ..digest import file_digest, new_file_hasher, tree_digest
from ..errors import InvalidRequest, StoreError
from .transport import Transport

DEPTH = 3
PACKS_IN_FLIGHT = 2
#: chunk locations remembered within one push (~200 B each): dedups repeats inside a
#: push without growing with file size.
RECENT_LIMIT = 200_000


def pipelined(
    pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int = DEPTH
) -> Iterator:
    """``map(fn, items)`` on ``pool``, in order, at most ``depth`` items ahead."""
    q: deque[Future] = deque()
    for item in items:
        q.append(pool.submit(fn, item))
        if len(q) > depth:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()


class PackSlot:
    """A pack being filled: its id is known only when it is finished."""

    def __init__(self) -> None:
        self.id: str | None = None


@dataclass
class FileResult:
    path: str
    size: int
    digest: str
    terms: list[list] = field(default_factory=list)
    from_version: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "digest": self.digest}
        if self.from_version is not None:
            out["from_version"] = self.from_version
        else:
            out["terms"] = self.terms
        return out


@dataclass
class PushStats:
    chunks_total: int = 0
    chunks_new: int = 0
    bytes_uploaded: int = 0


class _Terms:
    """Chunk locations folded into terms; pack slots are resolved to ids at the end."""

    def __init__(self) -> None:
        self.items: list[list] = []  # [slot_or_id, first, end]

    def add(self, pack: PackSlot | str, idx: int) -> None:
        if self.items:
            last = self.items[-1]
            if last[0] is pack and last[2] == idx:
                last[2] = idx + 1
                return
        self.items.append([pack, idx, idx + 1])

    def resolve(self) -> list[list]:
        return [[p.id if isinstance(p, PackSlot) else p, a, b] for p, a, b in self.items]


class Uploader:
    """One push session: many files, shared packs, one commit."""

    def __init__(
        self, transport: Transport, name: str, progress: Callable[[int], None] | None = None
    ) -> None:
        self.t = transport
        self.session = transport.call("POST", "/v1/sessions", json={"name": name})
        self.sid = self.session["session"]
        self.checksum = self.session.get("part_checksum")
        self.sequential = self.session.get("sequential_parts", False)
        self.stats = PushStats()
        self.progress = progress or (lambda n: None)
        self.cpu = ThreadPoolExecutor(2, thread_name_prefix="cy-cpu")
        self.io = ThreadPoolExecutor(4, thread_name_prefix="cy-io")
        self.parts = ThreadPoolExecutor(4, thread_name_prefix="cy-part")
        self.digest_pool = ThreadPoolExecutor(1, thread_name_prefix="cy-digest")
        self._local = threading.local()
        self.recent: OrderedDict[bytes, tuple[PackSlot | str, int]] = OrderedDict()
        self.slot = PackSlot()
        self.target_size = self.session.get("pack_target_size", packfmt.TARGET_SIZE)
        self._lock = threading.Lock()
        self.pack_buffers: list[bytearray] = []
        self.writer = self._new_writer()
        self.uploads: deque[Future] = deque()
        self.buffers = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=2 * DEPTH + 4)

    def close(self) -> None:
        for pool in (self.cpu, self.io, self.parts, self.digest_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    # -- stages ---------------------------------------------------------
    def _compressor(self):  # type: ignore[no-untyped-def]
        c = getattr(self._local, "cctx", None)
        if c is None:
            c = self._local.cctx = packfmt.new_compressor()
        return c

    def _prepare(self, w: Window) -> tuple[Window, list[bytes], list]:
        """On a worker: hash every chunk, ask the gateway which it has, compress the rest.

        Per chunk the plan holds ``("known", pack, idx)``, ``("dup",)`` (repeats an
        earlier chunk of this window) or ``(scheme, stored)`` for a new chunk."""
        ids = [blake3.blake3(w.chunk(i)).digest() for i in range(len(w.cuts))]
        answer = self.t.call("POST", f"/v1/sessions/{self.sid}/missing", content=b"".join(ids))
        known_packs = answer["packs"]
        cctx = self._compressor()
        plan: list[Any] = []
        seen: set[bytes] = set()
        for i, (cid, loc) in enumerate(zip(ids, answer["locations"], strict=True)):
            if loc is not None:
                plan.append(("known", known_packs[loc[0]], loc[1]))
            elif cid in seen or cid in self.recent:
                plan.append(("dup",))
            else:
                seen.add(cid)
                plan.append(packfmt.compress(cctx, w.chunk(i)))
        return w, ids, plan

    def _place(self, w: Window, ids: list[bytes], plan: list, terms: _Terms) -> None:
        """In order, on the main thread: add new chunks to the pack, record terms."""
        for i, (cid, entry) in enumerate(zip(ids, plan, strict=True)):
            self.stats.chunks_total += 1
            if entry[0] == "known":
                terms.add(entry[1], entry[2])
                continue
            loc = self.recent.get(cid)
            if loc is not None:  # already placed earlier in this push
                terms.add(*loc)
                continue
            if entry[0] == "dup":  # evicted from ``recent`` meanwhile: compress it here
                entry = packfmt.compress(self._compressor(), w.chunk(i))
            scheme, stored = entry
            if not self.writer.fits(len(stored)):
                self._flush_pack()
            idx = self.writer.add(cid, w.cuts[i][1], scheme, stored)
            self.stats.chunks_new += 1
            self.recent[cid] = (self.slot, idx)
            if len(self.recent) > RECENT_LIMIT:
                self.recent.popitem(last=False)
            terms.add(self.slot, idx)

    # -- packs ------------------------------------------------------------
    def _flush_pack(self) -> None:
        if not len(self.writer):
            return
        while len(self.uploads) >= PACKS_IN_FLIGHT:
            self.uploads.popleft().result()
        self.uploads.append(self.io.submit(self._upload_pack, self.writer, self.slot))
        self.slot = PackSlot()
        self.writer = self._new_writer()

    def _new_writer(self) -> packfmt.PackWriter:
        with self._lock:
            buf = self.pack_buffers.pop() if self.pack_buffers else None
        return packfmt.PackWriter(self.target_size, buf)

    def _checksums(self, data: bytes, parts: list[tuple[int, int]]) -> list[str] | None:
        if self.checksum is None:
            return None
        algo = {"md5": hashlib.md5, "sha256": hashlib.sha256}[self.checksum]
        view = memoryview(data)
        return [base64.b64encode(algo(view[o : o + n]).digest()).decode() for o, n in parts]

    def _upload_pack(self, writer: packfmt.PackWriter, slot: PackSlot) -> None:
        try:
            pack = writer.finish()
            slot.id = pack.id
            self._send_pack(pack)
        finally:
            with self._lock:
                self.pack_buffers.append(writer.buffer)

    def _send_pack(self, pack: packfmt.Pack) -> None:
        body: dict[str, Any] = {"pack": pack.id, "size": pack.size}
        plan = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
        if plan["state"] != "verified":
            if self.checksum:
                body["checksums"] = self._checksums(
                    pack.data, [(p["offset"], p["size"]) for p in plan["parts"]]
                )
                plan = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
            etags = self._send_parts(pack, body, plan["parts"])
            self.t.call(
                "POST", f"/v1/sessions/{self.sid}/packs/{pack.id}/complete", json={"parts": etags}
            )
            self.stats.bytes_uploaded += pack.size

    def _send_parts(self, pack: packfmt.Pack, body: dict, parts: list[dict]) -> list[dict]:
        view = memoryview(pack.data)

        def send(part: dict) -> dict:
            data = view[part["offset"] : part["offset"] + part["size"]]
            for attempt in range(3):
                try:
                    resp = self.t.send(
                        part,
                        content=data,
                        what=f"upload of pack {pack.id[:12]} part {part['number']}",
                    )
                    return {"number": part["number"], "etag": resp.headers.get("etag", "")}
                except StoreError as exc:
                    # an expired or refused URL: ask for fresh ones and send this part again
                    if attempt == 2 or exc.detail.get("status") not in (400, 401, 403):
                        raise
                    fresh = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
                    part = next(p for p in fresh["parts"] if p["number"] == part["number"])
            raise AssertionError("unreachable")

        if self.sequential or len(parts) == 1:
            return [send(p) for p in parts]
        return list(self.parts.map(send, parts))

    # -- files ------------------------------------------------------------
    def add_file(self, path: Path, rel: str, known: dict | None = None) -> FileResult:
        """Chunk and upload one file. ``known``: the same path's entry in the latest
        version; if the digest matches, the file is reused without chunking."""
        size = path.stat().st_size
        digest = None
        if known is not None and known["size"] == size:
            with open(path, "rb") as f:
                digest = file_digest(f)
            if digest == known["digest"]:
                self.progress(size)
                return FileResult(rel, size, digest, from_version=known["version"])
        terms = _Terms()
        hasher = None if digest else new_file_hasher()
        digests: deque[Future] = deque()

        def update_digest(w: Window) -> None:
            try:
                hasher.update(w.data)  # type: ignore[union-attr]
            finally:
                w.release()

        with open(path, "rb") as f:

            def windows_with_digest() -> Iterator[Window]:
                for w in windows(f, size_hint=size, pool=self.buffers):
                    if hasher is not None:
                        w.hold()
                        digests.append(self.digest_pool.submit(update_digest, w))
                        while len(digests) > DEPTH + 2:
                            digests.popleft().result()
                    yield w

            for w, ids, plan in pipelined(self.cpu, self._prepare, windows_with_digest()):
                self._place(w, ids, plan, terms)
                w.release()
                self.progress(len(w.data))
        for d in digests:
            d.result()
        if hasher is not None:
            digest = hasher.hexdigest()
        return FileResult(rel, size, digest or "", terms=terms.items)  # resolved at commit

    def finish(self) -> None:
        self._flush_pack()
        while self.uploads:
            self.uploads.popleft().result()

    def commit(self, layout: str, files: list[FileResult], tags: dict[str, str]) -> dict:
        for f in files:
            if f.from_version is None:
                f.terms = [[p.id if isinstance(p, PackSlot) else p, a, b] for p, a, b in f.terms]
        body = {"layout": layout, "files": [f.to_json() for f in files], "tags": tags}
        return self.t.call("POST", f"/v1/sessions/{self.sid}/commit", json=body)


def list_tree(root: Path) -> list[tuple[Path, str]]:
    """Regular files under ``root`` as (path, relative POSIX path), sorted; symlinks
    and special files are refused rather than silently skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                raise InvalidRequest(f"{p} is not a regular file (symlinks are not pushed)")
            out.append((p, p.relative_to(root).as_posix()))
    return out


def push(
    transport: Transport,
    path: str | os.PathLike,
    name: str,
    tags: dict[str, str] | None = None,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """Push a file or a directory as a new version of ``name``; returns its summary."""
    root = Path(path)
    if not root.exists():
        raise InvalidRequest(f"{root} does not exist")
    layout = "tree" if root.is_dir() else "file"
    entries = list_tree(root) if layout == "tree" else [(root, root.name)]
    total = sum(p.stat().st_size for p, _ in entries)
    latest = _latest_files(transport, name)
    if layout == "file" and latest is not None and latest["layout"] == "file":
        # same single file under any name: compare with the latest content
        only = latest["file_list"][0] if latest["file_list"] else None
        latest_by_path = {entries[0][1]: {**only, "version": latest["version"]}} if only else {}
    elif latest is not None and latest["layout"] == layout:
        latest_by_path = {
            f["path"]: {**f, "version": latest["version"]} for f in latest["file_list"]
        }
    else:
        latest_by_path = {}
    progress = progress_factory(total) if progress_factory else None
    up = Uploader(transport, name, progress)
    try:
        results = [up.add_file(p, rel, latest_by_path.get(rel)) for p, rel in entries]
        up.finish()
        version = up.commit(layout, results, tags or {})
    finally:
        up.close()
    digest = (
        results[0].digest
        if layout == "file"
        else tree_digest((r.path, r.size, r.digest) for r in results)
    )
    return {
        **version,
        "digest": digest,
        "size": total,
        "files": len(results),
        "chunks_total": up.stats.chunks_total,
        "chunks_new": up.stats.chunks_new,
        "bytes_uploaded": up.stats.bytes_uploaded,
    }


def _latest_files(transport: Transport, name: str) -> dict | None:
    from ..errors import NotFound

    try:
        v = transport.call("GET", f"/v1/artifacts/{name}/-/versions/latest")
    except NotFound:
        return None
    return v if v.get("kind") == "stored" else None
