"""The store describes itself (FORMAT.md, "Metadata objects"): versions pushed through a
real gateway (files and trees, small and session pushes, tags added later, aliases
moved and removed, a removed version, a reference version) leave write-once records in
the store; the catalog is then lost, a gateway refuses to start over the described
store with an empty catalog, ``chunkyard db rebuild --from-store`` rebuilds it, and a
gateway on the rebuilt catalog serves every version identical, with the same numbers,
tags, aliases and alias history, while new pushes dedup against the rebuilt chunk
index and take numbers above every removed one. On the local store and on S3
(SeaweedFS, a fresh prefix), with SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zstandard

import chunkyard
from chunkyard import Client
from chunkyard.cli import main
from chunkyard.errors import VersionNotFound
from conftest import RunningGateway, random_bytes, start_gateway
from http_source import Source
from stores.conftest import S3_ENV, fresh_url, require_env
from test_db_commands import pg_database

MiB = 1024 * 1024
SRC = Path(chunkyard.__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("loopback_only")


@contextmanager
def running(data: Path, env: dict[str, str]) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(data, **env)
    try:
        yield gw
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def catalog(kind: str, data: Path, name: str) -> Iterator[str]:
    """A fresh, empty catalog URL of ``kind``."""
    if kind == "sqlite":
        yield f"sqlite:///{data / (name + '.db')}"
    else:
        with pg_database() as url:
            yield url


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    src = Source()
    yield src
    src.close()


@contextmanager
def store_url(kind: str, data: Path) -> Iterator[str]:
    """A fresh store's URL (an S3 prefix is emptied afterwards)."""
    if kind == "local":
        yield (data / "store").as_uri()
        return
    env = require_env("s3", *S3_ENV)
    url = fresh_url(env["CHUNKYARD_TEST_S3_URL"])
    try:
        yield url
    finally:
        asyncio.run(empty(url))


async def empty(url: str) -> None:
    from chunkyard.stores import open_store

    store = open_store(url)
    try:
        for key in [info.key async for info in store.list("")]:
            await store.delete(key)
    finally:
        await store.close()


def state(c: Client, names: list[str], aliases: dict[str, list[str]]) -> dict:
    """Everything a client can see of these artifacts, but content: versions with
    digests, sizes, times, tags and aliases; where each alias points; every move."""
    out: dict = {}
    for name in names:
        versions = c.versions(name)
        for v in versions:
            v["file_list"] = c.show(f"{name}@{v['version']}")["file_list"]
        out[name] = {
            "versions": versions,
            "aliases": c.aliases(name),
            "history": {a: c.alias_history(name, a) for a in aliases.get(name, [])},
        }
    return out


def pull_all(c: Client, expected: dict[str, bytes | dict[str, bytes]], tmp: Path) -> None:
    """Pull each ``NAME@N`` and compare with what was pushed (a file's bytes, or a
    tree's files by path)."""
    for i, (ref, want) in enumerate(expected.items()):
        dest = tmp / f"pull{i}"
        if isinstance(want, bytes):
            c.pull(ref, dest)
            assert dest.read_bytes() == want, ref
        else:
            c.pull(ref, dest)
            got = {
                p.relative_to(dest).as_posix(): p.read_bytes()
                for p in dest.rglob("*")
                if p.is_file()
            }
            assert got == want, ref


