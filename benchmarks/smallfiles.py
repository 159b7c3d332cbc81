"""Many files (issue 5, workload 4): push and pull of a directory of small files and of a
sharded model folder, beside ``boto3`` one request per file.

- a directory of 10,000 × 10 KiB files (2,000 with --quick) in 10 subdirectories,
  incompressible bytes (images, tokenized shards);
- a model folder of 20 bf16-like shards of 25 MiB (6 MiB with --quick).

Each is pushed and pulled with the chunkyard CLI through a gateway on the local store
and through one on SeaweedFS (``CHUNKYARD_STORE=$CHUNKYARD_TEST_S3_URL/<fresh prefix>``),
and copied to and from the same SeaweedFS with boto3 ``upload_file`` / ``download_file``
per file on a ThreadPoolExecutor of 10 (what ``aws s3 cp --recursive`` does), each as a
fresh process like the CLI. Times include process start-up.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from benchmarks.common import (
    BIN,
    GENERATOR_VERSION,
    Context,
    Gateway,
    KiB,
    MiB,
    Report,
    Step,
    clean_env,
    delete_s3_prefix,
    human_size,
    mbps,
    run_measured,
    settle,
    warm,
)

SERVICES: tuple[str, ...] = ("s3",)
PY = str(BIN / "python")
THREADS = 10

# argv: up|down, local dir, bucket, key prefix
BOTO3 = """
import os, sys
from concurrent.futures import ThreadPoolExecutor
import boto3
mode, root, bucket, prefix = sys.argv[1:5]
s3 = boto3.client("s3")
if mode == "up":
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
    def one(p):
        s3.upload_file(p, bucket, prefix + os.path.relpath(p, root))
else:
    files = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        files += [o["Key"] for o in page.get("Contents", [])]
    def one(key):
        dest = os.path.join(root, key[len(prefix):])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        s3.download_file(bucket, key, dest)
with ThreadPoolExecutor(THREADS) as pool:
    list(pool.map(one, files))
