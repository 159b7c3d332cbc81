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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

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
    """A run of whole chunks: ``data`` and the ``(offset, length)`` of each chunk in it."""

    data: memoryview
    cuts: list[tuple[int, int]]
    offset: int  # position of data[0] in the stream

    def chunk(self, i: int) -> memoryview:
        off, length = self.cuts[i]
        return self.data[off : off + length]


def _fill(stream: BinaryIO, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def windows(
    stream: BinaryIO, window_size: int = WINDOW_SIZE, size_hint: int | None = None
) -> Iterator[Window]:
    """Yield windows of whole chunks covering ``stream`` in order.

    Each window owns a fresh buffer, so consumers may keep it while the next is read.
    ``size_hint`` (bytes left in the stream) keeps buffers small for small files.
    """
    if window_size < 2 * MAX_SIZE:
        raise ValueError("window must hold at least two maximal chunks")
    cdc = new_chunker()
    carry = b""
    offset = 0
    remaining = size_hint
    while True:
        want = (
            window_size
            if remaining is None
            else max(1, min(window_size, remaining - offset - len(carry) + 1))
        )
        buf = bytearray(len(carry) + want)
        buf[: len(carry)] = carry
        filled = len(carry) + _fill(stream, memoryview(buf)[len(carry) :])
        eof = filled < len(buf)
        data = memoryview(buf)[:filled]
        if not filled:
            return
        cuts = [(c.offset, c.length) for c in cdc.cut_buf(data)]
        if not eof and len(cuts) > 1:
            last_off, _ = cuts.pop()
            carry = bytes(data[last_off:])
            data = data[:last_off]
        else:
            carry = b""
        yield Window(data, cuts, offset)
        offset += len(data)
        if eof:
            return
