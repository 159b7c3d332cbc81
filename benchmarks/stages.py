"""Where an ingest's CPU goes: core-seconds per GiB for each stage of the pipeline,
measured one stage at a time on one thread (``time.thread_time`` around each call), so
the figures add up to the work a push does per byte however many cores share it.

Stages (client side, what ``Packer.add_file`` does for a file of all-new chunks):
read + cut (FastCDC), chunk keys (BLAKE3 per chunk), whole-file digest (the b3sum),
choose + compress (the record scheme of each window, then each chunk), pack assembly
(records into packs, index, pack id). Then what the gateway does per byte to verify the
packs (``packs.verify``: structure, pack id, every record decoded and hashed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import blake3

from chunkyard import packs as packfmt
from chunkyard.buffers import BufferPool
from chunkyard.chunking import MAX_SIZE, WINDOW_SIZE, windows
from chunkyard.client.packer import _choose_grouping

GiB = 1 << 30
T = TypeVar("T")

STAGES = ("read + cut", "chunk keys", "file digest", "choose + compress", "pack assembly")


def _timed(acc: dict[str, float], stage: str, fn: Callable[[], T]) -> T:
    t = time.thread_time()
    out = fn()
    acc[stage] = acc.get(stage, 0.0) + time.thread_time() - t
    return out


def _timed_iter(acc: dict[str, float], stage: str, it: Iterator[T]) -> Iterator[T]:
    while True:
        t = time.thread_time()
        try:
            item = next(it)
        except StopIteration:
            acc[stage] = acc.get(stage, 0.0) + time.thread_time() - t
            return
        acc[stage] = acc.get(stage, 0.0) + time.thread_time() - t
        yield item


def stage_costs(path: Path) -> dict[str, Any]:
    """Core-seconds per GiB of each ingest stage and of verification, on this thread;
    also the stored bytes (percent of raw) and the record schemes used."""
    size = path.stat().st_size
    acc: dict[str, float] = {}
    cctx = packfmt.new_compressor()
    hasher = blake3.blake3()
    pool = BufferPool(WINDOW_SIZE + MAX_SIZE, keep=2)
    writer = packfmt.PackWriter()
    finished: list[bytes] = []
    schemes: dict[int, int] = {}
    stored = 0

    out = memoryview(bytearray(WINDOW_SIZE + MAX_SIZE))  # recycled, as the packer does

    def add(w: Any) -> list:
        width, shift = _choose_grouping(cctx, w)
        records, pos, probe = [], 0, True
        for i, (off, n) in enumerate(w.cuts):
            phase = (w.offset + off + shift) % width
            room = out[pos : pos + n] if width > 1 else None
            scheme, rec = packfmt.compress(cctx, w.chunk(i), probe, width, phase, room)
            probe = scheme == packfmt.SCHEME_RAW
            if scheme > packfmt.SCHEME_ZSTD:
                pos += len(rec)
            records.append((scheme, rec))
        return records

    def place(w: Any, keys: list[bytes], records: list) -> None:
        nonlocal writer, stored
        for (_, n), key, (scheme, rec) in zip(w.cuts, keys, records, strict=True):
            writer.add(key, n, scheme, rec)
            schemes[scheme] = schemes.get(scheme, 0) + 1
            if writer.full():
                _finish(writer)
                writer = packfmt.PackWriter(buffer=writer.buffer)

    def _finish(wr: packfmt.PackWriter) -> None:
        """Finish a pack and keep a copy for the verification figure (the copy is not
        counted: a push hands the pack's buffer to the upload as it is)."""
        nonlocal stored
        p = wr.finish()
        stored += p.size
        t = time.thread_time()
        finished.append(bytes(p.data))
        acc["_copy"] = acc.get("_copy", 0.0) + time.thread_time() - t

    with open(path, "rb", buffering=0) as f:
        for w in _timed_iter(acc, "read + cut", windows(f, size_hint=size, pool=pool)):
            keys = _timed(
                acc,
                "chunk keys",
                lambda w=w: [blake3.blake3(w.chunk(i)).digest() for i in range(len(w.cuts))],
            )
            _timed(acc, "file digest", lambda w=w: hasher.update(w.data))
            records = _timed(acc, "choose + compress", lambda w=w: add(w))
            _timed(acc, "pack assembly", lambda w=w, k=keys, r=records: place(w, k, r))
            w.release()
    if len(writer):
        _timed(acc, "pack assembly", lambda: _finish(writer))
    acc["pack assembly"] -= acc.pop("_copy", 0.0)
    t = time.thread_time()
    for data in finished:
        packfmt.verify(packfmt.pack_id_of(data), data)
    verify = time.thread_time() - t
    per_gib = {stage: acc.get(stage, 0.0) * GiB / size for stage in STAGES}
    return {
        "stages": per_gib,
        "total": sum(per_gib.values()),
        "verify": verify * GiB / size,
        "stored_percent": 100 * stored / size,
        "schemes": schemes,
    }
