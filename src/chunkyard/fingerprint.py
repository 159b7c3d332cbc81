"""The digests and chunks of a stream, without storing it: what ``ref --hash`` and
``ref --index`` record about a source object.

The cuts and keys are exactly those of a push (``chunkyard.hashing.chunk_ids``): the
same FastCDC windows with the carried last chunk, and BLAKE3 per chunk. So a later push
of the same bytes finds every chunk already known, and the file id (computed from the
chunk ids, as the gateway computes a pushed file's) equals the pushed file's. Memory
stays at a few windows whatever the object size; chunk entries leave in batches
through ``on_chunks``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from .buffers import BufferPool
from .chunking import MAX_SIZE, WINDOW_SIZE, windows
from .digest import FileIdHasher, chunk_id, chunk_key, new_file_hasher

#: (chunk key, offset in the object, length)
ChunkEntry = tuple[bytes, int, int]


@dataclass
class Fingerprint:
    digest: str  # BLAKE3 of the whole content, as b3sum prints it
    file_id: str  # from the chunk ids (FORMAT.md, "Digests")
    size: int
    chunks: int


def fingerprint(
    stream: BinaryIO,
    size_hint: int | None = None,
    on_chunks: Callable[[list[ChunkEntry]], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Fingerprint:
    """Read ``stream`` once: its BLAKE3 digest, its file id, and, with ``on_chunks``,
    every chunk's key, offset and length, window by window, in order."""
    hasher, ids = new_file_hasher(), FileIdHasher()
    pool = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=4)
    size = count = 0
    for w in windows(stream, size_hint=size_hint, pool=pool, read_ahead=2):
        try:
            hasher.update(w.data)
            entries = [
                (chunk_key(w.chunk(i)), w.offset + off, length)
                for i, (off, length) in enumerate(w.cuts)
            ]
            for key, _, length in entries:
                ids.update(chunk_id(key), length)
            count += len(entries)
            if on_chunks is not None:
                on_chunks(entries)
            size += len(w.data)
            if progress is not None:
                progress(len(w.data))
        finally:
            w.release()
    return Fingerprint(hasher.hexdigest(), ids.hexdigest(), size, count)
