"""Chunk ids of a whole file at the speed of every core, with exact FastCDC cuts.

Threads cannot do this: FastCDC and BLAKE3 release the GIL for each ~80 KiB chunk,
and the hand-offs between a cutting thread and hashing threads cost as much as the
work. So a large file is cut in two halves by two processes, each cutting and hashing
on its own. The second half starts at an arbitrary offset, so its first cut points
differ from the true ones; but a FastCDC cut depends only on the bytes since the
previous cut, so once the first half's chain reaches a cut point the second half also
has, both chains are the same from there on. The first half reads a margin past the
middle to find that point; in the rare case it does not (no common cut within the
margin), the rest is cut sequentially. The result is exactly the chunking of the whole
stream (tested against it).

The split need not be the middle: a push that first hashes the whole file (to learn
whether it changed at all) starts the helper on the last three quarters, then cuts the
first quarter itself once the digest says the file did change; when it did not, the
helper's work is abandoned.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import blake3

from .buffers import BufferPool
from .chunking import MAX_SIZE, WINDOW_SIZE, windows

#: below this size one process is as fast as two
PARALLEL_MIN = 64 * 1024 * 1024
#: how far the first half reads past the middle to meet the second half's chain
SYNC_MARGIN = 8 * 1024 * 1024

Cut = tuple[int, int, bytes]  # (offset, length, chunk id)

_pool: tuple[ProcessPoolExecutor, Any] | None = None


class _Window(io.RawIOBase):
    """Bytes ``[start, end)`` of a file as a stream."""

    def __init__(self, path: str, start: int, end: int) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in close()
        self.f.seek(start)
        self.left = end - start

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def, override]
        view = memoryview(b)[: self.left]
        n = self.f.readinto(view) or 0
        self.left -= n
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


def cut_range(path: str, start: int, end: int) -> list[Cut]:
    """Cut and hash bytes ``[start, end)`` as if a stream began at ``start``. The last
    chunk ends at ``end`` whether or not the stream goes on. In a helper process it
    stops early (returning ``[]``) once the caller abandons the job."""
    out: list[Cut] = []
    # recycled buffers: fresh ones cost page faults worth half the cutting time here
    pool = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=2)
    with _Window(path, start, end) as stream:
        for w in windows(stream, size_hint=end - start, pool=pool):
            if _abandoned is not None and _abandoned.value:
                w.release()
                return []
            base = start + w.offset
            for i, (off, n) in enumerate(w.cuts):
                out.append((base + off, n, blake3.blake3(w.chunk(i)).digest()))
            w.release()
    return out


#: in the helper process: set by the caller to stop a running job
_abandoned: Any = None


def _init_helper(flag: Any) -> None:
    global _abandoned
    _abandoned = flag


_pool_lock = threading.Lock()
#: hands jobs to the helper process and waits for them, one at a time, off the caller's
#: thread: starting the helper takes ~0.15 s that the caller spends hashing instead
_starter = ThreadPoolExecutor(1, thread_name_prefix="cy-helper")


def _executor() -> tuple[ProcessPoolExecutor, Any]:
    global _pool
    with _pool_lock:
        if _pool is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["chunkyard.hashing"])
            flag = ctx.Value("b", 0, lock=False)
            pool = ProcessPoolExecutor(
                max_workers=1, mp_context=ctx, initializer=_init_helper, initargs=(flag,)
            )
            _pool = (pool, flag)
        return _pool


def helper_running() -> bool:
    """True once the helper process has been started in this process."""
    return _pool is not None


def _forget_pool() -> None:
    """Drop a helper pool whose process died; the next job starts a new one."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool[0].shutdown(wait=False, cancel_futures=True)
        _pool = None


class ChunkIdsJob:
    """:func:`chunk_ids` with the tail of the file already being cut in the helper
    process: the caller may do other work first (hash the whole file, to learn whether
    it changed at all), then take :meth:`result` or :meth:`abandon` it."""

    def __init__(self, path: str, size: int, parallel: bool, split: float) -> None:
        self.path, self.size = path, size
        self.middle = int(size * split) if parallel else size
        self._abandoned = False
        self.tail: Future | None = _starter.submit(self._cut_tail) if parallel else None

    def _cut_tail(self) -> list[Cut]:
        """On the starter thread: one job at a time, so a job abandoned before this one
        has stopped by now and the flag can be cleared."""
        pool, flag = _executor()
        flag.value = 0
        if self._abandoned:
            return []
        return pool.submit(cut_range, self.path, self.middle, self.size).result()

    def abandon(self) -> None:
        """Stop the helper's work (it returns at its next window)."""
        self._abandoned = True
        if _pool is not None:
            _pool[1].value = 1
        self.tail = None

    def result(self) -> list[Cut]:
        """``(offset, length, chunk id)`` of every chunk of the file, in order."""
        path, size, middle = self.path, self.size, self.middle
        if self.tail is None:
            return cut_range(path, 0, size)
        first = cut_range(path, 0, min(size, middle + SYNC_MARGIN))
        try:
            rest = self.tail.result()
        except BrokenProcessPool:  # the helper died meanwhile: cut its part here
            _forget_pool()
            rest = cut_range(path, middle, size)
        self.tail = None
        starts = {c[0]: i for i, c in enumerate(rest)}
        for i, (off, n, _) in enumerate(first):
            end = off + n
            if end >= middle and end in starts and end < middle + SYNC_MARGIN:
                return first[: i + 1] + rest[starts[end] :]
        # no common cut within the margin (pathological data): go on from the last sure cut
        sure = [c for c in first if c[0] + c[1] < min(size, middle + SYNC_MARGIN)]
        resume = sure[-1][0] + sure[-1][1] if sure else 0
        return sure + cut_range(path, resume, size)


def start_chunk_ids(
    path: str | os.PathLike, parallel: bool | None = None, split: float = 0.5
) -> ChunkIdsJob:
    """Start :func:`chunk_ids`: the helper process cuts from ``split`` (a fraction of
    the file) to the end; the caller cuts the head when it asks for the result."""
    path = str(path)
    size = Path(path).stat().st_size
    if parallel is None:
        parallel = size >= PARALLEL_MIN and (os.cpu_count() or 1) > 1
    return ChunkIdsJob(path, size, parallel, split)


def chunk_ids(path: str | os.PathLike, parallel: bool | None = None) -> list[Cut]:
    """``(offset, length, chunk id)`` of every chunk of a file, in order."""
    return start_chunk_ids(path, parallel).result()


__all__ = [
    "MAX_SIZE",
    "ChunkIdsJob",
    "chunk_ids",
    "cut_range",
    "helper_running",
    "start_chunk_ids",
]
