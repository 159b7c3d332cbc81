"""The gateway as an attacker meets it: crafted clients that speak the HTTP API by hand
and send what an honest client never would. Each attack ends refused (or harmless),
and leaves the catalog and the store as they were."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import blake3
import httpx
import pytest

from chunkyard import Client, packs
from chunkyard.errors import DigestMismatch, Forbidden, Unauthorized
from conftest import begin_pack, chunk_keys, file_id, proof, random_bytes, start_gateway


def admin_token(data) -> str:  # type: ignore[no-untyped-def]
    """The first admin token, made offline against the catalog, as an operator does."""
    out = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "token", "create", "--data", str(data)]
        + ["--scope", "admin", "--label", "tests"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    data = tmp_path_factory.mktemp("secured")
    gw, server, thread = start_gateway(data, CHUNKYARD_AUTH="1")
    gw.admin = admin_token(data)  # type: ignore[attr-defined]
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


def token(gw, *scopes: str, ttl: float | None = None) -> str:  # type: ignore[no-untyped-def]
    with Client(gw.url, token=gw.admin) as admin:
        return admin.create_token(list(scopes), ttl=ttl)["token"]


def as_(gw, tok: str | None) -> httpx.Client:  # type: ignore[no-untyped-def]
    headers = {"authorization": f"Bearer {tok}"} if tok else {}
    return httpx.Client(base_url=gw.url, headers=headers, timeout=60)


def code(r: httpx.Response) -> str:
    return r.json()["error"]["code"]


# -- tokens ------------------------------------------------------------------------------
def test_no_token_or_a_wrong_one_is_401_and_changes_nothing(secured):
    before = secured.snapshot()
    for tok in (None, "cy_" + "x" * 43, "not-a-token", secured.admin + "x"):
        with as_(secured, tok) as c:
            for method, path, body in (
                ("POST", "/v1/sessions", {"name": "team-a/x"}),
                ("GET", "/v1/artifacts", None),
                ("GET", "/v1/stats", None),
                ("PUT", "/v1/artifacts/team-a/x/-/aliases/prod", {"version": 1}),
                ("DELETE", "/v1/artifacts/team-a/x/-/aliases/prod", None),
                ("GET", "/v1/artifacts/team-a/x/-/aliases/prod/history", None),
                ("GET", "/v1/versions", None),
                ("POST", "/v1/references", {"name": "a/b", "uri": "s3://b/k"}),
                ("POST", "/v1/tokens", {"scopes": ["admin"]}),
            ):
                r = c.request(method, path, json=body)
                assert r.status_code == 401 and code(r) == "unauthorized", (tok, path)
                assert r.headers["www-authenticate"].startswith("Bearer")
    with as_(secured, None) as c:  # health and the document need no token
        assert c.get("/v1/health").status_code == 200
        assert c.get("/openapi.json").status_code == 200
    assert secured.snapshot() == before


def test_scopes_decide_who_reads_and_writes_what(secured, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(random_bytes(300_000, seed=500))
    writer = token(secured, "write:team-a/vision/")
    reader = token(secured, "read:team-a/")
    outsider = token(secured, "read:team-b/", "write:team-b/")
    with Client(secured.url, token=writer) as c:
        v = c.push(src, "team-a/vision/model")
        c.set_alias("team-a/vision/model", "prod", v["version"])
        with pytest.raises(Forbidden):
            c.push(src, "team-a/nlp/model")  # beside its prefix, not under it
        with pytest.raises(Forbidden):
            c.stats()  # totals are for admins
        with pytest.raises(Forbidden):
            c.create_token(["admin"])
    with Client(secured.url, token=reader) as c:
        c.pull("team-a/vision/model:prod", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        assert [a["name"] for a in c.ls("team-a/")] == ["team-a/vision/model"]
        before = secured.snapshot()
        with pytest.raises(Forbidden):
            c.push(src, "team-a/vision/model")
        with pytest.raises(Forbidden):
            c.set_alias("team-a/vision/model", "prod", 1)
        with pytest.raises(Forbidden):
            c.remove_alias("team-a/vision/model", "prod")
        with pytest.raises(Forbidden):
            c.tag("team-a/vision/model@1", {"k": "v"})
        assert secured.snapshot() == before
    with Client(secured.url, token=outsider) as c:
        assert c.ls("") == []  # it sees only what it may read
        assert c.find_versions("") == {"versions": [], "next": None}
        with pytest.raises(Forbidden):
            c.show("team-a/vision/model")
        with pytest.raises(Forbidden):
            c.pull("team-a/vision/model", tmp_path / "never.bin")
    with as_(secured, outsider) as h:  # no reconstruction, so no presigned URL either
        r = h.get("/v1/artifacts/team-a/vision/model/-/versions/1/files/0/reconstruction")
        assert r.status_code == 403 and "url" not in r.text
        r = h.get("/v1/artifacts/team-a/vision/model/-/versions/1/content")
        assert r.status_code == 403


def test_small_pushes_need_write_on_the_name(secured):
    """The one-request push is held to the same scopes as an upload session."""
    import base64

    body = {"layout": "file", "files": [{"path": "m", "data": base64.b64encode(b"x").decode()}]}
    reader = token(secured, "read:team-a/")
    writer = token(secured, "write:team-b/")
    before = secured.snapshot()
    for tok, status in ((None, 401), (reader, 403), (writer, 403)):
        with as_(secured, tok) as h:
            r = h.post("/v1/artifacts/team-a/small/-/versions", json=body)
            assert r.status_code == status, r.text
    assert secured.snapshot() == before
    with as_(secured, writer) as h:
        assert h.post("/v1/artifacts/team-b/small/-/versions", json=body).status_code == 201


def test_sessions_belong_to_the_token_that_opened_them(secured):
    a = token(secured, "write:team-a/")
    b = token(secured, "write:team-a/")
    with as_(secured, a) as ca, as_(secured, b) as cb:
        opened = ca.post("/v1/sessions", json={"name": "team-a/s"}).json()
        sid = opened["session"]
        before = secured.snapshot()
        r = cb.post(f"/v1/sessions/{sid}/missing", content=b"\0" * 32)
        assert r.status_code == 404 and code(r) == "session_not_found"
        r = cb.get(f"/v1/sessions/{sid}")  # resuming it, proof key and all: its owner only
        assert r.status_code == 404 and code(r) == "session_not_found"
        assert ca.get(f"/v1/sessions/{sid}").json() == opened
        r = cb.post(f"/v1/sessions/{sid}/commit", json={"layout": "tree", "files": []})
        assert r.status_code == 404
        assert secured.snapshot() == before


def test_revoked_and_expired_tokens_stop_working(secured, tmp_path):
    short = token(secured, "read:*", ttl=1.0)
    doomed = token(secured, "read:*")
    with Client(secured.url, token=doomed) as c:
        c.ls("")
    with Client(secured.url, token=secured.admin) as admin:
        listed = admin.tokens()
        assert all("token" not in t and "hash" not in t for t in listed)
        victim = hashlib.sha256(doomed.encode()).hexdigest()[:12]  # its public id
        assert victim in {t["id"] for t in listed}
        assert admin.revoke_token(victim)["revoked"]
    with Client(secured.url, token=doomed) as c, pytest.raises(Unauthorized):
        c.ls("")
    time.sleep(1.2)
    with Client(secured.url, token=short) as c, pytest.raises(Unauthorized):
        c.ls("")


def test_the_catalog_keeps_only_hashes(secured):
    import sqlite3

    tok = token(secured, "read:x/")
    conn = sqlite3.connect(secured.data / "catalog.db")
    try:
        rows = conn.execute("select id, hash from tokens").fetchall()
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert tok not in dump and tok[3:] not in dump
    assert any(h == hashlib.sha256(tok.encode()).hexdigest() for _, h in rows)


# -- trust from verified bytes -------------------------------------------------------------
@pytest.fixture(scope="module")
def open_gw(tmp_path_factory):
    """A gateway without auth (loopback): anyone may write, so trust must come from
    the bytes alone."""
    from chunkyard.repository import verifier

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(verifier, "STALL", 0.3)  # no verifier runs: commits verify soon
        gw, server, thread = start_gateway(
            tmp_path_factory.mktemp("open"), CHUNKYARD_VERIFY="external"
        )
        yield gw
        server.should_exit = True
        thread.join(timeout=10)


def test_a_false_digest_poisons_nothing(open_gw, tmp_path):
    """The review's attack: a version whose chunks are garbage but whose declared size
    and BLAKE3 are those of content someone pushes later. The honest push must store
    the honest content, and every read path must serve it."""
    honest = random_bytes(400_000, seed=501)
    garbage = random_bytes(400_000, seed=502)
    name = "team/poisoned"
    with Client(open_gw.url) as c:
        g = tmp_path / "garbage.bin"
        g.write_bytes(garbage)
        attacker = c.push(g, name)
    # the attacker now claims the honest BLAKE3 for its garbage, in a version of its own
    with httpx.Client(base_url=open_gw.url) as h:
        recon = h.get(f"/v1/artifacts/{name}/-/versions/1/files/0/reconstruction").json()
        s = h.post("/v1/sessions", json={"name": name}).json()
        keys = chunk_keys(garbage)
        terms = [[recon["terms"][0]["pack"], 0, len(keys), proof(s, keys)]]
        r = h.post(
            f"/v1/sessions/{s['session']}/commit",
            json={
                "layout": "file",
                "files": [
                    {
                        "path": "model.bin",
                        "size": len(garbage),
                        "b3sum": blake3.blake3(honest).hexdigest(),
                        "terms": terms,
                    }
                ],
            },
        )
        # the same chunks as the latest: its digest is the gateway's, not the claim
        assert r.json()["digest"] == attacker["digest"] == file_id(garbage)
    src = tmp_path / "model.bin"
    src.write_bytes(honest)
    with Client(open_gw.url) as c:
        mine = c.push(src, name)
        assert mine["created"] and mine["bytes_uploaded"] > 0
        assert mine["digest"] == file_id(honest) != attacker["digest"]
        c.pull(name, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == honest
    with httpx.Client(base_url=open_gw.url) as h:
        r = h.get(f"/v1/artifacts/{name}/-/versions/latest/content")
        assert r.status_code == 200 and r.content == honest
        assert r.headers["x-chunkyard-file-id"] == file_id(honest)


def test_a_false_digest_on_a_reused_file_fools_no_later_push(open_gw, tmp_path):
    """An attacker's version claims the honest BLAKE3 for garbage; the honest client's
    unchanged-file shortcut compares gateway-computed file ids, so it sends the honest
    bytes instead of reusing the garbage."""
    honest = random_bytes(200_000, seed=503)
    garbage = random_bytes(200_000, seed=504)
    name = "team/reuse"
    with httpx.Client(base_url=open_gw.url) as h, Client(open_gw.url) as c:
        g = tmp_path / "g.bin"
        g.write_bytes(garbage)
        c.push(g, "team/reuse-source")
        recon = h.get("/v1/artifacts/team/reuse-source/-/versions/1/files/0/reconstruction")
        s = h.post("/v1/sessions", json={"name": name}).json()
        keys = chunk_keys(garbage)
        terms = [[recon.json()["terms"][0]["pack"], 0, len(keys), proof(s, keys)]]
        files = [{"path": "w.bin", "size": 200_000, "b3sum": blake3.blake3(honest).hexdigest()}]
        files[0]["terms"] = terms
        r = h.post(f"/v1/sessions/{s['session']}/commit", json={"layout": "file", "files": files})
        assert r.status_code == 201
        src = tmp_path / "w.bin"
        src.write_bytes(honest)
        v = c.push(src, name)
        assert v["created"] and v["bytes_uploaded"] > 0
        c.pull(name, tmp_path / "w-back.bin")
        assert (tmp_path / "w-back.bin").read_bytes() == honest
        with pytest.raises(DigestMismatch):  # the liar's own version fails, writing nothing
            c.pull(f"{name}@1", tmp_path / "liar.bin")
        assert not (tmp_path / "liar.bin").exists()


# -- dedup leaks nothing and grants nothing ------------------------------------------
def test_the_missing_chunk_query_is_no_oracle(open_gw, tmp_path):
    """Asked with chunk ids (public: a reader learns them from reconstructions, a pack
    index lists them) the answer is "missing" for stored chunks too; asked with chunk
    keys, which need the bytes, it answers only within the caller's dedup domain."""
    data = random_bytes(500_000, seed=505)
    src = tmp_path / "o.bin"
    src.write_bytes(data)
    with Client(open_gw.url) as c:
        c.push(src, "team-x/oracle")
    subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "verifier", "--once"],
        env={**os.environ, "CHUNKYARD_DATA": str(open_gw.data)},
        check=True,
        timeout=120,
    )
    with httpx.Client(base_url=open_gw.url) as h:
        recon = h.get("/v1/artifacts/team-x/oracle/-/versions/1/files/0/reconstruction").json()
        ids = b"".join(bytes.fromhex(ch[0]) for t in recon["terms"] for ch in t["chunks"])
        keys = b"".join(chunk_keys(data))

        def missing(name: str, body: bytes) -> int:
            sid = h.post("/v1/sessions", json={"name": name}).json()["session"]
            r = h.post(f"/v1/sessions/{sid}/missing", content=body)
            return sum(loc is None for loc in r.json()["locations"])

        n = len(keys) // 32
        assert missing("team-x/probe", ids) == n  # ids do not open anything
        assert missing("team-y/probe", keys) == n  # another domain learns nothing
        assert missing("team-x/probe", keys) == 0  # holding the bytes, in its domain


