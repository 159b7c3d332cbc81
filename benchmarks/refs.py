"""References (issue 5, workload 6): registering objects that already sit in a bucket.

1, 100 and 10,000 objects (1, 100 and 1,000 with --quick) are written with boto3 under
fresh prefixes on SeaweedFS: 4 KiB each, but every 100th is 1 MiB (so ``--hash`` has
some real reading to do). Each prefix is registered with ``chunkyard ref NAME
s3://bucket/prefix/ --json`` (list + pins, no bytes read), then with ``--hash`` (every
object read once and BLAKE3-hashed), through a gateway whose ``CHUNKYARD_REF_ALLOW`` is
the run's prefix. Figures: CLI wall time, the gateway's own ``seconds`` and its
``bytes_read`` from the result JSON, beside the bytes under the prefix.
"""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from benchmarks.common import (
    BIN,
    Context,
    Gateway,
    KiB,
    MiB,
    Report,
    Step,
    delete_s3_prefix,
    human_size,
    mbps,
    run_measured,
)

SERVICES: tuple[str, ...] = ("s3",)
SMALL, LARGE, LARGE_EVERY = 4 * KiB, MiB, 100


def _size(i: int) -> int:
    return LARGE if i % LARGE_EVERY == 0 else SMALL


def _create(bucket: str, prefix: str, n: int) -> int:
    import boto3

    s3 = boto3.client("s3")
    small, large = os.urandom(SMALL), os.urandom(LARGE)

    def put(i: int) -> None:
        body = large if _size(i) == LARGE else small
        # distinct bytes per object: the index in front
        s3.put_object(Bucket=bucket, Key=f"{prefix}obj-{i:05d}.bin", Body=b"%08d" % i + body[8:])

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(n)))
    return sum(_size(i) for i in range(n))


def run(ctx: Context) -> Report:
    counts = (1, 100, 1000) if ctx.quick else (1, 100, 10_000)
    r = Report(
        "refs",
        params={
            "quick": ctx.quick,
            "counts": list(counts),
            "object_size": SMALL,
            "large_object_size": LARGE,
            "large_every": LARGE_EVERY,
        },
    )
    base = os.environ.get("CHUNKYARD_TEST_S3_URL")
    if not base:
        r.errors.append("CHUNKYARD_TEST_S3_URL is not set (scripts/services start s3)")
        return r
    bucket = base.split("://", 1)[1].split("/")[0]
    root = f"bench-refs-{uuid.uuid4().hex[:8]}/"
    env = {"CHUNKYARD_REF_ALLOW": f"s3://{bucket}/{root}"}
    con = ctx.console
    try:
        _registrations(ctx, r, bucket, root, env, counts)
    finally:
        con.log(f"refs: deleted {delete_s3_prefix(bucket, root)} objects under {root}")
    return r


def _registrations(
    ctx: Context,
    r: Report,
    bucket: str,
    root: str,
    env: dict[str, str],
    counts: tuple[int, ...],
) -> None:
    con = ctx.console
    with Gateway(ctx.rundir / "gw-refs", env=env) as gw:
        for n in counts:
            with r.section(f"{n} objects", con):
                prefix = f"{root}n{n}/"
                con.log(f"refs: writing {n} objects under s3://{bucket}/{prefix}")
                total = _create(bucket, prefix, n)
                results = {}
                for hashed in (False, True):
                    name = f"bench/refs/n{n}{'-hash' if hashed else ''}"
                    argv = [str(BIN / "chunkyard"), "ref", name, f"s3://{bucket}/{prefix}"]
                    argv += ["--hash", "--json"] if hashed else ["--json"]
                    cpu = gw.cpu_seconds()
                    m = run_measured(argv, gw.client_env()).check()
                    out = m.json()
                    results[hashed] = (m, out)
                    r.steps.append(
                        Step(
                            f"ref {n} object{'s' if n > 1 else ''}{' --hash' if hashed else ''}",
                            total,
                            m.wall_s,
                            m.cpu_s,
                            m.peak_rss,
                            gw.cpu_seconds() - cpu,
                            gw.peak_rss(),
                            {k: out.get(k) for k in ("objects", "bytes_read", "seconds", "size")},
                        )
                    )
                (m0, o0), (m1, o1) = results[False], results[True]
                label = f"{n:,} object{'s' if n > 1 else ''} ({human_size(total)})"
                r.add(
                    f"ref_{n}_s",
                    f"ref {label}: CLI wall time",
                    m0.wall_s,
                    "s",
                    note=f"gateway {o0.get('seconds')} s; {o0.get('objects')} objects pinned",
                )
                r.add(
                    f"ref_{n}_bytes_read",
                    "bytes read by the gateway",
                    o0.get("bytes_read"),
                    "B",
                    beside=f"ref_{n}_s",
                )
                r.add(
                    f"ref_{n}_hash_s",
                    f"ref {label} --hash: CLI wall time",
                    m1.wall_s,
                    "s",
                    note=f"gateway {o1.get('seconds')} s; "
                    f"{mbps(total, m1.wall_s):.0f} MB/s of objects",
                )
                r.add(
                    f"ref_{n}_hash_bytes_read",
                    "bytes read by the gateway",
                    o1.get("bytes_read"),
                    "B",
                    beside=f"ref_{n}_hash_s",
                    note=f"objects total {human_size(total)}",
                )
