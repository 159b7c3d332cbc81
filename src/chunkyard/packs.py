"""The pack format: many compressed chunks in one immutable object, then an index.

    pack   = header record* index footer
    header = "CYPK" version:u16 reserved:u16                         (8 bytes)
    record = zstd frame, or the raw chunk where zstd does not shrink it
    index  = entry*                                                  (52 bytes each)
    entry  = chunk_id:32 offset:u64 stored_len:u32 raw_len:u32 scheme:u8 pad:3
    footer = index_offset:u64 count:u32 version:u16 reserved:u16
             index_check:16 magic:"CYPKIDX\\0"                       (40 bytes)

All integers little-endian. In layout 3 a pack's id is a keyed BLAKE3 of its tail
(index and footer): the index names every chunk by id and readers verify every chunk,
so hashing the compressed records again bought nothing but a second pass over them.
Before, the id was the BLAKE3 of all the pack's bytes. In layouts 2 and 3 an entry holds
the chunk's public id (``digest.chunk_id`` of its key); in layout 1 it held the key
itself. Layout 3 adds byte-grouped records (schemes 2-7, see :func:`grouping`) for
numeric weights. FORMAT.md specifies it in prose; this module is the only code that
knows the byte layout and does no I/O beyond bytes.
"""

from __future__ import annotations

import struct
import sys
import threading
from dataclasses import dataclass
from typing import NamedTuple

import blake3
import numpy as np
import zstandard

from .buffers import page_aligned
from .digest import chunk_id, chunk_key
from .errors import PackCorrupt

if sys.version_info >= (3, 14):
    from compression import zstd as stdzstd
else:
    from backports import zstd as stdzstd

#: the layout this code writes, and those it reads
FORMAT_VERSION = 3
READABLE = (1, 2, 3)
#: BLAKE3 ``derive_key`` context of layout-3 pack ids
PACK_ID_CONTEXT = "chunkyard 2026-12-01 pack id from pack index and footer"
MAGIC = b"CYPK"
FOOTER_MAGIC = b"CYPKIDX\0"
HEADER = struct.Struct("<4sHH")
ENTRY = struct.Struct("<32sQIIB3x")
FOOTER = struct.Struct("<QIHH16s8s")
HEADER_SIZE = HEADER.size  # 8
FOOTER_SIZE = FOOTER.size  # 40

SCHEME_RAW = 0
SCHEME_ZSTD = 1
#: byte-grouped records (layout 3): scheme ``width + phase`` for these widths
GROUP_WIDTHS = (2, 4)
ZSTD_LEVEL = 1
#: the schemes each layout may use
SCHEMES = {1: (0, 1), 2: (0, 1), 3: tuple(range(8))}

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


#: zstd parameters for the top byte plane of grouped records: that plane (sign and
#: exponent bytes) has a small, skewed alphabet and almost no repeats worth finding, so
#: what pays is Huffman coding its literals; a tiny hash table and the longest minimum
#: match keep the match search out of the way (2.3x the speed of level 1, smaller too,
#: on bf16 weights here). ``targetLength`` 64 makes the fast strategy skip ahead where
#: it finds no match (zstd's acceleration); by default that also stops zstd
#: Huffman-coding literals, so the literal mode is set to always code them: 0.55
#: against 0.76 core-s per GiB of bf16 here, frames of the same size.
_P = stdzstd.CompressionParameter
PLANE_OPTIONS = {
    _P.window_log: 17,
    _P.hash_log: 6,
    _P.chain_log: 6,
    _P.search_log: 1,
    _P.min_match: 7,
    _P.strategy: 1,  # fast
    _P.content_size_flag: 1,
    _P.checksum_flag: 0,
}
#: ``ZSTD_c_literalCompressionMode`` (an experimental parameter of zstd, so Python's
#: ``compression.zstd`` names it only by number) = ``ZSTD_ps_enable``, and the
#: acceleration it makes affordable
ACCELERATED = {1002: 1, _P.target_length: 64}
#: bytes of a window sampled to choose its grouping (:func:`choose_grouping`)
SAMPLE_SIZE = 32 * 1024


class Compressor:
    """A thread's zstd contexts (they are not thread-safe): level 1 for whole chunks,
    and one tuned for the top byte plane of grouped records."""

    def __init__(self) -> None:
        self.zstd = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_checksum=False
        )
        self.plane = PlaneCompressor()


