"""The pack format: many compressed chunks in one immutable object, then an index.

    pack   = header record* index footer
    header = "CYPK" version:u16 reserved:u16                         (8 bytes)
    record = zstd frame, or the raw chunk where zstd does not shrink it
    index  = entry*                                                  (52 bytes each)
    entry  = chunk_id:32 offset:u64 stored_len:u32 raw_len:u32 scheme:u8 pad:3
    footer = index_offset:u64 count:u32 version:u16 reserved:u16
             index_check:16 magic:"CYPKIDX\\0"                       (40 bytes)

All integers little-endian. A pack's id is the BLAKE3 of all its bytes. In layout
version 2 an entry holds the chunk's public id (``digest.chunk_id`` of its key); in
version 1 it held the key itself. FORMAT.md specifies it in prose; this module is the
only code that knows the byte layout and does no I/O beyond bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import blake3
import zstandard

from .digest import chunk_id, chunk_key
from .errors import PackCorrupt

#: the layout this code writes, and those it reads
FORMAT_VERSION = 2
READABLE = (1, 2)
MAGIC = b"CYPK"
FOOTER_MAGIC = b"CYPKIDX\0"
HEADER = struct.Struct("<4sHH")
ENTRY = struct.Struct("<32sQIIB3x")
FOOTER = struct.Struct("<QIHH16s8s")
HEADER_SIZE = HEADER.size  # 8
FOOTER_SIZE = FOOTER.size  # 40

SCHEME_RAW = 0
SCHEME_ZSTD = 1
ZSTD_LEVEL = 1

#: Packs close once they reach this many bytes. 32 MiB keeps a few packs in flight
#: within the client's memory budget and makes a pack a handful of multipart parts.
TARGET_SIZE = 32 * 1024 * 1024
#: Hard limit of the format.
MAX_SIZE = 64 * 1024 * 1024
#: Largest record: a maximal chunk (zstd never expands what it keeps; raw otherwise).
MAX_RECORD = 256 * 1024


def pack_key(pack_id: str) -> str:
    """Where a pack lives in a store (FORMAT.md, global rule 2)."""
    return f"packs/{pack_id[:2]}/{pack_id}"


class Entry(NamedTuple):
    """One index entry. A named tuple: built by the thousand per pack on every push,
    completion and verification, where a frozen dataclass cost ~2 µs each."""

    chunk_id: bytes
    offset: int
    stored_len: int
    raw_len: int
    scheme: int


@dataclass(frozen=True)
class Pack:
    id: str
    data: bytes | memoryview
    entries: list[Entry]

    @property
    def size(self) -> int:
        return len(self.data)


#: bytes of a chunk tried first: if even they do not shrink, the chunk is stored raw
PROBE_SIZE = 8 * 1024


def compress(
    cctx: zstandard.ZstdCompressor, raw: bytes | memoryview, probe: bool = True
) -> tuple[int, bytes | memoryview]:
    """zstd level 1, or the raw bytes where compression does not shrink them.

    With ``probe``, a chunk whose first 8 KiB do not shrink by 2% is stored raw without
    compressing the rest: random-looking data (encrypted, already compressed, many
    weight formats) then costs a tenth of a full attempt. The probe itself costs a fifth
    of compressing a chunk that does shrink, so callers skip it after a chunk that
    compressed (neighbouring chunks are alike). Storing raw is always valid; this only
    decides how hard to try."""
    if probe and len(raw) > 2 * PROBE_SIZE:
        probe = cctx.compress(raw[:PROBE_SIZE])
        if len(probe) > PROBE_SIZE * 0.98:
            return SCHEME_RAW, raw
    out = cctx.compress(raw)
    if len(out) < len(raw):
        return SCHEME_ZSTD, out
    return SCHEME_RAW, raw


def new_compressor() -> zstandard.ZstdCompressor:
    """One per thread: zstd contexts are not thread-safe."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, write_checksum=False)


