"""The ingest pipeline: files in, packs and manifests out, with bounded memory.

    read+cut (reader thread) → hash (cpu pool) → ask the gateway (lookup pool) →
    compress new chunks (cpu pool) → place in pack (calling thread, in order) →
    finish + ship finished packs (io pool)

Windows of a few MiB flow through it, at most ``DEPTH`` ahead; at most
``PACKS_IN_FLIGHT`` finished packs are shipping while the next is filled. All heavy
work (FastCDC, BLAKE3, zstd) runs in C with the GIL released, so both cores work.

A tree with large files runs ``FILES_PARALLEL`` of them at a time where cores are to
spare (:meth:`Packer.add_files`): the files are dealt to lanes by size, each lane runs its
files in order through a shallower pipeline (so memory stays about as for one) and
fills packs of its own (a :class:`Lane`). A pack closes by its own records
(``PackWriter.full``), so where a lane's packs end depends on its files alone, whatever
runs beside it, and a push run again after an interruption rebuilds the packs it had
not finished under the same ids. (A chunk that files in two lanes both hold lands in
the pack of whichever places it first; run again, that may be the other lane, and the
pack it changes is sent again whole. The data is never wrong.)

``lookup`` says which chunk ids are already stored (the gateway's missing-chunk
query) and ``ship`` sends a finished pack (presigned parts); the benchmark plugs in
stand-ins to measure the pipeline alone.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from .. import packs as packfmt
from ..buffers import BufferPool
from ..chunking import MAX_SIZE, WINDOW_SIZE, Window, new_chunker, windows
from ..digest import (
    DEFAULT_MODE,
    chunk_key,
    file_digest,
    file_id_of,
    new_file_hasher,
)
from ..errors import InvalidRequest
from ..hashing import chunk_ids, start_chunk_ids
from .pipeline import DEPTH, pipelined

#: files at least this large that resemble a file of the latest version take the
#: hash-everything-first path (:meth:`Packer.add_similar_file`)
SIMILAR_MIN = 64 * 1024 * 1024
#: chunk ids per missing-chunk query on that path (the gateway takes up to 65,536)
LOOKUP_BATCH = 32768
#: missing-chunk queries in flight: each waits on a gateway round trip, not on a core
LOOKUPS = 3
PACKS_IN_FLIGHT = 2
#: threads that hash and compress windows: one per core (FastCDC cutting and placing
#: chunks in packs stay one thread each, ~2 and ~5 GB/s: see README "Scaling")
WORKERS = max(2, min(os.cpu_count() or 2, 16))
#: a tree with at least two files this large runs its large files in FILES_PARALLEL
#: lanes (each lane ends in a short pack of its tail: worth it only for large files)
PARALLEL_MIN = 64 * 1024 * 1024
FILES_PARALLEL = 2
#: lanes run only where cores are spare: on two, one file's pipeline (a reader, two CPU
#: workers, the digest, the pack being finished) keeps both busy, and a second lane
#: gained nothing measurable for 40 MiB more (README, "Trees like rsync": the numbers)
LANE_CPUS = 4


def lane_count() -> int:
    """Lanes a push of large files runs at once on this machine."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return FILES_PARALLEL if cpus >= LANE_CPUS else 1


#: files up to this size are read whole and handled many at a time
#: (:meth:`Packer.add_small_files`)
SMALL_MAX = 1024 * 1024
#: a batch of small files: at most a window's bytes and this many chunks, one
#: missing-chunk query
SMALL_BATCH_CHUNKS = 16384
#: chunk locations remembered within one push (~250 B each, the last ~4 GiB of new
#: chunks): dedups repeats inside a push while its memory stays flat (at 200,000 it
#: grows by 40 MiB between 4 and 16 GiB files); repeats further apart are found by the
#: missing-chunk query once their packs are verified.
RECENT_LIMIT = 50_000