def rebuild(capsys, env: dict[str, str], data: Path, *extra: str) -> tuple[int, dict]:
    """``chunkyard db rebuild --from-store`` in this process, with ``env`` set."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        capsys.readouterr()
        code = main(["db", "rebuild", "--from-store", "--data", str(data), "--json", *extra])
        out, _ = capsys.readouterr()
    return code, json.loads(out)


def serve_refused(env: dict[str, str], data: Path) -> subprocess.CompletedProcess:
    """``chunkyard serve`` as a process: its preflight must refuse this catalog."""
    full = {**os.environ, **env, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "serve", "--data", str(data), "--port", "0"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "store_kind,db_kind",
    [("local", "sqlite"), ("local", "postgresql"), ("s3", "sqlite"), ("s3", "postgresql")],
)
def test_rebuild_from_the_store_alone(store_kind, db_kind, source, tmp_path, capsys):
    data = tmp_path / "data"
    with store_url(store_kind, data) as store:
        scenario(store, db_kind, source, data, tmp_path, capsys)


def scenario(store: str, db_kind: str, source: Source, data: Path, tmp_path: Path, capsys) -> None:
    base = {
        "CHUNKYARD_STORE": store,
        "CHUNKYARD_REF_ALLOW": f"{source.url}/files/",
        "CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS": "1",
    }
    work = tmp_path / "work"
    work.mkdir()
    expected: dict[str, bytes | dict[str, bytes]] = {}
    big = bytearray(random_bytes(3 * MiB, seed=1))  # through an upload session
    tree = {f"dir/f{i}.bin": random_bytes(20_000 + i, seed=10 + i) for i in range(5)}
    tree["top.json"] = b'{"lr": 0.1}'
    with catalog(db_kind, tmp_path, "first") as first_db:
        env = {**base, "CHUNKYARD_DB": first_db}
        with running(data, env) as gw, gw.client() as c:
            f = work / "model.bin"
            f.write_bytes(bytes(big))
            assert c.push(f, "team/model", {"step": "1"})["version"] == 1
            expected["team/model@1"] = bytes(big)
            big[MiB : MiB + 100] = b"\x01" * 100
            f.write_bytes(bytes(big))
            assert c.push(f, "team/model", {"step": "2"})["version"] == 2
            expected["team/model@2"] = bytes(big)
            big[2 * MiB : 2 * MiB + 100] = b"\x02" * 100
            f.write_bytes(bytes(big))
            assert c.push(f, "team/model")["version"] == 3  # removed below
            c.tag("team/model@2", {"late": "yes"})
            c.set_alias("team/model", "champion", 1)
            c.set_alias("team/model", "champion", 2)
            c.set_alias("team/model", "challenger", 3)
            c.set_alias("team/model", "old", 1)
            c.remove_alias("team/model", "old")
            r = c.rm("team/model@3", force=True)
            assert r["removed"] == [3] and r["aliases"] == ["challenger"]
            d = work / "tree"
            for rel, blob in tree.items():
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / rel).write_bytes(blob)
            assert c.push(d, "team/data", {"kind": "tree"})["layout"] == "tree"  # small push
            expected["team/data@1"] = dict(tree)
            uri = source.put("/files/tok.json", b'{"vocab": 32000}' * 100)
            assert c.ref("other/tok", uri)["kind"] == "reference"
            expected["other/tok@1"] = b'{"vocab": 32000}' * 100
            c.push(work / "model.bin", "gone/x")
            c.push(d, "gone/x")
            with pytest.raises(Exception, match="needs confirmation"):
                c.rm("gone/x")
            assert c.rm("gone/x", yes=True)["removed"] == [1, 2]
            names = ["team/model", "team/data", "other/tok"]
            aliases = {"team/model": ["champion", "challenger", "old"]}
            before = state(c, names, aliases)
            pull_all(c, expected, tmp_path)
        # the catalog is lost; a gateway over the described store must not start afresh
        with catalog(db_kind, tmp_path, "second") as second_db:
            env = {**base, "CHUNKYARD_DB": second_db}
            refused = serve_refused(env, data)
            assert refused.returncode == 2, refused.stderr
            assert "catalog_lost" in refused.stderr and "db rebuild" in refused.stderr
            code, report = rebuild(capsys, env, data)
            assert code == 0, report
            assert report["versions"] == 4 and report["skipped"] == [], report
            assert report["removals"] == 2  # team/model@3, gone/x@1-2: their records went
            assert report["aliases"] == 1 and report["alias_moves"] == 6
            assert report["tokens_rebuilt"] is False
            with running(data, env) as gw, gw.client() as c:
                assert state(c, names, aliases) == before
                pull_all(c, expected, tmp_path / "after")
                with pytest.raises(VersionNotFound, match="was removed"):
                    c.pull("team/model@3", tmp_path / "nope")
                assert [a["name"] for a in c.ls()] == ["other/tok", "team/data", "team/model"]
                # the chunk index is back: a small change sends only what changed
                big[MiB : MiB + 50] = b"\x03" * 50
                f.write_bytes(bytes(big))
                again = c.push(f, "team/model")
                assert again["version"] == 4  # above the removed 3
                assert again["chunks_new"] <= 2 and again["bytes_uploaded"] < 600_000
                c.pull("team/model@4", tmp_path / "v4")
                assert (tmp_path / "v4").read_bytes() == bytes(big)
                assert c.push(d, "gone/x")["version"] == 3  # numbers go on after rm NAME
            # what the rebuilt catalog made is described too: a second rebuild agrees
            with catalog(db_kind, tmp_path, "third") as third_db:
                env = {**base, "CHUNKYARD_DB": third_db}
                code, again_report = rebuild(capsys, env, data)
                assert code == 0 and again_report["versions"] == 6


def test_an_upgraded_catalog_is_described_by_the_sweep(tmp_path, capsys):
    """A catalog from before records (schema 0005, a store without ``meta/``): the
    upgrade notes every version, tag set and alias move, the gateway's start-up sweep
    writes them, and the store alone then rebuilds it."""
    from alembic import command
    from alembic.config import Config

    from chunkyard.catalog.db import MIGRATIONS
    from test_db_commands import on
    from test_rm import rows, wait_until_described

    data = tmp_path / "data"
    url = f"sqlite:///{data / 'catalog.db'}"
    with running(data, {}) as gw, gw.client() as c:
        f = tmp_path / "f.bin"
        for i in range(2):
            f.write_bytes(random_bytes(100_000, seed=40 + i))
            c.push(f, "old/model", {"i": str(i)})
        c.set_alias("old/model", "live", 2)
        before = state(c, ["old/model"], {"old/model": ["live"]})

    def downgrade(conn):  # type: ignore[no-untyped-def]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0005")

    on(url, downgrade)
    for p in sorted((data / "store" / "meta").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    assert main(["db", "upgrade", "--data", str(data)]) == 0
    assert rows(data, "select kind from meta_pending order by id") == [
        ("version",),
        ("version",),
        ("tags",),
        ("tags",),
        ("alias",),
    ]
    with running(data, {}):
        wait_until_described(data)
    env = {"CHUNKYARD_DB": f"sqlite:///{tmp_path / 'rebuilt.db'}"}
    code, report = rebuild(capsys, env, data)
    assert code == 0 and report["versions"] == 2 and report["alias_moves"] == 1
    with running(data, env) as gw, gw.client() as c:
        assert state(c, ["old/model"], {"old/model": ["live"]}) == before


def test_rebuild_keeps_modes_and_empty_dirs(tmp_path, capsys, monkeypatch):
    """Modes and empty directories are in the version records, so a rebuilt catalog
    has them (and the digests they enter). A version from before modes (its rows hold
    none) gets a record of the shape records always had, which rebuilds as before."""
    import stat

    from test_rm import rows, wait_until_described

    data = tmp_path / "data"
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin/run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "bin/run.sh", 0o755)
    (src / "key").write_bytes(b"secret")
    os.chmod(src / "key", 0o600)
    (src / "empty/inner").mkdir(parents=True)
    with running(data, {}) as gw, gw.client() as c:
        assert "parts_sent" not in c.push(src, "modes/small")  # one request
        (src / "big.bin").write_bytes(random_bytes(2 * MiB, seed=70))
        monkeypatch.setenv("CHUNKYARD_SMALL_PUSH_BYTES", "0")
        assert c.push(src, "modes/session")["parts_sent"] > 0  # an upload session
        monkeypatch.delenv("CHUNKYARD_SMALL_PUSH_BYTES")
        old_src = tmp_path / "old"  # as trees were before modes: each 0644, no empty dir
        for rel in ("a.txt", "d/b.txt"):
            (old_src / rel).parent.mkdir(parents=True, exist_ok=True)
            (old_src / rel).write_bytes(rel.encode())
            os.chmod(old_src / rel, 0o644)
        c.push(old_src, "modes/old")
        names = ["modes/small", "modes/session"]
        before = state(c, names, {})
        for name in names:
            v = before[name]["versions"][0]
            modes = {f["path"]: f["mode"] for f in v["file_list"]}
            assert (modes["bin/run.sh"], modes["key"]) == (0o755, 0o600), name
    # modes/old as a version made before modes: no mode in its rows, its record written
    # again from them by the start-up sweep
    vid = rows(
        data,
        "select v.id from versions v join artifacts a on a.id = v.artifact_id"
        " where a.name = 'modes/old'",
    )[0][0]
    folder = data / "store/meta/modes/old/-/versions"
    for p in folder.iterdir():
        p.unlink()
    conn = sqlite3.connect(data / "catalog.db")
    try:
        with conn:
            conn.execute("update version_files set mode = null where version_id = ?", (vid,))
            conn.execute("update versions set dirs = null where id = ?", (vid,))
            conn.execute(
                "insert into meta_pending (artifact_id, kind, ref, created_at)"
                " select artifact_id, 'version', id, 0 from versions where id = ?",
                (vid,),
            )
    finally:
        conn.close()
    with running(data, {}) as gw, gw.client() as c:
        wait_until_described(data)
        old = state(c, ["modes/old"], {})
    (key,) = list(folder.iterdir())
    record = json.loads(zstandard.ZstdDecompressor().decompress(key.read_bytes()))
    # the fields every version record had before modes, and no other
    assert list(record) == [
        "record", "record_format", "name", "number", "kind", "layout", "digest",
        "digest_of", "size", "created_at", "format", "source", "dedup_domain_depth",
        "files",
    ]  # fmt: skip
    assert [list(f) for f in record["files"]] == [
        ["path", "size", "digest", "b3sum", "manifest"]
    ] * 2

    env = {"CHUNKYARD_DB": f"sqlite:///{tmp_path / 'rebuilt.db'}"}
    code, report = rebuild(capsys, env, data)
    assert code == 0 and report["versions"] == 3 and report["skipped"] == [], report
    with running(data, env) as gw, gw.client() as c:
        assert state(c, names, {}) == before
        assert state(c, ["modes/old"], {}) == old
        assert all("mode" not in f for f in old["modes/old"]["versions"][0]["file_list"])
        assert c.show("modes/small")["dirs"] == ["empty/inner"]
        assert c.show("modes/old")["dirs"] == []
        c.pull("modes/session", tmp_path / "out")
        got = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").rglob("*")}
        assert (got["run.sh"], got["key"]) == (0o755, 0o600)
        assert (tmp_path / "out/empty/inner").is_dir()