def test_a_commit_gains_no_chunks_it_cannot_prove(open_gw, tmp_path):
    """The review's read oracle: a client that holds the first chunk of a pack names the
    whole pack in a commit to read the rest. Without proofs of the rest it cannot."""
    data = random_bytes(600_000, seed=506)  # several chunks in one pack
    src = tmp_path / "p.bin"
    src.write_bytes(data)
    with Client(open_gw.url) as c:
        c.push(src, "team-x/victim")
    keys = chunk_keys(data)
    assert len(keys) > 2
    with httpx.Client(base_url=open_gw.url) as h:
        recon = h.get("/v1/artifacts/team-x/victim/-/versions/1/files/0/reconstruction").json()
        pack = recon["terms"][0]["pack"]
        s = h.post("/v1/sessions", json={"name": "team-x/thief"}).json()
        before = open_gw.snapshot()
        for terms in (
            [[pack, 0, len(keys), proof(s, keys[:1])]],  # holds the first chunk only
            [[pack, 0, 1, proof(s, keys[:1])], [pack, 1, len(keys), "0" * 64]],
            [[pack, 0, len(keys), "0" * 64]],
        ):
            r = h.post(
                f"/v1/sessions/{s['session']}/commit",
                json={
                    "layout": "file",
                    "files": [{"path": "f", "size": len(data), "terms": terms}],
                },
            )
            assert r.status_code == 422 and code(r) == "untrusted_chunks", r.text
            message = r.json()["error"]["message"]
            assert str(len(keys)) not in message and "chunks" in message
        assert open_gw.snapshot() == before


