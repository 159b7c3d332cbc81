"""BLAKE3 digests (FORMAT.md, "Digests"): chunk keys and chunk ids, file ids, tree
digests, possession proofs, and the ``b3sum`` digest of a whole file.

A chunk's *key* is BLAKE3 of its bytes: only whoever holds the bytes can compute it,
so it is what a client shows to prove it holds a chunk, and the gateway never hands
keys out. A chunk's *id* is a hash of its key: public, written in pack indexes and
reconstruction answers, and enough to verify the bytes (hash them to the key, hash the
key to the id) but not to claim them. A *file id* is a hash over a file's chunk ids and
sizes, so the gateway can compute it from chunks it verified without reading a byte.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import BinaryIO

import blake3

from .buffers import page_aligned

DIGEST_SIZE = 32
#: BLAKE3 ``derive_key`` contexts: each kind of hash gets its own, so that no value of
#: one kind can ever be passed off as another
CHUNK_ID_CONTEXT = "chunkyard 2026-11-30 chunk id from chunk key"
FILE_ID_CONTEXT = "chunkyard 2026-11-30 file id from chunk ids"
_SIZE = struct.Struct("<Q")


def chunk_key(data: bytes | memoryview) -> bytes:
    """BLAKE3-256 of a chunk's bytes (what ``b3sum`` prints for a file of just them)."""
    return blake3.blake3(data).digest()


def chunk_id(key: bytes) -> bytes:
    """The public id of the chunk whose key is ``key``."""
    return blake3.blake3(key, derive_key_context=CHUNK_ID_CONTEXT).digest()


class FileIdHasher:
    """A file id computed as chunks go by, in constant memory."""

    def __init__(self) -> None:
        self._h = blake3.blake3(derive_key_context=FILE_ID_CONTEXT)

    def update(self, cid: bytes, length: int) -> None:
        self._h.update(cid)
        self._h.update(_SIZE.pack(length))

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def file_id(chunks: Iterable[tuple[bytes, int]]) -> str:
    """The id of a file from ``(chunk id, raw length)`` of its chunks, in order (hex)."""
    h = FileIdHasher()
    for cid, length in chunks:
        h.update(cid, length)
    return h.hexdigest()


def file_id_of(cuts: Iterable[tuple[int, int, bytes]]) -> str:
    """The file id of ``(offset, length, chunk key)`` cuts, as the gateway computes it."""
    return file_id((chunk_id(key), n) for _, n, key in cuts)


def term_proof(session_key: bytes, keys: Iterable[bytes]) -> str:
    """Proof that the caller holds chunks: BLAKE3 keyed with the upload session's proof
    key over the chunks' keys, in order (hex)."""
    h = blake3.blake3(key=session_key)
    for k in keys:
        h.update(k)
    return h.hexdigest()


def new_file_hasher() -> blake3.blake3:
    """A hasher for whole files; uses every core on large updates."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO)


def file_digest(stream: BinaryIO, block: int = 16 * 1024 * 1024) -> str:
    """BLAKE3 hex of a stream, read in bounded blocks (no mmap: RSS stays flat)."""
    h = new_file_hasher()
    buf = page_aligned(block)
    view = memoryview(buf)
    while True:
        n = stream.readinto(view)
        if not n:
            break
        h.update(view[:n])
    return h.hexdigest()


#: the permission bits a file of a tree has unless its version says otherwise: a file
#: of this mode hashes into its tree's digest as files did before modes were recorded
DEFAULT_MODE = 0o644

#: a file of a tree: (path, size, file id) or (path, size, file id, mode or None)
TreeFile = tuple[str, int, str] | tuple[str, int, str, int | None]


def tree_digest(files: Iterable[TreeFile], dirs: Iterable[str] = ()) -> str:
    """Digest of a directory (FORMAT.md, "Digests"): BLAKE3 over one line per entry,
    sorted by path (UTF-8 bytes): ``path \\0 size \\0 id \\n`` per file,
    ``path \\0 size \\0 id \\0 mode \\n`` (mode in octal) for a file whose mode is
    recorded and not :data:`DEFAULT_MODE`, and ``path \\0 dir \\n`` per empty directory.
    Paths, sizes, modes and empty directories count, so a rename or a ``chmod +x`` is a
    new tree; a tree of default modes without empty directories hashes as before."""
    lines: list[tuple[bytes, bytes]] = []
    for f in files:
        path, size, digest = f[0], f[1], f[2]
        mode = f[3] if len(f) > 3 else None
        tail = "" if mode is None or mode == DEFAULT_MODE else f"\0{mode:o}"
        lines.append((path.encode(), f"{path}\0{size}\0{digest}{tail}\n".encode()))
    lines += [(d.encode(), f"{d}\0dir\n".encode()) for d in dirs]
    h = blake3.blake3()
    for _, line in sorted(lines, key=lambda e: e[0]):
        h.update(line)
    return h.hexdigest()
