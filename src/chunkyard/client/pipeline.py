"""Work handed to a thread pool in order, a bounded number of items ahead: the shape of
both the push pipeline and the pull's fetches, kept apart from either so that a pull
does not load the push's chunking and compression to get it."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

DEPTH = 3


def pipelined(
    pool: ThreadPoolExecutor, fn: Callable, items: Iterable, depth: int = DEPTH
) -> Iterator:
    """``map(fn, items)`` on ``pool``, in order, at most ``depth`` items ahead."""
    q: deque[Future] = deque()
    for item in items:
        q.append(pool.submit(fn, item))
        if len(q) > depth:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()
