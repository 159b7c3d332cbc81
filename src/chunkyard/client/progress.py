"""Progress bars (bytes, throughput, ETA) on a terminal; silence anywhere else."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def bar(
    label: str, enabled: bool | None = None
) -> Iterator[Callable[[int], Callable[[int], None]] | None]:
    """Yield a progress factory ``total -> advance(n)``, or None when not on a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.progress import (  # only for a terminal: rich takes ~25 ms to import
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=None,
        refresh_per_second=5,
    )
    lock = threading.Lock()

    def factory(total: int, name: str | None = None) -> Callable[[int], None]:
        task = progress.add_task(name or label, total=total)  # one bar per call

        def advance(n: int) -> None:
            with lock:
                progress.advance(task, n)

        return advance

    with progress:
        yield factory
