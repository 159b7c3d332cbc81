"""``chunkyard fsck``: is every version still readable? It checks every manifest's terms
against the pack indexes in the catalog (the pack exists and is live, the chunk range is
within it, sizes add up), then reads packs back from the store (all, or a random
``sample`` of them) and checks each one as verification did: the pack hashes to its id,
and every chunk decompresses and hashes to its chunk id. Each corrupt or missing chunk
is reported with the versions it affects.

It runs beside the gateways, not in them (``chunkyard fsck`` is a server-side command,
like ``verifier``): it reads every byte of the store, hours of I/O and CPU that belong
to no request, and it must work when no gateway does. It changes nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from typing import Any

import anyio
import zstandard

from .. import packs as packfmt
from ..buffers import BufferPool
from ..catalog import fsck as fsck_q
from ..catalog import gc as gc_q
from ..catalog import packs as packs_q
from ..catalog.packs import EntryRow, PackRow
from ..errors import InvalidRequest, PackCorrupt, StoreObjectMissing
from ..manifest import loads
from . import Repository
from .gc import manifest_pages

#: packs read from the store at once (each decoded on a worker thread)
CONCURRENCY = 2
#: packs are read whole into these (one byte more than the largest: a pack that grew
#: shows as such)
_buffers = BufferPool(packfmt.MAX_SIZE + 1, keep=CONCURRENCY)


@dataclass
class Progress:
    """For a progress bar: packs and bytes to read, and read so far."""

    packs: int = 0
    bytes: int = 0
    packs_done: int = 0
    bytes_done: int = 0
    on_advance: Callable[[int], None] | None = None

    def done(self, n: int) -> None:
        self.packs_done += 1
        self.bytes_done += n
        if self.on_advance is not None:
            self.on_advance(n)


@dataclass
class Problem:
    """One thing wrong: a chunk (``index``), a whole pack, a term or a file."""

    kind: str  # chunk | pack | term | file
    state: str  # corrupt | missing | damaged | out_of_range | size | not_live
    pack: str = ""
    index: int | None = None  # the chunk's place in its pack
    chunk: str = ""  # its id
    first: int | None = None  # a term's range
    end: int | None = None
    why: str = ""
    versions: set[int] = field(default_factory=set)

    def to_json(self, labels: dict[int, str]) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, "") and k != "versions"}
        out["versions"] = sorted(labels.get(v, f"#{v}") for v in self.versions)
        return out


@dataclass
class Report:
    sample: float
    versions: int = 0
    files: int = 0
    terms: int = 0
    packs: int = 0  # live packs in the store, by the catalog
    packs_read: int = 0
    bytes_read: int = 0
    chunks_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0


async def check(
    repo: Repository,
    sample: float = 1.0,
    progress: Progress | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Check the repository; the report as JSON (``ok`` False when anything is damaged).
    ``sample``: the fraction of packs read from the store (the catalog checks are always
    whole)."""
    if not 0 < sample <= 1:
        raise InvalidRequest(f"--sample is a fraction of the packs, in (0, 1]: not {sample}")
    started = time.monotonic()
    progress = progress or Progress()
    r = Report(sample)
    stored = {p.id: p for p in await repo.db.read(gc_q.stored_packs) if p.state != "condemned"}
    r.packs = len(stored)
    await _check_terms(repo, stored, r)
    chosen = list(stored.values())
    if sample < 1 and chosen:
        k = max(1, round(sample * len(chosen)))
        chosen = random.Random(seed).sample(chosen, k)
    progress.packs, progress.bytes = len(chosen), sum(p.size for p in chosen)
    damaged = await _read_packs(repo, chosen, r, progress)
    if damaged:
        await _affected(repo, damaged)
    labels = await repo.db.read(fsck_q.version_labels, {v for p in r.problems for v in p.versions})
    r.seconds = round(time.monotonic() - started, 3)
    out = {k: v for k, v in asdict(r).items() if k != "problems"}
    out["ok"] = not r.problems
    out["chunks_damaged"] = sum(
        1 if p.kind == "chunk" else (p.end or 0) if (p.kind, p.state) == ("pack", "missing") else 0
        for p in r.problems
    )
    out["problems"] = [p.to_json(labels) for p in r.problems]
    return out


async def _check_terms(repo: Repository, stored: dict[str, PackRow], r: Report) -> None:
    """Every manifest's terms against the catalog's pack indexes; also the packs'
    chunk counts against their index rows."""
    lengths: dict[str, list[int]] = {}  # pack -> prefix sums of its chunks' raw lengths
    others: dict[str, PackRow | None] = {}  # ids that name no store pack: references
    problems: dict[tuple, Problem] = {}
    versions: set[int] = set()
    async for page in manifest_pages(repo):
        parsed = [(row, loads(row.manifest)) for row in page]
        named = {t.pack for _, terms in parsed for t in terms}
        new = [p for p in named if p in stored and p not in lengths]
        for pack, raw in (await repo.db.read(fsck_q.raw_lengths, new)).items():
            lengths[pack] = [0, *accumulate(raw)]
        unknown = [p for p in named if p not in stored and p not in others]
        found = await repo.db.read(packs_q.pack_rows, unknown)
        others.update({p: found.get(p) for p in unknown})
        for row, terms in parsed:
            versions.add(row.version_id)
            r.files += 1
            total = 0
            for t in terms:
                r.terms += 1
                total += t.size
                bad = _term_problem(t, stored, lengths, others)
                if bad is not None:
                    key = (bad.kind, bad.state, bad.pack, bad.first, bad.end)
                    problems.setdefault(key, bad).versions.add(row.version_id)
            if total != row.size:
                key = ("file", "size", row.version_id, row.idx)
                problems[key] = Problem(
                    "file",
                    "size",
                    why=f"file {row.idx}: its terms hold {total} bytes, the file {row.size}",
                    versions={row.version_id},
                )
    r.versions = len(versions)
    r.problems += problems.values()
    for p in stored.values():
        n = len(lengths[p.id]) - 1 if p.id in lengths else None
        if n is not None and n != p.chunk_count:
            r.problems.append(
                Problem("pack", "damaged", p.id, why=f"{n} index rows, {p.chunk_count} chunks")
            )


