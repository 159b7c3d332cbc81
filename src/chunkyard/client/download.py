"""Pull: fetch pack ranges straight from the store, verify, write in order.

Reconstruction pages (≤512 MiB of content each) come as terms of at most 8 MiB of
pack data, each with a GET signed for its bytes; ``DEPTH`` of them are in flight, each
fetched on a worker thread, decoded there (every chunk checked against its id; at most
one unit per core at a time) and written in place, while this thread computes the
file's id (from the chunk ids) and its BLAKE3 in order. Memory is bounded by
``2 × DEPTH × BUF`` (a unit's records and its chunks), not file size. The file is
written under a temporary name and renamed into place only once it matches its file id
and the uploader's BLAKE3, so a failed pull never leaves a wrong file behind.

Whatever the gateway sends, a pull writes only inside its destination: every path of
the version is checked before any file is written (:func:`targets`), and a version the
destination cannot hold is refused with one clear error, not a traceback.

Reference versions are read from their sources instead, through requests the gateway
pinned (see :func:`fetch_reference`); drift there is a ``reference_drifted`` error.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path, PurePath
from typing import Any

import zstandard

from ..digest import FileIdHasher, chunk_id, chunk_key, new_file_hasher
from ..errors import (
    ChunkyardError,
    DigestMismatch,
    FormatTooNew,
    IntegrityFailure,
    InvalidName,
    InvalidRequest,
    PackCorrupt,
    StoreError,
)
from ..names import check_path, check_tree_dirs, check_tree_paths
from ..packs import MAX_RECORD, decode_run, untouched
from ..pins import Pin, response_drift
from ..version import FORMAT_VERSION
from . import trees
from .pipeline import pipelined
from .references import drifted, refusals_as_drift
from .resume import PartialFile, partial_paths
from .transport import Transport, with_fresh_url

UNIT_BYTES = 8 * 1024 * 1024
#: a unit closes once it passes UNIT_BYTES stored or raw, so one more record fits
BUF = UNIT_BYTES + MAX_RECORD
#: units in flight: 8 hid SeaweedFS's latency better than 6 (2.7 s against 3.1 s for
#: 1 GiB of bf16 here, medians of 4), within the memory budget (2 × 9 × BUF)
DEPTH = 8
#: a unit goes to its file in writes of at most this size: on the development VM's
#: kernel (6.18, ext4) one 8 MiB ``pwrite`` into the page cache cost 1.2-2.3 s of
#: system time per GiB, the same bytes in 1 MiB writes 0.21 (cp: 0.35)
WRITE_PIECE = 1024 * 1024
#: reference objects fetched at once (each one streamed GET from its source): shards
#: are large and a few streams fill a link; many small files need more in flight
REF_PARALLEL = 8
#: a reference download goes to its file in pieces of this size
REF_PIECE = 1024 * 1024
#: files up to this size are pulled many at a time (:meth:`Downloader.small_files`)
SMALL_PULL = 1024 * 1024
#: a batch of small files: one reconstruction answer
SMALL_BATCH_FILES = 512
SMALL_BATCH_BYTES = 32 * 1024 * 1024
#: files (or batches of small ones) pulled at once, sharing the ``DEPTH`` units in
#: flight: one file's hashing and renaming overlaps another's fetches
FILES_PARALLEL = 2


def _units(page: dict[str, Any]) -> Iterator[tuple[dict, dict, dict]]:
    """Each term of a page as a fetch unit. A term whose GET is signed for its range
    is one unit as it is; others are split at chunk boundaries."""
    for term in page["terms"]:
        url = term["url"]
        if "reference" not in url:  # signed for exactly this range
            yield page, url, term
            continue
        lo, hi = term["skip"], term["skip"] + term["take"]  # raw bytes wanted of the term
        group: list = []
        raw_start = raw_pos = stored = 0
        start = term["range"][0]
        chunks = term["chunks"]
        for i, c in enumerate(chunks):
            group.append(c)
            stored += c[1]
            raw_pos += c[2]
            if stored >= UNIT_BYTES or raw_pos - raw_start >= UNIT_BYTES or i == len(chunks) - 1:
                skip = max(0, lo - raw_start)
                take = min(hi, raw_pos) - (raw_start + skip)
                if take > 0:
                    yield (
                        page,
                        url,
                        {
                            "pack": term["pack"],
                            "range": [start, start + stored],
                            "chunks": group,
                            "skip": skip,
                            "take": take,
                        },
                    )
                start += stored
                group, stored, raw_start = [], 0, raw_pos


class Downloader:
    def __init__(
        self,
        transport: Transport,
        progress: Callable[[int], None] | None = None,
        fmt: int = 3,
        modes: bool = False,
    ) -> None:
        self.t = transport
        #: the repository format of the version being pulled (how its files are checked)
        self.format = fmt
        #: files take the modes their version records (a pull; not files in staging)
        self.modes = modes
        self.progress = progress or (lambda n: None)
        self.pool = ThreadPoolExecutor(DEPTH, thread_name_prefix="cy-get")
        #: units decoded at once: ``DEPTH`` reads wait on the network, but more decoders
        #: than cores only trade the GIL and the caches back and forth
        self._cores = threading.Semaphore(min(DEPTH, os.cpu_count() or 1))
        #: one ``pwrite`` at a time: writers of one file queue on its inode lock, and the
        #: kernel has them spin there while the holder copies (2 % of a pull's CPU)
        self._writing = threading.Lock()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._free: list[tuple[Any, Any]] = []
        #: pack bytes read from the store, and file bytes an interrupted pull had written
        self.bytes_downloaded = 0
        self.bytes_resumed = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(
        self, job: tuple[dict, dict, dict]
    ) -> tuple[memoryview, tuple[bytearray, bytearray], dict]:
        """On a worker: read one unit into a recycled buffer, decode and verify it."""
        page, url, unit = job
        a, b = unit["range"]
        with self._lock:
            bufs = self._free.pop() if self._free else (untouched(BUF), untouched(BUF))
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            if unit["kept"]:
                with self._cores:
                    kept = _reread(unit, bufs[1])
                if kept is not None:  # an interrupted pull wrote them: read back, checked
                    with self._lock:
                        self.bytes_resumed += len(kept)
                    return kept, bufs, unit
            data = self._read(page, url, unit, bufs[0])
            with self._lock:
                self.bytes_downloaded += len(data)
            with self._cores:
                out = decode_run(unit["chunks"], data, unit["skip"], unit["take"], dctx, bufs[1])
            if "out" in unit:
                with self._writing:
                    _write_at(unit["out"][0], out, unit["out"][1])
        except PackCorrupt as exc:
            self._recycle(bufs)
            if "reference" not in url:
                raise
            raise drifted(**_borrowed(url, page["path"]), state="changed") from exc
        except BaseException:
            self._recycle(bufs)
            raise
        return out, bufs, unit

    def _read(self, page: dict, url: dict, unit: dict, buf: bytearray) -> memoryview:
        """Fetch a unit's pack range (the page is asked again for fresh URLs)."""
        a, b = unit["range"]

        def renew(exc: StoreError) -> dict:
            fresh = self.t.call("GET", page["_self"], params=self._page(page["start"]))
            return next(
                t["url"]
                for t in fresh["terms"]
                if t["pack"] == unit["pack"] and t["range"][0] <= a and b <= t["range"][1]
            )

        return self._pack_read(url, unit["pack"], page["path"], a, b, buf, renew)

    def _pack_read(
        self,
        url: dict,
        pack: str,
        path: str,
        a: int,
        b: int,
        buf: bytearray,
        renew: Callable[[StoreError], dict],
    ) -> memoryview:
        """Bytes ``[a, b)`` of a pack into ``buf``; a URL that expired meanwhile is signed
        afresh, and a refused read of chunks borrowed from a reference object is drift."""
        guard: AbstractContextManager = (
            refusals_as_drift(**_borrowed(url, path)) if "reference" in url else nullcontext()
        )
        what = f"read of pack range {a}-{b}"
        with guard:
            return with_fresh_url(
                lambda u: self.t.fetch_into(own_file(u, pack), a, b, buf, what=what), url, renew
            )

    def _recycle(self, bufs: tuple[bytearray, bytearray]) -> None:
        with self._lock:
            self._free.append(bufs)

    def _local_query(self) -> dict[str, str]:
        """The query that asks a gateway on this machine to name the pack files too
        (read where readable, see :meth:`Transport.fetch_into`)."""
        return {"local": "true"} if self.t.local_reads else {}

    def _page(self, start: int) -> dict[str, Any]:
        return {"start": start, **self._local_query()}

    def pages(self, base: str, index: int) -> Iterator[dict]:
        start: int | None = 0
        while start is not None:
            path = f"{base}/files/{index}/reconstruction"
            page = self.t.call("GET", path, params=self._page(start))
            page["_self"] = path
            yield page
            start = page["next"]

    def file(self, base: str, entry: dict, dest: Path, depth: int = DEPTH) -> None:
        """Workers write their units in place (``pwrite``: the kernel's copy into the page
        cache runs on both cores); this thread hashes them in order, then renames.

        The file is written to a :class:`~chunkyard.client.resume.PartialFile`: what an
        interrupted pull of it wrote and verified is read back and checked instead of
        fetched, and a pull interrupted here leaves what it verified for the next."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        mode = entry.get("mode") if self.modes else None
        part = PartialFile(dest, entry["digest"], entry["size"], mode)
        check = FileCheck(entry, self.format)
        try:
            units = (u for page in self.pages(base, entry["index"]) for u in _units(page))
            jobs = _placed(units, part.fd, part.kept)
            for data, bufs, unit in pipelined(self.pool, self._fetch, jobs, depth):
                check.update(unit["chunks"], unit["skip"], data)
                self.progress(len(data))
                data.release()
                self._recycle(bufs)
                part.verified(unit["out"][1] + unit["take"])
            check.done()
        except IntegrityFailure:
            part.abandon(keep=False)  # wrong bytes: nothing of them may stay
            raise
        except BaseException:
            part.abandon(keep=True)  # interrupted: the next pull goes on from here
            raise
        part.finish()

    def small_files(self, base: str, items: list[tuple[dict, Path]]) -> None:
        """Many small files: one reconstruction answer per batch, each pack's ranges
        read with as few GETs as possible (files pushed together sit side by side in
        packs), every chunk and every file verified, each file renamed into place
        whole. One file at a time cost two requests per file."""
        batch: list[tuple[dict, Path]] = []
        size = 0
        for entry, target in items:
            if batch and (
                len(batch) == SMALL_BATCH_FILES or size + entry["size"] > SMALL_BATCH_BYTES
            ):
                self._small_batch(base, batch)
                batch, size = [], 0
            batch.append((entry, target))
            size += entry["size"]
        if batch:
            self._small_batch(base, batch)

    def _small_batch(self, base: str, batch: list[tuple[dict, Path]]) -> None:
        ask = {"files": [entry["index"] for entry, _ in batch]}
        answer = self.t.call(
            "POST", f"{base}/reconstructions", json=ask, params=self._local_query()
        )
        answer["_ask"] = (f"{base}/reconstructions", ask)
        pieces: dict[tuple[int, int], bytes] = {}
        users: dict[int, list] = {}
        for fno, f in enumerate(answer["files"]):
            for tno, term in enumerate(f["terms"]):
                users.setdefault(term["read"], []).append((fno, tno, term))
        jobs = [(n, read, users.get(n, [])) for n, read in enumerate(answer["reads"])]
        for done in self.pool.map(lambda job: self._read_and_decode(answer, *job), jobs):
            pieces.update(done)
        made: set[Path] = set()
        for fno, (entry, target) in enumerate(batch):
            terms = answer["files"][fno]["terms"]
            check = FileCheck(entry, self.format)
            for tno, term in enumerate(terms):
                check.update(term["chunks"], term["skip"], pieces[(fno, tno)])
            check.done()
            data = b"".join(pieces[(fno, tno)] for tno in range(len(terms)))
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            tmp = partial_path(target)
            try:
                _write_new(tmp, data, entry.get("mode") if self.modes else None)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            self.progress(len(data))

    def _read_and_decode(
        self, answer: dict, n: int, read: dict, users: list
    ) -> dict[tuple[int, int], bytes]:
        """On a worker: one read of the batch (back-to-back records of one pack), and
        the raw bytes of every term within it, each chunk checked against its id."""
        a, b = read["range"]
        url = read["url"]

        def renew(exc: StoreError) -> dict:
            path, ask = answer["_ask"]
            return self.t.call("POST", path, json=ask, params=self._local_query())["reads"][n][
                "url"
            ]

        first = answer["files"][users[0][0]]["path"] if users else read["pack"]
        data = self._pack_read(url, read["pack"], first, a, b, bytearray(b - a), renew)
        with self._lock:
            self.bytes_downloaded += len(data)
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        out = {}
        for fno, tno, term in users:
            ra, rb = term["range"]
            try:
                raw = decode_run(
                    term["chunks"], data[ra - a : rb - a], term["skip"], term["take"], dctx
                )
            except PackCorrupt as exc:
                if "reference" not in url:
                    raise
                raise drifted(
                    **_borrowed(url, answer["files"][fno]["path"]), state="changed"
                ) from exc
            out[(fno, tno)] = bytes(raw)
        return out


def _write_new(path: Path, data: bytes, mode: int | None) -> None:
    """A new file of ``data``, taking ``mode`` (None: as the umask gives) once written:
    until then it is its owner's alone."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644 if mode is None else 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


