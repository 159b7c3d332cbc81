"""The catalog's query functions, each run on SQLite and on PostgreSQL: one set of
named queries, one migration chain, the same answers on both."""

from __future__ import annotations

import random
import re
import sqlite3
import string
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import event

from chunkyard import packs as packfmt
from chunkyard.catalog import Database
from chunkyard.catalog import packs as packs_q
from chunkyard.catalog import references as refs_q
from chunkyard.catalog import sessions as sessions_q
from chunkyard.catalog import tokens as tokens_q
from chunkyard.catalog import versions as versions_q
from chunkyard.catalog.db import BATCH, batched
from chunkyard.catalog.settings import DEDUP_DOMAIN_DEPTH, setting
from chunkyard.digest import chunk_id
from stores.conftest import require_env


@asynccontextmanager
async def new_database(
    kind: str, tmp_path, migrate: bool = True, create: str = ""
) -> AsyncIterator[Database]:
    """An empty catalog of ``kind`` (a throwaway database on PostgreSQL, made with the
    options ``create``), migrated to the head unless ``migrate`` is False."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        drop = None
    else:
        base = require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")["CHUNKYARD_TEST_POSTGRES_URL"]
        name = "c_" + uuid.uuid4().hex[:10]
        subprocess.run(["psql", base, "-qc", f"create database {name} {create}"], check=True)
        url = base.rsplit("/", 1)[0] + "/" + name
        drop = (base, name)
    database = Database(url)
    try:
        if migrate:
            await database.migrate()
        yield database
    finally:
        await database.close()
        if drop is not None:
            base, name = drop
            subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path) -> AsyncIterator[Database]:
    async with new_database(request.param, tmp_path) as database:
        yield database


def entries(n: int, seed: int = 0) -> list[tuple[bytes, bytes, int, int, int, int]]:
    """Index rows as verification gives them: (chunk id, chunk key, offset, stored_len,
    raw_len, scheme)."""
    out, pos = [], packfmt.HEADER_SIZE
    for i in range(n):
        key = (seed * 1000 + i + 1).to_bytes(4, "big") * 8
        out.append((chunk_id(key), key, pos, 100 + i, 200 + i, packfmt.SCHEME_ZSTD))
        pos += 100 + i
    return out


def upload(pack: str, session: str = "s1", size: int = 1000) -> packs_q.UploadRow:
    return packs_q.UploadRow(
        f"u-{pack}-{session}",
        session,
        pack,
        size,
        "store-upload",
        f"packs/{pack}",
        "uploading",
        time.time(),
    )


async def test_migrate_is_idempotent_and_records_the_head(db):
    from chunkyard.catalog.db import head_revision

    assert await db.revision() == head_revision()
    await db.migrate()
    assert await db.revision() == head_revision()
    assert await db.read(setting, DEDUP_DOMAIN_DEPTH) == "1"


async def test_sessions(db):
    now = time.time()
    row = sessions_q.SessionRow("s1", "team/model", "open", None, now, now + 60, "t1", "ab" * 32)
    await db.write(sessions_q.insert_session, row)
    assert await db.read(sessions_q.session_row, "s1") == row
    assert await db.read(sessions_q.session_row, "nope") is None
    await db.write(sessions_q.mark_committed, "s1", 7)
    assert (await db.read(sessions_q.session_row, "s1")).version_id == 7


async def test_uploads_and_the_verified_pack(db):
    now = time.time()
    es = entries(3)
    first, second = upload("p1", "s1"), upload("p1", "s2")
    assert await db.write(packs_q.insert_upload, first) is None
    assert await db.write(packs_q.insert_upload, first._replace(id="other")) == first
    assert await db.write(packs_q.insert_upload, second) is None  # its own: nobody blocks
    assert await db.read(packs_q.upload_of, "s2", "p1") == second
    assert await db.read(packs_q.session_uploads, "s1", ["p1", "p2"]) == {"p1": first}
    await db.write(packs_q.mark_upload, first.id, "complete")
    await db.write(packs_q.mark_upload, second.id, "complete")
    assert await db.read(packs_q.uploads_awaiting_verification, 10) == [first.id, second.id]
    assert await db.read(packs_q.still_complete, [second.id, "gone"]) == ([second.id], first.id)
    keys = [e[1] for e in es]
    assert await db.read(packs_q.chunk_locations, "team", keys) == {}
    assert await db.write(packs_q.promote, first, es, "team", now) is True
    assert await db.write(packs_q.promote, second, es, "other", now) is False  # redundant
    assert await db.write(packs_q.promote, first, es, "team", now) is None  # settled before
    assert await db.read(packs_q.upload_by_id, first.id) is None
    assert await db.read(packs_q.uploads_awaiting_verification, 10) == []
    row = await db.read(packs_q.pack_row, "p1")
    assert (row.state, row.key, row.chunk_count) == ("verified", "packs/p1", 3)
    # each domain holds what its uploads brought, and nothing of the others'
    assert await db.read(packs_q.chunk_locations, "team", [keys[2], b"\0" * 32]) == {
        keys[2]: ("p1", 2)
    }
    assert await db.read(packs_q.chunk_locations, "other", keys[:1]) == {keys[0]: ("p1", 0)}
    assert await db.read(packs_q.chunk_locations, "third", keys) == {}
    assert await db.read(packs_q.held_in_domain, "team", "p1")
    assert not await db.read(packs_q.held_in_domain, "third", "p1")
    await db.write(packs_q.index_chunks, "p1", "third", 1, 2)
    assert await db.read(packs_q.chunk_locations, "third", keys) == {keys[1]: ("p1", 1)}
    run = await db.read(packs_q.entries, "p1", 1, 3)
    assert [(r.idx, r.chunk_id, r.chunk_key, r.raw_len) for r in run] == [
        (1, es[1][0], keys[1], 201),
        (2, es[2][0], keys[2], 202),
    ]
    assert [r.idx for r in await db.read(packs_q.index_of, "p1")] == [0, 1, 2]
    assert list(await db.read(packs_q.pack_rows, ["p1", "nope"])) == ["p1"]
    assert await db.read(packs_q.stored_totals) == (1000, 1, 3 + 3 + 1)
    assert await db.read(packs_q.unusable, ["p1"]) == []
    await db.write(packs_q.mark_corrupt, "p1")
    assert await db.read(packs_q.unusable, ["p1"]) == [("p1", "corrupt")]
    assert await db.read(packs_q.chunk_locations, "team", keys) == {}
    # a good copy found later takes the damaged one's place
    third = upload("p1", "s3")._replace(key="packs/p1.again", state="complete")
    await db.write(packs_q.insert_upload, third)
    assert await db.write(packs_q.promote, third, es, "team", now) is True
    row = await db.read(packs_q.pack_row, "p1")
    assert (row.state, row.key) == ("verified", "packs/p1.again")


async def test_a_commit_reads_pack_indexes_a_few_at_a_time(db):
    """A commit's checks read each pack's index as its terms name it and keep only the
    last few: the gateway's memory does not grow with the chunks a version names."""
    from chunkyard.repository.uploads import PackIndexes

    now = time.time()
    names = [f"q{i}" for i in range(PackIndexes.KEEP + 2)]
    for i, name in enumerate(names):
        up = upload(name, f"s{i}")
        await db.write(packs_q.insert_upload, up)
        await db.write(packs_q.mark_upload, up.id, "complete")
        await db.write(packs_q.promote, up, entries(i + 1, seed=i + 10), "team", now)

    def walk(conn) -> tuple[list[int], int]:  # type: ignore[no-untyped-def]
        indexes = PackIndexes(conn)
        seen = [len(indexes.of(n)) for n in [*names, names[0], names[-1], "nope"]]
        return seen, len(indexes._kept)

    seen, kept = await db.read(walk)
    assert seen == [*range(1, len(names) + 1), 1, len(names), 0]
    assert kept == PackIndexes.KEEP


