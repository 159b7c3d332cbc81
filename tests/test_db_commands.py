"""``chunkyard db``: the catalog's schema revision (``status``), upgrading it
(``upgrade``), the gateway refusing a catalog at another revision than its own, and
copying a whole catalog between SQLite and PostgreSQL (``copy``), each on SQLite and
on PostgreSQL, with catalogs made by real gateways."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

import chunkyard
from chunkyard import Client
from chunkyard.catalog import Database
from chunkyard.catalog.copy import TABLES, check_versions
from chunkyard.catalog.db import MIGRATIONS, head_revision
from chunkyard.cli import main
from chunkyard.config import Settings
from chunkyard.errors import CatalogOutdated, CatalogTooNew, CopyMismatch, NotACatalog
from chunkyard.repository import Repository
from conftest import random_bytes, start_gateway
from http_source import Source
from stores.conftest import require_env

SRC = Path(chunkyard.__file__).resolve().parents[1]
HEAD = head_revision()


# -- helpers ------------------------------------------------------------------------
@contextmanager
def pg_database() -> Iterator[str]:
    """A throwaway PostgreSQL database on the test server; its URL."""
    base = require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")["CHUNKYARD_TEST_POSTGRES_URL"]
    name = "d_" + uuid.uuid4().hex[:10]
    subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


def on(url: str, fn, *args):  # type: ignore[no-untyped-def]
    """``fn(connection, *args)`` in a write transaction on the database at ``url``."""

    async def run():  # type: ignore[no-untyped-def]
        db = Database(url)
        try:
            return await db.write(fn, *args)
        finally:
            await db.close()

    return asyncio.run(run())


def upgrade_to(url: str, revision: str) -> None:
    """Run the migrations up to ``revision`` only, into a fresh database: a catalog as
    an older chunkyard left it."""
    from alembic import command
    from alembic.config import Config

    def tx(conn):  # type: ignore[no-untyped-def]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    on(url, tx)


def counts(url: str) -> dict[str, int]:
    def tx(conn):  # type: ignore[no-untyped-def]
        return {
            t.name: conn.execute(text(f"SELECT count(*) FROM {t.name}")).scalar() for t in TABLES
        }

    return on(url, tx)


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """``chunkyard ARGV`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture, *argv: str) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def run_program(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``chunkyard ARGV`` as a process of its own (with this worktree's code)."""
    full = {**os.environ, **(env or {}), "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-c", "import sys; from chunkyard.cli import main; sys.exit(main())"]
        + list(argv),
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(stderr: str) -> str:
    """The refusal: exactly one line, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("chunkyard: error: "), stderr
    return lines[0]


@dataclass
class Blank:
    """A database with nothing in it yet, as the gateway and the db commands name it:
    a data dir (SQLite) or CHUNKYARD_DB (PostgreSQL)."""

    kind: str
    data: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def args(self) -> list[str]:
        return ["--data", str(self.data)] if self.kind == "sqlite" else []


@pytest.fixture(params=["sqlite", "postgresql"])
def blank(request, tmp_path, monkeypatch) -> Iterator[Blank]:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    if request.param == "sqlite":
        monkeypatch.delenv("CHUNKYARD_DB", raising=False)
        yield Blank("sqlite", data, f"sqlite:///{data / 'catalog.db'}")
        return
    with pg_database() as url:
        monkeypatch.setenv("CHUNKYARD_DB", url)
        yield Blank("postgresql", data, url, {"CHUNKYARD_DB": url})


def open_repository(data: Path) -> None:
    async def run() -> None:
        repo = await Repository.open(Settings.load(data))
        await repo.close()

    asyncio.run(run())


# -- status, upgrade, refusals ---------------------------------------------------------
def test_an_older_catalog_is_refused_until_upgraded(blank, capsys, tmp_path):
    upgrade_to(blank.url, "0003")
    status = cli_json(capsys, "db", "status", *blank.args)
    assert status["revision"] == "0003" and status["head"] == HEAD
    assert status["state"] == "behind" and status["upgrade_needed"]
    code, out, _ = cli(capsys, "db", "status", *blank.args)
    assert code == 0 and "revision  0003" in out and "chunkyard db upgrade" in out

    with pytest.raises(CatalogOutdated) as caught:
        open_repository(blank.data)
    assert "chunkyard db upgrade" in caught.value.message
    if blank.kind == "sqlite":
        assert f"chunkyard db upgrade --data {blank.data}" in caught.value.message

    served = run_program("serve", "--data", str(blank.data), "--port", "1", env=blank.env)
    line = one_line(served.stderr)
    assert served.returncode == 2 and "[catalog_outdated]" in line
    assert "0003" in line and HEAD in line and "`chunkyard db upgrade" in line
    if blank.kind == "sqlite":
        assert f"--data {blank.data}`" in line
    verifier = run_program("verifier", "--data", str(blank.data), "--once", env=blank.env)
    assert verifier.returncode == 2 and "[catalog_outdated]" in one_line(verifier.stderr)

    code, out, err = cli(capsys, "db", "upgrade", *blank.args)
    assert code == 0, err
    assert out.strip().endswith(f"from revision 0003 to {HEAD}")
    after = cli_json(capsys, "db", "status", *blank.args)
    assert after["revision"] == HEAD and after["state"] == "current"
    assert not after["upgrade_needed"]
    again = cli_json(capsys, "db", "upgrade", *blank.args)
    assert again == {"catalog": again["catalog"], "from": HEAD, "to": HEAD, "upgraded": False}

    gw, server, thread = start_gateway(blank.data, **blank.env)
    try:
        src = tmp_path / "f.bin"
        src.write_bytes(random_bytes(300_000, seed=5))
        with Client(gw.url) as c:
            assert c.push(src, "old/model")["version"] == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_catalog_newer_than_the_code_is_refused(blank, capsys):
    asyncio.run(_migrate(blank.url))
    on(blank.url, lambda conn: conn.execute(text("UPDATE alembic_version SET version_num='9999'")))
    status = cli_json(capsys, "db", "status", *blank.args)
    assert status["revision"] == "9999" and status["state"] == "ahead"
    assert not status["upgrade_needed"]

    with pytest.raises(CatalogTooNew) as caught:
        open_repository(blank.data)
    assert "upgrade chunkyard" in caught.value.message
    served = run_program("serve", "--data", str(blank.data), "--port", "1", env=blank.env)
    line = one_line(served.stderr)
    assert served.returncode == 2 and "[catalog_too_new]" in line
    assert "9999" in line and line.endswith("upgrade chunkyard [catalog_too_new]")
    code, _, err = cli(capsys, "db", "upgrade", *blank.args)
    assert code == 2 and "[catalog_too_new]" in one_line(err)
    assert "Can't locate revision" not in err


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await db.migrate()
    finally:
        await db.close()