class FileCheck:
    """What a pulled file must match: its file id, from the ids of the chunks its terms
    list (format 3; every chunk is checked against its id as it is decoded), and the
    BLAKE3 its uploader declared, over the bytes written (format 2: the only check).

    Pieces arrive in file order. A chunk cut by a page boundary is listed by both
    pages; it counts once, by where it starts in the file."""

    def __init__(self, entry: dict, fmt: int) -> None:
        self.entry = entry
        self.ids = FileIdHasher() if fmt >= 3 else None
        self.want_b3 = entry.get("b3sum", "") if fmt >= 3 else entry["digest"]
        self.b3 = new_file_hasher() if self.want_b3 else None
        self.size = 0
        self.counted = 0  # file offset where the last chunk counted in the file id ends

    def update(self, chunks: list, skip: int, data: bytes | memoryview) -> None:
        """The next ``data`` of the file: the bytes after the first ``skip`` raw bytes
        of ``chunks``."""
        if self.ids is not None:
            at = self.size - skip
            for cid, _, raw_len, _ in chunks:
                if at >= self.counted:
                    self.ids.update(bytes.fromhex(cid), raw_len)
                    self.counted = at + raw_len
                at += raw_len
        if self.b3 is not None:
            self.b3.update(data)
        self.size += len(data)

    def done(self) -> None:
        e, problem = self.entry, ""
        if self.size != e["size"]:
            problem = f"{self.size} bytes instead of {e['size']}"
        elif self.ids is not None and self.ids.hexdigest() != e["digest"]:
            problem = "its chunks do not make the file the version names"
        elif self.b3 is not None and self.b3.hexdigest() != self.want_b3:
            problem = "its BLAKE3 is not the one its uploader declared"
        if problem:
            raise DigestMismatch(
                f"{e['path']}: content does not match its digest: {problem}",
                path=e["path"],
                expected=self.want_b3 or e["digest"],
            )


