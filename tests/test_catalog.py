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
from chunkyard.catalog import tokens as tokens_q
from chunkyard.catalog import versions as versions_q
from chunkyard.catalog.db import BATCH, batched
from chunkyard.catalog.settings import DEDUP_DOMAIN_DEPTH, setting
from chunkyard.digest import chunk_id
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
    keys = [e[1] for e in es]
    assert await db.read(packs_q.chunk_locations, "team", keys) == {}
    assert await db.write(packs_q.promote, first, es, "team", now) is True
    assert await db.write(packs_q.promote, second, es, "other", now) is False  # redundant
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
    assert [r.idx for r in (await db.read(packs_q.all_entries, ["p1"]))["p1"]] == [0, 1, 2]
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
    u = upload("big", size=10**6)
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