async def test_a_failed_upload_is_dropped_or_marked(db):
    a, b = upload("a"), upload("b")
    for u in (a, b):
        await db.write(packs_q.insert_upload, u)
    await db.write(packs_q.drop_upload, a.id)
    await db.write(packs_q.mark_upload, b.id, "corrupt")
    assert await db.read(packs_q.upload_by_id, a.id) is None
    assert (await db.read(packs_q.upload_by_id, b.id)).state == "corrupt"
    assert await db.read(packs_q.pack_row, "b") is None


async def test_many_ids_in_one_query_are_batched(db):
    es = entries(BATCH * 2 + 7)
    u = upload("big", size=10**6)._replace(state="complete")
    await db.write(packs_q.insert_upload, u)
    await db.write(packs_q.promote, u, es, "d", time.time())
    keys = [e[1] for e in es] + [bytes(32)] * 10
    assert len(await db.read(packs_q.chunk_locations, "d", keys)) == len(es)
    assert [len(b) for b in batched(range(BATCH * 2 + 1))] == [BATCH, BATCH, 1]


async def test_tokens(db):
    now = time.time()
    row = tokens_q.TokenRow(
        "abc123abc123", "f" * 64, "read:team/ admin", "ci", now, None, None, None
    )
    await db.write(tokens_q.insert_token, row)
    assert await db.read(tokens_q.token_by_hash, "f" * 64) == row
    assert await db.read(tokens_q.token_by_hash, "e" * 64) is None
    assert await db.read(tokens_q.list_tokens) == [row]
    assert await db.write(tokens_q.revoke, row.id, now) is True
    assert await db.write(tokens_q.revoke, row.id, now) is False
    assert (await db.read(tokens_q.token_by_hash, "f" * 64)).revoked_at == now