class PlaneCompressor:
    """zstd for top planes (:data:`PLANE_OPTIONS`), through Python's own binding
    (``compression.zstd``, its backport before 3.14): python-zstandard cannot set the
    literal mode. A zstd that refuses that parameter gets the plain options
    (Huffman-coded still, without acceleration)."""

    def __init__(self) -> None:
        self.accelerated = True
        try:
            self._c = stdzstd.ZstdCompressor(options={**PLANE_OPTIONS, **ACCELERATED})
        except stdzstd.ZstdError:
            self.accelerated = False
            self._c = stdzstd.ZstdCompressor(options=PLANE_OPTIONS)

    def compress(self, data: bytes | memoryview | np.ndarray) -> bytes:
        """One frame of ``data``, its content size set (the whole input at once)."""
        return self._c.compress(data, mode=stdzstd.ZstdCompressor.FLUSH_FRAME)


def new_compressor() -> Compressor:
    """One per thread."""
    return Compressor()


def grouping(scheme: int) -> tuple[int, int]:
    """``(width, phase)`` of a byte-grouped scheme: scheme ``s`` groups by the largest
    power of two ``w <= s`` with phase ``s - w`` (2, 3: width 2; 4-7: width 4)."""
    width = 1 << (scheme.bit_length() - 1)
    return width, scheme - width


def plane_sizes(raw_len: int, width: int, phase: int) -> list[int]:
    """Bytes in each plane of a chunk of ``raw_len`` bytes: byte ``i`` belongs to plane
    ``(i + phase) % width``."""
    return [len(range((k - phase) % width, raw_len, width)) for k in range(width)]


