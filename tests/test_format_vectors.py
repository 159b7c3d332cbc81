"""FORMAT.md's chunking test vectors (Appendix A), checked two ways.

1. chunkyard's own chunker, ``chunkyard.chunking.windows``, reproduces every cut and chunk
   id, with its default 8 MiB windows and with small windows that exercise the carry rule.
2. A reference chunker written from FORMAT.md's Chunking section alone reproduces them
   too, so the document is enough to implement a compatible chunker. It imports neither
   pyfastcdc nor chunkyard.chunking, and reads its parameters, masks and gear table from
   FORMAT.md.

The vectors themselves are parsed out of FORMAT.md, so the document and the test cannot
drift apart.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import pytest
from blake3 import blake3

from chunkyard.buffers import BufferPool
from chunkyard.chunking import MAX_SIZE, windows

FORMAT = Path(__file__).resolve().parent.parent / "FORMAT.md"

#: The inputs, as Appendix A defines them.
INPUTS = {
    "a": lambda: blake3(b"chunkyard chunking test vector 1").digest(length=4_194_304),
    "b": lambda: bytes(524_288) + (b"8b" * 262_145)[:524_289],
}

Cut = tuple[int, int, str]  # offset, length, chunk id (hex)


# --- parsing FORMAT.md ---------------------------------------------------------------


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = text.find("\n## ", start)
    return text[start:] if end < 0 else text[start:end]


def _fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```$", text, flags=re.M | re.S)


def _doc() -> str:
    return FORMAT.read_text(encoding="utf-8")


def _spec() -> dict:
    """Parameters, masks and gear table, from FORMAT.md's Chunking section."""
    sec = _section(_doc(), "## Chunking")

    def row(name: str) -> str:
        m = re.search(rf"^\| `{name}` \| `?([0-9a-fx ]+?)`? [|(]", sec, flags=re.M)
        assert m, f"no {name} row in the Chunking section"
        return m.group(1).replace(" ", "")

    gear_blocks = [b for b in _fenced_blocks(sec) if b.startswith("0x")]
    assert len(gear_blocks) == 1, "expected one fenced gear table"
    gear = [int(x, 16) for x in gear_blocks[0].split()]
    assert len(gear) == 256
    return {
        "min": int(row("MIN_SIZE")),
        "avg": int(row("AVG_SIZE")),
        "max": int(row("MAX_SIZE")),
        "mask_s": int(row("MASK_S"), 16),
        "mask_l": int(row("MASK_L"), 16),
        "gear": gear,
    }


def _vectors() -> dict[str, dict]:
    app = _section(_doc(), "## Appendix A: chunking test vectors")
    out = {}
    for part in re.split(r"^### Vector ", app, flags=re.M)[1:]:
        name = part.split(":", 1)[0]
        (block,) = _fenced_blocks(part)
        cuts = []
        for line in block.splitlines():
            off, length, cid = line.split(" ")
            assert re.fullmatch(r"[0-9a-f]{64}", cid), line
            cuts.append((int(off), int(length), cid))
        out[name] = {
            "input_blake3": re.search(r"^- input BLAKE3: `([0-9a-f]{64})`$", part, re.M)[1],
            "chunks": int(re.search(r"^- chunks: (\d+)$", part, re.M)[1]),
            "list_blake3": re.search(r"^- cut list BLAKE3: `([0-9a-f]{64})`$", part, re.M)[1],
            "block": block,
            "cuts": cuts,
        }
    return out


VECTORS = _vectors()
_data_cache: dict[str, bytes] = {}


def data_of(name: str) -> bytes:
    if name not in _data_cache:
        _data_cache[name] = INPUTS[name]()
    return _data_cache[name]


def with_ids(data: bytes, cuts: list[tuple[int, int]]) -> list[Cut]:
    view = memoryview(data)
    return [(o, n, blake3(view[o : o + n]).hexdigest()) for o, n in cuts]


# --- the vectors are what Appendix A says they are --------------------------------


def test_appendix_has_the_vectors():
    assert set(VECTORS) == set(INPUTS)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_vector_is_consistent(name):
    v, data = VECTORS[name], data_of(name)
    assert blake3(data).hexdigest() == v["input_blake3"]
    assert len(v["cuts"]) == v["chunks"]
    assert blake3(v["block"].encode("ascii")).hexdigest() == v["list_blake3"]
    # the cuts tile the input and the ids are those of the bytes they name
    ends = [0] + [o + n for o, n, _ in v["cuts"]]
    assert [o for o, _, _ in v["cuts"]] == ends[:-1] and ends[-1] == len(data)
    assert with_ids(data, [(o, n) for o, n, _ in v["cuts"]]) == v["cuts"]