class PackWriter:
    """Writes chunk records into one preallocated buffer; ``finish`` adds index and
    footer in place. Reusing buffers matters: touching fresh memory for every pack
    cost more than compressing it on the development VM."""

    def __init__(self, target_size: int = TARGET_SIZE, buffer: bytearray | None = None) -> None:
        if not HEADER_SIZE + FOOTER_SIZE < target_size <= MAX_SIZE:
            raise ValueError("target_size out of range")
        # the first record is always accepted, so leave room for one maximal chunk
        self.capacity = target_size + 2 * MAX_RECORD
        if buffer is None or len(buffer) < self.capacity:
            buffer = bytearray(self.capacity)
        self.target_size = target_size
        self.buffer = buffer
        HEADER.pack_into(buffer, 0, MAGIC, FORMAT_VERSION, 0)
        self._pos = HEADER_SIZE
        self.entries: list[Entry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def fits(self, stored_len: int) -> bool:
        """True if a record of ``stored_len`` bytes keeps the pack within target."""
        projected = self._pos + stored_len + (len(self.entries) + 1) * ENTRY.size + FOOTER_SIZE
        return not self.entries or projected <= self.target_size

    def full(self) -> bool:
        """True once one more record of the largest size might take the pack past its
        target. Writers that close a pack as soon as it is full (rather than when the
        next record does not fit) make where a pack ends depend on its own records only:
        a push run again after an interruption, skipping packs that were finished,
        rebuilds the others byte for byte."""
        projected = self._pos + MAX_RECORD + (len(self.entries) + 1) * ENTRY.size + FOOTER_SIZE
        return projected > self.target_size

    def add(self, key: bytes, raw_len: int, scheme: int, stored: bytes | memoryview) -> int:
        """Append a chunk's record; ``key`` is its chunk key (the index gets its id)."""
        n = len(stored)
        if n > MAX_RECORD:
            raise ValueError("record larger than a maximal chunk")
        index = len(self.entries)
        self.entries.append(Entry(chunk_id(key), self._pos, n, raw_len, scheme))
        self.buffer[self._pos : self._pos + n] = stored
        self._pos += n
        return index

    def finish(self) -> Pack:
        """The finished pack; its ``data`` is a view of this writer's buffer."""
        index = b"".join(
            ENTRY.pack(e.chunk_id, e.offset, e.stored_len, e.raw_len, e.scheme)
            for e in self.entries
        )
        index_offset, end = self._pos, self._pos + len(index) + FOOTER_SIZE
        check = blake3.blake3(index).digest()[:16]
        self.buffer[index_offset : index_offset + len(index)] = index
        FOOTER.pack_into(
            self.buffer,
            end - FOOTER_SIZE,
            index_offset,
            len(self.entries),
            FORMAT_VERSION,
            0,
            check,
            FOOTER_MAGIC,
        )
        data = memoryview(self.buffer)[:end]
        pack_id = blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()
        return Pack(pack_id, data, self.entries)


def parse_footer(tail: bytes, pack_size: int) -> tuple[int, int]:
    """(index_offset, count) from the last FOOTER_SIZE bytes of a pack."""
    if len(tail) != FOOTER_SIZE or pack_size < HEADER_SIZE + FOOTER_SIZE:
        raise PackCorrupt("pack is too short to hold a footer")
    index_offset, count, version, _, _, magic = FOOTER.unpack(tail)
    if magic != FOOTER_MAGIC:
        raise PackCorrupt("pack footer magic is wrong")
    if version not in READABLE:
        raise PackCorrupt(f"unsupported pack format version {version}")
    if count == 0:
        raise PackCorrupt("a pack holds at least one record")
    if index_offset + count * ENTRY.size + FOOTER_SIZE != pack_size:
        raise PackCorrupt("pack index does not fit the pack size")
    return index_offset, count


def parse_index(index: bytes, expected_check: bytes | None = None) -> list[Entry]:
    if expected_check is not None and blake3.blake3(index).digest()[:16] != expected_check:
        raise PackCorrupt("pack index checksum does not match")
    return list(map(Entry._make, ENTRY.iter_unpack(index)))


def index_from_tail(tail: bytes | memoryview, pack_size: int) -> list[Entry] | int:
    """Parse a pack's index from its last bytes, checking everything but the records.

    Returns the entries, or the number of tail bytes needed if ``tail`` is too short
    (so a reader fetches the footer and index with one or two ranged reads)."""
    if pack_size > MAX_SIZE:
        raise PackCorrupt("pack is larger than the format allows")
    if pack_size < HEADER_SIZE + FOOTER_SIZE or len(tail) < FOOTER_SIZE:
        raise PackCorrupt("pack is too short")
    footer = tail[-FOOTER_SIZE:]
    index_offset, count = parse_footer(footer, pack_size)
    need = pack_size - index_offset
    if len(tail) < need:
        return need
    index = tail[len(tail) - need : len(tail) - FOOTER_SIZE]
    entries = parse_index(index, FOOTER.unpack(footer)[4])
    pos = HEADER_SIZE
    for e in entries:
        if e.offset != pos or e.scheme not in (SCHEME_RAW, SCHEME_ZSTD):
            raise PackCorrupt("pack records are not contiguous or use an unknown scheme")
        if e.scheme == SCHEME_RAW and e.stored_len != e.raw_len:
            raise PackCorrupt("raw record length differs from chunk length")
        if e.raw_len > MAX_RECORD:
            raise PackCorrupt("record is larger than a maximal chunk")
        pos += e.stored_len
    if pos != index_offset:
        raise PackCorrupt("pack records do not end where the index starts")
    return entries


def layout_version(data: bytes | memoryview) -> int:
    """The layout version of a whole pack held in memory, header and footer agreeing."""
    if len(data) < HEADER_SIZE + FOOTER_SIZE:
        raise PackCorrupt("pack is too short")
    magic, version, _ = HEADER.unpack_from(data)
    footer_version = FOOTER.unpack_from(data, len(data) - FOOTER_SIZE)[2]
    if magic != MAGIC or version not in READABLE or footer_version != version:
        raise PackCorrupt("pack header is not a chunkyard pack of a known version")
    return version


def read_index(data: bytes | memoryview) -> list[Entry]:
    """Parse the index of a whole pack held in memory, checking its structure."""
    layout_version(data)
    entries = index_from_tail(data, len(data))
    assert not isinstance(entries, int)
    return entries


def decode(
    entry: Entry,
    stored: bytes | memoryview,
    dctx: zstandard.ZstdDecompressor | None = None,
    layout: int = FORMAT_VERSION,
) -> tuple[bytes | memoryview, bytes]:
    """Raw chunk bytes of one record and their chunk key, verified against the entry's
    id (``layout`` 1: the entry holds the key itself)."""
    if entry.scheme == SCHEME_ZSTD:
        try:
            raw = (dctx or zstandard.ZstdDecompressor()).decompress(
                stored, max_output_size=entry.raw_len
            )
        except zstandard.ZstdError as exc:
            raise PackCorrupt(f"chunk {entry.chunk_id.hex()} does not decompress") from exc
    else:
        raw = stored
    key = chunk_key(raw) if len(raw) == entry.raw_len else b""
    if not key or (chunk_id(key) if layout >= 2 else key) != entry.chunk_id:
        raise PackCorrupt(
            f"chunk {entry.chunk_id.hex()} does not match its id", chunk=entry.chunk_id.hex()
        )
    return raw, key


def verify(pack_id: str, data: bytes | memoryview) -> list[tuple[Entry, bytes]]:
    """Check a whole pack: its id, its structure and every chunk. Returns the index in
    the current layout (entries holding chunk ids), each entry with its chunk key."""
    if blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest() != pack_id:
        raise PackCorrupt(f"pack {pack_id} does not hash to its id", pack=pack_id)
    layout = layout_version(data)
    entries = read_index(data)
    dctx = zstandard.ZstdDecompressor()
    view = memoryview(data)
    out = []
    for e in entries:
        _, key = decode(e, view[e.offset : e.offset + e.stored_len], dctx, layout)
        out.append((e._replace(chunk_id=chunk_id(key)), key))
    return out


def decode_run(
    chunks: list,
    data: bytes | memoryview,
    skip: int,
    take: int,
    dctx: zstandard.ZstdDecompressor | None = None,
    out: bytearray | None = None,
) -> memoryview:
    """Raw bytes ``[skip, skip+take)`` of consecutive records ``data``, each described
    by ``[chunk_id_hex, stored_len, raw_len, scheme]`` and verified against its id
    (the ids of reconstruction answers are always chunk ids, whatever the layout).
    Decodes into ``out`` when it is large enough (callers recycle buffers)."""
    total = sum(c[2] for c in chunks)
    if out is None or len(out) < total:
        out = bytearray(total)
    view, dest = memoryview(data), memoryview(out)
    pos = rpos = 0
    dctx = dctx or zstandard.ZstdDecompressor()
    for cid, stored_len, raw_len, scheme in chunks:
        entry = Entry(bytes.fromhex(cid), pos, stored_len, raw_len, scheme)
        dest[rpos : rpos + raw_len] = decode(entry, view[pos : pos + stored_len], dctx)[0]
        pos += stored_len
        rpos += raw_len
    if pos != len(data):
        raise PackCorrupt(f"pack range holds {len(data)} bytes, records need {pos}")
    return dest[skip : skip + take]
