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
"""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import blake3

from .chunking import MAX_SIZE, WINDOW_SIZE, BufferPool, windows

#: below this size one process is as fast as two
PARALLEL_MIN = 64 * 1024 * 1024
#: how far the first half reads past the middle to meet the second half's chain
SYNC_MARGIN = 8 * 1024 * 1024

Cut = tuple[int, int, bytes]  # (offset, length, chunk id)

_pool: ProcessPoolExecutor | None = None


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
    chunk ends at ``end`` whether or not the stream goes on."""
    out: list[Cut] = []
    # recycled buffers: fresh ones cost page faults worth half the cutting time here
    pool = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=2)
    with _Window(path, start, end) as stream:
        for w in windows(stream, size_hint=end - start, pool=pool):
            base = start + w.offset
            for i, (off, n) in enumerate(w.cuts):
                out.append((base + off, n, blake3.blake3(w.chunk(i)).digest()))
            w.release()
    return out


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["chunkyard.hashing"])
        _pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    return _pool


def chunk_ids(path: str | os.PathLike, parallel: bool | None = None) -> list[Cut]:
    """``(offset, length, chunk id)`` of every chunk of a file, in order."""
    path = str(path)
    size = Path(path).stat().st_size
    if parallel is None:
        parallel = size >= PARALLEL_MIN and (os.cpu_count() or 1) > 1
    if not parallel:
        return cut_range(path, 0, size)
    middle = size // 2
    second: Future = _executor().submit(cut_range, path, middle, size)
    first = cut_range(path, 0, min(size, middle + SYNC_MARGIN))
    rest = second.result()
    starts = {c[0]: i for i, c in enumerate(rest)}
    for i, (off, n, _) in enumerate(first):
        end = off + n
        if end >= middle and end in starts and end < middle + SYNC_MARGIN:
            return first[: i + 1] + rest[starts[end] :]
    # no common cut within the margin (pathological data): go on from the last sure cut
    sure = [c for c in first if c[0] + c[1] < min(size, middle + SYNC_MARGIN)]
    resume = sure[-1][0] + sure[-1][1] if sure else 0
    return sure + cut_range(path, resume, size)


__all__ = ["MAX_SIZE", "chunk_ids", "cut_range"]