async def test_versions_tags_aliases_and_listing(db):
    now = time.time()

    def commit(conn, name: str, digest: str) -> versions_q.VersionRow:
        art = versions_q.ensure_artifact(conn, name, now)
        assert versions_q.ensure_artifact(conn, name, now) == art
        v = versions_q.add_version(
            conn,
            art,
            kind="stored",
            layout="file",
            digest=digest,
            size=5,
            file_count=1,
            created_at=now,
        )
        row = {"idx": 0, "path": "f", "size": 5, "digest": digest, "b3sum": "b" * 64}
        versions_q.insert_files(conn, v.id, [{**row, "manifest": "[]"}])
        return v

    v1 = await db.write(commit, "team/a", "1" * 64)
    v2 = await db.write(commit, "team/a", "2" * 64)
    await db.write(commit, "team/b", "3" * 64)
    await db.write(commit, "teamx/c", "4" * 64)
    assert (v1.number, v2.number) == (1, 2)
    art = await db.read(versions_q.artifact_id, "team/a")
    assert (await db.read(versions_q.find_version, art, None)).number == 2
    assert (await db.read(versions_q.find_version, art, 1)).digest == "1" * 64
    assert await db.read(versions_q.find_version, art, 9) is None
    assert await db.read(versions_q.list_artifacts, "team/", "", 10) == [
        ("team/a", 2, 2),
        ("team/b", 1, 1),
    ]
    assert await db.read(versions_q.list_artifacts, "team/", "team/a", 10) == [("team/b", 1, 1)]
    assert len(await db.read(versions_q.list_artifacts, "", "", 10)) == 3
    assert [v.number for v in await db.read(versions_q.list_versions, art, 1, 10)] == [2]
    assert (await db.read(versions_q.file_of, v1.id, 0, None)).path == "f"
    assert (await db.read(versions_q.file_of, v1.id, None, "f")).idx == 0
    assert [f.path for f in await db.read(versions_q.files_by_index, v1.id, [0, 5])] == ["f"]
    by_id = await db.read(versions_q.stored_files_by_id, art, 1)
    assert list(by_id) == [("1" * 64, 5)] and by_id[("1" * 64, 5)].b3sum == "b" * 64
    await db.write(versions_q.insert_tags, v1.id, {"k": "v"})
    assert await db.read(versions_q.tags_of, [v1.id, v2.id]) == {v1.id: {"k": "v"}}

    def move(conn, version_id: int) -> int | None:
        versions_q.lock_artifact(conn, art)
        before = versions_q.alias_target(conn, art, "prod")
        versions_q.point_alias(conn, art, "prod", version_id, now)
        return before

    assert await db.write(move, v1.id) is None
    assert await db.write(move, v2.id) == 1
    assert (await db.read(versions_q.find_version, art, "prod")).number == 2
    assert await db.read(versions_q.aliases_of, [v1.id, v2.id]) == {v2.id: ["prod"]}
    totals = await db.read(versions_q.totals)
    assert totals == {"artifacts": 3, "versions": 4, "logical_bytes": 20, "referenced_bytes": 0}