def own_file(url: dict, pack: str) -> dict:
    """The GET, without a ``file`` that is not one of this pack's: a gateway names its
    store's files of the pack, ``…/packs/<id[:2]>/<id>[.<upload>]``; any other path
    it names (a key, a device, ``/proc/self/mem``) is not opened."""
    file = url.get("file")
    if file is None:
        return url
    named = PurePath(file) if isinstance(file, str) and "\0" not in file else None
    ok = (
        named is not None
        and named.is_absolute()
        and len(pack) == 64
        and all(c in "0123456789abcdef" for c in pack)
        and named.parent.name == pack[:2]
        and named.parent.parent.name == "packs"
        and (named.name == pack or named.name.startswith(pack + "."))
    )
    return url if ok else {k: v for k, v in url.items() if k != "file"}


def _borrowed(url: dict, path: str) -> dict[str, str]:
    """Who drifted when ``path`` borrows chunks from a reference object (drift args)."""
    return {"uri": url["reference"], "path": path, "why": f"{path} borrows chunks from it"}


def _placed(units: Iterator[tuple], fd: int, kept: int = 0) -> Iterator[tuple]:
    """Each unit with where its bytes go in the output file, and whether they are there
    already: within the first ``kept`` bytes, which an interrupted pull verified, and
    of whole chunks only (so that each can be checked against its id again)."""
    pos = 0
    for page, url, unit in units:
        unit["out"] = (fd, pos)
        whole = unit["skip"] == 0 and unit["take"] == sum(c[2] for c in unit["chunks"])
        unit["kept"] = whole and pos + unit["take"] <= kept
        pos += unit["take"]
        yield page, url, unit