def test_an_empty_database_gets_the_schema_at_first_start(blank, capsys):
    status = cli_json(capsys, "db", "status", *blank.args)
    assert status["revision"] is None and status["state"] == "empty"
    if blank.kind == "sqlite":
        assert not (blank.data / "catalog.db").exists()  # status reads only
    gw, server, thread = start_gateway(blank.data, **blank.env)
    server.should_exit = True
    thread.join(timeout=10)
    assert cli_json(capsys, "db", "status", *blank.args)["state"] == "current"


def test_a_database_that_is_no_catalog_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CHUNKYARD_DB", raising=False)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    on(f"sqlite:///{data / 'catalog.db'}", lambda c: c.execute(text("CREATE TABLE x (y int)")))
    assert cli_json(capsys, "db", "status", "--data", str(data))["state"] == "foreign"
    with pytest.raises(NotACatalog):
        open_repository(data)
    code, _, err = cli(capsys, "db", "upgrade", "--data", str(data))
    assert code == 2 and "[not_a_catalog]" in one_line(err) and "(x)" in err
    (data / "catalog.db").write_bytes(b"not a database at all" * 100)
    served = run_program("serve", "--data", str(data), "--port", "1")
    assert served.returncode == 2 and "[not_a_catalog]" in one_line(served.stderr)


# -- copy -----------------------------------------------------------------------------
@dataclass
class Catalog:
    """A catalog a real gateway filled: where it is and what it holds."""

    url: str
    data: Path
    store: str
    env: dict[str, str]
    contents: dict[str, bytes | dict[str, bytes]]


