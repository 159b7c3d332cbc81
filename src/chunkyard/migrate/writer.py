"""One new version on a gateway, built a batch of files at a time: what imports and
copies have in common.

``push`` wants the whole content on disk first; a migration's content arrives from
elsewhere (a bucket, another gateway) and may be larger than the local disk. Here each
batch of files is staged, cut, hashed and packed (only chunks the gateway lacks are
compressed and sent), then dropped, so the disk holds a batch or two at a time. Files
the gateway already holds in an earlier version of the same name (the same file id and
size) are named by id: neither fetched nor sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..client.packer import SMALL_MAX, FileResult
from ..client.transport import Transport
from ..client.upload import Uploader

#: a batch of small files: what one round of staging holds at most
BATCH_FILES = 512
BATCH_BYTES = 32 * 1024 * 1024
T = TypeVar("T")
#: ``progress(label, total)``: a callback taking byte counts for one bar, or None
Progress = Callable[[str, int], Callable[[int], None] | None]


def no_progress(label: str, total: int) -> None:
    return None


def batches(items: list[T], size: Callable[[T], int]) -> list[list[T]]:
    """Items in batches, in order: small files together (up to ``BATCH_FILES`` files
    and ``BATCH_BYTES``), each larger file alone."""
    out: list[list[T]] = []
    small: list[T] = []
    total = 0
    for item in items:
        n = size(item)
        if n > SMALL_MAX:
            out.append([item])
            continue
        if small and (len(small) == BATCH_FILES or total + n > BATCH_BYTES):
            out.append(small)
            small, total = [], 0
        small.append(item)
        total += n
    if small:
        out.append(small)
    return out


class VersionWriter:
    """A version of ``name`` made file by file, committed at the end in one transaction
    (a failure on the way leaves no version behind)."""

    def __init__(
        self, transport: Transport, name: str, progress: Callable[[int], None] | None = None
    ) -> None:
        self.name = name
        self.progress = progress or (lambda n: None)
        self.up = Uploader(transport, name, progress)
        self.files: list[FileResult] = []
        self.reused = 0

    def close(self) -> None:
        self.up.close()

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(
        self, files: list[tuple[Path, str]], modes: dict[str, int | None] | None = None
    ) -> None:
        """Local files as ``(path, path in the version)``, with the ``modes`` of tree
        files by path (a file without one takes the default); when this returns they
        have been read and may be deleted."""
        packer = self.up.packer
        small = [(p, rel, None) for p, rel in files if p.stat().st_size <= SMALL_MAX]
        got = packer.add_small_files(small) if small else []
        large = [(p, rel, None) for p, rel in files if p.stat().st_size > SMALL_MAX]
        got += packer.add_files(large) if large else []
        for f in got:
            f.mode = (modes or {}).get(f.path)
        self.files += got

    def reuse(self, path: str, entry: dict[str, Any], version: int) -> None:
        """A file equal to ``entry`` (``size``, ``digest``: its file id, ``b3sum``) of
        ``version`` of this name on the gateway."""
        self.files.append(
            FileResult(
                path,
                entry["size"],
                entry.get("b3sum", ""),
                from_version=version,
                file_id=entry["digest"],
                mode=entry.get("mode"),
            )
        )
        self.reused += 1
        self.progress(entry["size"])

    def commit(
        self,
        layout: str,
        tags: dict[str, str],
        always_new: bool = False,
        dirs: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The version (``dirs``: a tree's empty directories); its summary has
        ``chunks_total``, ``chunks_new``, ``bytes_uploaded`` (pack bytes sent to the
        store) and ``files_reused``."""
        self.up.packer.finish()
        files = sorted(self.files, key=lambda f: f.path.encode())
        v = self.up.commit(layout, files, tags, always_new=always_new, dirs=dirs)
        stats = self.up.packer.stats
        return {
            **v,
            "size": sum(f.size for f in files),
            "files": len(files),
            "files_reused": self.reused,
            "chunks_total": stats.chunks_total,
            "chunks_new": stats.chunks_new,
            "bytes_uploaded": stats.bytes_uploaded,
        }