async def test_reference_objects_and_their_index(db):
    now = time.time()
    pin = {
        "id": "r" * 64,
        "uri": "s3://b/k",
        "size": 300,
        "etag": "e",
        "source_version": None,
        "last_modified": None,
        "weak_etag": False,
        "digest": "",
        "file_id": "",
        "state": "pinned",
        "created_at": now,
    }
    await db.write(refs_q.begin_index, pin, now)
    await db.write(refs_q.begin_index, pin, now)  # twice: nothing new
    key = [bytes([i]) * 32 for i in range(3)]
    rows = [("r" * 64, i, chunk_id(key[i]), key[i], i * 100, 100) for i in range(3)]
    await db.write(refs_q.insert_index_entries, rows)
    assert await db.read(refs_q.count_entries, "r" * 64) == 3
    await db.write(refs_q.finish_index, "r" * 64, 3, ("d" * 64, "i" * 64), "refs/x", "refs", now)
    assert await db.read(refs_q.known, ["r" * 64]) == {
        "r" * 64: refs_q.Known("d" * 64, "i" * 64, True)
    }
    assert (await db.read(packs_q.pack_row, "r" * 64)).artifact == "refs/x"
    assert await db.read(packs_q.chunk_locations, "refs", [key[1]]) == {key[1]: ("r" * 64, 1)}
    assert await db.read(packs_q.chunk_locations, "other", [key[1]]) == {}
    assert await db.write(refs_q.record_checks, ["r" * 64], [], now, "refs") == ["r" * 64]
    assert await db.read(packs_q.chunk_locations, "refs", [key[1]]) == {}
    assert await db.read(packs_q.unusable, ["r" * 64]) == [("r" * 64, "drifted")]
    assert await db.write(refs_q.record_checks, [], ["r" * 64], now, "refs") == []
    assert len(await db.read(packs_q.chunk_locations, "refs", [key[1]])) == 1
    other = {**pin, "id": "o" * 64, "uri": "s3://b/o"}
    await db.write(refs_q.insert_pins, [other])
    await db.write(refs_q.set_digests, [("o" * 64, "e" * 64, "f" * 64)])
    got = (await db.read(refs_q.pins, ["o" * 64]))["o" * 64]
    assert (got.digest, got.file_id) == ("e" * 64, "f" * 64)

    def register(conn) -> int:
        art = versions_q.ensure_artifact(conn, "refs/x", now)
        v = versions_q.add_version(
            conn,
            art,
            kind="reference",
            layout="tree",
            digest="f" * 64,
            size=600,
            file_count=2,
            created_at=now,
            source="s3://b/",
            digest_of="pins",
        )
        versions_q.insert_files(
            conn,
            v.id,
            [
                {"idx": i, "path": p, "size": 300, "digest": "", "manifest": "[]", "ref_object": r}
                for i, (p, r) in enumerate([("k", "r" * 64), ("o", "o" * 64)])
            ],
        )
        return v.id

    vid = await db.write(
        register,
    )
    files = await db.read(refs_q.files_with_pins, vid)
    assert [(f[1], f[3].uri, f[4]) for f in files] == [
        ("k", "s3://b/k", "reference"),
        ("o", "s3://b/o", None),
    ]
    page = await db.read(refs_q.files_page, vid, 1, 10)
    assert [(f[0], f[1], f[3].id) for f in page] == [(1, "o", "o" * 64)]


def _add(conn, name: str, tags: dict[str, str], now: float = 1.0) -> versions_q.VersionRow:
    """A stored version of ``name`` with ``tags`` (what a commit writes, in short)."""
    art = versions_q.ensure_artifact(conn, name, now)
    v = versions_q.add_version(
        conn, art, kind="stored", layout="file", digest="0" * 64, size=1, file_count=1,
        created_at=now,
    )  # fmt: skip
    versions_q.insert_tags(conn, v.id, tags)
    return v


#: a tag value as long as a value may be, that does not compress: a B-tree index on
#: whole values refuses it on PostgreSQL ("index row size exceeds maximum")
LONG = "".join(random.Random(5).choices(string.ascii_letters + string.digits, k=4096))