@pytest.fixture(scope="module")
def http_source() -> Iterator[Source]:
    src = Source()
    yield src
    src.close()


def ref_env(source: Source) -> dict[str, str]:
    return {
        "CHUNKYARD_REF_ALLOW": f"{source.url}/files/",
        "CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS": "1",
    }


def fill(data: Path, source: Source, seed: int, **env: str) -> Catalog:
    """Push files, a tree and references through a gateway on ``data`` (and ``env``),
    then stop it: stored versions that share chunks, an unchanged push, tags, an alias,
    an empty file, a reference by pins, and a hashed and indexed reference whose chunks
    a later push reuses (terms naming a reference object's pack)."""
    gw, server, thread = start_gateway(data, **env, **ref_env(source))
    work = data.parent / f"work-{seed}"
    work.mkdir()
    a1 = random_bytes(700_000, seed=seed)
    a2 = a1[:500_000] + random_bytes(200_000, seed=seed + 1)
    tree = {
        "x.bin": random_bytes(300_000, seed=seed + 2),
        "sub/y.txt": b"hello\n",
        "empty.txt": b"",
    }
    pinned = random_bytes(50_000, seed=seed + 3)
    weights = random_bytes(1_200_000, seed=seed + 4)
    try:
        with Client(gw.url) as c:
            (work / "a").write_bytes(a1)
            assert c.push(work / "a", "team/a", tags={"step": "1"})["version"] == 1
            assert not c.push(work / "a", "team/a")["created"]
            (work / "a").write_bytes(a2)
            assert c.push(work / "a", "team/a")["version"] == 2
            for path, content in tree.items():
                (work / "tree" / path).parent.mkdir(parents=True, exist_ok=True)
                (work / "tree" / path).write_bytes(content)
            c.push(work / "tree", "team/tree")
            c.set_alias("team/a", "prod", 1)
            c.ref("team/pins", source.put(f"/files/pinned-{seed}.bin", pinned))
            uri = source.put(f"/files/weights-{seed}.bin", weights)
            assert c.ref("team/indexed", uri, hash=True, index=True)["digest_of"] == "content"
            (work / "w").write_bytes(weights)
            c.push(work / "w", "team/weights")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    contents: dict[str, bytes | dict[str, bytes]] = {
        "team/a@1": a1,
        "team/a:prod": a1,
        "team/a@2": a2,
        "team/tree": tree,
        "team/pins": pinned,
        "team/indexed": weights,
        "team/weights": weights,
    }
    url = env.get("CHUNKYARD_DB") or f"sqlite:///{data / 'catalog.db'}"
    return Catalog(url, data, gw.settings.store_url, env, contents)


@pytest.fixture(scope="module")
def sqlite_catalog(http_source, tmp_path_factory) -> Catalog:
    return fill(tmp_path_factory.mktemp("sqlite-src") / "data", http_source, 10)


@pytest.fixture(scope="module")
def pg_catalog(http_source, tmp_path_factory) -> Iterator[Catalog]:
    with pg_database() as url:
        data = tmp_path_factory.mktemp("pg-src") / "data"
        yield fill(data, http_source, 20, CHUNKYARD_DB=url)


def serve_copy(catalog: Catalog, data: Path, http_source: Source, tmp_path: Path, **env: str):
    """Serve the copied catalog (``env``) over the source catalog's store: every version
    reads back, and new pushes get new ids."""
    gw, server, thread = start_gateway(
        data, CHUNKYARD_STORE=catalog.store, **env, **ref_env(http_source)
    )
    try:
        with Client(gw.url) as c:
            for ref, want in catalog.contents.items():
                out = tmp_path / ("out-" + ref.replace("/", "_"))
                c.pull(ref, out)
                if isinstance(want, dict):
                    assert {p: (out / p).read_bytes() for p in want} == want
                else:
                    assert out.read_bytes() == want, ref
            assert c.show("team/a:prod")["tags"] == {"step": "1"}
            (tmp_path / "new").write_bytes(random_bytes(200_000, seed=99))
            assert c.push(tmp_path / "new", "team/a")["version"] == 3  # a new versions.id
            assert c.push(tmp_path / "new", "other/new")["version"] == 1  # a new artifacts.id
            assert len(c.versions("team/a")) == 3
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fingerprint(data: Path) -> tuple[str, list[str]]:
    """The bytes of a SQLite catalog and the names beside it."""
    digest = hashlib.sha256((data / "catalog.db").read_bytes()).hexdigest()
    return digest, sorted(p.name for p in data.iterdir())