#: lookup(chunk keys) -> {"packs": [pack ids], "locations": [None | [pack, chunk index]]}
Lookup = Callable[[list[bytes]], dict]
Ship = Callable[[packfmt.Pack], None]


def _digest_of(path: Path) -> str:
    with open(path, "rb") as f:
        return file_digest(f)


def nothing_stored(ids: list[bytes]) -> dict:
    """A lookup for a fresh store: every chunk is new."""
    return {"packs": [], "locations": [None] * len(ids)}


class Plan(list):
    """What to do with each chunk of a window (see ``Packer._compress_new``), and the
    recycled buffer its grouped records are written into; :meth:`release` once
    placed."""

    def __init__(self, pool: BufferPool) -> None:
        super().__init__()
        self.pool = pool
        self.buffer: bytearray | None = None

    def room(self, pos: int, n: int) -> memoryview | None:
        """``n`` bytes at ``pos`` of the buffer, or None when it is full."""
        if self.buffer is None:
            self.buffer = self.pool.get()
        return memoryview(self.buffer)[pos : pos + n] if pos + n <= len(self.buffer) else None

    def release(self) -> None:
        if self.buffer is not None:
            self.pool.put(self.buffer)
            self.buffer = None


class PackSlot:
    """A pack being filled: its id is known only when it is finished."""

    def __init__(self) -> None:
        self.id: str | None = None


class Lane:
    """Where a run of files places its new chunks, in order: the pack being filled
    (its writer made at its first chunk) and its slot. The packer's own lane takes
    every file but those :meth:`Packer.add_files` deals to another lane."""

    def __init__(self) -> None:
        self.slot = PackSlot()
        self.writer: packfmt.PackWriter | None = None


class _Halted(Exception):
    """A file running beside another stops: the other failed."""


@dataclass
class FileResult:
    path: str
    size: int
    b3sum: str  # BLAKE3 of the content, as b3sum prints it
    #: [pack id or PackSlot, first, end, proof hasher]
    terms: list[list] = field(default_factory=list)
    from_version: int | None = None
    file_id: str = ""  # with from_version: the file of that version it equals
    #: a tree file's permission bits (None, or the default: not sent; FORMAT.md "Push")
    mode: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "b3sum": self.b3sum}
        if self.mode is not None and self.mode != DEFAULT_MODE:
            out["mode"] = self.mode
        if self.from_version is not None:
            out.update(from_version=self.from_version, file_id=self.file_id)
        else:
            out["terms"] = [
                [p.id if isinstance(p, PackSlot) else p, a, b, proof.hexdigest()]
                for p, a, b, proof in self.terms
            ]
        return out


def reused(rel: str, size: int, known: dict) -> FileResult:
    """A file equal to one of the latest version: named, not sent (with that file's
    mode, which a push then replaces by the local file's)."""
    return FileResult(
        rel,
        size,
        known.get("b3sum", ""),
        from_version=known["version"],
        file_id=known["digest"],
        mode=known.get("mode"),
    )


@dataclass
class Stats:
    chunks_total: int = 0
    chunks_new: int = 0
    #: bytes and parts this run sent to the store
    bytes_uploaded: int = 0
    parts_sent: int = 0
    #: parts and packs an interrupted run of the push had sent (not sent again)
    parts_resumed: int = 0
    packs_resumed: int = 0
    packs: int = 0


