"""Garbage collection over a store with many versions (issue 13).

On the local store and on SeaweedFS, one gateway each (SQLite catalog): 4,000 versions
(600 with --quick) of 100 artifacts are pushed as small pushes, each version one block
of random bytes (512 KiB; 256 KiB with --quick) out of 400 (150), every block used by
ten versions (four); the first push of a block makes its pack, so the store holds one
pack per block. Then half of the versions, all those of the first half of the blocks, are
removed from the catalog (by SQL: the ``rm`` command lives on another branch), which
leaves half of the packs unreferenced, and ``POST /v1/admin/gc`` runs three times with
``grace`` 0: a dry run, the collection, and a second collection with nothing left to
free. Figures per store: seconds, objects scanned per second (files' manifests read by
the mark plus store objects listed; also in the run with nothing to free, which is the
scan alone), packs deleted (and per second of the time the collection took beyond that
scan) and bytes freed, the gateway's CPU;
afterwards ten remaining versions are pulled back and compared.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import Context, KiB, Report, delete_store_prefix, human_size
from benchmarks.team import ServeGateway

SERVICES: tuple[str, ...] = ("s3",)
ARTIFACTS = 100
PUSHERS = 4


def _block(j: int, size: int) -> bytes:
    return random.Random(j).randbytes(size)


def _gc(url: str, **body: Any) -> tuple[dict[str, Any], float]:
    """One collection through the gateway: its summary and wall seconds."""
    req = urllib.request.Request(
        url + "/v1/admin/gc",
        data=json.dumps({"grace": 0, **body}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=3600) as resp:
        out = json.loads(resp.read())
    return out, time.perf_counter() - t


def _fill(url: str, workdir: Path, versions: int, blocks: int, size: int) -> float:
    """Push every version, each artifact's in order (so none is "unchanged"), four
    artifacts at a time; seconds."""
    from chunkyard import Client

    def artifact(a: int) -> None:
        path = workdir / f"a{a}.bin"
        with Client(url) as c:
            for i in range(a, versions, ARTIFACTS):
                path.write_bytes(_block(i % blocks, size))
                v = c.push(path, f"bench/gc/{a}")
                assert v["created"], v

    t = time.perf_counter()
    with ThreadPoolExecutor(PUSHERS) as pool:
        list(pool.map(artifact, range(ARTIFACTS)))
    return time.perf_counter() - t


def _forget(catalog: Path, versions: int, blocks: int) -> int:
    """Remove from the catalog every version whose block is in the first half: what
    ``rm`` would do; returns how many."""
    doomed = [
        (f"bench/gc/{i % ARTIFACTS}", i // ARTIFACTS + 1)
        for i in range(versions)
        if i % blocks < blocks // 2
    ]
    conn = sqlite3.connect(catalog, timeout=60)
    try:
        with conn:
            for name, number in doomed:
                (vid,) = conn.execute(
                    "SELECT v.id FROM versions v JOIN artifacts a ON a.id = v.artifact_id"
                    " WHERE a.name = ? AND v.number = ?",
                    (name, number),
                ).fetchone()
                for table in ("tags", "aliases", "alias_moves", "version_files"):
                    conn.execute(f"DELETE FROM {table} WHERE version_id = ?", (vid,))
                conn.execute("DELETE FROM versions WHERE id = ?", (vid,))
    finally:
        conn.close()
    return len(doomed)


def _check(url: str, workdir: Path, versions: int, blocks: int, size: int) -> int:
    """Pull ten remaining versions back and compare; how many."""
    from chunkyard import Client

    kept = [i for i in range(versions) if i % blocks >= blocks // 2]
    with Client(url) as c:
        for i in random.Random(0).sample(kept, 10):
            out = workdir / "back.bin"
            c.pull(f"bench/gc/{i % ARTIFACTS}@{i // ARTIFACTS + 1}", out)
            if out.read_bytes() != _block(i % blocks, size):
                raise AssertionError(f"version {i} does not pull back identical")
    return 10


def run(ctx: Context) -> Report:
    versions, blocks, size = (600, 150, 256 * KiB) if ctx.quick else (4000, 400, 512 * KiB)
    r = Report(
        "gc",
        params={
            "quick": ctx.quick,
            "versions": versions,
            "artifacts": ARTIFACTS,
            "blocks": blocks,
            "block_size": size,
            "removed": "every version of the first half of the blocks (half the versions)",
            "catalog": "sqlite",
        },
    )
    stores: dict[str, str | None] = {"local": None}
    if os.environ.get("CHUNKYARD_TEST_S3_URL"):
        base = os.environ["CHUNKYARD_TEST_S3_URL"].rstrip("/")
        stores["s3"] = f"{base}/bench-gc-{uuid.uuid4().hex[:8]}"
    else:
        r.errors.append("CHUNKYARD_TEST_S3_URL is not set: SeaweedFS skipped")
    for store, url in stores.items():
        with r.section(f"gc on {store}", ctx.console):
            try:
                _one(ctx, r, store, url, versions, blocks, size)
            finally:
                if url is not None:
                    n = delete_store_prefix(url)
                    ctx.console.log(f"gc: deleted {n} objects under {url}")
    return r


def _one(
    ctx: Context,
    r: Report,
    store: str,
    url: str | None,
    versions: int,
    blocks: int,
    size: int,
) -> None:
    con = ctx.console
    work = ctx.rundir / f"gc-{store}"
    work.mkdir(parents=True, exist_ok=True)
    env = {"CHUNKYARD_STORE": url} if url else {}
    with ServeGateway(work / "data", env=env) as gw:
        con.log(f"gc: pushing {versions} versions of {human_size(size)} on {store}")
        fill = _fill(gw.url, work, versions, blocks, size)
        removed = _forget(work / "data" / "catalog.db", versions, blocks)
        con.log(f"gc: pushed in {fill:.1f} s; removed {removed} versions from the catalog")
        dry, dry_s = _gc(gw.url, dry_run=True)
        cpu = gw.cpu_seconds()
        done, gc_s = _gc(gw.url)
        gc_cpu = gw.cpu_seconds() - cpu
        again, again_s = _gc(gw.url)
        pulled = _check(gw.url, work, versions, blocks, size)
    scanned = done["files"] + done["objects_listed"]
    p = f"{store}_"
    r.add(p + "fill_s", f"{store}: {versions} small pushes (filling)", fill, "s")
    r.add(p + "gc_s", f"{store}: gc, half of the versions removed", gc_s, "s")
    r.add(
        p + "scanned_per_s",
        f"{store}: objects scanned per second (manifests + store objects)",
        scanned / gc_s,
        "/s",
        note=f"{done['files']} manifests, {done['objects_listed']} store objects",
    )
    r.add(p + "packs_deleted", f"{store}: packs deleted", done["packs_deleted"], "packs")
    r.add(
        p + "deleted_per_s",
        f"{store}: packs deleted per second (beyond the scan)",
        done["packs_deleted"] / max(gc_s - again_s, 1e-3),
        "/s",
    )
    r.add(p + "bytes_freed", f"{store}: bytes freed", done["bytes_freed"], "B")
    r.add(p + "gc_cpu_s", f"{store}: gateway CPU for the gc", gc_cpu, "s")
    r.add(p + "dry_s", f"{store}: gc --dry-run", dry_s, "s", beside=p + "gc_s")
    r.add(p + "again_s", f"{store}: gc again, nothing to free", again_s, "s", beside=p + "gc_s")
    r.add(
        p + "again_scanned_per_s",
        f"{store}: objects scanned per second, nothing to free",
        (again["files"] + again["objects_listed"]) / again_s,
        "/s",
        beside=p + "scanned_per_s",
    )
    r.params.setdefault("results", []).append(
        {
            "store": store,
            "dry_run": dry,
            "gc": done,
            "again": again,
            "versions_removed": removed,
            "pulled_back_identical": pulled,
        }
    )
    if dry["packs_deleted"] != done["packs_deleted"] or again["packs_deleted"]:
        r.errors.append(f"{store}: the dry run and the collection disagree: {dry} / {done}")
