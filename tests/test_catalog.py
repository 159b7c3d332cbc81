"""The catalog's query functions, each run on SQLite and on PostgreSQL: one set of
named queries, one migration chain, the same answers on both."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from chunkyard import packs as packfmt
from chunkyard.catalog import Database
from chunkyard.catalog import packs as packs_q
from chunkyard.catalog import references as refs_q
from chunkyard.catalog import sessions as sessions_q
from chunkyard.catalog import versions as versions_q
from chunkyard.catalog.db import BATCH, batched
from stores.conftest import require_env


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        drop = None
    else:
        base = require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")["CHUNKYARD_TEST_POSTGRES_URL"]
        name = "c_" + uuid.uuid4().hex[:10]
        subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
        url = base.rsplit("/", 1)[0] + "/" + name
        drop = (base, name)
    database = Database(url)
    await database.migrate()
    yield database
    await database.close()
    if drop is not None:
        base, name = drop
        subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


def entries(n: int, seed: int = 0) -> list[packfmt.Entry]:
    out, pos = [], packfmt.HEADER_SIZE
    for i in range(n):
        cid = (seed * 1000 + i + 1).to_bytes(4, "big") * 8
        out.append(packfmt.Entry(cid, pos, 100 + i, 200 + i, packfmt.SCHEME_ZSTD))
        pos += 100 + i
    return out


async def test_migrate_is_idempotent_and_records_the_head(db):
    from chunkyard.catalog.db import head_revision

    assert await db.revision() == head_revision()
    await db.migrate()
    assert await db.revision() == head_revision()


async def test_sessions(db):
    now = time.time()
    await db.write(sessions_q.insert_session, "s1", "team/model", now, now + 60)
    row = await db.read(sessions_q.session_row, "s1")
    assert row == sessions_q.SessionRow("s1", "team/model", "open", None, now, now + 60)
    assert await db.read(sessions_q.session_row, "nope") is None


async def test_pack_lifecycle_and_the_dedup_index(db):
    now = time.time()
    es = entries(3)
    assert await db.write(packs_q.insert_uploading, "p1", 1000, "s1", "u1", now) is None
    again = await db.write(packs_q.insert_uploading, "p1", 1000, "s2", "u2", now)
    assert again is not None and again.session_id == "s1" and again.upload_id == "u1"
    assert await db.write(packs_q.mark_complete, "p1", es) is None
    assert await db.write(packs_q.mark_complete, "p1", es) == "complete"  # a second completion
    assert await db.read(packs_q.awaiting_verification, 10) == ["p1"]
    assert await db.read(packs_q.index_of, "p1") == [tuple(e) for e in es]
    assert await db.read(packs_q.chunk_locations, [e.chunk_id for e in es]) == {}
    assert await db.write(packs_q.mark_verified, "p1", now) == "verified"
    assert await db.write(packs_q.mark_verified, "p1", now) == "verified"
    found = await db.read(packs_q.chunk_locations, [es[2].chunk_id, b"\0" * 32])
    assert found == {es[2].chunk_id: ("p1", 2)}
    rows = await db.read(packs_q.pack_rows, ["p1", "nope"])
    assert list(rows) == ["p1"] and rows["p1"].chunk_count == 3
    assert await db.read(packs_q.chunk_ends, ["p1"]) == {"p1": [0, 200, 401, 603]}
    run = await db.read(packs_q.entries, "p1", 1, 3)
    assert [(r.idx, r.chunk_id, r.raw_len) for r in run] == [
        (1, es[1].chunk_id, 201),
        (2, es[2].chunk_id, 202),
    ]
    assert await db.read(packs_q.with_state, ["p1"], "verified") == [rows["p1"]]
    assert await db.read(packs_q.stored_totals) == (1000, 1, 3)
    assert await db.read(packs_q.unusable, ["p1"]) == []
    await db.write(packs_q.mark_corrupt, "p1")
    assert await db.read(packs_q.unusable, ["p1"]) == [("p1", "corrupt")]


async def test_an_unverified_pack_is_forgotten_and_a_verified_one_is_not(db):
    now = time.time()
    for pid in ("a", "b"):
        await db.write(packs_q.insert_uploading, pid, 1000, "s", "u", now)
        await db.write(packs_q.mark_complete, pid, entries(2, seed=ord(pid)))
    await db.write(packs_q.mark_verified, "b", now)
    await db.write(packs_q.forget_unverified, "a")
    await db.write(packs_q.forget_unverified, "b")
    assert await db.read(packs_q.pack_row, "a") is None
    assert (await db.read(packs_q.pack_row, "b")).state == "verified"


async def test_many_ids_in_one_query_are_batched(db):
    now = time.time()
    es = entries(BATCH * 2 + 7)
    await db.write(packs_q.insert_uploading, "big", 10**6, "s", "u", now)
    await db.write(packs_q.mark_complete, "big", es)
    await db.write(packs_q.mark_verified, "big", now)
    ids = [e.chunk_id for e in es] + [bytes(32)] * 10
    assert len(await db.read(packs_q.chunk_locations, ids)) == len(es)
    assert [len(b) for b in batched(range(BATCH * 2 + 1))] == [BATCH, BATCH, 1]


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
        versions_q.insert_files(
            conn, v.id, [{"idx": 0, "path": "f", "size": 5, "digest": digest, "manifest": "[]"}]
        )
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
    assert await db.read(versions_q.manifests_by_content, art, 1) == {("1" * 64, 5): "[]"}
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
        "state": "pinned",
        "created_at": now,
    }
    await db.write(refs_q.begin_index, pin, now)
    await db.write(refs_q.begin_index, pin, now)  # twice: nothing new
    rows = [("r" * 64, i, bytes([i]) * 32, i * 100, 100) for i in range(3)]
    await db.write(refs_q.insert_index_entries, rows)
    assert await db.read(refs_q.count_entries, "r" * 64) == 3
    await db.write(refs_q.finish_index, "r" * 64, 3, "d" * 64, now)
    assert await db.read(refs_q.known, ["r" * 64]) == {"r" * 64: ("d" * 64, True)}
    assert await db.read(packs_q.chunk_locations, [bytes([1]) * 32]) == {
        bytes([1]) * 32: ("r" * 64, 1)
    }
    assert await db.write(refs_q.record_checks, ["r" * 64], [], now) == ["r" * 64]
    assert await db.read(packs_q.chunk_locations, [bytes([1]) * 32]) == {}
    assert await db.read(packs_q.unusable, ["r" * 64]) == [("r" * 64, "drifted")]
    assert await db.write(refs_q.record_checks, [], ["r" * 64], now) == []
    assert len(await db.read(packs_q.chunk_locations, [bytes([1]) * 32])) == 1
    other = {**pin, "id": "o" * 64, "uri": "s3://b/o"}
    await db.write(refs_q.insert_pins, [other])
    await db.write(refs_q.set_digests, [("o" * 64, "e" * 64)])
    assert (await db.read(refs_q.pins, ["o" * 64]))["o" * 64].digest == "e" * 64

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