class Packer:
    """Chunks files, finds new chunks, fills packs and ships them. Not thread-safe:
    one Packer per push; call :meth:`finish` before reading pack ids from results."""

    def __init__(
        self,
        lookup: Lookup,
        ship: Ship,
        target_size: int = packfmt.TARGET_SIZE,
        progress: Callable[[int], None] | None = None,
        proof_key: bytes = bytes(32),
        workers: int = WORKERS,
    ) -> None:
        self.lookup, self.ship = lookup, ship
        #: keys the possession proofs of the terms (the upload session's)
        self.proof_key = proof_key
        self.target_size = target_size
        self.progress = progress or (lambda n: None)
        self.stats = Stats()
        self.cpu = ThreadPoolExecutor(workers, thread_name_prefix="cy-cpu")
        #: windows hashed or compressed at once (each in flight holds a window buffer);
        #: lanes share them (:meth:`add_files`)
        self.depth = workers
        self.io = ThreadPoolExecutor(PACKS_IN_FLIGHT, thread_name_prefix="cy-io")
        self.lookups = ThreadPoolExecutor(LOOKUPS, thread_name_prefix="cy-lookup")
        self.digest_pool = ThreadPoolExecutor(1, thread_name_prefix="cy-digest")
        self.buffers = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=2 * max(DEPTH, workers) + 4)
        #: where each window's grouped records are written until they are placed
        self.records = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=max(DEPTH, workers) + 2)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pack_buffers: list[bytearray] = []
        self.recent: OrderedDict[bytes, tuple[PackSlot | str, int]] = OrderedDict()
        self.lane = Lane()
        self.shipping: deque[Future] = deque()
        #: packs finishing or shipping, over every lane: memory stays bounded
        self._ship_gate = threading.Semaphore(PACKS_IN_FLIGHT)
        self._halt = threading.Event()

    def close(self) -> None:
        for pool in (self.cpu, self.io, self.lookups, self.digest_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Packer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per window, on a worker ---------------------------------------------
    def _compressor(self):  # type: ignore[no-untyped-def]
        c = getattr(self._local, "cctx", None)
        if c is None:
            c = self._local.cctx = packfmt.new_compressor()
        return c

    def _plane_scratch(self) -> packfmt.PlaneScratch:
        p = getattr(self._local, "planes", None)
        if p is None:
            p = self._local.planes = packfmt.PlaneScratch(WINDOW_SIZE + MAX_SIZE)
        return p

    def _hash(self, w: Window) -> tuple[Window, list[bytes]]:
        return w, [blake3.blake3(w.chunk(i)).digest() for i in range(len(w.cuts))]

    def _lookup(self, job: tuple[Window, list[bytes]]) -> tuple[Window, list[bytes], dict]:
        """On an I/O thread: the gateway round trip must not idle a CPU worker."""
        w, ids = job
        return w, ids, self.lookup(ids)

    def _compress_new(self, job: tuple[Window, list[bytes], dict]) -> tuple[Window, list, list]:
        """Compress the chunks the store lacks. Per chunk the plan holds
        ``("known", pack, idx)``, ``("dup",)`` (seen before in this push) or
        ``(scheme, stored)`` for a new chunk."""
        w, ids, answer = job
        known_packs = answer["packs"]
        cctx = self._compressor()
        seen: set[bytes] = set()
        probe = True  # until a chunk compresses
        grouping: tuple[int, int] | None = None  # chosen at the window's first new chunk
        plan = Plan(self.records)
        pos = 0
        for i, (cid, loc) in enumerate(zip(ids, answer["locations"], strict=True)):
            if loc is not None:
                plan.append(("known", known_packs[loc[0]], loc[1]))
            elif cid in seen or cid in self.recent:
                plan.append(("dup",))
            else:
                seen.add(cid)
                if grouping is None:
                    grouping = _choose_grouping(cctx, w)
                    width, shift = grouping
                    if width > 1:  # split the whole window once (see chunk_planes)
                        first = (w.offset + shift) % width
                        planes = self._plane_scratch().split(w.data, width, first)
                off, n = w.cuts[i]
                raw = w.chunk(i)
                out = plan.room(pos, n) if width > 1 else None
                mine = packfmt.chunk_planes(planes, width, first, off, off + n) if out else None
                phase = (first + off) % width if width > 1 else 0
                entry = packfmt.compress(cctx, raw, probe, width, phase, out, mine)
                probe = entry[0] == packfmt.SCHEME_RAW
                if out is not None and entry[0] > packfmt.SCHEME_ZSTD:
                    pos += len(entry[1])
                plan.append(entry)
        return w, ids, plan

    # -- in order, on the calling thread ---------------------------------------
    def _place(
        self,
        w: Window,
        ids: list[bytes],
        plan: list,
        terms: list[list],
        first: int = 0,
        end: int | None = None,
        lane: Lane | None = None,
    ) -> None:
        """Put chunks ``[first, end)`` of a window in ``lane``'s packs (the packer's own
        by default), in order, recording terms. Lanes place on threads of their own."""
        if self._halt.is_set():
            raise _Halted
        lane = lane or self.lane
        stop = len(ids) if end is None else end
        new = 0
        for i in range(first, stop):
            cid, entry = ids[i], plan[i]
            if entry[0] == "known":
                self._add_term(terms, entry[1], entry[2], cid)
                continue
            with self._lock:
                loc = self.recent.get(cid)
            if loc is not None:  # already placed earlier in this push
                self._add_term(terms, *loc, cid)
                continue
            if entry[0] == "dup":  # evicted from ``recent`` meanwhile: compress it here
                entry = packfmt.compress(self._compressor(), w.chunk(i))
            scheme, stored = entry
            if lane.writer is None:
                lane.writer = self._new_writer()
            idx = lane.writer.add(cid, w.cuts[i][1], scheme, stored)
            new += 1
            with self._lock:
                self.recent[cid] = (lane.slot, idx)
                if len(self.recent) > RECENT_LIMIT:
                    self.recent.popitem(last=False)
            self._add_term(terms, lane.slot, idx, cid)
            if lane.writer.full():  # closed by its own records: see PackWriter.full
                self._flush_pack(lane)
        with self._lock:
            self.stats.chunks_total += max(0, stop - first)
            self.stats.chunks_new += new

    def _add_term(self, terms: list[list], pack: PackSlot | str, idx: int, key: bytes) -> None:
        """Append chunk ``idx`` of ``pack`` (whose key is ``key``), joining the last term
        when consecutive; each term's proof covers the keys of its chunks."""
        if terms:
            last = terms[-1]
            if last[0] is pack and last[2] == idx:
                last[2] = idx + 1
                last[3].update(key)
                return
        proof = blake3.blake3(key=self.proof_key)
        proof.update(key)
        terms.append([pack, idx, idx + 1, proof])

    # -- packs -------------------------------------------------------------
    def _new_writer(self) -> packfmt.PackWriter:
        with self._lock:
            buf = self._pack_buffers.pop() if self._pack_buffers else None
        return packfmt.PackWriter(self.target_size, buf)

    def _flush_pack(self, lane: Lane | None = None) -> None:
        """Ship ``lane``'s pack (the packer's own by default) once fewer than
        ``PACKS_IN_FLIGHT`` packs are shipping; the lane fills a new one. A pack that
        failed to ship fails this."""
        lane = lane or self.lane
        writer = lane.writer
        if writer is None or not len(writer):
            return
        self._ship_gate.acquire()
        try:
            self._raise_failed()
            job = self.io.submit(self._finish_and_ship, writer, lane.slot)
        except BaseException:
            self._ship_gate.release()
            raise
        job.add_done_callback(lambda _: self._ship_gate.release())
        with self._lock:
            self.shipping.append(job)
        lane.slot, lane.writer = PackSlot(), None

    def _raise_failed(self) -> None:
        """Forget the packs shipped; raise the error of one that failed."""
        with self._lock:
            done = [j for j in self.shipping if j.done()]
            for j in done:
                self.shipping.remove(j)
        for j in done:
            j.result()

    def _finish_and_ship(self, writer: packfmt.PackWriter, slot: PackSlot) -> None:
        try:
            pack = writer.finish()
            slot.id = pack.id
            self.ship(pack)
            self.stats.packs += 1
        finally:
            with self._lock:
                self._pack_buffers.append(writer.buffer)

    def finish(self) -> None:
        """Ship the last pack and wait until every pack is shipped."""
        self._flush_pack()
        while True:
            with self._lock:
                if not self.shipping:
                    return
                job = self.shipping.popleft()
            job.result()

    # -- files -------------------------------------------------------------
    def _same_as_known(
        self, rel: str, size: int, known: dict | None, cuts: list[tuple[int, int, bytes]]
    ) -> FileResult | None:
        """The file as a reuse of the latest version's, when its file id (from its chunk
        keys) equals that file's."""
        if known is None or known["size"] != size or file_id_of(cuts) != known["digest"]:
            return None
        self.progress(size)
        return reused(rel, size, known)

    def add_similar_file(
        self, path: Path, rel: str, known: dict, lane: Lane | None = None, depth: int = 0
    ) -> FileResult:
        """A large file that resembles one of the latest version (a new checkpoint of
        the same model): cut and hash all of it first on two processes
        (:func:`chunkyard.hashing.start_chunk_ids`); unchanged, it is named, not sent;
        otherwise ask the gateway about every chunk at once, then read, compress and
        send only the runs that hold new chunks, while its BLAKE3 is computed beside.
        ``lane`` and ``depth`` as for :meth:`add_file`."""
        depth = depth or self.depth
        size = path.stat().st_size
        cuts = start_chunk_ids(path).result()
        same = self._same_as_known(rel, size, known, cuts)
        if same is not None:
            return same
        digest_job = self.digest_pool.submit(_digest_of, path)
        packs_: list[str] = []
        where: dict[str, int] = {}
        locations: list = []
        for i in range(0, len(cuts), LOOKUP_BATCH):
            answer = self.lookup([c[2] for c in cuts[i : i + LOOKUP_BATCH]])
            for loc in answer["locations"]:
                if loc is not None:
                    pack = answer["packs"][loc[0]]
                    loc = [where.setdefault(pack, len(where)), loc[1]]
                    if loc[0] == len(packs_):
                        packs_.append(pack)
                locations.append(loc)
        terms: list[list] = []
        fd = os.open(path, os.O_RDONLY)

        def jobs() -> Iterator[tuple[Window, list[bytes], dict]]:
            pos = 0
            for group in _groups(cuts, WINDOW_SIZE):
                start, end = group[0][0], group[-1][0] + group[-1][1]
                locs = locations[pos : pos + len(group)]
                pos += len(group)
                rel_cuts = [(o - start, n) for o, n, _ in group]
                if all(loc is not None for loc in locs):  # nothing new: nothing to read
                    w = Window(memoryview(b""), rel_cuts, start)
                else:
                    buf = self.buffers.get()
                    view = memoryview(buf)[: end - start]
                    got = os.preadv(fd, [view], start)
                    if got != end - start:
                        raise InvalidRequest(f"{path} changed while it was being pushed")
                    w = Window(view, rel_cuts, start, buf, self.buffers)
                yield w, [c[2] for c in group], {"packs": packs_, "locations": locs}

        try:
            for w, ids, plan in pipelined(self.cpu, self._compress_new, jobs(), depth):
                self._place(w, ids, plan, terms, lane=lane)
                plan.release()
                w.release()
                self.progress(sum(n for _, n in w.cuts))
        finally:
            os.close(fd)
        return FileResult(rel, size, digest_job.result(), terms=terms)

    def add_small_files(self, files: list[tuple[Path, str, dict | None]]) -> list[FileResult]:
        """Files of at most :data:`SMALL_MAX` bytes, many at a time, results in order.

        Each file is read whole, cut and hashed on this thread; a batch of files (up to
        a window's bytes) takes one missing-chunk query and is compressed on the CPU
        pool while the next batch is read. Through the streaming pipeline each file cost
        a query and several thread hand-offs: ~3.6 ms per file, 36 s for 10,000."""
        results: list[FileResult] = []
        pending: deque[tuple[list, Future]] = deque()

        def place(records: list, job: Future) -> None:
            w, ids, plan = job.result()
            for result, first, end in records:
                if result.from_version is None:
                    self._place(w, ids, plan, result.terms, first, end)
                self.progress(result.size)
                results.append(result)
            plan.release()

        def lookup_and_compress(w: Window, ids: list[bytes]) -> tuple[Window, list, list]:
            return self._compress_new((w, ids, self.lookup(ids) if ids else nothing_stored([])))

        for records, w, ids in self._small_batches(files):
            pending.append((records, self.cpu.submit(lookup_and_compress, w, ids)))
            if len(pending) > 1:
                place(*pending.popleft())
        while pending:
            place(*pending.popleft())
        return results

    def _small_batches(
        self, files: list[tuple[Path, str, dict | None]]
    ) -> Iterator[tuple[list, Window, list[bytes]]]:
        """Batches of small files read into one buffer: ([(result, first chunk, end
        chunk)], a window over the buffer, chunk ids)."""
        cdc = new_chunker()
        records: list = []
        buf = bytearray()
        cuts: list[tuple[int, int]] = []
        ids: list[bytes] = []
        for path, rel, known in files:
            with open(path, "rb") as f:
                data = f.read(SMALL_MAX + 1)
            if len(data) > SMALL_MAX:
                raise InvalidRequest(f"{path} changed while it was being pushed")
            mine = [
                (c.offset, c.length, chunk_key(memoryview(data)[c.offset : c.offset + c.length]))
                for c in (cdc.cut_buf(data) if data else ())
            ]
            same = self._same_as_known(rel, len(data), known, mine)
            if same is not None:
                records.append((same, len(ids), len(ids)))
                continue
            first, base = len(ids), len(buf)
            buf += data
            cuts += [(base + off, n) for off, n, _ in mine]
            ids += [key for _, _, key in mine]
            b3sum = blake3.blake3(data).hexdigest()
            records.append((FileResult(rel, len(data), b3sum), first, len(ids)))
            if len(buf) >= WINDOW_SIZE or len(ids) >= SMALL_BATCH_CHUNKS:
                yield records, Window(memoryview(buf), cuts, 0), ids
                records, buf, cuts, ids = [], bytearray(), [], []
        if records:
            yield records, Window(memoryview(buf), cuts, 0), ids

    def add_file(
        self,
        path: Path,
        rel: str,
        known: dict | None = None,
        lane: Lane | None = None,
        depth: int = 0,
    ) -> FileResult:
        """Chunk one file into the packs. ``known``: the same path's entry in the latest
        version ({size, digest (its file id), b3sum, version}); a file of that size is
        cut and hashed first, and reused if its file id matches. ``lane``: whose packs
        its new chunks go to (the packer's own by default); ``depth``: windows hashed
        or compressed at once (0: the packer's; a lane's share of them when files run
        beside each other, so that two take the memory of one)."""
        depth = depth or self.depth
        ahead = min(2, depth)  # windows read ahead
        hashing = min(DEPTH, depth + 1) + ahead  # windows held for the whole-file digest
        size = path.stat().st_size
        if known is not None and known["size"] == size:
            same = self._same_as_known(rel, size, known, chunk_ids(path, parallel=False))
            if same is not None:
                return same
        terms: list[list] = []
        hasher = new_file_hasher()
        digests: deque[Future] = deque()

        def update_digest(w: Window) -> None:
            try:
                hasher.update(w.data)
            finally:
                w.release()

        with open(path, "rb") as f:

            def windows_with_digest() -> Iterator[Window]:
                for w in windows(f, size_hint=size, pool=self.buffers, read_ahead=ahead):
                    w.hold()
                    digests.append(self.digest_pool.submit(update_digest, w))
                    while len(digests) > hashing:
                        digests.popleft().result()
                    yield w

            hashed = pipelined(self.cpu, self._hash, windows_with_digest(), depth)
            asking = LOOKUPS if ahead > 1 else 1  # a lane's share: one round trip ahead
            looked_up = pipelined(self.lookups, self._lookup, hashed, asking)
            for w, ids, plan in pipelined(self.cpu, self._compress_new, looked_up, depth):
                n = len(w.data)
                self._place(w, ids, plan, terms, lane=lane)
                plan.release()
                w.release()
                self.progress(n)
        for d in digests:
            d.result()
        return FileResult(rel, size, hasher.hexdigest(), terms=terms)

    def add_files(self, files: list[tuple[Path, str, dict | None]]) -> list[FileResult]:
        """Files larger than :data:`SMALL_MAX` (``(path, path in the version, known)``
        as for :meth:`add_file`), results in order.

        With two files of at least :data:`PARALLEL_MIN` bytes or more, on a machine
        with cores to spare (:func:`lane_count`), the files are dealt to lanes before
        anything runs, each in turn to the lane with the fewest bytes so far (the
        packer's own lane first), and the lanes run at once, each its files in order
        through a shallower pipeline. Which lane a file takes depends on the sizes
        alone, and a lane's packs on its files alone: a push run again on the same
        machine deals and packs the same way. Otherwise every file runs in order in
        the packer's lane, as ever."""
        sizes = [p.stat().st_size for p, _, _ in files]
        count = lane_count()
        if count < 2 or sum(n >= PARALLEL_MIN for n in sizes) < 2:
            return [self._one(*f) for f in files]
        lanes = [self.lane] + [Lane() for _ in range(count - 1)]
        dealt: list[list[int]] = [[] for _ in lanes]
        load = [0] * len(lanes)
        for i, n in enumerate(sizes):
            k = load.index(min(load))
            dealt[k].append(i)
            load[k] += n
        out: dict[int, FileResult] = {}

        share = max(1, self.depth // len(lanes))

        def run(k: int) -> None:
            lane = lanes[k]
            for i in dealt[k]:
                out[i] = self._one(*files[i], lane=lane, depth=share)
            if lane is not self.lane:
                self._flush_pack(lane)  # its tail; the packer's own lane goes on

        pool = ThreadPoolExecutor(len(lanes), thread_name_prefix="cy-lane")
        running = [pool.submit(run, k) for k in range(len(lanes))]
        try:
            for job in running:
                job.result()
        except BaseException:
            self._halt.set()  # the other lane stops at its next window
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [out[i] for i in range(len(files))]

    def _one(
        self,
        path: Path,
        rel: str,
        known: dict | None,
        lane: Lane | None = None,
        depth: int = 0,
    ) -> FileResult:
        """One file: a large one that resembles the latest version's file of its path
        by the hash-everything-first path, any other streamed."""
        if known is not None and path.stat().st_size >= SIMILAR_MIN:
            return self.add_similar_file(path, rel, known, lane, depth)
        return self.add_file(path, rel, known, lane, depth)


def _choose_grouping(cctx: packfmt.Compressor, w: Window) -> tuple[int, int]:
    """How to store a window's new chunks, from a sample of its middle."""
    n = packfmt.SAMPLE_SIZE
    start = max(0, (len(w.data) - n) // 2)
    sample = w.data[start : start + n]
    return packfmt.choose_grouping(cctx, sample, w.offset + start) if sample else (1, 0)


def _groups(cuts: list, limit: int) -> Iterator[list]:
    """Consecutive chunks in runs spanning at most ``limit`` bytes."""
    group: list = []
    for c in cuts:
        if group and c[0] + c[1] - group[0][0] > limit:
            yield group
            group = []
        group.append(c)
    if group:
        yield group
