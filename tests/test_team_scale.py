"""A team on one repository: many writer processes at once, on SQLite and on
PostgreSQL, and several gateway processes serving one catalog (PostgreSQL) and one
store (S3 on SeaweedFS), one of them killed and restarted mid-way. Nothing a gateway
holds in memory may be needed for correctness: every push gets its own version, version
numbers per artifact run 1..k without a gap, and every version pulls back identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.client.transport import RetryPolicy, Wait
from conftest import GatewayProcess, child_env, random_bytes, start_gateway
from stores.conftest import require_env

WRITER = Path(__file__).with_name("team_writer.py")
WRITERS = 8


# -- catalogs ---------------------------------------------------------------------------
def psql(base: str, sql: str, check: bool = True) -> None:
    subprocess.run(["psql", base, "-qc", sql], check=check, capture_output=True)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards."""
    require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")
    base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
    name = "t_team_" + uuid.uuid4().hex[:10]
    psql(base, f"create database {name}")
    yield base.rsplit("/", 1)[0] + "/" + name
    psql(base, f"drop database {name} with (force)", check=False)


# -- many writers -----------------------------------------------------------------------
def writer_plan(i: int) -> list[dict]:
    """Writer ``i``'s pushes. First its own artifact with content every writer pushes
    (writers of the same parity build the very same pack, the others the same chunks in
    the other order), then fresh content to the shared artifact and to its own."""
    x, y = (901, 40_000), (902, 30_000)
    first = {"a.bin": x, "b.bin": y} if i % 2 == 0 else {"a.bin": y, "b.bin": x}
    shared = "team/writers/shared"

    def fresh(n: int) -> dict:
        return {"common.bin": (903, 5_000), f"w{i}/f{n}.bin": (1000 * i + n, 2_000 + 97 * n)}

    return [
        {"name": f"team/writers/own-{i}", "files": first},
        {"name": shared, "files": fresh(1)},
        {"name": f"team/writers/own-{i}", "files": fresh(2)},
        {"name": shared, "files": fresh(3)},
        {"name": shared, "files": fresh(4)},
    ]


def run_writers(url: str, workdir: Path, plans: list[list[dict]], retry: int = 1) -> list[dict]:
    """One process per plan, all released at once; their reports, in order."""
    procs = []
    for i, plan in enumerate(plans):
        spec = {"url": url, "workdir": str(workdir / f"w{i}"), "pushes": plan, "retry": retry}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WRITER), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
        )
    try:
        for p in procs:
            line = p.stdout.readline()
            assert line.strip() == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        for p in procs:  # go
            p.stdin.write("\n")
            p.stdin.flush()
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
        return reports
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def same_tree(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }

    return files(a) == files(b)


@pytest.fixture(params=["sqlite", "postgres"])
def writers_gateway(request, tmp_path_factory) -> Iterator[str]:
    env = {}
    if request.param == "postgres":
        env["CHUNKYARD_DB"] = request.getfixturevalue("pg_url")
    gw, server, thread = start_gateway(tmp_path_factory.mktemp("writers"), **env)
    yield gw.url
    server.should_exit = True
    thread.join(timeout=10)


def test_many_writer_processes(writers_gateway, tmp_path):
    """8 client processes push at once, to the same artifact and to their own: every
    push is a version of its own, numbers run 1..k in commit order, no request fails
    (the writers do not retry: a 5xx or a deadlock would be an error), and every version
    pulls back identical."""
    plans = [writer_plan(i) for i in range(WRITERS)]
    reports = run_writers(writers_gateway, tmp_path, plans)
    errors = [e for r in reports for e in r["errors"]]
    assert not errors, "\n".join(errors)
    pushes = [p for r in reports for p in r["pushes"]]
    assert len(pushes) == sum(len(p) for p in plans)
    assert all(p["created"] for p in pushes), [p for p in pushes if not p["created"]]
    by_name: dict[str, list[int]] = defaultdict(list)
    for p in pushes:
        by_name[p["name"]].append(p["version"])
    for name, numbers in by_name.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), (name, sorted(numbers))
    for r in reports:  # each writer's own pushes to the shared artifact: increasing
        mine = [p["version"] for p in r["pushes"] if p["name"] == "team/writers/shared"]
        assert mine == sorted(mine), mine
    with Client(writers_gateway) as c:
        for name, numbers in by_name.items():
            listed = c.versions(name)
            assert [v["version"] for v in listed] == list(range(1, len(numbers) + 1))
            times = [v["created_at"] for v in listed]
            assert times == sorted(times), (name, times)  # numbered in commit order
        digests = {c.show(f"{p['name']}@{p['version']}")["digest"] for p in pushes}
        assert len(digests) == 4 * WRITERS + 2  # the first pushes: two trees (a/b, b/a)
        for p in pushes:
            out = tmp_path / "pulled" / p["name"].replace("/", "_") / str(p["version"])
            c.pull(f"{p['name']}@{p['version']}", out)
            assert same_tree(out, Path(p["dir"])), p


