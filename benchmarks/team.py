"""Team scale (issue 12): many writers and a large catalog, PostgreSQL beside SQLite.

Three sections, each run on both catalogs in the same run, one gateway process
(``python -m chunkyard.cli serve``) on the local store per catalog:

- *small pushes*: 16 long-lived client processes (``benchmarks/team_pusher.py``) each
  push a fresh 1 KiB file to an artifact of their own in a loop through
  ``chunkyard.Client`` for a fixed time (20 s; 6 s with --quick). Pushes per second end
  to end, the gateway's CPU per push (its ``/proc`` CPU time before and after the
  window, divided by the pushes), on PostgreSQL also the CPU of the backends serving
  its connections (those alive at both ends of the window: a connection the pool
  opened and closed meanwhile is missed, so the number of connections opened is
  given too), and the clients' CPU per push (the load generator shares the 2 cores
  with the gateway). Goals: ≥ 100 pushes/s, ≤ 5 ms of gateway CPU per push.
- *64 concurrent pushers*: 64 processes (32 with --quick) push 1-64 KiB files (sizes
  drawn log-uniformly), every other push to one of 8 artifacts they share, the others
  to an artifact of their own: pushes/s, p50/p99 latency of the commit request and of
  whole pushes; the version numbers every pusher got are checked to be unique and
  gap-free per artifact.
- *catalog at scale*: a catalog filled by SQL with 10k, 100k and 1M versions across
  10,000 artifacts (with --quick: 10k and 100k) and ten chunk rows per version (10M at
  1M), aliases on every artifact, tags on every tenth version (how: ``FILL`` below and
  the report's parameters); then, against a gateway on it, p50/p99 of resolving
  ``NAME:ALIAS``, ``show NAME@VERSION``, a prefix page of 100 artifacts, and a
  missing-chunk query of 100,000 keys (10,000 of them present; two requests, as the API
  takes 65,536 keys at most) beside the catalog function alone
  (``catalog.packs.chunk_locations``). Goals: p99 ≤ 20 ms, the 100k-key query ≤ 1 s,
  growth from the smallest to the largest catalog flat or logarithmic (p50 ratio
  ≤ 1.5, log(1M)/log(10k)).

Pushers do not retry a request answered 5xx (the push fails and is counted); a dropped
connection is retried and counted apart. Requests are sent one at a time from this
process for the latency figures. Missed goals are reported, never asserted. Run from a
git worktree, gateways and pushers import the chunkyard being measured (``_src_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks import common
from benchmarks.common import (
    ROOT,
    BenchError,
    Context,
    Gateway,
    Report,
    _die_with_parent,
    at_least,
    at_most,
    clean_env,
    free_port,
    proc_cpu_seconds,
)

SERVICES: tuple[str, ...] = ("postgres",)
DBS = ("sqlite", "postgres")
KiB = 1024

SMALL_PUSHERS = 16
MANY_PUSHERS, MANY_PUSHERS_QUICK = 64, 32
SHARED_NAMES = 8

ARTIFACTS = 10_000
CHUNKS_PER_VERSION = 10
CHUNKS_PER_PACK = 1000
DOMAINS = 10
QUERY_KEYS = 100_000
QUERY_PRESENT = 10_000  # of them present: as many as the smallest catalog's domain holds
MAX_QUERY = 65_536  # the API's limit per missing-chunk request
T0 = 1.7e9  # created_at of filled rows

FILL = (
    "PostgreSQL: one INSERT ... SELECT over generate_series per table (chunk keys "
    "sha256(int8send(g)), pack ids sha256 of 'pack<n>'), the chunks table's primary key, "
    "foreign key and pack index dropped for the load and rebuilt after it, then VACUUM "
    "ANALYZE. SQLite: one INSERT ... SELECT over a recursive CTE per table (keys from the "
    "same functions, registered with sqlite3), chunks inserted in key order with its "
    "pack index rebuilt after, then ANALYZE. Versions round-robin over the artifacts (ids "
    "interleaved as concurrent pushes make them), one file each with a one-term "
    "manifest, a 'prod' alias on every artifact and 'champion' on every tenth, two tags "
    f"on every tenth version, {CHUNKS_PER_PACK} chunks per pack row, {DOMAINS} dedup "
    "domains; pack_entries is left empty (no measured request reads it)."
)


# -- helpers -------------------------------------------------------------------------
def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def _ms(v: float | None) -> float | None:
    return None if v is None else 1000 * v


def _src_path() -> str:
    """Where the chunkyard being measured lives: processes started here import it from
    there whatever their working directory (a git worktree has no .venv of its own)."""
    import chunkyard

    src = str(Path(chunkyard.__file__).resolve().parents[1])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([src, *[os.path.abspath(p) for p in rest], str(ROOT)])


class ServeGateway(Gateway):
    """:class:`~benchmarks.common.Gateway` started as ``python -m chunkyard.cli serve``
    with this interpreter and the code being measured."""

    def start(self, timeout: float = 60.0) -> Gateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [sys.executable, "-m", "chunkyard.cli", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--data", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_env(**self.env, PYTHONPATH=_src_path()),
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        common._live_gateways.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise BenchError(f"gateway exited at startup:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/v1/health", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"gateway did not answer within {timeout:.0f}s")
            time.sleep(0.1)


@dataclass
class Catalog:
    """A fresh catalog: a SQLite file in ``data``, or a PostgreSQL database of its own."""

    kind: str
    url: str
    data: Path

    @classmethod
    def create(cls, kind: str, data: Path) -> Catalog:
        data.mkdir(parents=True, exist_ok=True)
        if kind == "sqlite":
            return cls(kind, f"sqlite:///{data / 'catalog.db'}", data)
        base = os.environ.get("CHUNKYARD_TEST_POSTGRES_URL")
        if not base:
            raise BenchError("PostgreSQL is not running (scripts/services start postgres)")
        name = f"bench_team_{uuid.uuid4().hex[:10]}"
        _psql(base, f"CREATE DATABASE {name}")
        return cls(kind, base.rsplit("/", 1)[0] + "/" + name, data)

    @property
    def env(self) -> dict[str, str]:
        return {"CHUNKYARD_DB": self.url}

    def migrate(self) -> None:
        from chunkyard.catalog import Database

        async def run() -> None:
            db = Database(self.url)
            try:
                await db.migrate()
            finally:
                await db.close()

        asyncio.run(run())

    def backend_pids(self) -> list[int]:
        """PostgreSQL: the backends serving this database's connections."""
        if self.kind != "postgres":
            return []
        out = _psql(
            self.url,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()",
        )
        return [int(x) for x in out.split()]

    def sessions(self) -> int:
        """PostgreSQL: connections ever opened to this database (pg_stat_database, which
        is updated within a second or so; each call here opens one too)."""
        if self.kind != "postgres":
            return 0
        out = _psql(
            self.url, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(out.strip() or 0)

    def drop(self) -> None:
        if self.kind == "postgres":
            base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
            name = self.url.rsplit("/", 1)[1]
            with contextlib.suppress(subprocess.CalledProcessError):
                _psql(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(self.data, ignore_errors=True)


def _psql(url: str, sql: str) -> str:
    return subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-tAqc", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def _cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = proc_cpu_seconds(pid)
    return out


# -- pushers ----------------------------------------------------------------------------
class Pusher:
    """One ``benchmarks.team_pusher`` process and a thread reading its lines."""

    def __init__(self, spec: dict[str, Any], log: Any) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.team_pusher", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
            env=clean_env(PYTHONPATH=_src_path()),
            preexec_fn=_die_with_parent,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.strip() == "ready":
                self.ready.set()
        self.ready.set()  # also when it died before

    def go(self, start: float, end: float) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(f"GO {start} {end}\n")
            self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any] | None:
        self.thread.join(timeout)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for line in reversed(self.lines):
            if line.startswith("{"):
                return json.loads(line)
        return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_pushers(
    gw: Gateway,
    catalog: Catalog,
    n: int,
    names_of: Callable[[int], list[str]],
    sizes: tuple[int, int],
    duration: float,
    workdir: Path,
) -> dict[str, Any]:
    """``n`` pusher processes against ``gw`` for ``duration`` seconds; the totals."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "pushers.log", "a") as log:
        pushers = [
            Pusher(
                {
                    "url": gw.url,
                    "workdir": str(workdir / f"p{i}"),
                    "names": names_of(i),
                    "sizes": list(sizes),
                    "seed": i,
                },
                log,
            )
            for i in range(n)
        ]
        try:
            deadline = time.monotonic() + 60 + 2 * n  # 64 interpreters start on 2 cores
            for p in pushers:
                p.ready.wait(max(0.1, deadline - time.monotonic()))
            alive = [p for p in pushers if p.ready.is_set() and p.proc.poll() is None]
            for p in pushers:
                if p not in alive:  # never got ready: not part of the run
                    p.kill()
            t_start = time.time() + 0.5
            t_end = t_start + duration
            for p in alive:
                p.go(t_start, t_end)
            time.sleep(max(0.0, t_start - time.time()))
            gw_cpu0 = gw.cpu_seconds()
            pg0 = _cpu_of(catalog.backend_pids())
            sessions0 = catalog.sessions()
            time.sleep(max(0.0, t_end - time.time()))
            gw_cpu = gw.cpu_seconds() - gw_cpu0
            pg1 = _cpu_of(catalog.backend_pids())
            pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
            time.sleep(1.5 if catalog.kind == "postgres" else 0)  # the statistics catch up
            connections = catalog.sessions() - sessions0 - 2  # less the psql calls here
            results = [p.result(timeout=120) for p in pushers]
        finally:
            for p in pushers:
                p.kill()
    got = [r for r in results if r is not None]
    versions: dict[str, list[int]] = {}
    for r in got:
        for name, vs in r["versions"].items():
            versions.setdefault(name, []).extend(vs)
    gapless = all(sorted(vs) == list(range(1, len(vs) + 1)) for vs in versions.values())
    errors = [e for r in got for e in r["errors"]]
    return {
        "processes": n,
        "started": len(alive),
        "reported": len(got),
        "ok": sum(r["ok"] for r in got),
        "late": sum(r["late"] for r in got),
        "failed": sum(r["failed"] for r in got),
        "reconnects": sum(r.get("reconnects", 0) for r in got),
        "errors": errors[:5],
        "push_s": [x for r in got for x in r["push_s"]],
        "commit_s": [x for r in got for x in r["commit_s"]],
        "clients_cpu_s": sum(r.get("cpu_s", 0.0) for r in got),
        "gateway_cpu_s": gw_cpu,
        "postgres_cpu_s": pg_cpu,
        "postgres_connections": connections,
        "duration_s": duration,
        "versions_gapless": gapless and len(got) == n,
        "names": len(versions),
    }


def _push_figures(r: Report, key: str, label: str, db: str, res: dict[str, Any]) -> None:
    rate = res["ok"] / res["duration_s"]
    ok = max(res["ok"], 1)
    r.add(
        f"{key}_{db}_pushes_per_s",
        f"{label}, {db}: pushes/s",
        rate,
        "/s",
        goal=at_least(100) if key == "small" else None,
        note=f"{res['processes']} processes ({res['started']} started), {res['ok']} pushes "
        f"in {res['duration_s']:.0f} s, {res['failed']} failed, {res['reconnects']} "
        f"dropped connections retried; version numbers per "
        f"artifact unique and gap-free: {'yes' if res['versions_gapless'] else 'NO'}",
    )
    pg = (
        f"; PostgreSQL backends that lived through the window "
        f"{1000 * res['postgres_cpu_s'] / ok:.2f} ms; about {res['postgres_connections']} "
        "connections opened in it"
        if db != "sqlite"
        else ""
    )
    r.add(
        f"{key}_{db}_gateway_cpu_ms",
        "gateway CPU per push",
        1000 * res["gateway_cpu_s"] / ok,
        "ms",
        goal=at_most(5) if key == "small" else None,
        beside=f"{key}_{db}_pushes_per_s",
        note=f"clients {1000 * res['clients_cpu_s'] / ok:.1f} ms per push{pg}",
    )
    for what, values in (("commit", res["commit_s"]), ("push", res["push_s"])):
        for p in (50, 99):
            r.add(
                f"{key}_{db}_{what}_p{p}_ms",
                f"{'commit (or small push) request' if what == 'commit' else 'whole push'} p{p}",
                _ms(_pct(values, p)),
                "ms",
                beside=f"{key}_{db}_pushes_per_s",
                note=f"{len(values)} samples" if p == 50 else "",
            )
    for e in res["errors"]:
        r.errors.append(f"{key} {db}: {e}")


def small_pushes(ctx: Context, r: Report, db: str, duration: float) -> None:
    work = ctx.rundir / f"team-small-{db}"
    catalog = Catalog.create(db, work / "gw")
    try:
        with ServeGateway(work / "gw", env=catalog.env) as gw:
            res = run_pushers(
                gw,
                catalog,
                SMALL_PUSHERS,
                lambda i: [f"bench/team/small-{i}"],
                (KiB, KiB),
                duration,
                work / "clients",
            )
        _push_figures(r, "small", "small pushes (16 processes, 1 KiB)", db, res)
    finally:
        catalog.drop()
        shutil.rmtree(work, ignore_errors=True)


def many_pushers(ctx: Context, r: Report, db: str, n: int, duration: float) -> None:
    work = ctx.rundir / f"team-many-{db}"
    catalog = Catalog.create(db, work / "gw")
    try:
        with ServeGateway(work / "gw", env=catalog.env) as gw:
            res = run_pushers(
                gw,
                catalog,
                n,
                lambda i: [f"bench/team/shared-{i % SHARED_NAMES}", f"bench/team/own-{i}"],
                (KiB, 64 * KiB),
                duration,
                work / "clients",
            )
        _push_figures(r, "many", f"{n} concurrent pushers (1-64 KiB)", db, res)
    finally:
        catalog.drop()
        shutil.rmtree(work, ignore_errors=True)


# -- catalog at scale ---------------------------------------------------------------------
def chunk_key(g: int) -> bytes:
    """The key of filled chunk row ``g`` (PostgreSQL: ``sha256(int8send(g))``)."""
    return hashlib.sha256(g.to_bytes(8, "big", signed=True)).digest()


def pack_id(p: int) -> str:
    return hashlib.sha256(f"pack{p}".encode()).hexdigest()


def artifact_name(a: int) -> str:
    return f"scale-{a % DOMAINS}/group-{(a // 10) % 100:02d}/model-{a:05d}"


@dataclass(frozen=True)
class Shape:
    versions: int
    artifacts: int = ARTIFACTS

    @property
    def per_artifact(self) -> int:
        return max(1, self.versions // self.artifacts)

    @property
    def chunks(self) -> int:
        return self.versions * CHUNKS_PER_VERSION

    @property
    def packs(self) -> int:
        return max(1, self.chunks // CHUNKS_PER_PACK)

    @property
    def prod_number(self) -> int:
        return max(1, self.per_artifact - 1)


def fill_postgres(url: str, s: Shape) -> list[tuple[str, float]]:
    import asyncpg

    A, N, C, P = s.artifacts, s.versions, s.chunks, s.packs
    pid = "encode(sha256(convert_to('pack' || ({}), 'UTF8')), 'hex')"
    steps = [
        (
            "artifacts",
            "INSERT INTO artifacts (id, name, created_at) SELECT a, 'scale-' || (a % "
            f"{DOMAINS}) || '/group-' || lpad(((a / 10) % 100)::text, 2, '0') || '/model-' || "
            f"lpad(a::text, 5, '0'), {T0} FROM generate_series(1, {A}) a;"
            f"SELECT setval(pg_get_serial_sequence('artifacts', 'id'), {A})",
        ),
        (
            "packs",
            "INSERT INTO packs (id, size, chunk_count, state, created_at, verified_at, key) "
            f"SELECT id, {CHUNKS_PER_PACK * KiB}, {CHUNKS_PER_PACK}, 'verified', {T0}, {T0}, "
            "'packs/' || substr(id, 1, 2) || '/' || id FROM (SELECT "
            f"{pid.format('p')} AS id FROM generate_series(1, {P}) p) s",
        ),
        (
            "versions",
            "INSERT INTO versions (id, artifact_id, number, kind, layout, digest, size, "
            "file_count, created_at, digest_of, format) SELECT g, (g - 1) % "
            f"{A} + 1, (g - 1) / {A} + 1, 'stored', 'file', encode(sha256(int8send(g)), "
            f"'hex'), {KiB}, 1, {T0} + g, 'content', 3 FROM generate_series(1, {N}) g;"
            f"SELECT setval(pg_get_serial_sequence('versions', 'id'), {N})",
        ),
        (
            "version_files",
            "INSERT INTO version_files (version_id, idx, path, size, digest, b3sum, "
            f"manifest) SELECT g, 0, 'model.bin', {KiB}, encode(sha256(int8send(-g)), 'hex'), "
            f"'', '[[\"' || {pid.format(f'g % {P} + 1')} || '\",0,1,{KiB}]]' "
            f"FROM generate_series(1, {N}) g",
        ),
        (
            "tags",
            "INSERT INTO tags (version_id, key, value) SELECT g, k, CASE k WHEN 'step' THEN "
            "g::text ELSE 'r' || (g % 7) END FROM generate_series(10, "
            f"{N}, 10) g, (VALUES ('step'), ('run')) t(k)",
        ),
        (
            "aliases",
            "INSERT INTO aliases (artifact_id, name, version_id, updated_at) SELECT a, 'prod', "
            f"{(s.prod_number - 1) * A} + a, {T0} FROM generate_series(1, {A}) a;"
            "INSERT INTO aliases (artifact_id, name, version_id, updated_at) SELECT a, "
            f"'champion', a, {T0} FROM generate_series(10, {A}, 10) a",
        ),
    ]

    async def run() -> list[tuple[str, float]]:
        conn = await asyncpg.connect(url)
        times = []
        try:
            await conn.execute("SET maintenance_work_mem = '1GB'; SET work_mem = '256MB'")
            for name, sql in steps:
                t = time.perf_counter()
                await conn.execute(sql)
                times.append((name, time.perf_counter() - t))
            # chunks: the bulk of it, loaded without its indexes and constraints
            t = time.perf_counter()
            cons = await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def, contype FROM pg_constraint "
                "WHERE conrelid = 'chunks'::regclass ORDER BY contype DESC"
            )
            idx = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'chunks' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint "
                "WHERE conrelid = 'chunks'::regclass)"
            )
            for c in cons:
                await conn.execute(f'ALTER TABLE chunks DROP CONSTRAINT "{c["conname"]}"')
            for i in idx:
                await conn.execute(f'DROP INDEX "{i["indexname"]}"')
            await conn.execute(
                "INSERT INTO chunks (domain, key, pack_id, idx) SELECT 'scale-' || "
                f"(g % {DOMAINS}), sha256(int8send(g)), "
                + pid.format(f"g / {CHUNKS_PER_PACK} % {P} + 1")
                + f", (g % {CHUNKS_PER_PACK})::int FROM generate_series(1, {C}) g"
            )
            times.append(("chunks (rows)", time.perf_counter() - t))
            t = time.perf_counter()
            for c in reversed(cons):
                await conn.execute(f'ALTER TABLE chunks ADD CONSTRAINT "{c["conname"]}" {c["def"]}')
            for i in idx:
                await conn.execute(i["indexdef"])
            times.append(("chunks (indexes, constraints)", time.perf_counter() - t))
            t = time.perf_counter()
            await conn.execute("VACUUM ANALYZE")
            times.append(("vacuum analyze", time.perf_counter() - t))
        finally:
            await conn.close()
        return times

    return asyncio.run(run())


def fill_sqlite(path: Path, s: Shape) -> list[tuple[str, float]]:
    A, N, C, P = s.artifacts, s.versions, s.chunks, s.packs
    packs = [""] + [pack_id(p) for p in range(1, P + 1)]
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("PRAGMA cache_size=-1000000")
        con.create_function("ckey", 1, chunk_key, deterministic=True)
        con.create_function("pid", 1, packs.__getitem__, deterministic=True)
        con.create_function(
            "hx",
            1,
            lambda g: hashlib.sha256(g.to_bytes(8, "big", signed=True)).hexdigest(),
            deterministic=True,
        )

        def series(n: int, start: int = 1, step: int = 1) -> str:
            return (
                f"WITH RECURSIVE s(g) AS (SELECT {start} UNION ALL SELECT g + {step} FROM s "
                f"WHERE g + {step} <= {n}) "
            )

        steps = [
            (
                "artifacts",
                series(A) + "INSERT INTO artifacts (id, name, created_at) SELECT g, "
                f"printf('scale-%d/group-%02d/model-%05d', g % {DOMAINS}, (g / 10) % 100, g), "
                f"{T0} FROM s",
            ),
            (
                "packs",
                series(P) + "INSERT INTO packs (id, size, chunk_count, state, created_at, "
                f"verified_at, key) SELECT pid(g), {CHUNKS_PER_PACK * KiB}, {CHUNKS_PER_PACK}, "
                f"'verified', {T0}, {T0}, 'packs/' || substr(pid(g), 1, 2) || '/' || pid(g) "
                "FROM s",
            ),
            (
                "versions",
                series(N) + "INSERT INTO versions (id, artifact_id, number, kind, layout, "
                "digest, size, file_count, created_at, digest_of, format) SELECT g, "
                f"(g - 1) % {A} + 1, (g - 1) / {A} + 1, 'stored', 'file', hx(g), {KiB}, 1, "
                f"{T0} + g, 'content', 3 FROM s",
            ),
            (
                "version_files",
                series(N) + "INSERT INTO version_files (version_id, idx, path, size, digest, "
                f"b3sum, manifest) SELECT g, 0, 'model.bin', {KiB}, hx(-g), '', "
                f"'[[\"' || pid(g % {P} + 1) || '\",0,1,{KiB}]]' FROM s",
            ),
            (
                "tags",
                series(N, 10, 10) + "INSERT INTO tags (version_id, key, value) SELECT g, "
                "'step', CAST(g AS TEXT) FROM s UNION ALL SELECT g, 'run', 'r' || (g % 7) FROM s",
            ),
            (
                "aliases",
                series(A) + "INSERT INTO aliases (artifact_id, name, version_id, updated_at) "
                f"SELECT g, 'prod', {(s.prod_number - 1) * A} + g, {T0} FROM s UNION ALL "
                f"SELECT g, 'champion', g, {T0} FROM s WHERE g % 10 = 0",
            ),
            ("chunks: drop pack index", "DROP INDEX ix_chunks_pack"),
            (
                "chunks (rows, in key order)",
                series(C) + "INSERT INTO chunks (domain, key, pack_id, idx) SELECT "
                f"'scale-' || (g % {DOMAINS}), ckey(g), pid(g / {CHUNKS_PER_PACK} % {P} + 1), "
                f"g % {CHUNKS_PER_PACK} FROM s ORDER BY 1, 2",
            ),
            ("chunks (pack index)", "CREATE INDEX ix_chunks_pack ON chunks (pack_id)"),
            ("analyze", "ANALYZE"),
        ]
        times = []
        for name, sql in steps:
            t = time.perf_counter()
            con.execute("BEGIN")
            con.execute(sql)
            con.execute("COMMIT")
            times.append((name, time.perf_counter() - t))
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    return times


def _measure(fn: Callable[[int], Any], samples: int, warmup: int = 10) -> list[float]:
    for i in range(warmup):
        fn(-1 - i)
    out = []
    for i in range(samples):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _query_keys(s: Shape, domain: int, rng: random.Random) -> tuple[list[bytes], int]:
    """100,000 keys, 10,000 of them present in ``domain`` (rows g ≡ domain mod DOMAINS)
    at every catalog size, the others absent, shuffled; and how many are present."""
    rows = rng.sample(range(s.chunks // DOMAINS), min(QUERY_PRESENT, s.chunks // DOMAINS))
    present = [chunk_key(DOMAINS * i + domain) for i in rows if DOMAINS * i + domain > 0]
    keys = present + [rng.randbytes(32) for _ in range(QUERY_KEYS - len(present))]
    rng.shuffle(keys)
    return keys, len(present)


def scale_point(ctx: Context, r: Report, db: str, s: Shape, rows: list[dict]) -> None:
    work = ctx.rundir / f"team-scale-{db}-{s.versions}"
    catalog = Catalog.create(db, work / "gw")
    row: dict[str, Any] = {"db": db, "versions": s.versions, "chunks": s.chunks}
    rows.append(row)
    try:
        t = time.perf_counter()
        catalog.migrate()
        if db == "sqlite":
            steps = fill_sqlite(work / "gw" / "catalog.db", s)
        else:
            steps = fill_postgres(catalog.url, s)
        row["fill_s"] = round(time.perf_counter() - t, 1)
        row["fill_steps"] = {k: round(v, 1) for k, v in steps}
        ctx.console.log(f"team: {db} filled with {s.versions:,} versions in {row['fill_s']} s")
        samples = 100 if ctx.quick else 300
        rng = random.Random(s.versions)
        with (
            ServeGateway(work / "gw", env=catalog.env) as gw,
            httpx.Client(base_url=gw.url, timeout=120) as http,
        ):

            def get(path: str, **params: Any) -> Any:
                resp = http.get(path, params=params or None)
                resp.raise_for_status()
                return resp.json()

            def alias(_: int) -> None:
                a = rng.randrange(1, s.artifacts + 1)
                v = get(f"/v1/artifacts/{artifact_name(a)}/-/versions/prod")
                assert v["version"] == s.prod_number, v

            def show(_: int) -> None:
                a = rng.randrange(1, s.artifacts + 1)
                n = rng.randrange(1, s.per_artifact + 1)
                v = get(f"/v1/artifacts/{artifact_name(a)}/-/versions/{n}")
                assert v["version"] == n and len(v["file_list"]) == 1, v

            per_domain = s.artifacts // DOMAINS
            names = {
                d: sorted(artifact_name(a) for a in range(d or DOMAINS, s.artifacts + 1, DOMAINS))
                for d in range(DOMAINS)
            }

            def page(_: int) -> None:
                d = rng.randrange(DOMAINS)
                cursor = names[d][rng.randrange(per_domain - 100)]
                out = get("/v1/artifacts", prefix=f"scale-{d}/", cursor=cursor, limit=100)
                assert len(out["artifacts"]) == 100, out
                assert out["artifacts"][0]["versions"] == s.per_artifact, out["artifacts"][0]

            ops = {"alias": alias, "show": show, "prefix_page": page}
            lat = {op: _measure(fn, samples) for op, fn in ops.items()}
            # the missing-chunk query: 100,000 keys over two requests
            domain = 3
            sid = http.post("/v1/sessions", json={"name": f"scale-{domain}/bench/query"})
            sid.raise_for_status()
            sid = sid.json()["session"]
            reps = 3 if ctx.quick else 5
            query_s, function_s = [], []
            for _ in range(reps):
                keys, present = _query_keys(s, domain, rng)
                t = time.perf_counter()
                found = 0
                for i in range(0, len(keys), MAX_QUERY):
                    resp = http.post(
                        f"/v1/sessions/{sid}/missing", content=b"".join(keys[i : i + MAX_QUERY])
                    )
                    resp.raise_for_status()
                    found += sum(1 for x in resp.json()["locations"] if x is not None)
                query_s.append(time.perf_counter() - t)
                if found != present:
                    r.errors.append(f"{db}, {s.versions}: {found} keys found, {present} present")
                function_s.append(_function_alone(catalog.url, f"scale-{domain}", keys))
        for op, values in lat.items():
            row[op] = {"p50_ms": _ms(_pct(values, 50)), "p99_ms": _ms(_pct(values, 99))}
        row["missing_100k"] = {"p50_ms": _ms(_pct(query_s, 50)), "max_ms": _ms(max(query_s))}
        row["function_100k"] = {
            "p50_ms": _ms(_pct(function_s, 50)),
            "max_ms": _ms(max(function_s)),
        }
        tag = f"scale_{db}_{s.versions}"
        size = f"{s.versions:,} versions"
        for op, label in (
            ("alias", "resolve NAME:ALIAS"),
            ("show", "show NAME@VERSION"),
            ("prefix_page", "prefix page of 100"),
        ):
            r.add(
                f"{tag}_{op}_p99_ms",
                f"{db}, {size}: {label} p99",
                row[op]["p99_ms"],
                "ms",
                goal=at_most(20),
                note=f"p50 {row[op]['p50_ms']:.2f} ms, {samples} requests",
            )
        r.add(
            f"{tag}_missing_100k_ms",
            f"{db}, {size}: missing-chunk query, 100,000 keys (2 requests)",
            row["missing_100k"]["p50_ms"],
            "ms",
            goal=at_most(1000),
            note=f"median of {reps}, max {row['missing_100k']['max_ms']:.0f} ms; "
            f"{found:,} of {QUERY_KEYS:,} keys present and found",
        )
        r.add(
            f"{tag}_function_100k_ms",
            "catalog function alone (chunk_locations)",
            row["function_100k"]["p50_ms"],
            "ms",
            beside=f"{tag}_missing_100k_ms",
            note=f"median of {reps}",
        )
        r.add(
            f"{tag}_fill_s",
            f"{db}, {size}: fill ({s.chunks:,} chunk rows)",
            row["fill_s"],
            "s",
            note=", ".join(f"{k} {v:.0f} s" for k, v in row["fill_steps"].items()),
        )
    finally:
        catalog.drop()
        shutil.rmtree(work, ignore_errors=True)


def _function_alone(url: str, domain: str, keys: list[bytes]) -> float:
    """Seconds ``catalog.packs.chunk_locations`` takes for ``keys``, in this process."""
    from chunkyard.catalog import Database
    from chunkyard.catalog.packs import chunk_locations

    async def run() -> float:
        db = Database(url)
        try:
            await db.read(chunk_locations, domain, keys[:10])  # connect first
            t = time.perf_counter()
            await db.read(chunk_locations, domain, keys)
            return time.perf_counter() - t
        finally:
            await db.close()

    return asyncio.run(run())


def _growth(r: Report, rows: list[dict]) -> None:
    """p50 at the largest catalog over p50 at the smallest, per database and request."""
    for db in DBS:
        done = sorted(
            (row for row in rows if row["db"] == db and "alias" in row), key=lambda x: x["versions"]
        )
        if len(done) < 2:
            continue
        lo, hi = done[0], done[-1]
        for op in ("alias", "show", "prefix_page", "missing_100k", "function_100k"):
            a, b = lo[op]["p50_ms"], hi[op]["p50_ms"]
            if not a or b is None:
                continue
            p99 = ""
            if "p99_ms" in lo[op]:
                p99 = f"; p99 {lo[op]['p99_ms']:.1f} → {hi[op]['p99_ms']:.1f} ms"
            r.add(
                f"growth_{db}_{op}",
                f"{db}: growth of {op.replace('_', ' ')}, {lo['versions']:,} → "
                f"{hi['versions']:,} versions (p50 ratio)",
                b / a,
                "×",
                goal=at_most(1.5),
                note=f"p50 {a:.2f} → {b:.2f} ms{p99}",
            )


# -- the workload -------------------------------------------------------------------------
def run(ctx: Context) -> Report:
    duration = 6.0 if ctx.quick else 20.0
    many = MANY_PUSHERS_QUICK if ctx.quick else MANY_PUSHERS
    sizes = (10_000, 100_000) if ctx.quick else (10_000, 100_000, 1_000_000)
    rows: list[dict] = []
    r = Report(
        "team",
        params={
            "quick": ctx.quick,
            "catalogs": list(DBS),
            "store": "local (the gateway's blob endpoint, inline verification)",
            "gateway": "one process (python -m chunkyard.cli serve), no auth",
            "small_pushers": SMALL_PUSHERS,
            "many_pushers": many,
            "shared_names": SHARED_NAMES,
            "push_window_s": duration,
            "scale_versions": list(sizes),
            "artifacts": ARTIFACTS,
            "chunks_per_version": CHUNKS_PER_VERSION,
            "query_keys": QUERY_KEYS,
            "query_present": QUERY_PRESENT,
            "fill": FILL,
            "scale": rows,
        },
    )
    for db in DBS:
        with r.section(f"small pushes ({db})", ctx.console):
            small_pushes(ctx, r, db, duration)
    for db in DBS:
        with r.section(f"{many} pushers ({db})", ctx.console):
            many_pushers(ctx, r, db, many, duration)
    for versions in sizes:
        for db in DBS:
            with r.section(f"catalog at {versions:,} versions ({db})", ctx.console):
                scale_point(ctx, r, db, Shape(versions), rows)
    _growth(r, rows)
    return r
