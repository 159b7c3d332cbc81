import blake3
import numpy as np
import pytest
import zstandard

from chunkyard import packs
from chunkyard.digest import chunk_id, chunk_key
from chunkyard.errors import PackCorrupt
from conftest import random_bytes


def build(chunks: list[bytes]) -> packs.Pack:
    w = packs.PackWriter(1024 * 1024)
    c = packs.new_compressor()
    for raw in chunks:
        scheme, stored = packs.compress(c, raw)
        w.add(blake3.blake3(raw).digest(), len(raw), scheme, stored)
    return w.finish()


def test_round_trip_and_layout():
    chunks = [random_bytes(70_000, seed=1), b"a" * 50_000, b"", random_bytes(10, seed=2)]
    p = build(chunks)
    data = bytes(p.data)
    assert data[:4] == packs.MAGIC and data[-8:] == packs.FOOTER_MAGIC
    # layout 3: the id is a keyed hash of the index and footer, not of every byte
    index_offset = packs.FOOTER.unpack(data[-packs.FOOTER_SIZE :])[0]
    assert p.id == packs.tail_id(data[index_offset:]) == packs.pack_id_of(data)
    assert blake3.blake3(data).hexdigest() != p.id
    checked = packs.verify(p.id, data)
    entries = [e for e, _ in checked]
    assert entries == p.entries
    assert [key for _, key in checked] == [chunk_key(c) for c in chunks]
    assert [e.chunk_id for e in entries] == [chunk_id(chunk_key(c)) for c in chunks]
    assert [e.raw_len for e in entries] == [len(c) for c in chunks]
    assert entries[1].scheme == packs.SCHEME_ZSTD and entries[0].scheme == packs.SCHEME_RAW
    for e, raw in zip(entries, chunks, strict=True):
        got, key = packs.decode(e, data[e.offset : e.offset + e.stored_len])
        assert bytes(got) == raw and key == chunk_key(raw)
    run = [[e.chunk_id.hex(), e.stored_len, e.raw_len, e.scheme] for e in entries[:2]]
    start = entries[0].offset
    got = packs.decode_run(run, data[start : entries[2].offset], 5, 70_000)
    assert bytes(got) == (chunks[0] + chunks[1])[5:70_005]


@pytest.mark.parametrize("where", ["record", "index", "footer", "truncate"])
def test_corruption_is_detected(where):
    p = build([random_bytes(60_000, seed=3), b"b" * 40_000])
    data = bytearray(p.data)
    if where == "record":
        data[20] ^= 1
    elif where == "index":
        data[-packs.FOOTER_SIZE - 10] ^= 1
    elif where == "footer":
        data[-3] ^= 1
    else:
        data = data[:-1]
    with pytest.raises(PackCorrupt):
        packs.verify(p.id, bytes(data))
    # even with a matching id, the structure and chunk ids are checked
    with pytest.raises(PackCorrupt):
        packs.verify(packs.pack_id_of(bytes(data)), bytes(data))


def test_writer_respects_target_size():
    w = packs.PackWriter(300_000)
    assert w.fits(10**6)  # an empty pack always takes one record
    w.add(b"\0" * 32, 200_000, 0, b"\0" * 200_000)
    assert not w.fits(100_000)


def layout_1(chunks: list[bytes]) -> tuple[str, bytes]:
    """A pack as format 2 wrote it (layout 1: the index holds chunk keys)."""
    body, entries, pos = bytearray(packs.HEADER.pack(packs.MAGIC, 1, 0)), [], packs.HEADER_SIZE
    for raw in chunks:
        entries.append(packs.ENTRY.pack(chunk_key(raw), pos, len(raw), len(raw), 0))
        body += raw
        pos += len(raw)
    index = b"".join(entries)
    check = blake3.blake3(index).digest()[:16]
    data = bytes(
        body + index + packs.FOOTER.pack(pos, len(chunks), 1, 0, check, packs.FOOTER_MAGIC)
    )
    return blake3.blake3(data).hexdigest(), data


def test_packs_of_layout_1_stay_readable():
    chunks = [random_bytes(30_000, seed=4), random_bytes(20_000, seed=5)]
    pack_id, data = layout_1(chunks)
    checked = packs.verify(pack_id, data)  # entries come back with chunk ids
    assert [e.chunk_id for e, _ in checked] == [chunk_id(chunk_key(c)) for c in chunks]
    assert [key for _, key in checked] == [chunk_key(c) for c in chunks]
    run = [[e.chunk_id.hex(), e.stored_len, e.raw_len, e.scheme] for e, _ in checked]
    assert bytes(packs.decode_run(run, data[8 : 8 + 50_000], 0, 50_000)) == b"".join(chunks)
    bad = bytearray(data)
    bad[100] ^= 1
    with pytest.raises(PackCorrupt):
        packs.verify(blake3.blake3(bytes(bad)).hexdigest(), bytes(bad))