def _write_at(fd: int, data: memoryview, pos: int) -> None:
    """``data`` into file ``fd`` at ``pos``, in pieces of :data:`WRITE_PIECE`."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done : done + WRITE_PIECE], pos + done)


def _reread(unit: dict, buf: bytearray) -> memoryview | None:
    """A unit's bytes as an interrupted pull wrote them, every chunk checked against
    its id again; None if the file does not hold them (they are fetched instead)."""
    fd, pos = unit["out"]
    view = memoryview(buf)[: unit["take"]]
    if os.preadv(fd, [view], pos) != len(view):
        return None
    at = 0
    for cid, _, raw_len, _ in unit["chunks"]:
        if chunk_id(chunk_key(view[at : at + raw_len])).hex() != cid:
            return None
        at += raw_len
    return view


def partial_path(dest: Path) -> Path:
    """Where ``dest`` is written before it is renamed into place, when it cannot be
    resumed (small files, references): beside it, hidden, under a name of its own."""
    return partial_paths(dest, uuid.uuid4().hex)[0]


def targets(v: dict[str, Any], dest: Path) -> list[tuple[dict, Path]]:
    """Where each file of version ``v`` goes under ``dest``, every path checked before
    anything is written: it must be a valid relative path (no ``..``, no absolute path,
    backslash, drive or empty segment: nothing can land outside ``dest``), no path of a
    tree may be a directory of another, and nothing in the way at ``dest`` may stand
    where a directory is needed. A single file pulled into an existing directory takes
    the last segment of its path as its name."""
    files = v.get("file_list")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) for f in files):
        raise InvalidRequest("the gateway answered a version without a file list")
    where = f"version {v.get('version')} of {v.get('name')!r}"
    try:
        if v.get("layout") == "file":
            if len(files) != 1:
                raise InvalidName(f"a single-file version with {len(files)} files")
            path = check_path(files[0].get("path"))
            _check_mode(files[0])
            if not dest.is_dir():
                return [(files[0], dest)]
            return [(files[0], dest / _local(path.rsplit("/", 1)[-1]))]
        paths = check_tree_paths((f.get("path") for f in files), nfc=False)
        out = [(f, dest / _local(p)) for f, p in zip(files, paths, strict=True)]
        dirs = empty_dirs(v, paths)
        for f in files:
            _check_mode(f)
    except InvalidName as exc:
        raise InvalidName(
            f"{where} holds a file path this client will not write: {exc.message}", **exc.detail
        ) from None
    if dest.exists():
        if not dest.is_dir():
            raise InvalidRequest(f"{dest} exists and is not a directory")
        _in_the_way(dest, paths, dirs)
    return out


def _check_mode(entry: dict[str, Any]) -> None:
    """A file's recorded mode is permission bits and nothing more (no setuid bit)."""
    mode = entry.get("mode")
    if mode is not None and (type(mode) is not int or not 0 <= mode <= 0o777):
        raise InvalidName(f"file {entry['path'][:200]!r} has mode {mode!r}, not 0 to 0o777")