print(len(files))
""".replace("THREADS", str(THREADS))


def _small_files(workdir: Path, count: int, size: int = 10 * KiB) -> Path:
    root = workdir / f"smallfiles-{count}x{size}-g{GENERATOR_VERSION}"
    marker = workdir / f"{root.name}.complete"  # outside the tree, so it is not pushed
    if marker.exists() and root.is_dir():
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(11)
    for i in range(count):
        d = root / f"part-{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"sample-{i:06d}.bin").write_bytes(rng.bytes(size))
    marker.write_text("")
    return root


def _shards(workdir: Path, count: int, size: int) -> Path:
    root = workdir / f"shards-{count}x{size}-g{GENERATOR_VERSION}"
    marker = workdir / f"{root.name}.complete"
    if marker.exists() and root.is_dir():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        f32 = rng.standard_normal(size // 2, dtype=np.float32) * np.float32(0.02)
        data = (f32.view(np.uint32) >> 16).astype("<u2").tobytes()
        (root / f"model-{i + 1:05d}-of-{count:05d}.safetensors").write_bytes(data)
    marker.write_text("")
    return root


def _tree_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _warm_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            warm(p)


def run(ctx: Context) -> Report:
    n_small = 2000 if ctx.quick else 10_000
    shard_size = (6 if ctx.quick else 25) * MiB
    r = Report(
        "smallfiles",
        params={
            "quick": ctx.quick,
            "small_files": n_small,
            "small_file_size": 10 * KiB,
            "shards": 20,
            "shard_size": shard_size,
            "boto3_threads": THREADS,
        },
    )
    con = ctx.console
    small = _small_files(ctx.workdir, n_small)
    shards = _shards(ctx.workdir, 20, shard_size)
    base = os.environ.get("CHUNKYARD_TEST_S3_URL")
    sets = [("small", f"{n_small:,} × 10 KiB files", small), ("shards", "20 model shards", shards)]
    run_id = uuid.uuid4().hex[:8]
    targets = [("local", "local store", {})]
    if base:
        targets.append(
            ("s3", "SeaweedFS", {"CHUNKYARD_STORE": f"{base.rstrip('/')}/bench-sf-{run_id}"})
        )
    else:
        r.errors.append("CHUNKYARD_TEST_S3_URL is not set (scripts/services start s3)")
    times: dict[tuple[str, str, str], float] = {}
    for tkey, tlabel, env in targets:
        with (
            r.section(f"chunkyard, {tlabel}", con),
            Gateway(ctx.rundir / f"gw-sf-{tkey}", env=env) as gw,
        ):
            for skey, slabel, root in sets:
                nfiles, size = _tree_size(root)
                _warm_tree(root)
                for op in ("push", "pull"):
                    dest = ctx.rundir / f"pulled-{skey}"
                    shutil.rmtree(dest, ignore_errors=True)
                    argv = [str(BIN / "chunkyard"), op]
                    argv += (
                        [str(root), f"bench/sf/{skey}"]
                        if op == "push"
                        else [f"bench/sf/{skey}", str(dest)]
                    )
                    settle()
                    cpu = gw.cpu_seconds()
                    m = run_measured([*argv, "--json"], gw.client_env()).check()
                    if op == "pull":
                        got = _tree_size(dest)
                        shutil.rmtree(dest, ignore_errors=True)
                        if got != (nfiles, size):
                            raise RuntimeError(f"pulled {got}, expected {(nfiles, size)}")
                    r.steps.append(
                        Step(
                            f"{tkey}: {op} {slabel}",
                            size,
                            m.wall_s,
                            m.cpu_s,
                            m.peak_rss,
                            gw.cpu_seconds() - cpu,
                            gw.peak_rss(),
                            {"files": nfiles},
                        )
                    )
                    times[(tkey, skey, op)] = m.wall_s
    if base:
        bucket = base.split("://", 1)[1].split("/")[0]
        with r.section("boto3 per file, SeaweedFS", con):
            for skey, slabel, root in sets:
                nfiles, size = _tree_size(root)
                prefix = f"bench-sf-{run_id}-boto3/{skey}/"
                dest = ctx.rundir / f"boto3-{skey}"
                shutil.rmtree(dest, ignore_errors=True)
                for op, path in (("up", root), ("down", dest)):
                    settle()
                    m = run_measured([PY, "-c", BOTO3, op, str(path), bucket, prefix], clean_env())
                    m.check()
                    r.steps.append(
                        Step(
                            f"boto3: {op}load {slabel}",
                            size,
                            m.wall_s,
                            m.cpu_s,
                            m.peak_rss,
                            extra={"files": int(m.stdout.strip() or 0)},
                        )
                    )
                    times[("boto3", skey, "push" if op == "up" else "pull")] = m.wall_s
                shutil.rmtree(dest, ignore_errors=True)
    for skey, slabel, root in sets:
        nfiles, size = _tree_size(root)
        for op, verb in (("push", "upload_file"), ("pull", "download_file")):
            main = ("s3", skey, op) if base else ("local", skey, op)
            key = f"{skey}_{op}_{main[0]}_s"
            if main not in times:
                continue
            t = times[main]
            r.add(
                key,
                f"{slabel}: chunkyard {op}, {'SeaweedFS' if base else 'local store'}",
                t,
                "s",
                note=f"{nfiles / t:.0f} files/s, {mbps(size, t):.0f} MB/s, {human_size(size)}",
            )
            if base and ("local", skey, op) in times:
                tl = times[("local", skey, op)]
                r.add(
                    f"{skey}_{op}_local_s",
                    f"chunkyard {op}, local store",
                    tl,
                    "s",
                    beside=key,
                    note=f"{nfiles / tl:.0f} files/s",
                )
            if ("boto3", skey, op) in times:
                tb = times[("boto3", skey, op)]
                r.add(
                    f"{skey}_{op}_boto3_s",
                    f"boto3 {verb} per file, {THREADS} threads, SeaweedFS",
                    tb,
                    "s",
                    beside=key,
                    note=f"{nfiles / tb:.0f} files/s; chunkyard / boto3 = {t / tb:.2f}×",
                )
    shutil.rmtree(ctx.rundir / "gw-sf-local", ignore_errors=True)
    shutil.rmtree(ctx.rundir / "gw-sf-s3", ignore_errors=True)
    if base:  # the chunkyard store of this run and the boto3 copies
        bucket = base.split("://", 1)[1].split("/")[0]
        under = base.split("://", 1)[1].partition("/")[2].strip("/")
        n = 0
        for prefix in (f"bench-sf-{run_id}/", f"bench-sf-{run_id}-boto3/"):
            n += delete_s3_prefix(bucket, f"{under}/{prefix}" if under else prefix)
        con.log(f"smallfiles: deleted {n} objects of this run from s3://{bucket}")
    return r