def layout_2(chunks: list[bytes]) -> tuple[str, bytes]:
    """A pack as chunkyard wrote it before byte grouping (layout 2: zstd or raw records,
    the id is the BLAKE3 of every byte)."""
    c = packs.new_compressor()
    body, entries, pos = bytearray(packs.HEADER.pack(packs.MAGIC, 2, 0)), [], packs.HEADER_SIZE
    for raw in chunks:
        scheme, stored = packs.compress(c, raw)
        entries.append(
            packs.ENTRY.pack(chunk_id(chunk_key(raw)), pos, len(stored), len(raw), scheme)
        )
        body += stored
        pos += len(stored)
    index = b"".join(entries)
    check = blake3.blake3(index).digest()[:16]
    data = bytes(
        body + index + packs.FOOTER.pack(pos, len(chunks), 2, 0, check, packs.FOOTER_MAGIC)
    )
    return blake3.blake3(data).hexdigest(), data


def test_packs_of_layout_2_stay_readable():
    chunks = [b"c" * 30_000, random_bytes(20_000, seed=6)]
    pack_id, data = layout_2(chunks)
    assert packs.pack_id_of(data) == pack_id
    checked = packs.verify(pack_id, data)
    assert [key for _, key in checked] == [chunk_key(c) for c in chunks]
    run = [[e.chunk_id.hex(), e.stored_len, e.raw_len, e.scheme] for e, _ in checked]
    end = checked[-1][0].offset + checked[-1][0].stored_len
    assert bytes(packs.decode_run(run, data[8:end], 0, 50_000)) == b"".join(chunks)
    bad = bytearray(data)
    bad[-packs.FOOTER_SIZE - 1] ^= 1  # flips a pad byte of the index: the id no longer matches
    with pytest.raises(PackCorrupt):
        packs.verify(pack_id, bytes(bad))


