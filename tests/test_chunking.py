import io

import pytest

from chunkyard.chunking import MAX_SIZE, MIN_SIZE, BufferPool, new_chunker, windows
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