async def test_versions_by_tag(db):
    x300, x299y, x200 = "x" * 300, "x" * 299 + "y", "x" * 200
    for name, tags in [
        ("team/a", {"branch": "main", "author": "alice"}),
        ("team/a", {"branch": "dev", "author": "alice"}),
        ("team/b", {"branch": "main", "author": "bob"}),
        ("teamx/c", {"branch": "main", "author": "alice"}),
        ("team/d", {"note": x300}),
        ("team/d", {"note": x299y}),
        ("team/d", {"note": x200, "long": LONG}),
        ("team/d", {"note": "x" * 199}),
    ]:
        await db.write(_add, name, tags)

    async def find(prefix, tags, after=None, limit=100) -> list[str]:
        rows = await db.read(versions_q.tagged_versions, prefix, tags, after, limit)
        return [f"{n}@{v.number}" for n, v in rows]

    assert await find("", [("branch", "main")]) == ["team/a@1", "team/b@1", "teamx/c@1"]
    assert await find("team/", [("branch", "main")]) == ["team/a@1", "team/b@1"]
    assert await find("team", [("branch", "main")]) == ["team/a@1", "team/b@1", "teamx/c@1"]
    assert await find("", [("branch", "main"), ("author", "alice")]) == ["team/a@1", "teamx/c@1"]
    assert await find("team/", [("author", "alice"), ("branch", "main")]) == ["team/a@1"]
    assert await find("", [("branch", "main"), ("branch", "dev")]) == []
    assert await find("", [("branch", "nope")]) == []
    # values past the indexed prefix: the whole value decides
    assert await find("", [("note", x300)]) == ["team/d@1"]
    assert await find("", [("note", x299y)]) == ["team/d@2"]
    assert await find("", [("note", x200)]) == ["team/d@3"]
    assert await find("", [("note", "x" * 199)]) == ["team/d@4"]
    assert await find("", [("note", "x" * 201)]) == []
    assert await find("", [("long", LONG)]) == ["team/d@3"]
    assert await find("", [("long", LONG[:-1])]) == []
    # paged by (name, number)
    assert await find("", [("author", "alice")], None, 2) == ["team/a@1", "team/a@2"]
    assert await find("", [("author", "alice")], ("team/a", 1), 2) == ["team/a@2", "teamx/c@1"]
    assert await find("", [("author", "alice")], ("team/a", 2), 2) == ["teamx/c@1"]
    assert await find("", [("author", "alice")], ("teamx/c", 1), 2) == []
    # without tags: every version under the prefix
    assert await find("team/", []) == ["team/a@1", "team/a@2", "team/b@1"] + [
        f"team/d@{i}" for i in range(1, 5)
    ]
    assert await find("team/", [], ("team/b", 0), 3) == ["team/b@1", "team/d@1", "team/d@2"]


async def test_alias_moves_and_their_history(db):
    a1 = await db.write(_add, "team/a", {})
    a2 = await db.write(_add, "team/a", {})
    art = a1.artifact_id

    def move(conn, alias: str, version_id: int | None, now: float, by: str | None):
        versions_q.lock_artifact(conn, art)
        if version_id is None:
            return versions_q.remove_alias(conn, art, alias, now, by)
        return versions_q.point_alias(conn, art, alias, version_id, now, by)

    assert await db.write(move, "prod", a1.id, 10.0, "tok1") is None
    assert await db.write(move, "prod", a2.id, 11.0, None) == 1
    assert await db.write(move, "prod", a2.id, 11.5, "tok9") == 2  # where it is: no move
    assert await db.write(move, "canary", a1.id, 12.0, "tok2") is None
    assert await db.read(versions_q.list_aliases, art, "", 10) == [
        versions_q.AliasRow("canary", 1, 12.0),
        versions_q.AliasRow("prod", 2, 11.0),
    ]
    assert await db.read(versions_q.list_aliases, art, "canary", 10) == [
        versions_q.AliasRow("prod", 2, 11.0)
    ]
    assert await db.read(versions_q.alias_row, art, "prod") == versions_q.AliasRow("prod", 2, 11.0)
    assert await db.write(move, "prod", None, 13.0, "tok1") == 2
    assert await db.write(move, "prod", None, 14.0, "tok1") is None  # gone: nothing recorded
    assert await db.read(versions_q.alias_row, art, "prod") is None
    assert await db.read(versions_q.find_version, art, "prod") is None
    assert await db.write(move, "prod", a1.id, 15.0, "tok3") is None
    history = await db.read(versions_q.alias_history, art, "prod", 0, 10)
    assert [(m.version, m.previous, m.moved_at, m.moved_by) for m in history] == [
        (1, None, 10.0, "tok1"),
        (2, 1, 11.0, None),
        (None, 2, 13.0, "tok1"),
        (1, None, 15.0, "tok3"),
    ]
    page = await db.read(versions_q.alias_history, art, "prod", history[1].id, 1)
    assert page == [history[2]]
    assert [m.version for m in await db.read(versions_q.alias_history, art, "canary", 0, 9)] == [1]


