"""BLAKE3 digests: chunk ids, file digests (same as ``b3sum``) and tree digests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import BinaryIO

import blake3

DIGEST_SIZE = 32


def chunk_id(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def new_file_hasher() -> blake3.blake3:
    """A hasher for whole files; uses every core on large updates."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def file_digest(stream: BinaryIO, block: int = 16 * 1024 * 1024) -> str:
    """BLAKE3 hex of a stream, read in bounded blocks (no mmap: RSS stays flat)."""
    h = new_file_hasher()
    buf = bytearray(block)
    view = memoryview(buf)
    while True:
        n = stream.readinto(view)
        if not n:
            break
        h.update(view[:n])
    return h.hexdigest()


def tree_digest(files: Iterable[tuple[str, int, str]]) -> str:
    """Digest of a directory: BLAKE3 of ``path \\0 size \\0 digest \\n`` per file,
    sorted by path (UTF-8 bytes). Paths and sizes count, so a rename is a new tree."""
    h = blake3.blake3()
    for path, size, digest in sorted(files, key=lambda f: f[0].encode()):
        h.update(f"{path}\0{size}\0{digest}\n".encode())
    return h.hexdigest()
