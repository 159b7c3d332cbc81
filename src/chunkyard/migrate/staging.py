"""Files in transit: a private staging directory, fetching one batch ahead, and the
files of a version on a gateway fetched into it (what copies and exports read)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..client.download import Downloader, fetch_reference
from ..client.pipeline import pipelined
from ..client.transport import Transport

T = TypeVar("T")
R = TypeVar("R")


class Staging:
    """A fresh directory under ``parent`` (default: the system's temporary directory)
    that holds the files of a batch or two; removed with everything in it on close."""

    def __init__(self, parent: str | Path | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="chunkyard-staging-", dir=parent))
        self._names = itertools.count()

    def path(self) -> Path:
        """A new file name in the directory (flat: the file's own path may be long)."""
        return self.root / f"f{next(self._names)}"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ahead(fetch: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """``fetch(item)`` of each item in order, the next item fetched on a worker thread
    while the caller handles the current one: transfers in and out overlap, and the
    disk holds at most the current batch and the next."""
    with ThreadPoolExecutor(1, thread_name_prefix="cy-stage") as pool:
        yield from pipelined(pool, fetch, items, depth=1)


def drop(files: Iterable[Path]) -> None:
    for p in files:
        p.unlink(missing_ok=True)


class VersionFiles:
    """The files of one version on a gateway, fetched into staging as a pull fetches
    them: a stored version's through reconstructions (every chunk and file verified), a
    reference's from its sources through pinned requests."""

    def __init__(self, transport: Transport, version: dict[str, Any]) -> None:
        self.t = transport
        self.v = version
        self.base = f"/v1/artifacts/{version['name']}/-/versions/{version['version']}"
        self.reference = version["kind"] == "reference"
        self.down = None if self.reference else Downloader(transport, None, version["format"])

    def close(self) -> None:
        if self.down is not None:
            self.down.close()

    def fetch(self, entries: list[dict], staging: Staging) -> list[tuple[dict, Path]]:
        """Each entry of the version's ``file_list`` as a verified local file."""
        got = [(e, staging.path()) for e in entries]
        try:
            if self.down is None:
                for entry, dest in got:
                    fetch_reference(self.t, self.base, entry, dest)
            elif len(got) > 1:
                self.down.small_files(self.base, got)
            else:
                self.down.file(self.base, *got[0])
        except BaseException:
            drop(p for _, p in got)
            raise
        return got
