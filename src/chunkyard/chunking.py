"""Content-defined chunking (FastCDC 2020) over bounded windows of a stream.

The parameters are part of the format (FORMAT.md): changing them changes every
chunk id and so every dedup decision.

A file is read in windows of a few MiB; each window is cut with ``pyfastcdc``, and the
last chunk of a window that is not at end-of-stream is carried into the next window.
This gives exactly the cut points of cutting the whole stream at once (a FastCDC cut
depends only on the bytes from the chunk start up to the cut), while memory stays
bounded by the window size whatever the file size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pyfastcdc import FastCDC

from .buffers import BufferPool, page_aligned

MIN_SIZE = 16 * 1024
AVG_SIZE = 64 * 1024
MAX_SIZE = 256 * 1024
#: 8 MiB windows: ~100 chunks each, large enough to amortise per-window Python work,
#: small enough that a few windows in flight stay far below the memory budget.
WINDOW_SIZE = 8 * 1024 * 1024


def new_chunker() -> FastCDC:
    return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)


@dataclass
class Window:
    """A run of whole chunks: ``data`` and the ``(offset, length)`` of each chunk in it.

    With a pool, each user of the window calls ``release()`` once when done (the
    creator counts as one user; ``hold()`` adds one); the last returns the buffer."""

    data: memoryview
    cuts: list[tuple[int, int]]
    offset: int  # position of data[0] in the stream
    _buf: bytearray | None = None
    _pool: BufferPool | None = None
    _users: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def chunk(self, i: int) -> memoryview:
        off, length = self.cuts[i]
        return self.data[off : off + length]

    def hold(self) -> None:
        with self._lock:
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users == 0
        if last and self._pool is not None and self._buf is not None:
            self._pool.put(self._buf)
            self._buf = None


def _fill(stream: BinaryIO, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


#: A block read from the stream: (buffer, where its bytes start, how many, end reached).
#: Pooled buffers keep their first MAX_SIZE bytes free, so the chunk carried over from
#: the previous window can be put in front without copying the block.
_Block = tuple[bytearray, int, int, bool]


def _blocks(
    stream: BinaryIO, window_size: int, size_hint: int | None, pool: BufferPool | None
) -> Iterator[_Block]:
    done = 0
    while True:
        want = window_size
        if size_hint is not None and done <= size_hint:
            # +1 so that end-of-stream is seen without another read; a stream that turns
            # out longer than its hint goes on in whole windows
            want = min(window_size, size_hint - done + 1)
        if pool is not None and want == window_size:
            buf, front = pool.get(), MAX_SIZE
        else:
            buf, front = page_aligned(want), 0
        n = _fill(stream, memoryview(buf)[front : front + want])
        done += n
        yield buf, front, n, n < want
        if n < want:
            return


def prefetch(items: Iterator, depth: int) -> Iterator:
    """Run an iterator on its own thread, ``depth`` items ahead of the consumer."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as exc:  # handed to the consumer
            q.put(exc)

    threading.Thread(target=run, name="cy-read", daemon=True).start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def windows(
    stream: BinaryIO,
    window_size: int = WINDOW_SIZE,
    size_hint: int | None = None,
    pool: BufferPool | None = None,
    read_ahead: int = 0,
) -> Iterator[Window]:
    """Yield windows of whole chunks covering ``stream`` in order.

    Each window owns its buffer until released, so consumers may keep it while the
    next is read. ``size_hint`` (bytes in the stream) keeps buffers small for small
    files; ``pool`` (buffers of ``window_size + MAX_SIZE``) recycles large ones;
    ``read_ahead`` reads and cuts that many windows ahead on a thread of its own, so
    the consumer's thread only hands windows on.
    """
    if read_ahead:
        yield from read_ahead_windows(stream, window_size, size_hint, pool, read_ahead)
        return
    if window_size < 2 * MAX_SIZE:
        raise ValueError("window must hold at least two maximal chunks")
    if pool is not None and pool.size < window_size + MAX_SIZE:
        raise ValueError("pool buffers must hold a window plus a carried chunk")
    cdc = new_chunker()
    carry = b""
    offset = 0
    for buf, front, n, eof in _blocks(stream, window_size, size_hint, pool):
        if front >= len(carry):
            start = front - len(carry)
            memoryview(buf)[start:front] = carry
        else:  # a small unpooled block after a carried chunk: join them
            if pool is not None and len(buf) == pool.size:
                pool.put(buf)
            buf, start, front = bytearray(carry) + buf[front : front + n], 0, len(carry)
        data = memoryview(buf)[start : front + n]
        if not len(data):
            if pool is not None and len(buf) == pool.size:
                pool.put(buf)
            return
        cuts = [(c.offset, c.length) for c in cdc.cut_buf(data)]
        if not eof:  # the last chunk may not be whole yet: it starts the next window
            last_off, _ = cuts.pop()
            carry = bytes(data[last_off:])
            data = data[:last_off]
            if not cuts:  # a short read: nothing whole yet
                if pool is not None and len(buf) == pool.size:
                    pool.put(buf)
                continue
        else:
            carry = b""
        pooled = pool if (pool is not None and len(buf) == pool.size) else None
        yield Window(data, cuts, offset, buf if pooled else None, pooled)
        offset += len(data)


def read_ahead_windows(
    stream: BinaryIO, window_size: int, size_hint: int | None, pool: BufferPool | None, depth: int
) -> Iterator[Window]:
    return prefetch(windows(stream, window_size, size_hint, pool), depth)
