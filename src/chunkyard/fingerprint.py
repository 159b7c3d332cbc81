"""The digest and chunk ids of a stream, without storing it: what ``ref --hash`` and
``ref --index`` record about a source object.

The cuts and ids are exactly those of a push (``chunkyard.hashing.chunk_ids``): the
same FastCDC windows with the carried last chunk, and BLAKE3 per chunk. So a later push
of the same bytes finds every chunk id already known. Memory stays at a few windows
whatever the object size; chunk entries leave in batches through ``on_chunks``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import blake3

from .chunking import MAX_SIZE, WINDOW_SIZE, BufferPool, windows
from .digest import new_file_hasher

#: (chunk id, offset in the object, length)
ChunkEntry = tuple[bytes, int, int]


@dataclass
class Fingerprint:
    digest: str
    size: int
    chunks: int


def fingerprint(
    stream: BinaryIO,
    size_hint: int | None = None,
    on_chunks: Callable[[list[ChunkEntry]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fingerprint:
    """Read ``stream`` once: its BLAKE3 digest (as ``b3sum``), and, with ``on_chunks``,
    every chunk's id, offset and length, window by window, in order."""
    hasher = new_file_hasher()
    pool = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=4)
    size = count = 0
    for w in windows(stream, size_hint=size_hint, pool=pool, read_ahead=2):
        try:
            hasher.update(w.data)
            if on_chunks is not None:
                on_chunks(
                    [
                        (blake3.blake3(w.chunk(i)).digest(), w.offset + off, length)
                        for i, (off, length) in enumerate(w.cuts)
                    ]
                )
            count += len(w.cuts)
            size += len(w.data)
            if progress is not None:
                progress(len(w.data))
        finally:
            w.release()
    return Fingerprint(hasher.hexdigest(), size, count)