async def test_0005_records_existing_aliases_and_names_sort_bytewise(request, tmp_path):
    """From a catalog at 0004 with an alias: the upgrade writes its history's first move;
    on PostgreSQL artifact names take the "C" collation."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from chunkyard.catalog.db import MIGRATIONS

    def upgrade(conn, to: str) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, to)

    def seed(conn) -> None:
        for sql in (
            "INSERT INTO artifacts (name, created_at) VALUES ('team/a', 1)",
            "INSERT INTO versions (artifact_id, number, kind, layout, digest, size, file_count,"
            " created_at) VALUES (1, 1, 'stored', 'file', '', 0, 0, 1)",
            "INSERT INTO aliases (artifact_id, name, version_id, updated_at) VALUES (1, 'prod',"
            " 1, 5)",
        ):
            conn.execute(text(sql))

    for kind in ("sqlite", "postgresql"):
        async with new_database(kind, tmp_path / kind, migrate=False) as old:
            (tmp_path / kind).mkdir(exist_ok=True)
            await old.write(upgrade, "0004")
            await old.write(seed)
            await old.migrate()
            history = await old.read(versions_q.alias_history, 1, "prod", 0, 10)
            assert [(m.version, m.previous, m.moved_at, m.moved_by) for m in history] == [
                (1, None, 5.0, None)
            ]
            if kind == "postgresql":
                collation = await old.read(
                    lambda conn: conn.execute(
                        text(
                            "SELECT collation_name FROM information_schema.columns"
                            " WHERE table_name = 'artifacts' AND column_name = 'name'"
                        )
                    ).scalar()
                )
                assert collation == "C"


async def test_0009_modes_and_dirs_up_and_down(tmp_path):
    """Existing versions get no mode and no empty directories (NULL: not recorded); the
    downgrade drops both columns, on SQLite and PostgreSQL alike, keeping the rows."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from chunkyard.catalog.db import MIGRATIONS

    def move(conn, to: str, down: bool = False) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, to)

    def seed(conn) -> None:
        for sql in (
            "INSERT INTO artifacts (name, created_at) VALUES ('team/a', 1)",
            "INSERT INTO versions (artifact_id, number, kind, layout, digest, size, file_count,"
            " created_at) VALUES (1, 1, 'stored', 'tree', '', 1, 1, 1)",
            "INSERT INTO version_files (version_id, idx, path, size, digest, manifest)"
            " VALUES (1, 0, 'x', 1, '', '[]')",
        ):
            conn.execute(text(sql))

    def columns(conn, step: int) -> tuple:
        """(versions.dirs, version_files.mode, path), "gone" for a column that is not
        there (each statement new: asyncpg's cached plans outlive no schema change)."""
        have = {c["name"] for c in inspect(conn).get_columns("version_files")}
        have |= {c["name"] for c in inspect(conn).get_columns("versions")}
        out = []
        for table, column in (("versions", "dirs"), ("version_files", "mode")):
            q = text(f"SELECT {column} FROM {table} /* {step} */")
            out.append(conn.execute(q).scalar_one() if column in have else "gone")
        path = conn.execute(text(f"SELECT path FROM version_files /* {step} */")).scalar_one()
        return (*out, path)

    for kind in ("sqlite", "postgresql"):
        (tmp_path / kind).mkdir()
        async with new_database(kind, tmp_path / kind, migrate=False) as db:
            await db.write(move, "0008")
            await db.write(seed)
            await db.migrate()
            assert await db.read(columns, 1) == (None, None, "x")
            await db.write(move, "0008", True)
            assert await db.read(columns, 2) == ("gone", "gone", "x")
            await db.migrate()
            assert await db.read(columns, 3) == (None, None, "x")