def weights(n: int, width: int, seed: int) -> bytes:
    """bf16 (width 2) or float32 (width 4) little-endian weights, normal(0, 0.02)."""
    rng = np.random.default_rng(seed)
    f32 = (rng.standard_normal(n // width + 1, dtype=np.float32) * np.float32(0.02)).view("<u4")
    data = (f32 >> 16).astype("<u2").tobytes() if width == 2 else f32.tobytes()
    return data[:n]


def test_top_planes_are_huffman_coded_with_zstds_acceleration():
    """The literal mode is an experimental zstd parameter set by number: if a zstd
    took it for something else, frames would grow (or the writer would fall back)."""
    top = np.frombuffer(weights(80_000, 2, seed=11), "<u2") >> 8
    plane = top.astype(np.uint8).tobytes()
    c = packs.PlaneCompressor()
    assert c.accelerated
    frame = c.compress(plane)
    assert len(frame) < 0.45 * len(plane)  # Huffman-coded: ~2.7 bits a byte
    assert zstandard.ZstdDecompressor().decompress(frame) == plane  # content size set


@pytest.mark.parametrize("width", packs.GROUP_WIDTHS)
def test_every_grouped_scheme_round_trips(width):
    c = packs.new_compressor()
    dctx = zstandard.ZstdDecompressor()
    lengths = [0, 1, 2, 3, 5, 4097, 60_001, packs.MAX_RECORD]
    for phase in range(width):
        scheme = width + phase
        assert packs.grouping(scheme) == (width, phase)
        for n in lengths:
            # a chunk of phase p starts p bytes into a value
            raw = weights(n + width, width, seed=n + phase)[phase : phase + n]
            planes = packs.plane_sizes(n, width, phase)
            assert sum(planes) == n
            stored = packs.group(c, raw, width, phase, probe=False)
            if stored is None:  # grouping did not shrink it: a writer stores it raw
                assert n < 64
                continue
            assert len(stored) < n
            entry = packs.Entry(chunk_id(chunk_key(raw)), 0, len(stored), n, scheme)
            got, key = packs.decode(entry, stored, dctx)
            assert bytes(got) == raw and key == chunk_key(raw)
            out = bytearray(n + 3)  # into a caller's buffer
            packs.decode(entry, stored, dctx, out=memoryview(out)[1 : n + 1])
            assert bytes(out[1 : n + 1]) == raw


def test_grouped_records_in_a_pack_and_in_runs():
    bf16, f32 = weights(200_000, 2, seed=7), weights(120_000, 4, seed=8)
    c = packs.new_compressor()
    w = packs.PackWriter(1024 * 1024)
    chunks = [(bf16[:99_999], 2, 0), (bf16[99_999:], 2, 1), (f32, 4, 0), (b"t" * 9000, 1, 0)]
    for raw, width, phase in chunks:
        scheme, stored = packs.compress(c, raw, True, width, phase)
        w.add(chunk_key(raw), len(raw), scheme, stored)
    p = w.finish()
    data = bytes(p.data)
    assert [e.scheme for e in p.entries] == [2, 3, 4, packs.SCHEME_ZSTD]
    assert sum(e.stored_len for e in p.entries[:2]) < 0.75 * len(bf16)
    checked = packs.verify(p.id, data)
    assert [key for _, key in checked] == [chunk_key(raw) for raw, _, _ in chunks]
    run = [[e.chunk_id.hex(), e.stored_len, e.raw_len, e.scheme] for e in p.entries]
    whole = b"".join(raw for raw, _, _ in chunks)
    records = data[8 : p.entries[-1].offset + p.entries[-1].stored_len]
    assert bytes(packs.decode_run(run, records, 7, len(whole) - 9)) == whole[7:-2]


@pytest.mark.parametrize("where", ["raw plane", "frame", "truncated frame"])
def test_damaged_grouped_record_is_detected(where):
    raw = weights(80_000, 2, seed=9)
    c = packs.new_compressor()
    stored = bytearray(packs.group(c, raw, 2, 0, probe=False))
    if where == "raw plane":
        stored[100] ^= 1
    elif where == "frame":
        stored[-5] ^= 0x40
    else:
        del stored[-3:]
    entry = packs.Entry(chunk_id(chunk_key(raw)), 0, len(stored), len(raw), 2)
    with pytest.raises(PackCorrupt):
        packs.decode(entry, bytes(stored))


def test_unknown_schemes_are_refused():
    raw = b"x" * 1000
    entry = packs.Entry(chunk_id(chunk_key(raw)), 0, 1000, 1000, 8)
    with pytest.raises(PackCorrupt, match="unknown scheme"):
        packs.decode(entry, raw)
    # a layout-2 pack may not use the schemes layout 3 added
    c = packs.new_compressor()
    stored = packs.group(c, weights(40_000, 2, seed=10), 2, 0, probe=False)
    body = packs.HEADER.pack(packs.MAGIC, 2, 0) + stored
    index = packs.ENTRY.pack(bytes(32), 8, len(stored), 40_000, 2)
    check = blake3.blake3(index).digest()[:16]
    data = body + index + packs.FOOTER.pack(len(body), 1, 2, 0, check, packs.FOOTER_MAGIC)
    with pytest.raises(PackCorrupt, match="unknown scheme"):
        packs.read_index(data)


def test_grouping_is_chosen_by_what_the_data_is():
    c = packs.new_compressor()
    n = packs.SAMPLE_SIZE
    assert packs.choose_grouping(c, weights(n, 2, seed=11), 0) == (2, 0)
    # a stream offset that is odd moves the phase, not the choice
    assert packs.choose_grouping(c, weights(n + 1, 2, seed=11)[1:], 1) == (2, 0)
    assert packs.choose_grouping(c, weights(n, 4, seed=12), 0) == (4, 0)
    # weights that start one byte into the stream (a header of odd length before them)
    assert packs.choose_grouping(c, weights(n, 2, seed=13), 1) == (2, 1)
    text = b" ".join(b"word%d" % (i % 97) for i in range(n // 6))[:n]
    assert packs.choose_grouping(c, text, 0) == (1, 0)


@pytest.mark.parametrize("width", packs.GROUP_WIDTHS)
def test_planes_of_a_window_slice_into_each_chunks_planes(width):
    """Splitting a window once and slicing each chunk's planes out of it gives exactly
    the planes of the chunk split on its own, at every alignment."""
    data = weights(300_001, width, seed=14)
    scratch = packs.PlaneScratch(len(data))
    for window_phase in range(width):
        whole = [p.copy() for p in scratch.split(data, width, window_phase)]
        for start, end in [(0, 1), (0, 77_777), (3, 4), (5, 100_003), (99_999, 300_001)]:
            phase = (window_phase + start) % width
            alone = [p.copy() for p in packs._planes(data[start:end], width, phase)]
            sliced = packs.chunk_planes(whole, width, window_phase, start, end)
            assert [bytes(p) for p in sliced] == [bytes(p) for p in alone]
