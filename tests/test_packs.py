import blake3
import pytest

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
    assert blake3.blake3(data).hexdigest() == p.id
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
        packs.verify(blake3.blake3(bytes(data)).hexdigest(), bytes(data))


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