async def test_concurrent_promotions_of_the_same_chunks_on_postgres(pg_url):
    """Three copies of a pack's chunks in three orders (three sessions pushed the same
    files, packed differently) are verified and promoted at the same moment, twenty
    times: none may fail (a deadlock on the dedup index was a 500 on pack completion)."""
    import hashlib

    from chunkyard.catalog import Database
    from chunkyard.catalog import packs as packs_q
    from chunkyard.catalog.packs import UploadRow

    db = Database(pg_url)
    await db.migrate()
    try:
        for r in range(20):
            keys = [hashlib.sha256(f"{r}-{i}".encode()).digest() for i in range(300)]
            promotions = []
            for j, order in enumerate((keys, keys[::-1], keys[150:] + keys[:150])):
                pack = hashlib.sha256(f"pack-{r}-{j}".encode()).hexdigest()
                upload = UploadRow(uuid.uuid4().hex, "s", pack, 30_000, "", pack, "complete", 0.0)
                await db.write(packs_q.insert_upload, upload)  # promote takes its row
                entries = [
                    (hashlib.sha256(k).digest(), k, 100 * i, 100, 100, 0)
                    for i, k in enumerate(order)
                ]
                promotions.append(db.write(packs_q.promote, upload, entries, "team", 1.0))
            results = await asyncio.gather(*promotions, return_exceptions=True)
            assert not [e for e in results if isinstance(e, Exception)], results
            found = await db.read(packs_q.chunk_locations, "team", keys)
            assert len(found) == len(keys)
    finally:
        await db.close()


# -- several gateways -------------------------------------------------------------------
MIGRATE = """
import asyncio, sys
import alembic.command
from chunkyard.catalog import Database

async def migrate():
    db = Database(sys.argv[1])
    try:
        await db.migrate()
        print(await db.revision())
    finally:
        await db.close()

print("ready", flush=True)
sys.stdin.readline()
asyncio.run(migrate())
"""


@pytest.mark.parametrize("catalog", ["sqlite", "postgres"])
def test_gateways_starting_at_once_migrate_an_empty_catalog(catalog, request, tmp_path):
    """Four processes open an empty catalog at the same moment, as the gateways (or the
    workers of one) of a team start together: each finds it migrated to the head."""
    from chunkyard.catalog.db import head_revision

    if catalog == "postgres":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(4)
    ]
    try:
        for p in procs:  # imported and waiting
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-3000:]
            assert out.strip() == head_revision()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def gateways(tmp_path, pg_url, s3_url) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    """Two gateway processes on one PostgreSQL catalog and one S3 prefix, started at
    the same moment on an empty catalog (both migrate it)."""
    env = {"CHUNKYARD_DB": pg_url, "CHUNKYARD_STORE": s3_url, "CHUNKYARD_SECRET": "team-secret"}
    a = GatewayProcess(tmp_path / "gw-a", env).start()
    b = GatewayProcess(tmp_path / "gw-b", env).start()
    try:
        a.wait_ready()
        b.wait_ready()
        yield a, b
    finally:
        a.stop()
        b.stop()


class Waits:
    """What the clients' transports had to ride out."""

    def __init__(self) -> None:
        self.seen: list[Wait] = []
        self.lock = threading.Lock()

    def __call__(self, wait: Wait) -> None:
        with self.lock:
            self.seen.append(wait)

    def server_errors(self) -> list[str]:
        return [str(w) for w in self.seen if "HTTP 5" in w.reason]


