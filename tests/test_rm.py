"""``chunkyard rm``: removing a version or every version of a name (FORMAT.md,
"Metadata objects", "Removing versions"). Aliases that point at what would go refuse
the removal unless it is forced; removing a name of many versions needs --yes; a
refused removal changes nothing; numbers are never taken again; a removed version's
files leave the catalog (its packs are then unreferenced, for garbage collection) and a
tombstone in the store keeps a rebuild from bringing it back; pulling it is a clear
404; a token may remove only under its write scope."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from chunkyard import Client, records
from chunkyard.errors import ConfirmRequired, Forbidden, VersionAliased, VersionNotFound
from conftest import cli, random_bytes
from test_rebuild import rebuild, running
from test_security import admin_token

MiB = 1024 * 1024


def push_versions(c: Client, tmp: Path, name: str, n: int, seed: int = 0) -> list[bytes]:
    out = []
    for i in range(n):
        blob = random_bytes(200_000, seed=seed * 100 + i)
        (tmp / "f.bin").write_bytes(blob)
        assert c.push(tmp / "f.bin", name)["created"]
        out.append(blob)
    return out


def rows(data: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(data / "catalog.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def meta_keys(data: Path) -> list[str]:
    root = data / "store"
    return sorted(p.relative_to(root).as_posix() for p in (root / "meta").rglob("*") if p.is_file())


@pytest.fixture
def gw(tmp_path):
    with running(tmp_path / "data", {}) as g:
        yield g


def test_rm_a_version_and_what_aliases_decide(gw, tmp_path):
    with gw.client() as c:
        blobs = push_versions(c, tmp_path, "team/m", 3)
        c.set_alias("team/m", "champion", 2)
        c.set_alias("team/m", "prod", 2)
        c.tag("team/m@2", {"stage": "eval"})
        # nothing aliased: removed at once, the others stay whole
        assert c.rm("team/m@1") == {"name": "team/m", "removed": [1], "aliases": [], "already": []}
        assert rows(gw.data, "select count(*) from version_files") == [(2,)]
        # aliased: refused, naming the aliases, and nothing changes
        before = gw.snapshot()
        with pytest.raises(VersionAliased, match="champion -> 2, prod -> 2") as e:
            c.rm("team/m@2")
        assert e.value.detail["aliases"] == ["champion", "prod"]
        assert gw.snapshot() == before
        # forced: the aliases go too, each a recorded move
        r = c.rm("team/m@2", force=True)
        assert r["removed"] == [2] and r["aliases"] == ["champion", "prod"]
        assert c.aliases("team/m") == []
        moves = c.alias_history("team/m", "champion")
        assert [(m["version"], m["previous"]) for m in moves] == [(2, None), (None, 2)]
        # a removed version is a clear 404, its neighbours pull as they were
        with pytest.raises(VersionNotFound, match="version 2 of 'team/m' was removed"):
            c.pull("team/m@2", tmp_path / "x")
        r = httpx.get(f"{gw.url}/v1/artifacts/team/m/-/versions/1")
        assert r.status_code == 404 and r.json()["error"]["code"] == "version_not_found"
        c.pull("team/m@3", tmp_path / "v3")
        assert (tmp_path / "v3").read_bytes() == blobs[2]
        # removing it again changes nothing and says so; an unknown number is a 404
        assert c.rm("team/m@2")["already"] == [2]
        with pytest.raises(VersionNotFound):
            c.rm("team/m@9")
        # numbers are never taken again, not even the latest's
        assert c.rm("team/m@3")["removed"] == [3]
        (tmp_path / "f.bin").write_bytes(blobs[2])
        assert c.push(tmp_path / "f.bin", "team/m")["version"] == 4
        assert [v["version"] for v in c.versions("team/m")] == [4]
    # removed versions' files and tags are gone from the catalog: nothing names their packs
    assert rows(gw.data, "select count(*) from versions") == [(1,)]
    assert rows(gw.data, "select count(*) from tags") == [(0,)]
    assert rows(gw.data, "select count(*) from version_files") == [(1,)]
    # the store: a tombstone per removal, no version record of 1-3 left
    keys = meta_keys(gw.data)
    assert len([k for k in keys if "/-/removed/" in k]) == 3
    numbers = {records.parse_key(k).number for k in keys if "/-/versions/" in k}
    assert numbers == {4}


def test_rm_a_name(gw, tmp_path):
    with gw.client() as c:
        push_versions(c, tmp_path, "team/run", 3, seed=1)
        push_versions(c, tmp_path, "team/one", 1, seed=2)
        c.set_alias("team/run", "best", 3)
        before = gw.snapshot()
        with pytest.raises(ConfirmRequired, match="has 3 versions"):
            c.rm("team/run")
        with pytest.raises(VersionAliased, match="best -> 3"):
            c.rm("team/run", yes=True)
        assert gw.snapshot() == before
        r = c.rm("team/run", force=True)  # force confirms too
        assert r["removed"] == [1, 2, 3] and r["aliases"] == ["best"]
        assert [a["name"] for a in c.ls("team/")] == ["team/one"]
        with pytest.raises(VersionNotFound):
            c.pull("team/run", tmp_path / "x")
        assert c.rm("team/one")["removed"] == [1]  # one version: no confirmation needed
        assert c.rm("team/run")["removed"] == []  # nothing left: nothing to do
        push_versions(c, tmp_path, "team/run", 1, seed=3)
        assert c.versions("team/run")[0]["version"] == 4


def test_the_cli_and_its_exit_codes(gw, tmp_path):
    with gw.client() as c:
        push_versions(c, tmp_path, "cli/m", 2, seed=4)
        c.set_alias("cli/m", "live", 1)
    env = {**os.environ, "CHUNKYARD_URL": gw.url}
    r = cli(env, "rm", "cli/m@1")
    assert r.returncode == 4 and "live -> 1" in r.stderr and "--force" in r.stderr
    r = cli(env, "rm", "cli/m")
    assert r.returncode == 4 and "--yes" in r.stderr
    r = cli(env, "rm", "cli/m:live")
    assert r.returncode == 2
    r = cli(env, "rm", "cli/m@1", "--force")
    assert r.returncode == 0 and "removed version(s) 1" in r.stdout and "live" in r.stdout
    r = cli(env, "pull", "cli/m@1", str(tmp_path / "x"))
    assert r.returncode == 3 and "was removed" in r.stderr
    r = cli(env, "rm", "cli/m", "--yes", "--json")
    assert r.returncode == 0 and '"removed": [\n    2\n  ]' in r.stdout


def test_a_token_removes_only_under_its_write_scope(tmp_path):
    data = tmp_path / "secured"
    with running(data, {"CHUNKYARD_AUTH": "1"}) as g:
        admin = admin_token(data)
        with Client(g.url, token=admin) as a:
            push_versions(a, tmp_path, "team-a/m", 1, seed=5)
            push_versions(a, tmp_path, "team-b/m", 1, seed=6)
            writer = a.create_token(["write:team-a/", "read:team-b/"])["token"]
        before = g.snapshot()
        with Client(g.url, token=writer) as w:
            for ref in ("team-b/m@1", "team-b/m"):
                with pytest.raises(Forbidden):
                    w.rm(ref, force=True, yes=True)
            assert g.snapshot() == before
            assert w.rm("team-a/m@1")["removed"] == [1]
        r = httpx.delete(f"{g.url}/v1/artifacts/team-a/m/-/versions")
        assert r.status_code == 401


def test_a_rebuild_does_not_bring_removed_versions_back(tmp_path, capsys):
    """Even when the removed version's record is in the store again (a late write of a
    sweep that raced the removal): the tombstone wins."""
    data = tmp_path / "data"
    with running(data, {}) as g, g.client() as c:
        blobs = push_versions(c, tmp_path, "team/r", 3, seed=7)
        record = next(k for k in meta_keys(data) if "/-/versions/2." in k)
        saved = (data / "store" / record).read_bytes()
        c.rm("team/r@2")
        assert not (data / "store" / record).exists()
        (data / "store" / record).write_bytes(saved)  # put back, as a late write would
    env = {"CHUNKYARD_DB": f"sqlite:///{tmp_path / 'rebuilt.db'}"}
    code, report = rebuild(capsys, env, data)
    assert code == 0 and report["versions"] == 2 and report["removed_versions"] == 1
    with running(data, env) as g, g.client() as c:
        assert [v["version"] for v in c.versions("team/r")] == [1, 3]
        with pytest.raises(VersionNotFound, match="was removed"):
            c.show("team/r@2")
        c.pull("team/r@3", tmp_path / "v3")
        assert (tmp_path / "v3").read_bytes() == blobs[2]
        push_versions(c, tmp_path, "team/r", 1, seed=8)
        assert c.versions("team/r")[-1]["version"] == 4


def test_a_record_the_store_refused_is_written_by_the_sweep(tmp_path):
    """Between a commit and its record the store fails: the push still succeeds (the
    catalog holds the version), the record stays noted, and the next gateway start
    writes it; a push the catalog refused leaves no record at all."""
    data = tmp_path / "data"
    blocker = data / "store" / "meta" / "team" / "s" / "-"
    with running(data, {}) as g, g.client() as c:
        blocker.parent.mkdir(parents=True)
        blocker.write_bytes(b"")  # a file where the folder must go: puts fail
        push_versions(c, tmp_path, "team/s", 1, seed=9)
        assert rows(data, "select kind from meta_pending") == [("version",)]
        with pytest.raises(VersionNotFound):
            c.tag("team/s@7", {"a": "b"})  # refused: nothing noted
        assert rows(data, "select count(*) from meta_pending") == [(1,)]
        blocker.unlink()
    with running(data, {}):
        wait_until_described(data)
    assert [k.split("/-/")[1].split("/")[0] for k in meta_keys(data)] == ["versions"]


def wait_until_described(data: Path) -> None:
    """Wait until a gateway's start-up sweep has written what was pending and dropped
    its notes (it runs in the gateway's own loop; notes go within a second)."""
    for _ in range(600):
        if rows(data, "select count(*) from meta_pending") == [(0,)]:
            return
        time.sleep(0.05)
    raise AssertionError("the sweep did not write the pending records")
