"""Garbage collection against a real gateway and store (local directory, SeaweedFS),
on SQLite and PostgreSQL: what it deletes and keeps, and the interleavings with pushes
that must lose nothing (FORMAT.md, "Deleting"). The steps are driven one at a time,
with the repository's functions called between the HTTP requests of a crafted client
or from a hook in the real one; on PostgreSQL also with transactions held open, so
that a commit and a condemnation really wait for each other's row locks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Connection, select

from chunkyard import Client
from chunkyard.catalog import gc as gc_q
from chunkyard.catalog import packs as packs_q
from chunkyard.catalog import versions as versions_q
from chunkyard.catalog.schema import (
    alias_moves,
    aliases,
    sessions,
    tags,
    version_files,
    versions,
)
from chunkyard.client import upload as client_upload
from chunkyard.repository import Repository, gc
from chunkyard.repository.access import ANYONE
from conftest import RunningGateway, begin_pack, chunk_keys, proof, random_bytes, start_gateway
from stores.conftest import AZURE_ENV, GCS_ENV, S3_ENV, fresh_url, require_env

MB = 1_000_000


# -- fixtures and helpers ---------------------------------------------------------------
def _gateway(tmp: Path, db: str, **env: str) -> Iterator[RunningGateway]:
    """A gateway on SQLite or on a fresh PostgreSQL database (dropped afterwards)."""
    name = None
    if db == "postgres":
        require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")
        base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
        name = "gc_" + uuid.uuid4().hex[:10]
        subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
        env["CHUNKYARD_DB"] = base.rsplit("/", 1)[0] + "/" + name
    # large enough to go through upload sessions, where dedup hits and proofs happen
    env.setdefault("CHUNKYARD_SMALL_PUSH_BYTES", "0")
    old = os.environ.get("CHUNKYARD_SMALL_PUSH_BYTES")
    os.environ["CHUNKYARD_SMALL_PUSH_BYTES"] = env["CHUNKYARD_SMALL_PUSH_BYTES"]  # the client's
    gw, server, thread = start_gateway(tmp, **env)
    try:
        yield gw
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if old is None:
            os.environ.pop("CHUNKYARD_SMALL_PUSH_BYTES", None)
        else:
            os.environ["CHUNKYARD_SMALL_PUSH_BYTES"] = old
        if name is not None:
            base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
            subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"])


@pytest.fixture(params=["sqlite", "postgres"])
def gw(request, tmp_path_factory) -> Iterator[RunningGateway]:
    yield from _gateway(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture
def local_gw(tmp_path_factory) -> Iterator[RunningGateway]:
    yield from _gateway(tmp_path_factory.mktemp("local"), "sqlite")


async def _repo(gw: RunningGateway) -> Repository:
    """The gateway's repository opened a second time, in the test: the same catalog
    and store, so its steps can run between a client's requests."""
    return await Repository.open(gw.settings)


def _forget(conn: Connection, name: str, number: int) -> None:
    """Remove a version from the catalog (what ``rm`` does; not on this branch)."""
    art = versions_q.artifact_id(conn, name)
    vid = conn.execute(
        select(versions.c.id).where(versions.c.artifact_id == art, versions.c.number == number)
    ).scalar_one()
    for table in (tags, aliases, alias_moves, version_files):
        conn.execute(table.delete().where(table.c.version_id == vid))
    conn.execute(versions.delete().where(versions.c.id == vid))


async def forget(repo: Repository, name: str, number: int) -> None:
    await repo.db.write(_forget, name, number)


def pack_of(gw: RunningGateway, ref: str) -> list[str]:
    name, _, number = ref.partition("@")
    with httpx.Client(base_url=gw.url) as h:
        r = h.get(f"/v1/artifacts/{name}/-/versions/{number}/files/0/reconstruction")
        assert r.status_code == 200, r.text
        return sorted({t["pack"] for t in r.json()["terms"]})


