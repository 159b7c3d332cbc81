"""The ingest pipeline across data kinds and file sizes (workload 1 of issue 5).

For bf16-like weights, float32 weights, text and random bytes at every size of the sweep
(256 MiB, 1 GiB, 4 GiB), side by side on the same file, alternating, best of N (at most
2 here: the sweep reads many GiB):
- chunkyard ingest: chunk + hash + zstd into packs that go nowhere (``Packer``);
- chunkyard chunk + hash (``chunkyard.hashing.chunk_ids``, two processes);
- ``hf_xet.hash_files`` (chunk + hash);
- BLAKE3 of the whole file on every core (``max_threads=AUTO``): the hashing limit.
Files are read from the page cache. No goals here: issue 2's goals are in ``core``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import blake3
import hf_xet

from benchmarks.common import (
    Context,
    Report,
    at_most,
    best,
    bf16_file,
    float32_file,
    gbps,
    human_size,
    random_file,
    text_file,
    warm,
)
from benchmarks.core import _time_blake3, _time_ingest
from chunkyard.hashing import chunk_ids

SERVICES: tuple[str, ...] = ()

#: stored bytes, percent of raw (issue 14): weights by byte grouping; text and random
#: data no worse than pack layout 2 stored them (30.7 % and 100.1 % at 1 GiB)
STORED_GOALS = {"bf16": 72.0, "float32": 88.0, "text": 30.8, "random": 100.1}
STORED_NOTES = {
    "bf16": "layout 2 (zstd level 1): 78.1 %",
    "float32": "layout 2 (zstd level 1): 92.4 %",
    "text": "layout 2: 30.7 %",
    "random": "layout 2: 100.1 % (stored raw)",
}

KINDS: dict[str, Callable[[Path, int], Path]] = {
    "bf16": bf16_file,
    "float32": float32_file,
    "text": text_file,
    "random": random_file,
}


def run(ctx: Context) -> Report:
    r = Report(
        "ingest",
        params={
            "size": ctx.size,
            "sizes": list(ctx.sizes),
            "kinds": list(KINDS),
            "quick": ctx.quick,
            "points": [],
        },
    )
    points = [(kind, size) for size in ctx.sizes for kind in KINDS]
    chunk_ids(bf16_file(ctx.workdir, min(ctx.sizes)))  # start the helper process once
    for kind, size in points:
        with r.section(f"{kind} {human_size(size)}", ctx.console):
            one_file(ctx, r, kind, KINDS[kind](ctx.workdir, size))
    return r


def one_file(ctx: Context, r: Report, kind: str, path: Path) -> None:
    size = path.stat().st_size
    warm(path)
    hf_xet.hash_files([str(path)])  # start its runtime before timing
    times: dict[str, list[float]] = {"ingest": [], "chunk_hash": [], "hf_xet": [], "blake3": []}
    packed = 0
    for _ in range(min(ctx.repeats, 2)):
        t, _cpu, packed = _time_ingest(path)
        times["ingest"].append(t)
        t = time.perf_counter()
        chunk_ids(path)
        times["chunk_hash"].append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_xet.hash_files([str(path)])
        times["hf_xet"].append(time.perf_counter() - t)
        times["blake3"].append(_time_blake3(path, blake3.blake3.AUTO))
    where = f"{kind} {human_size(size)}"
    key = f"{kind}_{size}"
    labels = {
        "ingest": f"chunkyard ingest (chunk+hash+zstd), {where}",
        "chunk_hash": f"chunkyard chunk+hash, {where}",
        "hf_xet": f"hf_xet.hash_files, {where}",
        "blake3": f"BLAKE3 whole file (all cores), {where}",
    }
    for what, samples in times.items():
        t, note = best(samples)
        if what == "ingest":
            note += f"; packs {100 * packed / size:.1f} % of raw"
        r.add(
            f"{what}_{key}_gbps",
            labels[what],
            gbps(size, t),
            "GB/s",
            None,
            note,
            [gbps(size, x) for x in samples],
            beside=None if what == "ingest" else f"ingest_{key}_gbps",
        )
    r.add(
        f"stored_{key}_percent",
        f"stored bytes, {where} (pack layout 3)",
        100 * packed / size,
        "% of raw",
        at_most(STORED_GOALS[kind]),
        STORED_NOTES[kind],
        beside=f"ingest_{key}_gbps",
    )
    ratio = min(times["hf_xet"]) / min(times["chunk_hash"])
    r.add(
        f"hash_ratio_{key}",
        f"chunk+hash, chunkyard / hf_xet, {where}",
        ratio,
        "×",
        None,
        "best vs best",
        beside=f"ingest_{key}_gbps",
    )
    r.params["points"].append(
        {
            "kind": kind,
            "size": size,
            "packed_bytes": packed,
            **{f"{what}_gbps": gbps(size, min(s)) for what, s in times.items()},
        }
    )
