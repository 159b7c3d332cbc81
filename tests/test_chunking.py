import io

import pytest

from chunkyard.buffers import BufferPool
from chunkyard.chunking import MAX_SIZE, MIN_SIZE, new_chunker, windows
from conftest import random_bytes


def whole_cuts(data: bytes) -> list[tuple[int, int]]:
    return [(c.offset, c.length) for c in new_chunker().cut_buf(data)]


def window_cuts(data: bytes, **kw) -> list[tuple[int, int]]:
    out = []
    for w in windows(io.BytesIO(data), **kw):
        out += [(w.offset + o, n) for o, n in w.cuts]
        w.release()
    return out


@pytest.mark.parametrize("read_ahead", [0, 2])
@pytest.mark.parametrize("pooled", [False, True])
def test_windows_cut_exactly_like_the_whole_stream(read_ahead, pooled):
    data = random_bytes(5 * 1024 * 1024 + 12345)
    whole = whole_cuts(data)
    for size, hint in ((2 * MAX_SIZE, None), (1024 * 1024, len(data)), (3 * MAX_SIZE, 10**9)):
        pool = BufferPool(size + MAX_SIZE, keep=2) if pooled else None
        got = window_cuts(data, window_size=size, size_hint=hint, pool=pool, read_ahead=read_ahead)
        assert got == whole


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``most`` bytes per read (a pipe, a socket)."""

    def __init__(self, data: bytes, most: int) -> None:
        self.data, self.pos, self.most = data, 0, most

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.most, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.mark.parametrize("pooled", [False, True])
def test_a_stream_longer_than_its_hint_or_read_in_pieces_cuts_the_same(pooled):
    """A file that grows while it is pushed, or a stream that answers short reads, must
    not change the cut points (a hint too small once cut such a stream into 1-byte
    chunks)."""
    data = random_bytes(3 * 1024 * 1024 + 7, seed=9)
    whole = whole_cuts(data)
    pool = BufferPool(2 * MAX_SIZE + MAX_SIZE, keep=2) if pooled else None
    kw = {"window_size": 2 * MAX_SIZE, "pool": pool}
    assert window_cuts(data, size_hint=1024 * 1024, **kw) == whole
    assert window_cuts(data, size_hint=0, **kw) == whole
    out = []
    for w in windows(Trickle(data, 100_000), **kw):
        out += [(w.offset + o, n) for o, n in w.cuts]
        w.release()
    assert out == whole


def test_windows_with_a_recycled_pool_give_the_same_bytes():
    data = random_bytes(3 * 1024 * 1024, seed=2)
    pool = BufferPool(2 * MAX_SIZE + MAX_SIZE, keep=2)
    rebuilt = bytearray()
    for w in windows(io.BytesIO(data), window_size=2 * MAX_SIZE, pool=pool):
        for i in range(len(w.cuts)):
            rebuilt += w.chunk(i)
        w.release()
    assert bytes(rebuilt) == data


def test_chunk_sizes_respect_the_format_limits():
    cuts = window_cuts(random_bytes(4 * 1024 * 1024, seed=3))
    assert all(MIN_SIZE <= n <= MAX_SIZE for _, n in cuts[:-1])


def test_empty_and_tiny_streams():
    assert window_cuts(b"") == []
    assert window_cuts(b"x", size_hint=1) == [(0, 1)]


def test_an_insertion_changes_only_nearby_chunks():
    data = random_bytes(4 * 1024 * 1024, seed=4)
    edited = data[:2_000_000] + b"hello" + data[2_000_000:]
    a = {data[o : o + n] for o, n in window_cuts(data)}
    b = {edited[o : o + n] for o, n in window_cuts(edited)}
    assert len(b - a) <= 3


def _address(buf) -> int:  # type: ignore[no-untyped-def]
    import numpy as np

    return np.frombuffer(buf, np.uint8).ctypes.data


def test_large_io_buffers_start_at_a_page_boundary():
    """Reads into a buffer 16 bytes into its page (where malloc puts large ones) cost
    3-4x the kernel copy on Zen 3 machines; every large buffer we read into starts at a
    page boundary instead."""
    import mmap

    from chunkyard import packs
    from chunkyard.buffers import SMALL, page_aligned

    bufs = [
        BufferPool(2 * MAX_SIZE + MAX_SIZE).get(),
        page_aligned(SMALL),
        packs.untouched(8 << 20),
        packs.PackWriter().buffer,
    ]
    for buf in bufs:
        assert _address(buf) % mmap.PAGESIZE == 0
        view = memoryview(buf).cast("B")
        assert not view.readonly and len(view) >= SMALL
    assert isinstance(page_aligned(100), bytearray) and len(page_aligned(100)) == 100
    assert len(page_aligned(0)) == 0