def test_read_urls_cover_only_the_chunks_a_version_needs(open_gw, tmp_path):
    """A version that shares one chunk with a pack gets a URL for that chunk's bytes,
    not the pack's: the rest of the pack (another artifact's content) stays unread."""
    data = random_bytes(600_000, seed=507)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with Client(open_gw.url) as c:
        c.push(src, "team-z/big")
        # a second file that is just the first chunk of the first
        from chunkyard.chunking import new_chunker

        first = next(iter(new_chunker().cut_buf(data)))
        small = tmp_path / "small.bin"
        small.write_bytes(data[: first.length])
        v = c.push(small, "team-z/small")
        assert v["bytes_uploaded"] == 0  # deduplicated against the first file's pack
    with httpx.Client(base_url=open_gw.url) as h:
        recon = h.get("/v1/artifacts/team-z/small/-/versions/1/files/0/reconstruction").json()
        (term,) = recon["terms"]
        a, b = term["range"]
        r = h.get(term["url"]["url"], headers=term["url"]["headers"])
        assert r.status_code == 206 and len(r.content) == b - a
        for rng in ("bytes=0-", f"bytes={b}-{b + 1000}", "bytes=-40"):
            r = h.get(term["url"]["url"], headers={"Range": rng})
            assert r.status_code == 403, rng
        assert h.get(term["url"]["url"]).status_code == 206  # no Range: just its bytes


