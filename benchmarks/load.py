"""Gateway load (issue 5, workload 7): 100 concurrent clients against one gateway
process on SQLite (the embedded default: local store, inline verification).

90 clients each open an upload session and then loop on missing-chunk queries (``POST
/v1/sessions/{sid}/missing`` with 100 random 32-byte ids, one ``httpx.Client`` each);
10 clients loop on small commits (``chunkyard.Client.push`` of a fresh 1 KiB file: a
session, a missing query, a pack with one chunk uploaded to the gateway's blob
endpoint, its completion and the commit, so about six requests). All threads in this
process, all traffic to 127.0.0.1, for a fixed time (20 s, 5 s with --quick) and at
most MAX_OPS operations per client. Phases: mixed (90 + 10), the queries alone, the
commits alone, and one committer alone (the unloaded latency). Figures: operations per
second and p50 / p99 latency per kind, the gateway's CPU (cores) and this process's
(the load generator shares the 2 cores with the gateway, so it is part of the limit).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx

import chunkyard
from benchmarks.common import Context, Gateway, Report

SERVICES: tuple[str, ...] = ()
CLIENTS = 100
COMMITTERS = 10
IDS_PER_QUERY = 100
MAX_OPS = 100_000


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


PHASES = (  # name, query clients, commit clients
    ("mixed", CLIENTS - COMMITTERS, COMMITTERS),
    ("queries alone", CLIENTS - COMMITTERS, 0),
    ("commits alone", 0, COMMITTERS),
    ("one committer", 0, 1),  # the unloaded latency of a small commit
)


def run(ctx: Context) -> Report:
    duration = 5.0 if ctx.quick else 20.0
    r = Report(
        "load",
        params={
            "quick": ctx.quick,
            "clients": CLIENTS,
            "committers": COMMITTERS,
            "ids_per_query": IDS_PER_QUERY,
            "duration_s": duration,
            "catalog": "SQLite",
            "phases": [list(p) for p in PHASES],
        },
    )
    files = ctx.rundir / "load-files"
    files.mkdir(parents=True, exist_ok=True)
    with Gateway(ctx.rundir / "gw-load") as gw:
        for phase, n_query, n_commit in PHASES:
            with r.section(phase, ctx.console):
                _phase(r, gw, files, phase, n_query, n_commit, duration)
    for f in Path(files).glob("*"):
        f.unlink(missing_ok=True)
    return r


def _phase(
    r: Report, gw: Gateway, files: Path, phase: str, n_query: int, n_commit: int, duration: float
) -> None:
    slug = phase.replace(" ", "_")
    # latencies of the operations that finished inside the window
    lat: dict[str, list[float]] = {"missing": [], "commit": []}
    late: dict[str, list[float]] = {"missing": [], "commit": []}
    errors: dict[str, int] = {"missing": 0, "commit": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    clients = n_query + n_commit
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def record(kind: str, t: float | None, err: Exception | None = None) -> None:
        with lock:
            if err is None and t is not None:
                (late if stop.is_set() else lat)[kind].append(t)
            else:
                errors[kind] += 1
                if not first_error:
                    first_error.append(f"{kind}: {type(err).__name__}: {err}")

    def querier(i: int) -> None:
        with httpx.Client(base_url=gw.url, timeout=60) as http:
            resp = http.post("/v1/sessions", json={"name": f"bench/load/q{i}"})
            resp.raise_for_status()
            sid = resp.json()["session"]
            start.wait()
            for _ in range(MAX_OPS):
                if stop.is_set():
                    return
                body = os.urandom(32 * IDS_PER_QUERY)
                t = time.perf_counter()
                try:
                    resp = http.post(f"/v1/sessions/{sid}/missing", content=body)
                    resp.raise_for_status()
                    record("missing", time.perf_counter() - t)
                except Exception as exc:
                    record("missing", None, exc)

    def committer(i: int) -> None:
        path = files / f"c{i}.bin"
        with chunkyard.Client(gw.url) as cy:
            start.wait()
            for n in range(MAX_OPS):
                if stop.is_set():
                    return
                path.write_bytes(f"{i} {n} ".encode() + os.urandom(1024))
                t = time.perf_counter()
                try:
                    cy.push(path, f"bench/load/c{i}")
                    record("commit", time.perf_counter() - t)
                except Exception as exc:
                    record("commit", None, exc)

    threads = [
        threading.Thread(
            target=committer if i < n_commit else querier,
            args=(i,),
            name=f"load-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for th in threads:
        th.start()
    start.wait(timeout=120)
    cpu_gw, cpu_me = gw.cpu_seconds(), time.process_time()
    t0 = time.perf_counter()
    time.sleep(duration)
    stop.set()
    wall = time.perf_counter() - t0
    cpu_gw, cpu_me = gw.cpu_seconds() - cpu_gw, time.process_time() - cpu_me
    for th in threads:
        th.join(timeout=120)
    for kind, n, label in (
        ("missing", n_query, f"missing-chunk query ({IDS_PER_QUERY} ids)"),
        ("commit", n_commit, "small commit (push 1 KiB, chunkyard.Client)"),
    ):
        if not n:
            continue
        values = lat[kind]
        key = f"{slug}_{kind}"
        r.add(
            f"{key}_rps",
            f"{phase}: {label}, {n} clients",
            len(values) / wall,
            "ops/s",
            note=f"{len(values)} ok in {wall:.1f} s, {errors[kind]} failed, "
            f"{len(late[kind])} finished after the window",
        )
        for p in (50, 99):
            v = _pct(values + late[kind], p)
            r.add(
                f"{key}_p{p}_ms",
                f"p{p} latency",
                None if v is None else 1000 * v,
                "ms",
                beside=f"{key}_rps",
                note="all finished operations" if p == 50 else "",
            )
    r.add(
        f"{slug}_gateway_cores",
        f"{phase}: gateway CPU",
        cpu_gw / wall,
        "cores",
        note=f"load generator (this process, {clients} threads) {cpu_me / wall:.2f} cores",
    )
    if first_error:
        r.errors.append(f"{phase}: first failure: {first_error[0]}")