async def pack_state(repo: Repository, pack: str) -> str | None:
    row = await repo.db.read(packs_q.pack_row, pack)
    return None if row is None else row.state


async def stored(repo: Repository, pack: str) -> bool:
    """Whether any object of the pack is in the store."""
    return bool([o async for o in repo.store.list(f"packs/{pack[:2]}/{pack}")])


def push(gw: RunningGateway, path: Path, name: str) -> dict:
    with Client(gw.url) as c:
        return c.push(path, name)


def pulls_back(gw: RunningGateway, ref: str, data: bytes, tmp: Path) -> None:
    out = tmp / f"back-{uuid.uuid4().hex[:8]}"
    with Client(gw.url) as c:
        c.pull(ref, out)
    assert out.read_bytes() == data


def write(tmp: Path, data: bytes) -> Path:
    p = tmp / f"f-{uuid.uuid4().hex[:8]}.bin"
    p.write_bytes(data)
    return p


async def full_gc(repo: Repository, **kw) -> dict:
    return await gc.collect(repo, ANYONE, **{"grace": 0.0, **kw})


async def names_only_stored_packs(repo: Repository) -> None:
    """Every pack a version names has its object in the store: no version was ever
    made to name a deleted pack."""
    marked = await gc.mark(repo)
    for p in marked.packs:
        row = await repo.db.read(packs_q.pack_row, p)
        assert row is not None and row.state == "verified", (p, row)
        assert await stored(repo, p), p


