"""Large buffers for file and socket I/O: page-aligned, recycled.

Where a buffer starts within its page decides how fast the kernel copies into it. On
the AMD Zen 3 machines we measure on, ``rep movsb`` (the kernel's copy for ``read`` and
``write``, and glibc's ``memcpy`` for tens of KiB) runs 3-14x slower when the
destination sits 1-31 bytes past the source's offset in a page. malloc places every
buffer of more than its mmap threshold 16 bytes into a page, and file reads start at
page-aligned offsets: every window read of a push hit that case (0.6-0.8 core-seconds
per GiB of reading instead of 0.17-0.2). An anonymous mapping starts at a page boundary,
and its pages are faulted in where first written, not zero-filled up front.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable
from typing import Any

#: below this a copy costs too little to matter, and a mapping per buffer would cost
#: system calls
SMALL = 256 * 1024


def page_aligned(size: int) -> mmap.mmap | bytearray:
    """``size`` zero bytes starting at a page boundary (writable, a buffer for
    ``readinto``, ``memoryview`` and numpy); below :data:`SMALL`, a bytearray."""
    return mmap.mmap(-1, size) if size >= SMALL else bytearray(size)


class BufferPool:
    """Recycles large buffers: a fresh 8 MiB buffer costs ~2,000 page faults, a
    quarter of the time it takes to chunk it."""

    def __init__(
        self, size: int, keep: int = 8, factory: Callable[[int], Any] = page_aligned
    ) -> None:
        self.size, self.keep, self.factory = size, keep, factory
        self._free: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._free:
                return self._free.pop()
        return self.factory(self.size)

    def put(self, buf: Any) -> None:
        with self._lock:
            if len(self._free) < self.keep and len(buf) == self.size:
                self._free.append(buf)