def empty_dirs(v: dict[str, Any], paths: list[str]) -> list[str]:
    """A tree version's empty directories, checked against its file paths as every
    path is (:func:`targets`): each lands inside the destination as a directory."""
    dirs = v.get("dirs") or []
    if not isinstance(dirs, list):
        raise InvalidName("the gateway listed empty directories as something else than a list")
    check_tree_dirs(dirs, paths, nfc=False)
    for d in dirs:
        _local(d)
    return dirs


def _local(path: str) -> PurePath:
    """A checked relative path as this system's path: exactly its segments, with no
    drive or root of this system's own (Windows reads more into a name than POSIX)."""
    segments = path.split("/")
    local = PurePath(*segments)
    if local.anchor or list(local.parts) != segments:
        raise InvalidName(f"{path[:200]!r} is not a relative path on this system")
    return local


def _in_the_way(dest: Path, paths: list[str], empty: Sequence[str] = ()) -> None:
    """Refuse a tree that an existing ``dest`` cannot take: a file where one of its
    directories (or its ``empty`` ones) goes, or a directory where one of its files
    goes."""
    dirs: set[str] = set(empty)
    for p in [*paths, *empty]:
        cut = p.rfind("/")
        while cut > 0 and p[:cut] not in dirs:
            dirs.add(p[:cut])
            cut = p.rfind("/", 0, cut)
    for d in sorted(dirs, key=len):
        target = dest / d
        if os.path.lexists(target) and not target.is_dir():
            raise InvalidRequest(
                f"{target} is in the way: the version has files in a directory of that name",
                path=d,
            )
    for p in paths:
        if (dest / p).is_dir():
            raise InvalidRequest(f"{dest / p} is a directory, and the version has a file there")