async def test_a_prefix_is_a_prefix_on_a_database_with_a_locale(tmp_path):
    """Under ICU's English collation ``'team/x' >= 'Team/'`` and ``< 'Team0'``: names
    compare bytewise (migration 0005), so a prefix lists what starts with it, and the
    order is SQLite's."""
    icu = "template template0 encoding 'UTF8' locale_provider icu icu_locale 'en' locale 'C'"
    async with new_database("postgresql", tmp_path, create=icu) as db:
        names = ["Team/a", "team/x", "Teamb", "team-y", "Team/B"]
        for name in names:
            await db.write(_add, name, {"k": "v"})
        listed = await db.read(versions_q.list_artifacts, "Team/", "", 10)
        assert [n for n, _, _ in listed] == ["Team/B", "Team/a"]
        everything = await db.read(versions_q.list_artifacts, "", "", 10)
        assert [n for n, _, _ in everything] == sorted(names)
        tagged = await db.read(versions_q.tagged_versions, "Team/", [("k", "v")], None, 10)
        assert [n for n, _ in tagged] == ["Team/B", "Team/a"]


def _plans(conn, fn, *args) -> list[str]:
    """The query plan of every statement ``fn(conn, *args)`` runs. On PostgreSQL with
    sequential scans off: a table it still scans whole has no index the query can use
    (on tables this small the planner would otherwise rightly prefer a scan)."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        seen.append((statement, parameters))

    pg = conn.dialect.name == "postgresql"
    if pg:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    event.listen(conn, "before_cursor_execute", record)
    try:
        fn(conn, *args)
    finally:
        event.remove(conn, "before_cursor_execute", record)
    out = []
    for statement, parameters in seen:
        rows = conn.exec_driver_sql(("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + statement,
                                    parameters).all()  # fmt: skip
        out.append("\n".join(str(r[0] if pg else r[3]) for r in rows))
    return out


async def test_listings_use_indexes(db):
    """Artifacts by prefix, versions by tags (and without), aliases and their history:
    each statement reads indexes only, no table from end to end."""
    for i in range(30):
        v = await db.write(_add, f"team/m{i:02}", {"branch": "main" if i % 2 else "dev"})
    art = v.artifact_id

    def alias_moves(conn) -> None:
        versions_q.lock_artifact(conn, art)
        versions_q.point_alias(conn, art, "prod", v.id, 1.0, None)

    await db.write(alias_moves)
    calls = {
        "list_artifacts": (versions_q.list_artifacts, "team/", "team/m03", 7),
        "tagged_one": (versions_q.tagged_versions, "team/", [("branch", "main")], None, 7),
        "tagged_two": (
            versions_q.tagged_versions,
            "team/",
            [("branch", "main"), ("x", "y" * 300)],
            ("team/m05", 1),
            7,
        ),
        "untagged": (versions_q.tagged_versions, "team/", [], ("team/m05", 1), 7),
        "aliases": (versions_q.list_aliases, art, "", 7),
        "history": (versions_q.alias_history, art, "prod", 0, 7),
    }
    for what, (fn, *args) in calls.items():
        plans = await db.read(_plans, fn, *args)
        print(what, *plans, sep="\n")
        assert plans, what
        for plan in plans:
            if db.dialect == "postgresql":
                assert "Seq Scan" not in plan, (what, plan)
            else:
                assert not re.search(r"\bSCAN (?!CONSTANT)", plan), (what, plan)
                assert re.search(r"USING (COVERING )?INDEX|USING INTEGER PRIMARY KEY", plan), (
                    what,
                    plan,
                )
        if what.startswith("tagged_"):
            assert "ix_tags_key_value" in plans[0], plans[0]


class _Cursor:
    """Answers ``PRAGMA journal_mode`` with the errors it is given, then succeeds."""

    def __init__(self, errors: list[str]) -> None:
        self.errors, self.calls = errors, 0

    def execute(self, sql: str) -> None:
        self.calls += 1
        if self.errors:
            raise sqlite3.OperationalError(self.errors.pop(0))


def test_switching_to_wal_waits_out_a_connection_converting_at_once() -> None:
    """SQLite answers "database is locked" at once, without its busy handler, to one of
    two connections converting a new file to WAL together (four gateways starting on a
    new catalog; seen once in 40 tries on a loaded machine): the switch retries."""
    from chunkyard.catalog.db import _wal

    busy = _Cursor(["database is locked"] * 3)
    _wal(busy)
    assert busy.calls == 4
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _wal(_Cursor(["disk I/O error"]))  # only a lock is waited out
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _wal(_Cursor(["database is locked"] * 1000), timeout=0.05)