def _term_problem(
    t: Any,
    stored: dict[str, PackRow],
    lengths: dict[str, list[int]],
    others: dict[str, PackRow | None],
) -> Problem | None:
    if t.pack not in stored:
        row = others.get(t.pack)
        if row is not None and row.key is None and row.state in ("reference", "drifted"):
            return None  # an indexed reference object: ``verify`` checks those
        state = "missing" if row is None or row.state == "deleted" else "not_live"
        why = "no such pack in the catalog" if row is None else f"the pack is {row.state}"
        return Problem("term", state, t.pack, first=t.first, end=t.end, why=why)
    if stored[t.pack].state == "corrupt":
        why = "the catalog marks the pack corrupt"
        return Problem("term", "corrupt", t.pack, first=t.first, end=t.end, why=why)
    sums = lengths.get(t.pack, [0])
    if not 0 <= t.first < t.end <= len(sums) - 1:
        why = f"the pack has {len(sums) - 1} chunks"
        return Problem("term", "out_of_range", t.pack, first=t.first, end=t.end, why=why)
    if sums[t.end] - sums[t.first] != t.size:
        why = f"the term says {t.size} bytes, its chunks hold {sums[t.end] - sums[t.first]}"
        return Problem("term", "size", t.pack, first=t.first, end=t.end, why=why)
    return None


async def _read_packs(
    repo: Repository, chosen: list[PackRow], r: Report, progress: Progress
) -> dict[str, Problem | dict[int, Problem]]:
    """Read each pack and check it; the damage found, by pack: a whole-pack problem, or
    the damaged chunks by index."""
    damaged: dict[str, Problem | dict[int, Problem]] = {}
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(p: PackRow) -> None:
        async with sem:
            entries = await repo.db.read(packs_q.entries, p.id, 0, p.chunk_count)
            buf = _buffers.get()
            try:
                try:
                    n = await repo.store.read_into(p.key or packfmt.pack_key(p.id), buf)
                except StoreObjectMissing:
                    damaged[p.id] = Problem(
                        "pack", "missing", p.id, first=0, end=p.chunk_count, why="no object"
                    )
                    r.problems.append(damaged[p.id])
                    progress.done(0)
                    return
                same, bad = await anyio.to_thread.run_sync(
                    _check_pack, p, entries, memoryview(buf)[:n]
                )
            finally:
                _buffers.put(buf)
        r.packs_read += 1
        r.bytes_read += n
        r.chunks_checked += len(entries)
        progress.done(n)
        if bad:
            damaged[p.id] = {
                e.idx: Problem("chunk", "corrupt", p.id, e.idx, e.chunk_id.hex(), why=why)
                for e, why in bad
            }
            r.problems += damaged[p.id].values()
        if not same or n != p.size:
            what = f"{n} bytes, the catalog says {p.size}" if n != p.size else "bytes changed"
            r.problems.append(
                Problem("pack", "damaged", p.id, why=f"does not hash to its id ({what})")
            )

    await asyncio.gather(*(one(p) for p in chosen))
    return damaged


def _check_pack(
    p: PackRow, entries: list[EntryRow], data: memoryview
) -> tuple[bool, list[tuple[EntryRow, str]]]:
    """(whether the bytes hash to the pack id, the chunks that fail and why): each
    record, where the catalog's index says it is, decoded and hashed to its chunk id."""
    try:
        same = packfmt.pack_id_of(data) == p.id
    except PackCorrupt:
        same = False
    dctx = zstandard.ZstdDecompressor()
    bad: list[tuple[EntryRow, str]] = []
    for e in entries:
        end = e.offset + e.stored_len
        if end > len(data):
            bad.append((e, "the object ends before this chunk does"))
            continue
        entry = packfmt.Entry(e.chunk_id, e.offset, e.stored_len, e.raw_len, e.scheme)
        try:
            packfmt.decode(entry, data[e.offset : end], dctx)
        except PackCorrupt as exc:
            bad.append((e, exc.message))
    return same, bad


async def _affected(repo: Repository, damaged: dict[str, Problem | dict[int, Problem]]) -> None:
    """The versions whose terms cover the damaged chunks (a second pass over the
    manifests, only when something is damaged)."""
    async for page in manifest_pages(repo):
        for row in page:
            for t in loads(row.manifest):
                hit = damaged.get(t.pack)
                if isinstance(hit, Problem):
                    hit.versions.add(row.version_id)
                elif hit is not None:
                    for idx, problem in hit.items():
                        if t.first <= idx < t.end:
                            problem.versions.add(row.version_id)