#: errors writing a file that say its path cannot be one here (not a passing fault)
_UNWRITABLE = {errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EILSEQ}


def _write_error(exc: OSError) -> ChunkyardError:
    """A file-system error while writing a pull's files, as one clear error."""
    what = f"cannot write {exc.filename}: {exc.strerror or exc}"
    if exc.errno in _UNWRITABLE or exc.errno == errno.EINVAL:
        return InvalidRequest(what, path=str(exc.filename))
    return ChunkyardError(what, path=str(exc.filename))


def pull(
    transport: Transport,
    name: str,
    ref: str | int | None,
    dest: str | os.PathLike,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    delete: bool = False,
) -> dict[str, Any]:
    """Write version ``ref`` of ``name`` to ``dest``; returns the version summary.

    Like rsync (:mod:`chunkyard.client.trees`): only files ``include``/``exclude``
    select are pulled, files ``dest`` holds already are skipped (``files_skipped``),
    and with ``delete`` selected files the version lacks are removed
    (``files_deleted``)."""
    ref_text = "latest" if ref is None else str(ref)
    base = f"/v1/artifacts/{name}/-/versions/{ref_text}"
    v = transport.call("GET", base)
    if v.get("format", 2) > FORMAT_VERSION:
        raise FormatTooNew(
            f"{name}@{v['version']} is in repository format {v['format']}; this client reads "
            f"formats up to {FORMAT_VERSION}: upgrade chunkyard to pull it"
        )
    base = f"/v1/artifacts/{name}/-/versions/{v['version']}"  # pin: aliases may move
    dest = Path(dest)
    if delete and v["layout"] != "tree":
        raise InvalidRequest("--delete mirrors a tree: this version is a single file")
    todo = [(e, t) for e, t in targets(v, dest) if trees.selected(e["path"], include, exclude)]
    listed = (v.get("dirs") or []) if v["layout"] == "tree" else []  # checked by targets()
    dirs = [d for d in listed if trees.selected(d, include, exclude)]
    ns = trees.stamp_ns(v.get("created_at") or 0.0)
    progress = progress_factory(sum(e["size"] for e, _ in todo)) if progress_factory else None
    counts: dict[str, int] = {}
    try:
        fresh = _differing(todo, v.get("format", 2), ns, progress, v["kind"] == "reference")
        if fresh and v["kind"] == "reference":
            _pull_reference(transport, base, fresh, progress)
        elif fresh:
            counts = _pull_stored(transport, base, fresh, progress, v.get("format", 2))
        for _, target in fresh:
            trees.stamp(target, ns)
        trees.apply_modes(todo)  # skipped files too: a chmod is a change of the tree
        for d in dirs:
            (dest / _local(d)).mkdir(parents=True, exist_ok=True)
        counts.update(files_written=len(fresh), files_skipped=len(todo) - len(fresh))
        if delete:
            keep = {e["path"] for e in v["file_list"]}
            gone = trees.extras(dest, keep, include, exclude, listed)
            counts["files_deleted"] = trees.delete(*gone)
    except OSError as exc:
        if exc.filename is None:  # not the file system's: the network's, say
            raise
        raise _write_error(exc) from exc
    path = todo[0][1] if v["layout"] == "file" and todo else dest
    return {**v, **counts, "path": str(path)}


