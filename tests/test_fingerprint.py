"""``fingerprint`` (what ref --hash/--index record) cuts and hashes exactly as a push."""

import io

import blake3

from chunkyard.fingerprint import fingerprint
from chunkyard.hashing import chunk_ids
from conftest import random_bytes


class Trickle(io.RawIOBase):
    """A stream that hands out odd-sized pieces, as a network response does."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), 77_777, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_fingerprint_matches_the_chunk_ids_of_a_push(tmp_path):
    data = random_bytes(20 * 1024 * 1024 + 12345, seed=5)
    path = tmp_path / "w.bin"
    path.write_bytes(data)
    entries: list = []
    seen: list[int] = []
    fp = fingerprint(Trickle(data), len(data), entries.extend, seen.append)
    ref = chunk_ids(path)
    assert fp.digest == blake3.blake3(data).hexdigest()
    assert fp.size == sum(seen) == len(data) and fp.chunks == len(entries)
    assert entries == [(cid, offset, length) for offset, length, cid in ref]
    pos = 0
    for cid, offset, length in entries:  # contiguous, and each id is of its bytes
        assert offset == pos and blake3.blake3(data[offset : offset + length]).digest() == cid
        pos += length
    assert pos == len(data)


def test_fingerprint_of_nothing():
    fp = fingerprint(io.BytesIO(b""), 0)
    assert fp.size == fp.chunks == 0 and fp.digest == blake3.blake3(b"").hexdigest()