# -- nobody can block anybody --------------------------------------------------------
def test_a_bad_upload_of_a_pack_blocks_no_honest_one(open_gw, tmp_path):
    """Pack ids are predictable from content. One session begins a pack with the wrong
    size, another uploads flipped bytes under its id; the honest push of that content
    neither fails nor waits, and its pack verifies."""
    data = random_bytes(300_000, seed=508)
    w = packs.PackWriter(4 * 1024 * 1024)
    c0 = packs.new_compressor()
    pos = 0
    for key, n in zip(chunk_keys(data), [c.length for c in _cuts(data)], strict=True):
        scheme, stored = packs.compress(c0, data[pos : pos + n])
        w.add(key, n, scheme, stored)
        pos += n
    p = w.finish()
    good = bytes(p.data)
    flipped = bytearray(good)
    flipped[200] ^= 1
    with httpx.Client(base_url=open_gw.url) as h:
        squat = h.post("/v1/sessions", json={"name": "team-q/squatter"}).json()["session"]
        r = h.post(f"/v1/sessions/{squat}/packs", json={"pack": p.id, "size": len(good) + 7})
        assert r.status_code == 200  # its own upload; nobody else's concern
        spoil = h.post("/v1/sessions", json={"name": "team-q/spoiler"}).json()["session"]
        part = begin_pack(h, spoil, p.id, bytes(flipped))
        assert httpx.put(part["url"], content=bytes(flipped)).status_code == 200
        done = h.post(
            f"/v1/sessions/{spoil}/packs/{p.id}/complete", json={"parts": [{"number": 1}]}
        )
        assert done.json()["state"] == "complete"  # found out when verified
    src = tmp_path / "q.bin"
    src.write_bytes(data)
    with Client(open_gw.url) as c:
        v = c.push(src, "team-q/honest")
        c.pull("team-q/honest", tmp_path / "q-back.bin")
    assert v["created"] and (tmp_path / "q-back.bin").read_bytes() == data