def _differing(
    todo: list[tuple[dict, Path]],
    fmt: int,
    ns: int,
    progress: Callable[[int], None] | None,
    reference: bool = False,
) -> list[tuple[dict, Path]]:
    """The files of ``todo`` their targets do not hold already (hashed a few at once)."""
    there = [os.path.lexists(t) for _, t in todo]
    if not any(there):
        return todo
    with ThreadPoolExecutor(4, thread_name_prefix="cy-same") as pool:
        same = list(
            pool.map(
                lambda item: item[1] and trees.unchanged(*item[0], fmt, ns, reference),
                zip(todo, there, strict=True),
            )
        )
    if progress is not None:
        progress(sum(e["size"] for (e, _), s in zip(todo, same, strict=True) if s))
    return [item for item, s in zip(todo, same, strict=True) if not s]


def _pull_stored(
    transport: Transport,
    base: str,
    todo: list[tuple[dict, Path]],
    progress: Callable[[int], None] | None,
    fmt: int,
) -> dict[str, int]:
    d = Downloader(transport, progress, fmt, modes=True)
    small = [(e, t) for e, t in todo if e["size"] <= SMALL_PULL]
    if len(small) < 2:
        small = []
    large = [(e, t) for e, t in todo if not small or e["size"] > SMALL_PULL]
    jobs: list[Callable[[], None]] = [lambda: d.small_files(base, small)] if small else []
    if len(large) == 1:
        jobs.append(lambda: d.file(base, *large[0]))
    else:  # each with its share of the units in flight: memory stays as for one file
        share = max(1, DEPTH // FILES_PARALLEL)
        jobs += [lambda et=et: d.file(base, *et, depth=share) for et in large]
    files = ThreadPoolExecutor(FILES_PARALLEL, thread_name_prefix="cy-file")
    try:
        for done in [files.submit(job) for job in jobs]:
            done.result()
    finally:
        files.shutdown(wait=True, cancel_futures=True)
        d.close()
    return {"bytes_downloaded": d.bytes_downloaded, "bytes_resumed": d.bytes_resumed}


# -- reference versions: straight from the source ------------------------------------
def _pull_reference(
    transport: Transport,
    base: str,
    targets: list[tuple[dict, Path]],
    progress: Callable[[int], None] | None,
) -> None:
    """Each object in one streamed GET from its source, ``REF_PARALLEL`` at a time.
    A tree is checked against its pins first (one listing at the source), so drift the
    gateway can see fails the pull before any file is written."""
    if len(targets) > 1:
        report = transport.call("POST", f"{base}/verify")
        bad = [o for o in report["objects"] if o["state"] != "ok"]
        if bad:
            o = bad[0]
            raise drifted(
                o["uri"],
                o["state"],
                o.get("path"),
                why=f"{len(bad)} of {len(targets)} objects drifted since registration",
                drifted=[
                    {"path": b.get("path"), "uri": b["uri"], "state": b["state"]} for b in bad[:100]
                ],
            )
    with ThreadPoolExecutor(REF_PARALLEL, thread_name_prefix="cy-ref") as pool:
        futures = []
        try:
            if len(targets) == 1:
                entry, target = targets[0]
                futures.append(
                    pool.submit(fetch_reference, transport, base, entry, target, progress)
                )
            else:  # pinned requests a page at a time, not one call per file
                where = {entry["index"]: target for entry, target in targets}
                cursor: int | None = 0
                while cursor is not None:
                    page = transport.call("GET", f"{base}/sources", params={"cursor": cursor})
                    for f in page["files"]:
                        if f.get("index") not in where:
                            raise InvalidRequest("the gateway listed a file the version lacks")
                        futures.append(
                            pool.submit(
                                fetch_reference,
                                transport,
                                base,
                                f,
                                where[f["index"]],
                                progress,
                                f["reference"],
                            )
                        )
                    cursor = page["next"]
            for fut in futures:
                fut.result()
        finally:
            for fut in futures:
                fut.cancel()


def fetch_reference(
    transport: Transport,
    base: str,
    entry: dict,
    dest: Path,
    progress: Callable[[int], None] | None = None,
    ref: dict | None = None,
) -> None:
    """Download one reference file through the pinned request the gateway hands out.

    The source enforces the pin where it can (version id, If-Match: 404/412), the
    answer's headers are checked against it as well, a broken connection resumes with
    a Range, and a recorded digest is verified. Bytes land under a temporary name and
    are renamed into place only when all of that holds, so drift never leaves a file
    with other bytes behind."""
    plan = f"{base}/files/{entry['index']}/reconstruction"
    if ref is None:  # the gateway HEADs the object first: drift fails here, by name
        ref = transport.call("GET", plan)["reference"]
    pin = Pin(ref["uri"], ref["size"], ref["etag"], ref["version_id"], ref["last_modified"])
    path = entry["path"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(dest)
    hasher = new_file_hasher()
    pos = 0
    try:
        with open(tmp, "wb") as out:

            def headers() -> dict[str, str]:  # asked on every try: resume where it broke
                return {
                    "accept-encoding": "identity",
                    **({"range": f"bytes={pos}-"} if pos else {}),
                }

            def write(resp: Any) -> None:
                nonlocal hasher, pos
                state = response_drift(pin, resp.status, resp.headers)
                if state:
                    raise drifted(pin.uri, state, path, pin=pin, status=resp.status)
                if pos and resp.status == 200:  # Range ignored: start over
                    out.seek(0)
                    out.truncate()
                    hasher, pos = new_file_hasher(), 0
                for piece in resp.stream(REF_PIECE, decode_content=False):
                    pos += len(piece)
                    if pos > pin.size:
                        raise drifted(pin.uri, "changed", path, pin=pin)
                    out.write(piece)
                    hasher.update(piece)
                    if progress:
                        progress(len(piece))

            def get(req: dict) -> None:
                what = f"reading {pin.uri}"
                transport.read(req, write, headers=headers, what=what, party="source")

            def renew(exc: StoreError) -> dict:
                return transport.call("GET", plan)["reference"]["request"]

            with refusals_as_drift(pin.uri, path, pin=pin):
                with_fresh_url(get, ref["request"], renew)
        if pos != pin.size:
            raise drifted(pin.uri, "changed", path, pin=pin, received=pos)
        if entry.get("b3sum") and hasher.hexdigest() != entry["b3sum"]:
            raise drifted(pin.uri, "content", path, pin=pin, digest=hasher.hexdigest())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