def expected_checks(summary: dict) -> None:
    c = summary["checked"]
    # team/a 1 and 2, team/tree, team/weights; their files (1 + 1 + 3 + 1)
    assert (c["stored_versions"], c["files"]) == (4, 6)
    assert (c["reference_content"], c["reference_pins"], c["format2_versions"]) == (1, 1, 0)
    assert c["manifests"] == 8
    assert not summary["packs_copied"]


def test_copy_sqlite_to_postgres(sqlite_catalog, http_source, tmp_path, capsys, monkeypatch):
    before = fingerprint(sqlite_catalog.data)
    assert not {"catalog.db-wal", "catalog.db-shm"} & set(before[1])  # no gateway has it open
    with pg_database() as target:
        summary = cli_json(capsys, "db", "copy", sqlite_catalog.url, target)
        assert fingerprint(sqlite_catalog.data) == before  # not a byte, not a -wal or -shm
        source_rows = counts(sqlite_catalog.url)
        assert summary["tables"] == source_rows == counts(target)
        assert summary["rows"] == sum(source_rows.values()) and not summary["emptied"]
        expected_checks(summary)
        assert summary["sequences"] == {
            "artifacts.id": source_rows["artifacts"] + 1,
            "versions.id": source_rows["versions"] + 1,
            "alias_moves.id": source_rows["alias_moves"] + 1,
            "removals.id": source_rows["removals"] + 1,
            "meta_pending.id": source_rows["meta_pending"] + 1,  # none left pending: 1
        }
        monkeypatch.setenv("CHUNKYARD_DB", target)
        assert cli_json(capsys, "db", "status")["state"] == "current"
        monkeypatch.delenv("CHUNKYARD_DB")
        serve_copy(sqlite_catalog, tmp_path / "pg", http_source, tmp_path, CHUNKYARD_DB=target)
    assert fingerprint(sqlite_catalog.data) == before


def test_copy_postgres_to_sqlite(pg_catalog, http_source, tmp_path, capsys):
    rows = counts(pg_catalog.url)
    data = tmp_path / "sq"
    data.mkdir(mode=0o700)
    target = f"sqlite:///{data / 'catalog.db'}"
    code, out, err = cli(capsys, "db", "copy", pg_catalog.url, target)
    assert code == 0, err
    assert out.startswith(f"copied {pg_catalog.url} -> {target}: {sum(rows.values())} rows")
    assert "every file id and version digest recomputed" in out
    assert "the packs were not copied" in out
    assert counts(target) == rows == counts(pg_catalog.url)
    assert (data / "catalog.db").stat().st_mode & 0o077 == 0  # owner-only, as the gateway's
    serve_copy(pg_catalog, data, http_source, tmp_path)


def test_the_source_is_read_only(pg_catalog, sqlite_catalog):
    """Whatever the copy's code did, neither kind of source could be written."""

    async def attempt(url: str) -> None:
        db = Database(url, read_only=True)
        try:
            await db.write(lambda c: c.execute(text("CREATE TABLE z (x int)")))
        finally:
            await db.close()

    before = fingerprint(sqlite_catalog.data)
    for url in (pg_catalog.url, sqlite_catalog.url):
        with pytest.raises(Exception, match="read-only|readonly"):
            asyncio.run(attempt(url))
    assert fingerprint(sqlite_catalog.data) == before


def test_copy_into_a_catalog_with_rows_needs_force(sqlite_catalog, tmp_path, capsys):
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    first = cli_json(capsys, "db", "copy", sqlite_catalog.url, target)
    code, _, err = cli(capsys, "db", "copy", sqlite_catalog.url, target)
    assert code == 4 and "[catalog_not_empty]" in one_line(err) and "--force" in err
    code, out, err = cli(capsys, "db", "copy", sqlite_catalog.url, target, "--force")
    assert code == 0, err
    total = sum(n for t, n in first["tables"].items() if t != "catalog_settings")
    assert f"emptying the target catalog first (--force): {total} rows" in err
    assert f"emptied first (--force): {total} rows" in out
    assert counts(target) == first["tables"]