# -- what it deletes and keeps ----------------------------------------------------------
async def test_unreferenced_packs_go_live_ones_stay(gw, tmp_path):
    a, b = random_bytes(2 * MB, seed=1), random_bytes(2 * MB, seed=2)
    push(gw, write(tmp_path, a), "gc/keep")
    push(gw, write(tmp_path, b), "gc/keep")
    (pa,), (pb,) = pack_of(gw, "gc/keep@1"), pack_of(gw, "gc/keep@2")
    repo = await _repo(gw)
    try:
        await forget(repo, "gc/keep", 1)
        young = await gc.collect(repo, ANYONE)  # default grace: a day
        assert young["packs_deleted"] == 0 and young["packs_kept"] == 1
        dry = await full_gc(repo, dry_run=True)
        assert dry["dry_run"] and dry["packs_deleted"] == 1 and dry["bytes_freed"] > 2 * MB
        assert await pack_state(repo, pa) == "verified" and await stored(repo, pa)
        r = await full_gc(repo)
        assert r["packs_deleted"] == 1 and r["packs_live"] == 1
        assert r["bytes_freed"] == dry["bytes_freed"]
        assert not await stored(repo, pa) and await stored(repo, pb)
        # no session is open: the tombstone is not needed and goes in the same run
        assert await pack_state(repo, pa) is None and r["tombstones_removed"] == 1
        pulls_back(gw, "gc/keep@2", b, tmp_path)
        again = await full_gc(repo)
        assert again["packs_deleted"] == 0 and again["packs_live"] == 1
        # the content comes back by uploading it again
        v = push(gw, write(tmp_path, a), "gc/keep")
        assert v["created"] and v["bytes_uploaded"] > 2 * MB
        pulls_back(gw, f"gc/keep@{v['version']}", a, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


def test_dry_run_changes_nothing_and_the_command_says_what_would_go(local_gw, tmp_path):
    push(local_gw, write(tmp_path, random_bytes(2 * MB, seed=3)), "gc/dry")
    asyncio.run(_forget_in(local_gw, "gc/dry", 1))
    before = local_gw.snapshot()
    env = {**os.environ, "CHUNKYARD_URL": local_gw.url}
    out = _cli(env, "gc", "--grace", "0s", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "dry run" in out.stdout and "would delete: 1" in out.stdout, out.stdout
    assert local_gw.snapshot() == before
    out = _cli(env, "gc", "--grace", "0s", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["packs_deleted"] == 1 and not r["dry_run"]
    # the version's metadata record stays: only rm deletes records, GC only packs
    assert [k for k in local_gw.snapshot()["store"] if not k.startswith("meta/")] == []
    bad = _cli(env, "gc", "--grace=-1s")
    assert bad.returncode == 2 and "0 or more" in bad.stderr


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


async def _forget_in(gw: RunningGateway, name: str, number: int) -> None:
    repo = await _repo(gw)
    try:
        await forget(repo, name, number)
    finally:
        await repo.close()


def test_gc_is_for_admins(tmp_path_factory):
    gw, server, thread = start_gateway(tmp_path_factory.mktemp("auth"), CHUNKYARD_AUTH="1")
    try:
        from chunkyard.repository import tokens

        made = asyncio.run(tokens.offline(gw.settings.db_url, "create", scopes=["write:*"]))
        with httpx.Client(base_url=gw.url) as h:
            headers = {"authorization": f"Bearer {made['token']}"}
            r = h.post("/v1/admin/gc", json={"grace": 0}, headers=headers)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = h.post("/v1/admin/gc", json={"grace": 0})
            assert r.status_code == 401
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- interleavings with pushes ----------------------------------------------------------
async def test_a_chunk_deduped_against_a_pack_gc_deletes_is_uploaded_again(
    gw, tmp_path, monkeypatch
):
    """(a) A push finds its first half in a pack no version names any more; GC condemns
    and deletes that pack before the push commits. The commit is refused
    ``packs_gone`` and the client, without a word to its caller, asks again and
    uploads what is now missing: the version pulls back identical."""
    a, b = random_bytes(2 * MB, seed=4), random_bytes(MB, seed=5)
    push(gw, write(tmp_path, a), "gc/old")
    (old,) = pack_of(gw, "gc/old@1")
    repo = await _repo(gw)
    reports, tries = [], []
    real_commit, real_init = client_upload.Uploader.commit, client_upload.Uploader.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        tries.append(1)
        real_init(self, *args, **kw)

    def commit(self, *args, **kw):  # type: ignore[no-untyped-def]
        if not reports:  # between the lookup (which found `old`) and the commit
            with Client(gw.url) as c:
                reports.append(c.gc(grace=0))
        return real_commit(self, *args, **kw)

    monkeypatch.setattr(client_upload.Uploader, "__init__", init)
    monkeypatch.setattr(client_upload.Uploader, "commit", commit)
    try:
        await forget(repo, "gc/old", 1)
        v = push(gw, write(tmp_path, a + b), "gc/new")
        assert reports[0]["packs_deleted"] == 1 and not await stored(repo, old)
        assert len(tries) == 2  # the first commit was refused, the second made it
        assert v["created"] and v["bytes_uploaded"] > 3 * MB  # a sent again
        pulls_back(gw, "gc/new@1", a + b, tmp_path)
        assert old not in pack_of(gw, "gc/new@1")
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


async def test_a_session_begun_before_the_mark_keeps_its_own_packs(gw, tmp_path, monkeypatch):
    """(b) A session uploads its packs, then GC runs (grace 0) before it commits: packs
    verified since the oldest open session began may be that session's, so they are
    kept, and the commit goes through the first time."""
    data = random_bytes(2 * MB, seed=6)
    reports, tries = [], []
    real_commit, real_init = client_upload.Uploader.commit, client_upload.Uploader.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        tries.append(1)
        real_init(self, *args, **kw)

    def commit(self, *args, **kw):  # type: ignore[no-untyped-def]
        with Client(gw.url) as c:
            reports.append(c.gc(grace=0))
        return real_commit(self, *args, **kw)

    monkeypatch.setattr(client_upload.Uploader, "__init__", init)
    monkeypatch.setattr(client_upload.Uploader, "commit", commit)
    v = push(gw, write(tmp_path, data), "gc/session")
    monkeypatch.undo()
    assert len(tries) == 1 and v["created"]
    assert reports[0]["packs_kept"] == 1 and reports[0]["packs_deleted"] == 0
    pulls_back(gw, "gc/session@1", data, tmp_path)
    repo = await _repo(gw)
    try:
        r = await full_gc(repo)  # named by a version now
        assert r["packs_live"] == 1 and r["packs_deleted"] == 0
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


def _session_naming_old_pack(gw: RunningGateway, h: httpx.Client, data: bytes, name: str):
    """A crafted client's session whose missing-chunk query finds every chunk of
    ``data`` in one pack; the commit body that names it, with proofs."""
    s = h.post("/v1/sessions", json={"name": name}).json()
    keys = chunk_keys(data)
    found = h.post(f"/v1/sessions/{s['session']}/missing", content=b"".join(keys)).json()
    assert None not in found["locations"] and len(found["packs"]) == 1
    (pack,) = found["packs"]
    assert [loc[1] for loc in found["locations"]] == list(range(len(keys)))
    body = {
        "layout": "file",
        "files": [
            {"path": "f", "size": len(data), "terms": [[pack, 0, len(keys), proof(s, keys)]]}
        ],
    }
    return s, pack, body


async def test_a_commit_after_the_sweep_is_refused_and_changes_nothing(gw, tmp_path):
    """(c), the sweep first: a commit naming a pack GC condemned and deleted since the
    session's lookup is refused ``packs_gone`` (409) naming it, writes nothing, and the
    same session's next lookup reports those chunks missing."""
    data = random_bytes(2 * MB, seed=7)
    push(gw, write(tmp_path, data), "gc/c1")
    repo = await _repo(gw)
    try:
        await forget(repo, "gc/c1", 1)
        with httpx.Client(base_url=gw.url) as h:
            s, pack, body = _session_naming_old_pack(gw, h, data, "gc/c1b")
            r = await full_gc(repo)  # mark, condemn, sweep
            assert r["packs_deleted"] == 1
            assert await pack_state(repo, pack) == "deleted"  # the session is open
            r = h.post(f"/v1/sessions/{s['session']}/commit", json=body)
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "packs_gone" and err["detail"]["packs"] == [pack]
            assert h.get("/v1/artifacts/gc/c1b/-/versions/latest").status_code == 404
            keys = b"".join(chunk_keys(data))
            again = h.post(f"/v1/sessions/{s['session']}/missing", content=keys).json()
            assert all(loc is None for loc in again["locations"])
        v = push(gw, write(tmp_path, data), "gc/c1b")  # a client uploads it again
        pulls_back(gw, f"gc/c1b@{v['version']}", data, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


async def test_a_commit_between_mark_and_condemn_spares_its_packs(gw, tmp_path):
    """(c), the commit first: the mark found the pack unreferenced, then a commit named
    it; the condemnation reads the versions committed since the mark and spares it."""
    data = random_bytes(2 * MB, seed=8)
    push(gw, write(tmp_path, data), "gc/c2")
    repo = await _repo(gw)
    try:
        await forget(repo, "gc/c2", 1)
        with httpx.Client(base_url=gw.url) as h:
            s, pack, body = _session_naming_old_pack(gw, h, data, "gc/c2b")
            marked = await gc.mark(repo)
            assert pack not in marked.packs
            r = h.post(f"/v1/sessions/{s['session']}/commit", json=body)
            assert r.status_code == 201, r.text
        report = gc.Report(False, 0.0)
        doomed = await gc.condemn(repo, marked, 0.0, time.time(), False, report)
        assert doomed == [] and await pack_state(repo, pack) == "verified"
        await gc.sweep(repo, doomed, False, report, gc.Progress())
        assert await stored(repo, pack)
        pulls_back(gw, "gc/c2b@1", data, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


async def test_a_small_push_racing_the_sweep_packs_the_chunks_again(local_gw, tmp_path):
    """A small push found chunks in a pack that GC condemned before the push's
    transaction: the gateway looks again and packs them itself; nothing fails."""
    from chunkyard.repository import small

    data = random_bytes(300_000, seed=9)
    repo = await _repo(local_gw)
    try:
        first = await small.push(repo, ANYONE, "gc/small", "file", [small.SmallFile("f", data)], {})
        await forget(repo, "gc/small", first["version"])
        real_put, swept = repo.store.put, []

        async def put(key: str, blob: bytes) -> None:  # between the lookup and the commit
            if not swept:
                swept.append(await full_gc(repo))
            await real_put(key, blob)

        repo.store.put = put  # type: ignore[method-assign]
        files = [small.SmallFile("f", data), small.SmallFile("g", b"more")]
        v = await small.push(repo, ANYONE, "gc/small2", "tree", files, {})
        assert swept[0]["packs_deleted"] == 1
        assert v["created"] and v["chunks_new"] == v["chunks_total"]
        await names_only_stored_packs(repo)
    finally:
        await repo.close()
    with Client(local_gw.url) as c:
        c.pull("gc/small2", tmp_path / "out")
    assert (tmp_path / "out" / "f").read_bytes() == data


async def test_a_pack_uploaded_again_while_condemned_comes_back(local_gw, tmp_path):
    """A verified upload of a pack GC condemned, but whose object it has not deleted
    yet, becomes the pack's live copy again; the sweep then deletes only the old copy."""
    data = random_bytes(2 * MB, seed=10)
    push(local_gw, write(tmp_path, data), "gc/revive")
    (pack,) = pack_of(local_gw, "gc/revive@1")
    repo = await _repo(local_gw)
    try:
        old_key = (await repo.db.read(packs_q.pack_row, pack)).key
        await forget(repo, "gc/revive", 1)
        marked = await gc.mark(repo)
        r = gc.Report(False, 0.0)
        doomed = await gc.condemn(repo, marked, 0.0, time.time(), False, r)
        assert [p.id for p in doomed] == [pack]
        v = push(local_gw, write(tmp_path, data), "gc/revive")  # same content, same pack
        assert v["bytes_uploaded"] > MB
        row = await repo.db.read(packs_q.pack_row, pack)
        assert row.state == "verified" and row.key != old_key
        await gc.sweep(repo, doomed, False, r, gc.Progress())
        assert await repo.store.stat(old_key) is None and await repo.store.stat(row.key)
        assert await pack_state(repo, pack) == "verified"
        pulls_back(local_gw, f"gc/revive@{v['version']}", data, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


def test_pushes_and_gc_at_once_lose_nothing(gw, tmp_path):
    """Four clients push overlapping content and forget older versions while GC runs
    again and again with no grace period: every version left pulls back identical,
    and none names a pack whose object is gone."""
    base = [random_bytes(MB, seed=100 + i) for i in range(4)]
    kept: dict[str, bytes] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    runs = []

    def pusher(i: int) -> None:
        try:
            for n in range(4):
                data = base[(i + n) % 4] + random_bytes(200_000, seed=1000 * i + n)
                v = push(gw, write(tmp_path, data), f"gc/stress/{i}")
                kept[f"gc/stress/{i}@{v['version']}"] = data
                if v["version"] > 1:
                    asyncio.run(_forget_in(gw, f"gc/stress/{i}", v["version"] - 1))
                    kept.pop(f"gc/stress/{i}@{v['version'] - 1}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    def collector() -> None:
        with Client(gw.url) as c:
            while not stop.is_set():
                runs.append(c.gc(grace=0))

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(4)]
    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    gc_thread.join()
    assert not errors, errors
    assert runs and sum(r["packs_deleted"] for r in runs) > 0
    for ref, data in kept.items():
        pulls_back(gw, ref, data, tmp_path)
    asyncio.run(_check_stored(gw))


async def _check_stored(gw: RunningGateway) -> None:
    repo = await _repo(gw)
    try:
        await full_gc(repo)
        await names_only_stored_packs(repo)
    finally:
        await repo.close()


# -- PostgreSQL: the row locks ------------------------------------------------------------
def _pg_waiting(db_url: str) -> int:
    """Backends of the test's database waiting for a lock (other tests' databases on
    the same server are not counted)."""
    query = (
        "select count(*) from pg_stat_activity where datname = current_database() "
        "and wait_event_type = 'Lock'"
    )
    out = subprocess.run(
        ["psql", db_url, "-tAc", query],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def _until_waiting(db_url: str) -> None:
    for _ in range(2000):  # a bound, not a timing assertion
        if _pg_waiting(db_url):
            return
        time.sleep(0.01)
    raise AssertionError("nobody ever waited for the lock")


@pytest.fixture
def pg_gw(tmp_path_factory) -> Iterator[RunningGateway]:
    yield from _gateway(tmp_path_factory.mktemp("pg"), "postgres")


def test_postgres_a_commit_waits_for_the_condemnation_then_is_refused(pg_gw, tmp_path):
    """The condemnation holds the pack's row FOR UPDATE; a commit naming the pack waits
    on its FOR KEY SHARE read, then sees it condemned and answers packs_gone."""
    data = random_bytes(2 * MB, seed=11)
    push(pg_gw, write(tmp_path, data), "gc/pg1")
    asyncio.run(_forget_in(pg_gw, "gc/pg1", 1))
    locked, release, result = threading.Event(), threading.Event(), {}
    with httpx.Client(base_url=pg_gw.url, timeout=60) as h:
        s, pack, body = _session_naming_old_pack(pg_gw, h, data, "gc/pg1b")

        def condemn() -> None:
            async def run() -> None:
                repo = await _repo(pg_gw)
                marked = await gc.mark(repo)

                def tx(conn: Connection) -> list:
                    doomed = gc_q.condemn(conn, [pack], 0.0, set(marked.versions), time.time())
                    locked.set()
                    release.wait(60)
                    return doomed

                try:
                    result["doomed"] = await repo.db.write(tx)
                finally:
                    await repo.close()

            asyncio.run(run())

        def commit() -> None:
            with httpx.Client(base_url=pg_gw.url, timeout=60) as h2:
                result["commit"] = h2.post(f"/v1/sessions/{s['session']}/commit", json=body)

        t1 = threading.Thread(target=condemn)
        t1.start()
        assert locked.wait(60)
        t2 = threading.Thread(target=commit)
        t2.start()
        _until_waiting(pg_gw.settings.db_url)  # the commit waits for the row
        release.set()
        t1.join()
        t2.join()
    assert [p.id for p in result["doomed"]] == [pack]
    r = result["commit"]
    assert r.status_code == 409 and r.json()["error"]["code"] == "packs_gone", r.text


def test_postgres_a_condemnation_waits_for_a_commit_then_spares_its_pack(pg_gw, tmp_path):
    """A commit that read the pack FOR KEY SHARE first holds off the condemnation until
    it has committed; the condemnation then sees its version and spares the pack."""
    data = random_bytes(2 * MB, seed=12)
    push(pg_gw, write(tmp_path, data), "gc/pg2")
    (pack,) = pack_of(pg_gw, "gc/pg2@1")
    asyncio.run(_forget_in(pg_gw, "gc/pg2", 1))
    locked, release, result = threading.Event(), threading.Event(), {}

    async def marked_versions() -> set[int]:
        repo = await _repo(pg_gw)
        try:
            return set((await gc.mark(repo)).versions)
        finally:
            await repo.close()

    seen = asyncio.run(marked_versions())  # the mark: the pack is unreferenced

    def commit() -> None:
        async def run() -> None:
            repo = await _repo(pg_gw)

            def tx(conn: Connection) -> None:
                (row,) = packs_q.lock_packs(conn, [pack]).values()  # as a commit does
                art = versions_q.ensure_artifact(conn, "gc/pg2b", time.time())
                v = versions_q.add_version(
                    conn,
                    art,
                    kind="stored",
                    layout="file",
                    digest="0" * 64,
                    size=1,
                    file_count=1,
                    created_at=time.time(),
                )
                terms = json.dumps([[pack, 0, row.chunk_count, 0]])
                versions_q.insert_files(
                    conn,
                    v.id,
                    [{"idx": 0, "path": "f", "size": 1, "digest": "0" * 64, "manifest": terms}],
                )
                locked.set()
                release.wait(60)

            try:
                await repo.db.write(tx)
            finally:
                await repo.close()

        asyncio.run(run())

    def condemn() -> None:
        async def run() -> None:
            repo = await _repo(pg_gw)
            try:
                result["doomed"] = await repo.db.write(gc_q.condemn, [pack], 0.0, seen, time.time())
                result["state"] = await pack_state(repo, pack)
            finally:
                await repo.close()

        asyncio.run(run())

    t1 = threading.Thread(target=commit)
    t1.start()
    assert locked.wait(60)
    t2 = threading.Thread(target=condemn)
    t2.start()
    _until_waiting(pg_gw.settings.db_url)  # the condemnation waits for the row
    release.set()
    t1.join()
    t2.join()
    assert result["doomed"] == [] and result["state"] == "verified"


# -- sessions and uploads ----------------------------------------------------------------
async def test_expired_sessions_and_their_uploads_go(gw, tmp_path):
    data = random_bytes(100_000, seed=13)
    with httpx.Client(base_url=gw.url) as h:
        sid = h.post("/v1/sessions", json={"name": "gc/expired"}).json()["session"]
        begin_pack(h, sid, "ab" * 32, data)  # a multipart upload in the store
    repo = await _repo(gw)
    try:
        pending = [u async for u in repo.store.list_uploads("packs/")]
        assert len(pending) == 1
        await repo.db.write(
            lambda conn: conn.execute(
                sessions.update().where(sessions.c.id == sid).values(expires_at=time.time() - 1)
            )
        )
        dry = await full_gc(repo, dry_run=True)
        assert dry["sessions_expired"] == 1 and dry["uploads_aborted"] == 1
        assert len([u async for u in repo.store.list_uploads("packs/")]) == 1
        r = await full_gc(repo)
        assert r["sessions_expired"] == 1 and r["uploads_aborted"] == 1
        assert [u async for u in repo.store.list_uploads("packs/")] == []
        left = await repo.db.read(lambda conn: conn.execute(select(sessions.c.id)).all())
        assert left == []
    finally:
        await repo.close()


async def test_orphans_in_the_local_store(local_gw):
    """Multipart uploads no row knows are aborted once old enough; objects no row names
    are counted and kept unless asked; nothing outside packs/ is looked at."""
    repo = await _repo(local_gw)
    store_dir = local_gw.data / "store"
    hours_ago = time.time() - 2 * gc.ORPHAN_MIN_AGE
    try:
        old_upload = await repo.store.create_upload("packs/ab/" + "ab" * 32 + ".0", 10)
        os.utime(store_dir / ".uploads" / old_upload, (hours_ago, hours_ago))
        await repo.store.create_upload("packs/cd/" + "cd" * 32 + ".0", 10)  # too young
        for key in ("packs/ef/" + "ef" * 32 + ".old", "meta/versions/x.json"):
            await repo.store.put(key, b"x" * 100)
            os.utime(store_dir / key, (hours_ago, hours_ago))
        await repo.store.put("packs/01/" + "01" * 32 + ".young", b"y")
        r = await full_gc(repo)
        assert r["store_lists_uploads"] and r["orphan_uploads_aborted"] == 1
        assert r["orphan_objects"] == 1 and r["orphan_bytes"] == 100 and r["orphans_deleted"] == 0
        assert [u.upload_id async for u in repo.store.list_uploads()] != [old_upload]
        assert len([u async for u in repo.store.list_uploads()]) == 1
        r = await full_gc(repo, delete_orphans=True)
        assert r["orphans_deleted"] == 1
        keys = sorted([o.key async for o in repo.store.list("")])
        assert keys == ["meta/versions/x.json", "packs/01/" + "01" * 32 + ".young"]
    finally:
        await repo.close()


# -- S3 (SeaweedFS) ------------------------------------------------------------------------
@pytest.fixture
def s3_gw(tmp_path_factory) -> Iterator[RunningGateway]:
    env = require_env("s3", *S3_ENV)
    yield from _gateway(
        tmp_path_factory.mktemp("s3"),
        "sqlite",
        CHUNKYARD_STORE=fresh_url(env["CHUNKYARD_TEST_S3_URL"]),
    )


async def test_gc_on_s3_deletes_packs_and_aborts_unknown_multipart_uploads(
    s3_gw, tmp_path, monkeypatch
):
    a, b = random_bytes(2 * MB, seed=14), random_bytes(2 * MB, seed=15)
    push(s3_gw, write(tmp_path, a), "gc/s3")
    push(s3_gw, write(tmp_path, b), "gc/s3")
    (pa,) = pack_of(s3_gw, "gc/s3@1")
    repo = await _repo(s3_gw)
    try:
        await forget(repo, "gc/s3", 1)
        orphan = await repo.store.create_upload("packs/ab/" + "ab" * 32 + ".0", 10)
        young = await full_gc(repo)  # an upload no row knows, but begun just now
        assert young["orphan_uploads_aborted"] == 0 and young["store_lists_uploads"]
        assert young["packs_deleted"] == 1 and not await stored(repo, pa)
        monkeypatch.setattr(gc, "ORPHAN_MIN_AGE", 0.0)
        r = await full_gc(repo)
        assert r["orphan_uploads_aborted"] == 1
        assert orphan not in [u.upload_id async for u in repo.store.list_uploads()]
        pulls_back(s3_gw, "gc/s3@2", b, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        keys = [o.key async for o in repo.store.list("")]
        for key in keys:
            await repo.store.delete(key)
        await repo.close()


CLOUD = {
    "azure": ("CHUNKYARD_TEST_AZURE_URL", AZURE_ENV),
    "gcs": ("CHUNKYARD_TEST_GCS_URL", GCS_ENV),
}


@pytest.fixture(params=list(CLOUD))
def cloud_gw(request, tmp_path_factory) -> Iterator[RunningGateway]:
    url_var, needed = CLOUD[request.param]
    env = require_env(request.param, *needed)
    yield from _gateway(
        tmp_path_factory.mktemp(request.param),
        "sqlite",
        CHUNKYARD_STORE=fresh_url(env[url_var]),
    )


async def test_gc_on_azure_and_gcs(cloud_gw, tmp_path):
    """Stores that cannot list unfinished uploads say so; packs go all the same."""
    a, b = random_bytes(2 * MB, seed=16), random_bytes(2 * MB, seed=17)
    push(cloud_gw, write(tmp_path, a), "gc/cloud")
    push(cloud_gw, write(tmp_path, b), "gc/cloud")
    (pa,) = pack_of(cloud_gw, "gc/cloud@1")
    repo = await _repo(cloud_gw)
    try:
        await forget(repo, "gc/cloud", 1)
        r = await full_gc(repo)
        assert r["packs_deleted"] == 1 and not r["store_lists_uploads"] and not r["errors"]
        assert not await stored(repo, pa)
        pulls_back(cloud_gw, "gc/cloud@2", b, tmp_path)
        await names_only_stored_packs(repo)
    finally:
        keys = [o.key async for o in repo.store.list("")]
        for key in keys:
            await repo.store.delete(key)
        await repo.close()


def test_the_cli_shows_progress_lines_through_ndjson(local_gw):
    """A client that accepts NDJSON gets progress lines and then the summary."""
    with httpx.Client(base_url=local_gw.url) as h:
        r = h.post(
            "/v1/admin/gc",
            json={"grace": 0, "dry_run": True},
            headers={"accept": "application/x-ndjson"},
        )
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    assert lines[-1]["event"] == "done" and lines[-1]["result"]["dry_run"]
    events = []
    with Client(local_gw.url) as c:
        assert c.gc(grace=0, dry_run=True, on_progress=events.append)["dry_run"]