def _cuts(data: bytes) -> list:
    from chunkyard.chunking import new_chunker

    return list(new_chunker().cut_buf(data))


# -- references -----------------------------------------------------------------------
def test_indexed_references_serve_only_those_who_may_read_them(tmp_path_factory, tmp_path):
    """An indexed source is a dedup target only for tokens that may read the artifact
    that registered it: whoever controls the source must not become the durability of
    someone else's pushes."""
    from http_source import Source

    src_server = Source()
    data = tmp_path_factory.mktemp("refs-auth")
    gw, server, thread = start_gateway(
        data,
        CHUNKYARD_AUTH="1",
        CHUNKYARD_REF_ALLOW=f"{src_server.url}/files/",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    )
    try:
        gw.admin = admin_token(data)  # type: ignore[attr-defined]
        weights = random_bytes(700_000, seed=509)
        uri = src_server.put("/files/w.bin", weights)
        registrar = token(gw, "write:lab/refs/")
        reader = token(gw, "write:lab/mine/", "read:lab/refs/")
        stranger = token(gw, "write:lab/other/")  # same dedup domain "lab"
        with Client(gw.url, token=registrar) as c:
            c.ref("lab/refs/w", uri, index=True)
        local = tmp_path / "w.bin"
        local.write_bytes(weights)
        with Client(gw.url, token=reader) as c:
            assert c.push(local, "lab/mine/w")["chunks_new"] == 0  # may read it: deduped
        with Client(gw.url, token=stranger) as c:
            v = c.push(local, "lab/other/w")  # may not: its own bytes are stored
            assert v["chunks_new"] == v["chunks_total"] > 0
        src_server.put("/files/w.bin", random_bytes(700_000, seed=510))  # the source moves
        with Client(gw.url, token=stranger) as c:
            c.pull("lab/other/w", tmp_path / "still.bin")  # unaffected
        assert (tmp_path / "still.bin").read_bytes() == weights
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        src_server.close()


