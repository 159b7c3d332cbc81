"""Core engine: ingest, chunk+hash, push/pull through a local gateway, memory.

Each figure stands beside a baseline measured in the same run:

1. ingest (chunk + hash + compress, no network) vs plain BLAKE3 (1 thread and AUTO)
   and zstd level 1 alone over 80 KiB pieces; with 1 worker thread and the default; the
   core-seconds per GiB of each stage (``benchmarks.stages``) and of the gateway's
   verification of the packs;
2. chunk + hash (``chunkyard.hashing.chunk_ids``) vs ``hf_xet.hash_files``, alternating, best of N;
3. re-push of an unchanged file through a real gateway vs BLAKE3 and CLI start-up;
4. push of a 1%-changed copy (10 scattered places): bytes uploaded vs bytes changed;
5. push and pull of incompressible bytes vs ``cp`` on the same filesystem;
6. peak RSS of client and gateway pushing and pulling every size of the sweep
   (a fresh gateway per size, so VmHWM is per size).

Files are read from the page cache (each is read once before it is measured) and dirty
pages are written out before each timed step: these are engine figures, not disk
figures. Writes (pulls, ``cp``) go to the page cache, as neither fsyncs.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import blake3
import hf_xet
import zstandard

from benchmarks.common import (
    BIN,
    Context,
    Gateway,
    MiB,
    Report,
    Step,
    at_least,
    at_most,
    best,
    bf16_file,
    changed_copy,
    gbps,
    human_size,
    mbps,
    random_file,
    run_measured,
    settle,
    warm,
)
from benchmarks.stages import STAGES, stage_costs
from chunkyard.client.packer import WORKERS, Packer, nothing_stored
from chunkyard.fingerprint import fingerprint
from chunkyard.hashing import chunk_ids

#: servers from ``scripts/services`` this workload needs (the gateway it starts itself)
SERVICES: tuple[str, ...] = ()

GOAL_INGEST_GBPS = 1.0
#: core-seconds per GiB of bf16, all client stages (issue 14) and the gateway's verification
GOAL_INGEST_CORE_S = 1.5
GOAL_VERIFY_CORE_S = 0.5
PULL_BF16_ROUNDS = 3
GOAL_PULL_BF16_GBPS = 0.8
GOAL_HASH_RATIO = 2.0
GOAL_REPUSH_GBPS = 1.5
GOAL_CHANGED_PERCENT = 3.0
GOAL_PUSH_PULL_MBPS = 250
GOAL_PEAK_RSS = 300 * MiB
GOAL_FLAT = 1.25
#: zstd baseline piece size: about the size the packer compresses (64 KiB average
#: chunks, up to 256 KiB)
ZSTD_PIECE = 80 * 1024
CHANGED_FRACTION, CHANGED_PLACES = 0.01, 10


def run(ctx: Context) -> Report:
    r = Report(
        "core",
        params={
            "size": ctx.size,
            "memory_sizes": list(ctx.sizes),
            "repeats": ctx.repeats,
            "quick": ctx.quick,
            "page_cache": "warm (each file read once before it is measured)",
        },
    )
    con = ctx.console
    con.log(f"core: test files in {ctx.workdir} (generated once, then reused)")
    weights = bf16_file(ctx.workdir, ctx.size)
    with r.section("1. ingest (chunk + hash + compress, no network)", con):
        ingest(ctx, r, weights)
    with r.section("2. chunk + hash alone vs hf_xet", con):
        chunk_and_hash(ctx, r, weights)
    with r.section("3-5. push and pull through a local gateway", con):
        through_gateway(ctx, r, weights)
    with r.section("6. memory", con):
        memory(ctx, r)
    return r


# -- 1. ingest ---------------------------------------------------------------------


def _time_ingest(path: Path, workers: int = WORKERS) -> tuple[float, float, int]:
    """Seconds, process CPU seconds and pack bytes of ingesting ``path`` into a fresh
    store whose packs go nowhere, with ``workers`` hashing and compressing threads."""
    packed = 0

    def ship(pack: Any) -> None:
        nonlocal packed
        packed += pack.size

    cpu, t = time.process_time(), time.perf_counter()
    with Packer(nothing_stored, ship, workers=workers) as packer:
        packer.add_file(path, path.name)
        packer.finish()
    return time.perf_counter() - t, time.process_time() - cpu, packed


def _time_blake3(path: Path, threads: int, block: int = 16 * MiB) -> float:
    buf = bytearray(block)
    view = memoryview(buf)
    t = time.perf_counter()
    h = blake3.blake3(max_threads=threads)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    h.digest()
    return time.perf_counter() - t


def _time_zstd(path: Path) -> tuple[float, int]:
    """zstd level 1 over ``path`` in ZSTD_PIECE pieces on this thread: seconds and
    compressed bytes."""
    cctx = zstandard.ZstdCompressor(level=1)
    buf = bytearray(ZSTD_PIECE * 100)
    view = memoryview(buf)
    out = 0
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            for off in range(0, n, ZSTD_PIECE):
                out += len(cctx.compress(view[off : min(n, off + ZSTD_PIECE)]))
    return time.perf_counter() - t, out


def ingest(ctx: Context, r: Report, path: Path) -> None:
    size = path.stat().st_size
    warm(path)
    t_ingest: list[float] = []
    cpu_ingest: list[float] = []
    t_b1: list[float] = []
    t_bauto: list[float] = []
    t_zstd: list[float] = []
    t_one: list[float] = []
    packed = zstd_out = 0
    for _ in range(ctx.repeats):  # alternate, so a noisy moment hits all alike
        t, cpu, packed = _time_ingest(path)
        t_ingest.append(t)
        cpu_ingest.append(cpu)
        t_one.append(_time_ingest(path, workers=1)[0])
        t_b1.append(_time_blake3(path, 1))
        t_bauto.append(_time_blake3(path, blake3.blake3.AUTO))
        t, zstd_out = _time_zstd(path)
        t_zstd.append(t)
    t, note = best(t_ingest)
    cores = cpu_ingest[t_ingest.index(t)] / t
    r.add(
        "ingest_gbps",
        f"ingest {human_size(size)} bf16 (chunk+hash+zstd, no network)",
        gbps(size, t),
        "GB/s",
        at_least(GOAL_INGEST_GBPS),
        f"{note}; {cores:.2f} cores busy; packs {100 * packed / size:.1f} % of raw",
        [gbps(size, x) for x in t_ingest],
    )
    t, note = best(t_one)
    r.add(
        "ingest_1worker_gbps",
        f"ingest with 1 worker thread (default here: {WORKERS})",
        gbps(size, t),
        "GB/s",
        None,
        f"{note}; {t / min(t_ingest):.2f}x the time of {WORKERS} workers",
        [gbps(size, x) for x in t_one],
        beside="ingest_gbps",
    )
    r.add(
        "ingest_core_s_pipeline",
        "ingest, core-seconds per GiB (the pipeline, process CPU time)",
        cpu_ingest[t_ingest.index(min(t_ingest))] * 2**30 / size,
        "core-s/GiB",
        None,
        "includes thread hand-offs",
        beside="ingest_gbps",
    )
    costs = stage_costs(path)
    r.add(
        "ingest_core_s",
        "ingest work per GiB, sum of stages (one thread each)",
        costs["total"],
        "core-s/GiB",
        at_most(GOAL_INGEST_CORE_S),
        "; ".join(f"{k} {costs['stages'][k]:.2f}" for k in STAGES)
        + f"; stored {costs['stored_percent']:.1f} % of raw, schemes {costs['schemes']}",
    )
    for stage in STAGES:
        r.add(
            f"stage_{stage.replace(' + ', '_').replace(' ', '_')}",
            f"stage: {stage}",
            costs["stages"][stage],
            "core-s/GiB",
            None,
            "",
            beside="ingest_core_s",
        )
    r.add(
        "verify_core_s",
        "gateway verification per GiB (packs.verify: id, structure, decode + hash every chunk)",
        costs["verify"],
        "core-s/GiB",
        at_most(GOAL_VERIFY_CORE_S),
        "one thread",
    )
    for key, label, samples in (
        ("blake3_1t_gbps", "blake3 of the whole file, 1 thread", t_b1),
        ("blake3_auto_gbps", "blake3 of the whole file, max_threads=AUTO", t_bauto),
    ):
        t, note = best(samples)
        r.add(
            key,
            label,
            gbps(size, t),
            "GB/s",
            None,
            note,
            [gbps(size, x) for x in samples],
            beside="ingest_gbps",
        )
    t, note = best(t_zstd)
    r.add(
        "zstd_l1_gbps",
        f"zstd level 1 alone, {ZSTD_PIECE // 1024} KiB pieces, 1 thread",
        gbps(size, t),
        "GB/s",
        None,
        f"{note}; output {100 * zstd_out / size:.1f} % of raw; ×2 cores ≈ "
        f"{2 * gbps(size, t):.2f} GB/s",
        [gbps(size, x) for x in t_zstd],
        beside="ingest_gbps",
    )


# -- 2. chunk + hash ---------------------------------------------------------------


def chunk_and_hash(ctx: Context, r: Report, path: Path) -> None:
    """FastCDC cut + BLAKE3 id of every chunk (``chunkyard.hashing.chunk_ids``: the work
    hf_xet's ``hash_files`` does, whose file hash is a Merkle fold of its chunk hashes)
    against hf_xet, alternating, best of N. ``fingerprint`` (what ``ref --index``
    records) adds the whole-file BLAKE3 digest in the same read, on one thread (a second
    full hash that hf_xet has no equivalent of): reported beside."""
    size = path.stat().st_size
    warm(path)
    chunk_ids(path)  # start the helper process once, as hf_xet starts its runtime
    hf_xet.hash_files([str(path)])
    ours: list[float] = []
    xet: list[float] = []
    with_digest: list[float] = []
    for _ in range(ctx.repeats):
        t = time.perf_counter()
        chunk_ids(path)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        hf_xet.hash_files([str(path)])
        xet.append(time.perf_counter() - t)
        t = time.perf_counter()
        with open(path, "rb") as f:
            fingerprint(f, size, lambda entries: None)
        with_digest.append(time.perf_counter() - t)
    t_ours, note_ours = best(ours)
    t_xet, note_xet = best(xet)
    t_dig, note_dig = best(with_digest)
    r.add(
        "chunk_ids_gbps",
        "chunk+hash: chunkyard chunk ids (2 processes)",
        gbps(size, t_ours),
        "GB/s",
        None,
        note_ours,
        [gbps(size, x) for x in ours],
    )
    r.add(
        "hf_xet_gbps",
        "chunk+hash: hf_xet.hash_files",
        gbps(size, t_xet),
        "GB/s",
        None,
        note_xet,
        [gbps(size, x) for x in xet],
        beside="chunk_ids_gbps",
    )
    r.add(
        "hash_ratio",
        "chunk+hash speed, chunkyard / hf_xet",
        t_xet / t_ours,
        "×",
        at_least(GOAL_HASH_RATIO),
        "best vs best, page cache warm",
    )
    r.add(
        "hash_file_gbps",
        "chunk ids + whole-file BLAKE3 digest (fingerprint, one read)",
        gbps(size, t_dig),
        "GB/s",
        None,
        note_dig,
        [gbps(size, x) for x in with_digest],
        beside="chunk_ids_gbps",
    )


# -- 3-5. through a gateway ----------------------------------------------------------


def push(r: Report, gw: Gateway, path: Path, name: str, step: str) -> dict[str, Any]:
    """``chunkyard push PATH NAME --json`` as a subprocess, measured on both sides."""
    warm(path)
    settle()
    size = path.stat().st_size
    gw.reset_peak()
    cpu = gw.cpu_seconds()
    m = run_measured(
        [str(BIN / "chunkyard"), "push", str(path), name, "--json"], gw.client_env()
    ).check()
    out = m.json()
    keep = ("version", "created", "chunks_total", "chunks_new", "bytes_uploaded")
    r.steps.append(
        Step(
            step,
            size,
            m.wall_s,
            m.cpu_s,
            m.peak_rss,
            gw.cpu_seconds() - cpu,
            gw.peak_rss(),
            {k: out.get(k) for k in keep},
        )
    )
    return out


def pull(r: Report, gw: Gateway, ref: str, dest: Path, size: int, step: str, **env: str) -> None:
    """``chunkyard pull REF DEST --json`` as a subprocess (``env`` added to the
    client's); ``dest`` is removed after."""
    dest.unlink(missing_ok=True)
    settle()
    gw.reset_peak()
    cpu = gw.cpu_seconds()
    try:
        m = run_measured(
            [str(BIN / "chunkyard"), "pull", ref, str(dest), "--json"], gw.client_env() | env
        ).check()
        got = dest.stat().st_size
    finally:
        dest.unlink(missing_ok=True)
    r.steps.append(
        Step(
            step,
            size,
            m.wall_s,
            m.cpu_s,
            m.peak_rss,
            gw.cpu_seconds() - cpu,
            gw.peak_rss(),
            {"pulled_bytes": got},
        )
    )


def through_gateway(ctx: Context, r: Report, weights: Path) -> None:
    size = weights.stat().st_size
    con = ctx.console
    with Gateway(ctx.rundir / "gw-core") as gw:
        con.log(f"core: gateway {gw.url} (pid {gw.pid}), data in {gw.data_dir}")
        name = "bench/core/weights"
        with r.section("3. re-push of an unchanged file", con):
            first = push(r, gw, weights, name, f"push {human_size(size)} bf16 (all new)")
            r.add(
                "first_push_gbps",
                f"first push {human_size(size)} bf16 (all new)",
                gbps(size, r.steps[-1].wall_s),
                "GB/s",
                None,
                f"1 sample; uploaded {100 * first['bytes_uploaded'] / size:.1f} % of raw",
            )
            walls, uploaded = [], []
            for i in range(ctx.repeats):
                out = push(r, gw, weights, name, f"re-push unchanged #{i + 1}")
                walls.append(r.steps[-1].wall_s)
                uploaded.append(out["bytes_uploaded"])
            startup = [
                run_measured([str(BIN / "chunkyard"), "ls", "--json"], gw.client_env())
                .check()
                .wall_s
                for _ in range(ctx.repeats)
            ]
            t, note = best(walls)
            t_cli, note_cli = best(startup)
            net = gbps(size, t - t_cli) if t > t_cli else float("inf")
            r.add(
                "repush_gbps",
                f"re-push unchanged {human_size(size)} (CLI wall time)",
                gbps(size, t),
                "GB/s",
                at_least(GOAL_REPUSH_GBPS),
                f"{note}; ≈ {net:.2f} GB/s without CLI start-up",
                [gbps(size, x) for x in walls],
            )
            r.add(
                "repush_blake3_auto",
                "blake3 AUTO of the file (in process, from 1.)",
                r.get("blake3_auto_gbps"),
                "GB/s",
                beside="repush_gbps",
                note="what hashing the file costs",
            )
            r.add(
                "cli_roundtrip_s",
                "CLI start-up + one call (chunkyard ls --json)",
                t_cli,
                "s",
                beside="repush_gbps",
                note=note_cli,
                samples=startup,
            )
            r.add(
                "repush_bytes_uploaded",
                "re-push unchanged: bytes uploaded",
                max(uploaded),
                "B",
                at_most(0),
                f"max of {len(uploaded)} re-pushes",
            )

        with r.section("4. push of a 1%-changed copy", con):
            changed = changed_copy(weights, CHANGED_FRACTION, CHANGED_PLACES)
            out = push(r, gw, changed, name, f"push 1%-changed copy ({CHANGED_PLACES} places)")
            r.add(
                "changed_upload_percent",
                f"1%-changed copy ({CHANGED_PLACES} places): uploaded / size",
                100 * out["bytes_uploaded"] / size,
                "%",
                at_most(GOAL_CHANGED_PERCENT),
                f"{human_size(out['bytes_uploaded'])}; "
                f"{out['chunks_new']}/{out['chunks_total']} chunks new; "
                f"version {out['version']}",
            )
            r.add(
                "changed_bytes_percent",
                "bytes changed in the file (random bytes)",
                100 * CHANGED_FRACTION,
                "%",
                beside="changed_upload_percent",
                note="the floor: changed runs are incompressible",
            )

        with r.section("5. push and pull of incompressible bytes", con):
            noise = random_file(ctx.workdir, size)
            push(r, gw, noise, "bench/core/random", f"push {human_size(size)} random (new)")
            t_push = r.steps[-1].wall_s
            pulls = []
            for i in range(min(2, ctx.repeats)):  # a pull costs seconds: best of 2
                pull(
                    r,
                    gw,
                    "bench/core/random",
                    ctx.rundir / "pulled.bin",
                    size,
                    f"pull {human_size(size)} random #{i + 1}",
                )
                pulls.append(r.steps[-1].wall_s)
            copies = []
            dest = ctx.rundir / "copy.bin"
            for _ in range(len(pulls)):
                dest.unlink(missing_ok=True)
                settle()
                copies.append(
                    run_measured(["cp", "--reflink=never", str(noise), str(dest)]).check().wall_s
                )
                dest.unlink(missing_ok=True)
            t_pull, note_pull = best(pulls)
            t_cp, note_cp = best(copies)
            r.add(
                "random_push_mbps",
                f"push {human_size(size)} incompressible (new name)",
                mbps(size, t_push),
                "MB/s",
                at_least(GOAL_PUSH_PULL_MBPS),
                "1 sample",
            )
            r.add(
                "random_pull_mbps",
                f"pull {human_size(size)} incompressible",
                mbps(size, t_pull),
                "MB/s",
                at_least(GOAL_PUSH_PULL_MBPS),
                note_pull,
                [mbps(size, x) for x in pulls],
            )
            r.add(
                "cp_mbps",
                "cp of the same file, same filesystem (--reflink=never)",
                mbps(size, t_cp),
                "MB/s",
                beside="random_pull_mbps",
                note=note_cp,
                samples=[mbps(size, x) for x in copies],
            )
    shutil.rmtree(ctx.rundir / "gw-core", ignore_errors=True)


# -- 6. memory -----------------------------------------------------------------------


def memory(ctx: Context, r: Report) -> None:
    peaks: dict[str, dict[int, int]] = {}
    reset_ok = True
    for size in ctx.sizes:
        path = bf16_file(ctx.workdir, size)  # generated in PIECE-sized pieces
        data = ctx.rundir / f"gw-mem-{size}"
        with Gateway(data) as gw:
            idle = gw.rss()
            push(r, gw, path, "bench/mem/weights", f"push {human_size(size)} bf16 (memory)")
            push_step = r.steps[-1]
            reset_ok = gw.reset_peak() and reset_ok
            pull(
                r,
                gw,
                "bench/mem/weights",
                ctx.rundir / "pulled.bin",
                size,
                f"pull {human_size(size)} bf16 (memory)",
            )
            pull_step = r.steps[-1]
            push_step.extra["gateway_idle_rss"] = idle
            if size == ctx.size:  # issue 14: pulls of weights from the local store
                # pack files read by the client (the default on the gateway's machine),
                # and alternating with them the same pulls through the blob endpoint
                pulls, served = [pull_step], []
                dest = ctx.rundir / "pulled.bin"
                for i in range(PULL_BF16_ROUNDS):  # one sample swung ±10 % here
                    step = f"pull bf16 through the blob endpoint #{i + 1}"
                    pull(r, gw, "bench/mem/weights", dest, size, step, CHUNKYARD_LOCAL_READS="0")
                    served.append(r.steps[-1])
                    if len(pulls) < PULL_BF16_ROUNDS:
                        pull(r, gw, "bench/mem/weights", dest, size, f"pull bf16 again #{i + 2}")
                        pulls.append(r.steps[-1])
                for key, what, steps, goal in (
                    ("pull_bf16_gbps", "from the local store", pulls, GOAL_PULL_BF16_GBPS),
                    ("pull_bf16_http_gbps", "through the blob endpoint", served, None),
                ):
                    fastest = min(steps, key=lambda s: s.wall_s)
                    _, spread = best([s.wall_s for s in steps])
                    r.add(
                        key,
                        f"pull {human_size(size)} bf16 {what} (CLI wall time)",
                        gbps(size, fastest.wall_s),
                        "GB/s",
                        at_least(goal) if goal else None,
                        f"{spread}; client {fastest.client_cpu_s:.2f} core-s, gateway "
                        f"{fastest.gateway_cpu_s or 0:.2f} core-s; every chunk decoded and "
                        "verified",
                        [gbps(size, s.wall_s) for s in steps],
                    )
        shutil.rmtree(data, ignore_errors=True)
        for key, value in (
            ("client push", push_step.client_peak_rss),
            ("client pull", pull_step.client_peak_rss),
            ("gateway push", push_step.gateway_peak_rss),
            ("gateway pull", pull_step.gateway_peak_rss),
        ):
            peaks.setdefault(key, {})[size] = value or 0
    small, large = ctx.sizes[0], ctx.sizes[-1]
    for what, by_size in peaks.items():
        slug = what.replace(" ", "_")
        note = "" if reset_ok or what != "gateway pull" else "since gateway start (no reset)"
        for size in ctx.sizes:
            r.add(
                f"rss_{slug}_{size}",
                f"peak RSS, {what} {human_size(size)}",
                by_size[size],
                "B",
                at_most(GOAL_PEAK_RSS),
                note or "fresh gateway per size",
            )
        ratio = by_size[large] / by_size[small] if by_size[small] else None
        r.add(
            f"rss_{slug}_flat",
            f"peak RSS, {what}: {human_size(large)} / {human_size(small)}",
            ratio,
            "×",
            at_most(GOAL_FLAT),
            "flat: memory must not grow with file size",
        )