def test_two_gateways_one_catalog_one_store(gateways, tmp_path):
    """Pushes go through gateway A while another client pulls them and moves an alias
    through gateway B; A and then B are killed (SIGKILL) mid-way and restarted. Clients
    ride out the restarts; no request is answered 5xx; nothing is lost."""
    a, b = gateways
    waits = Waits()
    retry = RetryPolicy(attempts=200, deadline=45, base=0.1, cap=0.5)
    names = [f"team/multi/m{t}" for t in range(2)]
    per_name = 6
    pushed: dict[tuple[str, int], bytes] = {}
    done = threading.Event()
    failures: list[str] = []
    lock = threading.Lock()

    def pusher(t: int) -> None:
        try:
            with Client(a.url, retry=retry, on_wait=waits) as c:
                for n in range(per_name):
                    data = random_bytes(150_000 + 1000 * n, seed=5000 + 100 * t + n)
                    src = tmp_path / f"src-{t}-{n}.bin"
                    src.write_bytes(data)
                    r = c.push(src, names[t])
                    with lock:
                        pushed[(names[t], r["version"])] = data
        except Exception as exc:
            failures.append(f"pusher {t}: {type(exc).__name__}: {exc}")

    def reader() -> None:
        rng = random.Random(7)
        try:
            with (
                Client(b.url, retry=retry, on_wait=waits) as cb,
                Client(a.url, retry=retry, on_wait=waits) as ca,
            ):
                n = 0
                while not done.is_set() or n == 0:
                    with lock:
                        have = sorted(pushed)
                    if not have:
                        time.sleep(0.05)
                        continue
                    name, v = rng.choice(have)
                    out = tmp_path / f"read-{n}.bin"
                    cb.pull(f"{name}@{v}", out)
                    assert out.read_bytes() == pushed[(name, v)], (name, v)
                    cb.set_alias(name, "seen", v)
                    assert ca.show(f"{name}:seen")["version"] == v  # through the other one
                    n += 1
        except Exception as exc:
            failures.append(f"reader: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=pusher, args=(t,)) for t in range(len(names))]
    threads.append(threading.Thread(target=reader))
    for th in threads:
        th.start()
    killed = []
    try:
        for gw, after in ((a, 3), (b, 7)):  # kill each once, while the others work
            deadline = time.monotonic() + 60
            while len(pushed) < after and time.monotonic() < deadline and not failures:
                time.sleep(0.02)
            time.sleep(0.05)  # into the next push
            gw.kill()
            killed.append(gw.url)
            time.sleep(0.5)
            gw.start().wait_ready()
        for th in threads[:-1]:
            th.join(timeout=60)
    finally:
        done.set()
        for th in threads:
            th.join(timeout=60)
    assert not failures, failures
    assert killed == [a.url, b.url]
    assert not waits.server_errors(), waits.server_errors()
    for gw in (a, b):  # the restarts were felt: clients waited for each gateway
        assert any(gw.url in w.what for w in waits.seen), [str(w) for w in waits.seen]
    assert len(pushed) == per_name * len(names)
    for gw in (a, b):
        with Client(gw.url) as c:
            for name in names:
                assert [v["version"] for v in c.versions(name)] == list(range(1, per_name + 1))
            for (name, v), data in pushed.items():
                out = tmp_path / f"final-{gw.port}-{name.replace('/', '_')}-{v}.bin"
                c.pull(f"{name}@{v}", out)
                assert out.read_bytes() == data
            assert c.stats()["versions"] == per_name * len(names)
    logs = a.log_text() + b.log_text()
    assert "Traceback" not in logs, logs[-6000:]


def test_serve_with_two_workers_on_postgres(tmp_path, pg_url):
    """``chunkyard serve --workers 2`` on an empty PostgreSQL catalog: both workers
    start (and migrate) at once, and pushes and pulls through them work."""
    gw = GatewayProcess(tmp_path / "gw", {"CHUNKYARD_DB": pg_url}, workers=2).start()
    try:
        gw.wait_ready()
        files = {n: random_bytes(50_000 + n, seed=700 + n) for n in range(6)}
        with Client(gw.url, retry=RetryPolicy(attempts=1)) as c:
            for n, data in files.items():
                (tmp_path / f"f{n}").write_bytes(data)
                assert c.push(tmp_path / f"f{n}", f"team/workers/m{n % 2}")["created"]
            for n, data in files.items():
                c.pull(f"team/workers/m{n % 2}@{n // 2 + 1}", tmp_path / f"o{n}")
                assert (tmp_path / f"o{n}").read_bytes() == data
            c.set_alias("team/workers/m0", "prod", 2)
            assert c.show("team/workers/m0:prod")["version"] == 2
        assert "Traceback" not in gw.log_text(), gw.log_text()[-6000:]
    finally:
        gw.stop()