# --- chunkyard's chunker reproduces them --------------------------------------------


def chunkyard_cuts(data: bytes, **kw) -> list[Cut]:
    out = []
    for w in windows(io.BytesIO(data), **kw):
        out += [
            (w.offset + o, n, blake3(w.chunk(i)).hexdigest()) for i, (o, n) in enumerate(w.cuts)
        ]
        w.release()
    return out


#: Window options: chunkyard's defaults, and windows of 2 * MAX_SIZE (the least allowed)
#: that carry a chunk into the next window many times per input.
WINDOWING = {
    "default": lambda n: {},
    "small": lambda n: {"window_size": 2 * MAX_SIZE},
    "small-pooled-odd": lambda n: {
        "window_size": 2 * MAX_SIZE + 1,
        "size_hint": n,
        "pool": BufferPool(3 * MAX_SIZE + 1, keep=2),
    },
}


@pytest.mark.parametrize("windowing", sorted(WINDOWING))
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_chunkyard_reproduces_the_vectors(name, windowing):
    data = data_of(name)
    kw = WINDOWING[windowing](len(data))
    assert chunkyard_cuts(data, **kw) == VECTORS[name]["cuts"]


def test_chunkyard_cuts_nothing_from_an_empty_stream():
    assert chunkyard_cuts(b"") == []


# --- a reference chunker written from FORMAT.md alone --------------------------------
# Nothing below uses pyfastcdc or chunkyard.chunking.


def test_gear_table_follows_its_derivation():
    gear = _spec()["gear"]
    md5 = [int.from_bytes(hashlib.md5(bytes([v]) * 64).digest()[:8], "big") for v in range(256)]
    assert gear == md5
    assert gear[0] == 0x3B5D3C7D207E37DC


def reference_chunks(
    data: bytes, spec: dict, why: list[str] | None = None
) -> list[tuple[int, int]]:
    """FORMAT.md's ``chunks(data)``, transcribed; ``why`` collects the rule of each cut."""
    min_size, avg_size, max_size = spec["min"], spec["avg"], spec["max"]
    mask_s, mask_l, gear = spec["mask_s"], spec["mask_l"], spec["gear"]
    m64 = (1 << 64) - 1

    def cut(start: int) -> int:
        n = len(data) - start
        if n <= min_size:
            rule, length = "min", n
        else:
            rule = "max" if n > max_size else "end"
            n = min(n, max_size)
            end = n - n % 2
            length = n
            h = 0
            for i in range(min_size, end):
                h = ((h << 1) + gear[data[start + i]]) & m64
                if not h & (mask_s if i < avg_size else mask_l):
                    rule, length = ("mask_s" if i < avg_size else "mask_l"), i
                    break
        if why is not None:
            why.append(rule)
        return length

    out, start = [], 0
    while start < len(data):
        length = cut(start)
        out.append((start, length))
        start += length
    return out


#: The rules each vector must exercise (checked against the reference chunker).
#: a: the hash skip of MIN_SIZE, cuts under both masks, and a last chunk under MIN_SIZE.
#: b: MAX_SIZE cuts, MASK_L cuts at position 65 536 (the first tested with MASK_L), and a
#:    last chunk of odd length whose unexamined last byte would have matched.
COVERAGE = {
    "a": {"mask_s", "mask_l", "min"},
    "b": {"max", "mask_l", "end"},
}


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_reference_chunker_reproduces_the_vectors(name):
    # All of each input, the 4 MiB of (a) included: the byte loop skips each chunk's
    # first 16 KiB and takes about 0.5 s over (a) and 0.2 s over (b).
    data, why = data_of(name), []
    cuts = reference_chunks(data, _spec(), why)
    assert with_ids(data, cuts) == VECTORS[name]["cuts"]
    assert set(why) == COVERAGE[name]
    if name == "b":
        assert [n for _, n in cuts[2:-1]] == [65_536] * 7 and cuts[-1][1] == 65_537


def test_reference_chunker_cuts_nothing_from_empty_data():
    assert reference_chunks(b"", _spec()) == []


def test_vector_b_pins_the_edge_rules():
    """Vector b tells apart implementations that get its edge rules wrong."""
    spec, data = _spec(), data_of("b")
    # Its last chunk's unexamined odd byte would match MASK_L: with one more byte the
    # position is examined and the chunk ends before it.
    assert reference_chunks(data + b"b", spec)[-2:] == [(983_040, 65_536), (1_048_576, 2)]
    # Switching to MASK_L one position late moves every MASK_L cut of vector b.
    late = reference_chunks(data, dict(spec, avg=spec["avg"] + 1))
    assert [n for _, n in late[2:-1]] == [65_538] * 7