# -- hostile input changes nothing ---------------------------------------------------
def test_hostile_values_are_refused_and_change_nothing(open_gw, tmp_path):
    src = tmp_path / "h.bin"
    src.write_bytes(random_bytes(100_000, seed=511))
    with Client(open_gw.url) as c:
        c.push(src, "team-h/model")
    before = open_gw.snapshot()
    with httpx.Client(base_url=open_gw.url) as h:
        cases = [
            ("PUT", "/v1/artifacts/team-h/model/-/aliases/prod", {"version": 99}, 404),
            ("PUT", "/v1/artifacts/team-h/nothing/-/aliases/prod", {"version": 1}, 404),
            ("PUT", "/v1/artifacts/team-h/model/-/aliases/latest", {"version": 1}, 400),
            (
                "POST",
                "/v1/artifacts/team-h/model/-/versions/1/tags",
                {"tags": {"k": "a\u202eb"}},
                400,
            ),
            (
                "POST",
                "/v1/artifacts/team-h/model/-/versions/1/tags",
                {"tags": {"k": "a\x85b"}},
                400,
            ),
            (
                "POST",
                "/v1/artifacts/team-h/model/-/versions/1/tags",
                {"tags": {"k": "x" * 5000}},
                400,
            ),
            (
                "POST",
                "/v1/artifacts/team-h/model/-/versions/1/tags",
                {"tags": {"bad key": "v"}},
                400,
            ),
            ("POST", "/v1/sessions", {"name": "team-h/\u202emodel"}, 400),
            ("POST", "/v1/sessions", {"name": "team-h/" + "m" * 300}, 400),
            ("POST", "/v1/sessions", {"name": "team-h/mo\x7fdel"}, 400),
        ]
        for method, path, body, status in cases:
            r = h.request(method, path, json=body)
            assert r.status_code == status, (path, body, r.text)
            assert set(r.json()) == {"error"}
        s = h.post("/v1/sessions", json={"name": "team-h/other"}).json()["session"]
        r = h.post(f"/v1/sessions/{s}/packs/{'ab' * 32}/complete", json={"parts": [{"number": 1}]})
        assert r.status_code == 404 and code(r) == "pack_not_found"  # never begun
        r = h.post(
            f"/v1/sessions/{s}/commit",
            json={"layout": "tree", "files": [{"path": "a\u202eb", "size": 0}]},
        )
        assert r.status_code == 400
    after = open_gw.snapshot()
    assert after == before


def test_a_part_url_replayed_after_completion_writes_nothing(open_gw):
    data = random_bytes(60_000, seed=512)
    w = packs.PackWriter(1024 * 1024)
    w.add(chunk_keys(data)[0], len(data), packs.SCHEME_RAW, data)
    p = w.finish()
    with httpx.Client(base_url=open_gw.url) as h:
        s = h.post("/v1/sessions", json={"name": "team-h/replay"}).json()["session"]
        part = begin_pack(h, s, p.id, bytes(p.data))
        assert httpx.put(part["url"], content=bytes(p.data)).status_code == 200
        h.post(f"/v1/sessions/{s}/packs/{p.id}/complete", json={"parts": [{"number": 1}]})
        before = open_gw.snapshot()
        r = httpx.put(part["url"], content=bytes(p.data))  # the same signed URL again
        assert r.status_code == 404
        assert open_gw.snapshot() == before