class PlaneScratch:
    """Buffers to split up to ``size`` bytes into planes: fresh ones cost page faults
    worth more than the splitting itself here. Values are shifted a block at a time, so
    only the planes need the whole size."""

    BLOCK = 256 * 1024  # values shifted at once

    def __init__(self, size: int) -> None:
        self.planes = np.empty(size + 8, np.uint8)
        self.wide = np.empty(self.BLOCK, np.uint32)

    def split(self, raw: bytes | memoryview, width: int, phase: int) -> list[np.ndarray]:
        """The planes of ``raw``, each a contiguous view of these buffers (valid until
        the next split). Whole values are split with shifts and narrowing casts
        (vectorised, the GIL released: 3x faster here than strided or transposing
        copies); the at most ``width - 1`` bytes before the first whole value and after
        the last go one by one."""
        n = len(raw)
        rows = -(-(n + phase) // width)
        planes = self.planes[: rows * width].reshape(width, rows)
        first = (width - phase) % width  # where the first whole value starts
        count = max(0, n - first) // width
        row = 1 if phase else 0  # the first whole value's row
        for i in range(min(first, n)):
            planes[phase + i, 0] = raw[i]
        wide = self.wide.view(_UINT[width])
        for a in range(0, count, self.BLOCK):
            m = min(self.BLOCK, count - a)
            values = np.frombuffer(raw, _UINT[width], m, first + a * width)
            np.copyto(planes[0, row + a : row + a + m], values, casting="unsafe")
            for k in range(1, width):
                shifted = np.right_shift(values, 8 * k, out=wide[:m])
                np.copyto(planes[k, row + a : row + a + m], shifted, casting="unsafe")
        end = first + count * width
        for k in range(n - end if n > first else 0):
            planes[k, row + count] = raw[end + k]
        return [
            planes[k, (1 if k < phase else 0) : -(-(phase + n - k) // width)] for k in range(width)
        ]


class _Scratch(threading.local):
    def __init__(self) -> None:
        self.chunk = PlaneScratch(MAX_RECORD)


_scratch = _Scratch()
_UINT = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def _planes(raw: bytes | memoryview, width: int, phase: int) -> list[np.ndarray]:
    """The planes of one chunk, in this thread's scratch (valid until its next call)."""
    return _scratch.chunk.split(raw, width, phase)


def chunk_planes(
    window: list[np.ndarray], width: int, phase: int, start: int, end: int
) -> list[np.ndarray]:
    """The planes of bytes ``[start, end)`` of a buffer whose planes (split with
    ``phase``) are ``window``: slices of them, since a chunk at ``start`` has phase
    ``(start + phase) % width`` and its plane ``k`` is the buffer's plane ``k``. Splitting
    a window once instead of each chunk saves ~10 numpy calls per chunk, each a GIL
    hand-off between the threads that compress."""

    def index(k: int, x: int) -> int:  # bytes of plane k before position x
        return max(0, x - (k - phase) % width + width - 1) // width

    return [window[k][index(k, start) : index(k, end)] for k in range(width)]


def group(
    c: Compressor,
    raw: bytes | memoryview,
    width: int,
    phase: int,
    probe: bool = True,
    out: memoryview | None = None,
    planes: list[np.ndarray] | None = None,
) -> bytes | memoryview | None:
    """A byte-grouped record (planes ``0 .. width-2`` raw, then one zstd frame of the
    top plane), or None where it would not be smaller than the chunk. With ``probe``,
    gives up when the top plane's first 4 KiB do not shrink by 10%. With ``out`` (at
    least ``len(raw)`` bytes) the record is written there and a view of it returned:
    records kept in fresh bytes objects cost the push more page faults (0.4 core-s per
    GiB here) than grouping itself. ``planes``: the chunk's planes, if split already
    (:func:`chunk_planes`)."""
    if planes is None:
        planes = _planes(raw, width, phase)
    top = planes[-1]
    if probe and len(top) > 2 * PROBE_SIZE // width:
        n = PROBE_SIZE // 2
        if len(c.plane.compress(top[:n])) > n * 0.9:
            return None
    frame = c.plane.compress(top)
    low = len(raw) - len(top)
    if len(frame) + low >= len(raw):
        return None
    if out is None:
        return b"".join([*planes[:-1], frame])
    pos = 0
    for plane in planes[:-1]:
        out[pos : pos + len(plane)] = plane.data  # a memcpy, no GIL hand-off
        pos += len(plane)
    out[low : low + len(frame)] = frame
    return out[: low + len(frame)]


class _Words(threading.local):
    """Per-thread scratch for :func:`ungroup`: the chunk as little-endian words of
    ``width`` bytes (byte ``k`` of a word is plane ``k``), with room for a phase."""

    def __init__(self) -> None:
        self.buf = np.empty(MAX_RECORD + 8, np.uint8)
        self.words = {w: self.buf.view(f"<u{w}") for w in GROUP_WIDTHS}
        self.wide = {w: np.empty(MAX_RECORD // w + 2, f"<u{w}") for w in GROUP_WIDTHS if w > 2}


_words = _Words()


def ungroup(
    stored: bytes | memoryview,
    raw_len: int,
    width: int,
    phase: int,
    dctx: zstandard.ZstdDecompressor,
    out: memoryview | bytearray | None = None,
) -> memoryview:
    """The chunk a grouped record holds, written into ``out`` (``raw_len`` bytes) or
    else into this thread's scratch (valid until its next call). Raises
    ``zstandard.ZstdError`` or ValueError on a damaged record.

    The planes are put back together as words: the top plane widened and shifted into
    the top byte of each, each lower plane OR-ed into its own byte, then the bytes from
    ``phase`` on are the chunk. Whole-array casts, shifts and ORs run vectorised with
    the GIL released; a byte-strided scatter ran at about a byte per cycle and cost
    more than the zstd frame (0.30 against 0.12 core-seconds per GiB of bf16 here)."""
    sizes = plane_sizes(raw_len, width, phase)
    low = raw_len - sizes[-1]
    if len(stored) < low:
        raise ValueError("grouped record shorter than its raw planes")
    top = dctx.decompress(stored[low:], max_output_size=sizes[-1]) if sizes[-1] else b""
    if len(top) != sizes[-1]:
        raise ValueError("top plane has the wrong length")
    if out is not None:
        return _scatter(stored, top, sizes, width, phase, out)
    rows = -(-(raw_len + phase) // width)
    words = _words.words[width][:rows]
    # plane w-1 starts at row 0 (w-1 >= phase); a row it lacks at the end is zero
    words[: sizes[-1]] = np.frombuffer(top, np.uint8)
    words[sizes[-1] :] = 0
    np.left_shift(words, 8 * (width - 1), out=words)
    src = np.frombuffer(stored, np.uint8, low)
    pos = 0
    for k, n in enumerate(sizes[:-1]):
        first = 1 if k < phase else 0  # plane k < phase starts a row late
        into = words[first : first + n]
        if k == 0:
            np.bitwise_or(into, src[pos : pos + n], out=into)
        else:
            wide = _words.wide[width][:n]
            np.left_shift(src[pos : pos + n], 8 * k, out=wide, dtype=wide.dtype)
            np.bitwise_or(into, wide, out=into)
        pos += n
    chunk = _words.buf[phase : phase + raw_len]
    if out is None:
        return memoryview(chunk)
    np.frombuffer(out, np.uint8)[:] = chunk
    return memoryview(out)


def _scatter(
    stored: bytes | memoryview,
    top: bytes,
    sizes: list[int],
    width: int,
    phase: int,
    out: memoryview | bytearray,
) -> memoryview:
    """:func:`ungroup` into ``out``: each plane copied to its bytes with a stride, one
    numpy call a plane. A pull decodes on two threads at once, and the word path's
    dozen calls per chunk held the GIL for about half its time: two threads decoded
    bf16 slower than one (0.66 against 0.56 s per GiB), where these scale (0.36 on
    two), as a pull on a many-core node needs; a 1 GiB pull here took 2.5 % less
    time (CLI, medians of 8, paired). On one thread they cost more (0.91 against 0.78
    core-s per GiB verifying bf16), so decoding into scratch keeps the words."""
    low = sum(sizes) - len(top)
    dest = np.frombuffer(out, np.uint8, low + len(top))
    dest[(width - 1 - phase) % width :: width] = np.frombuffer(top, np.uint8)
    src = np.frombuffer(stored, np.uint8, low)
    pos = 0
    for k, n in enumerate(sizes[:-1]):  # byte i of the chunk is in plane (i + phase) % width
        dest[(k - phase) % width :: width] = src[pos : pos + n]
        pos += n
    return memoryview(out)


def choose_grouping(c: Compressor, sample: bytes | memoryview, offset: int) -> tuple[int, int]:
    """``(width, shift)`` that stores ``sample`` (whose first byte is at ``offset`` of
    its stream) smallest: width 1 is plain zstd; otherwise a chunk at stream offset
    ``o`` is grouped with phase ``(o + shift) % width``. Numeric weights repeat a value
    layout every 2 (bf16, fp16) or 4 (fp32) bytes whose top byte (sign and exponent) is
    skewed and whose others are noise: grouping stores the noise raw and Huffman-codes the
    top plane, smaller and 2-3x faster than zstd over the mixed bytes. Choosing per
    window from a sample costs a few per mille; a chunk that then does not shrink is
    stored raw anyway."""
    best = (len(c.zstd.compress(sample)), 1, 0)
    for width in GROUP_WIDTHS:
        for shift in range(width):
            phase = (offset + shift) % width
            top = _planes(sample, width, phase)[-1]
            size = len(sample) - len(top) + len(c.plane.compress(top))
            if size < best[0] * 0.98:
                best = (size, width, shift)
    return best[1], best[2]


def compress(
    c: Compressor,
    raw: bytes | memoryview,
    probe: bool = True,
    width: int = 1,
    phase: int = 0,
    out: memoryview | None = None,
    planes: list[np.ndarray] | None = None,
) -> tuple[int, bytes | memoryview]:
    """zstd level 1 (``width`` 1) or a byte-grouped record (written into ``out`` when
    given, from ``planes`` when split already: see :func:`group`), or the raw bytes
    where that does not shrink them.

    With ``probe``, a chunk whose first 8 KiB do not shrink by 2% is stored raw without
    compressing the rest: random-looking data (encrypted, already compressed) then costs
    a tenth of a full attempt. The probe itself costs a fifth of compressing a chunk
    that does shrink, so callers skip it after a chunk that compressed (neighbouring
    chunks are alike). Storing raw is always valid; this only decides how hard to try."""
    if width > 1:
        grouped = group(c, raw, width, phase, probe, out, planes)
        return (SCHEME_RAW, raw) if grouped is None else (width + phase, grouped)
    if probe and len(raw) > 2 * PROBE_SIZE:
        probe = c.zstd.compress(raw[:PROBE_SIZE])
        if len(probe) > PROBE_SIZE * 0.98:
            return SCHEME_RAW, raw
    out = c.zstd.compress(raw)
    if len(out) < len(raw):
        return SCHEME_ZSTD, out
    return SCHEME_RAW, raw


def untouched(size: int) -> np.ndarray:
    """A page-aligned buffer of ``size`` bytes the kernel maps on first write, wherever
    that write happens (a ``recv_into``, a decoder): ``bytearray(size)`` zero-fills it
    at once, under the GIL, which threads fetching and decoding then wait for."""
    return np.frombuffer(page_aligned(size), np.uint8)


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
            buffer = page_aligned(self.capacity)
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
        return Pack(pack_id_of(data), data, self.entries)


def tail_id(tail: bytes | memoryview) -> str:
    """The id of a layout-3 pack from its index and footer (hex)."""
    return blake3.blake3(tail, derive_key_context=PACK_ID_CONTEXT).hexdigest()


def pack_id_of(data: bytes | memoryview) -> str:
    """The id of a whole pack held in memory: layout 3 names a pack by its tail
    (:func:`tail_id`), layouts 1 and 2 by the BLAKE3 of all its bytes (what ``b3sum``
    prints). Checks nothing but what it needs to find the tail."""
    if layout_version(data) >= 3:
        index_offset = FOOTER.unpack_from(data, len(data) - FOOTER_SIZE)[0]
        if not HEADER_SIZE <= index_offset <= len(data) - FOOTER_SIZE:
            raise PackCorrupt("pack index offset is out of range")
        return tail_id(memoryview(data)[index_offset:])
    return blake3.blake3(data, max_threads=blake3.blake3.AUTO).hexdigest()


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
    _, _, version, _, check, _ = FOOTER.unpack(footer)
    entries = parse_index(index, check)
    schemes = SCHEMES[version]
    pos = HEADER_SIZE
    for e in entries:
        if e.offset != pos or e.scheme not in schemes:
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
    out: memoryview | None = None,
) -> tuple[bytes | memoryview, bytes]:
    """Raw chunk bytes of one record and their chunk key, verified against the entry's
    id (``layout`` 1: the entry holds the key itself). With ``out`` (``raw_len`` bytes)
    the chunk is decoded into it; without, a grouped chunk is returned in this thread's
    scratch, valid until its next decode."""
    if entry.scheme not in SCHEMES[FORMAT_VERSION]:
        raise PackCorrupt(f"chunk {entry.chunk_id.hex()} has unknown scheme {entry.scheme}")
    if entry.scheme == SCHEME_RAW:
        raw = stored
    else:
        dctx = dctx or zstandard.ZstdDecompressor()
        try:
            if entry.scheme == SCHEME_ZSTD:
                raw = dctx.decompress(stored, max_output_size=entry.raw_len)
            else:
                raw = ungroup(stored, entry.raw_len, *grouping(entry.scheme), dctx, out)
        except (zstandard.ZstdError, ValueError) as exc:
            raise PackCorrupt(f"chunk {entry.chunk_id.hex()} does not decompress") from exc
    key = chunk_key(raw) if len(raw) == entry.raw_len else b""
    if not key or (chunk_id(key) if layout >= 2 else key) != entry.chunk_id:
        raise PackCorrupt(
            f"chunk {entry.chunk_id.hex()} does not match its id", chunk=entry.chunk_id.hex()
        )
    if out is not None and entry.scheme < 2:
        out[:] = raw
        raw = out
    return raw, key


def verify(pack_id: str, data: bytes | memoryview) -> list[tuple[Entry, bytes]]:
    """Check a whole pack: its id, its structure and every chunk. Returns the index in
    the current layout (entries holding chunk ids), each entry with its chunk key."""
    layout = layout_version(data)
    entries = read_index(data)
    if pack_id_of(data) != pack_id:
        raise PackCorrupt(f"pack {pack_id} does not hash to its id", pack=pack_id)
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
        decode(entry, view[pos : pos + stored_len], dctx, out=dest[rpos : rpos + raw_len])
        pos += stored_len
        rpos += raw_len
    if pos != len(data):
        raise PackCorrupt(f"pack range holds {len(data)} bytes, records need {pos}")
    return dest[skip : skip + take]