def test_copy_refuses_what_it_cannot_copy(sqlite_catalog, tmp_path, capsys):
    def refused(source: str, target: str, code: str, *words: str) -> None:
        status, _, err = cli(capsys, "db", "copy", source, target)
        line = one_line(err)
        assert status == 2 and f"[{code}]" in line, line
        for w in words:
            assert w in line, line

    good = sqlite_catalog.url
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    refused(good, "mysql://u@h/db", "bad_request", "not a catalog URL")
    refused(good, "nonsense", "bad_request", "not a catalog URL")
    refused(good, good, "bad_request", "the same catalog")
    refused(good, f"sqlite:///{tmp_path / 'no' / 'dir' / 'c.db'}", "catalog_unreachable")
    refused(good, "postgresql://postgres@127.0.0.1:1/x", "catalog_unreachable", "target")
    missing = tmp_path / "missing.db"
    refused(f"sqlite:///{missing}", fresh, "catalog_unreachable", "source")
    assert not missing.exists()
    other = tmp_path / "other.db"
    on(f"sqlite:///{other}", lambda c: c.execute(text("CREATE TABLE x (y int)")))
    refused(f"sqlite:///{other}", fresh, "not_a_catalog", "source")
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    refused(f"sqlite:///{tmp_path / 'junk.db'}", fresh, "not_a_catalog")
    old = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade_to(old, "0003")
    refused(old, fresh, "catalog_outdated", "source", "chunkyard db upgrade")
    newer = f"sqlite:///{tmp_path / 'newer.db'}"
    asyncio.run(_migrate(newer))
    on(newer, lambda conn: conn.execute(text("UPDATE alembic_version SET version_num='9999'")))
    refused(good, newer, "catalog_too_new", "target")


def test_copy_to_a_postgres_database_that_does_not_exist(sqlite_catalog, capsys):
    base = require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")["CHUNKYARD_TEST_POSTGRES_URL"]
    target = base.rsplit("/", 1)[0] + "/no_such_db_" + uuid.uuid4().hex[:6]
    code, _, err = cli(capsys, "db", "copy", sqlite_catalog.url, target)
    line = one_line(err)
    assert code == 2 and "[catalog_unreachable]" in line and "does not exist" in line


def test_the_check_finds_damage(sqlite_catalog, tmp_path, capsys):
    """The check after a copy recomputes file ids and version digests from the rows: a
    changed chunk id, version digest or manifest is caught."""
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    cli_json(capsys, "db", "copy", sqlite_catalog.url, target)
    assert on(target, check_versions).stored_versions == 4

    damage = [
        "UPDATE pack_entries SET chunk_id = zeroblob(32) WHERE idx = 0",
        "UPDATE pack_entries SET raw_len = raw_len + 1 WHERE idx = 0",
        "UPDATE versions SET digest = 'ab' || substr(digest, 3) WHERE layout = 'tree'",
        "UPDATE version_files SET manifest = '[[' WHERE size > 0 AND manifest != '[]'",
        "DELETE FROM version_files WHERE path = 'empty.txt'",
    ]
    for statement in damage:

        def tx(conn, statement=statement):  # type: ignore[no-untyped-def]
            conn.execute(text(statement))
            check_versions(conn)

        with pytest.raises(CopyMismatch):
            on(target, tx)  # rolled back: the next damage starts from a good copy


def test_an_unreachable_catalog_is_one_line_without_its_password(tmp_path):
    url = "postgresql://chunk:hunter2-not-real@127.0.0.1:1/cy"
    served = run_program("serve", "--data", str(tmp_path / "d"), env={"CHUNKYARD_DB": url})
    line = one_line(served.stderr)
    assert served.returncode == 2 and "[catalog_unreachable]" in line
    assert "127.0.0.1:1/cy" in line and "hunter2" not in served.stderr
