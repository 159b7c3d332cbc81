"""Bad input gets a clear JSON error with a stable code and changes nothing."""

import time
from urllib.parse import parse_qs, urlencode, urlparse

import blake3
import httpx
import pytest

from chunkyard import packs
from chunkyard.errors import DigestMismatch
from conftest import begin_pack, chunk_keys, proof, random_bytes


def error_code(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]["code"]


@pytest.fixture
def api(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


@pytest.fixture
def session(api):
    return api.post("/v1/sessions", json={"name": "bad/input"}).json()["session"]


def make_pack(seed: int = 0, n: int = 3) -> packs.Pack:
    w = packs.PackWriter(4 * 1024 * 1024)
    c = packs.new_compressor()
    for i in range(n):
        raw = random_bytes(50_000, seed=seed * 100 + i)
        scheme, stored = packs.compress(c, raw)
        w.add(blake3.blake3(raw).digest(), len(raw), scheme, stored)
    return w.finish()


def begin(api, sid, pack_id, data):
    return begin_pack(api, sid, pack_id, bytes(data))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/../b",
        "a//b",
        "/abs/path",
        "a\x01b",
        "x" * 300,
        "..",
        17,
        None,
    ],
)
def test_malformed_names_are_refused(gateway, api, name):
    before = gateway.snapshot()
    r = api.post("/v1/sessions", json={"name": name})
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    assert gateway.snapshot() == before


def test_unknown_names_and_versions(gateway, api):
    before = gateway.snapshot()
    r = api.get("/v1/artifacts/no/such/thing/-/versions/latest")
    assert r.status_code == 404 and error_code(r) == "artifact_not_found"
    r = api.get("/v1/artifacts/a/../b/-/versions/1")
    assert r.status_code in (400, 404)
    r = api.put("/v1/artifacts/no/such/-/aliases/prod", json={"version": 1})
    assert r.status_code == 404 and error_code(r) == "artifact_not_found"
    r = api.get("/v1/nothing-here")
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = api.post("/v1/sessions/deadbeef/missing", content=b"\0" * 32)
    assert r.status_code == 404 and error_code(r) == "session_not_found"
    assert gateway.snapshot() == before


def test_malformed_bodies(gateway, api, session):
    before = gateway.snapshot()
    r = api.post("/v1/sessions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_code(r) == "bad_request"
    r = api.post(f"/v1/sessions/{session}/missing", content=b"\0" * 33)
    assert r.status_code == 400 and error_code(r) == "bad_request"
    r = api.post(f"/v1/sessions/{session}/packs", json={"pack": "XYZ", "size": 100})
    assert r.status_code == 400 and error_code(r) == "invalid_digest"
    r = api.post(f"/v1/sessions/{session}/packs", json={"pack": "a" * 64, "size": 10**12})
    assert r.status_code == 400 and error_code(r) == "bad_request"
    commit = f"/v1/sessions/{session}/commit"
    r = api.post(
        commit,
        json={
            "layout": "file",
            "files": [{"path": "f", "size": 1, "b3sum": "nothex", "terms": []}],
        },
    )
    assert r.status_code == 400 and error_code(r) == "invalid_digest"
    r = api.post(
        commit,
        json={
            "layout": "tree",
            "files": [{"path": "../etc/passwd", "size": 0, "terms": []}],
        },
    )
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    r = api.post(commit, json={"layout": "weird", "files": []})
    assert r.status_code == 400 and error_code(r) == "invalid_manifest"
    r = api.post(
        commit,
        json={
            "layout": "file",
            "files": [{"path": "f", "size": 5, "terms": [["a" * 64, 0, 1, "0" * 64]]}],
            "tags": {"bad key!": "x"},
        },
    )
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    assert gateway.snapshot() == before


def test_oversized_bodies(gateway, api, session):
    before = gateway.snapshot()
    r = api.post(f"/v1/sessions/{session}/missing", content=b"\0" * (32 * 65536 + 32))
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    r = api.post(
        "/v1/sessions",
        content=b"x" * (65 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    p = make_pack(seed=1)
    part = begin(api, session, p.id, p.data)
    mid = gateway.snapshot()
    r = httpx.put(part["url"], content=bytes(p.data) + b"extra")
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert gateway.snapshot() == mid
    assert before["store"] == mid["store"]


def test_truncated_part_is_refused(gateway, api, session):
    p = make_pack(seed=2)
    part = begin(api, session, p.id, p.data)
    before = gateway.snapshot()
    r = httpx.put(part["url"], content=bytes(p.data)[:-100])
    assert r.status_code == 400 and error_code(r) == "bad_request"
    r = api.post(f"/v1/sessions/{session}/packs/{p.id}/complete", json={"parts": [{"number": 1}]})
    assert r.status_code == 400 and "not uploaded" in r.json()["error"]["message"]
    assert gateway.snapshot() == before


@pytest.mark.parametrize("how", ["flipped_bit", "wrong_id"])
def test_corrupted_pack_is_refused_and_removed(gateway, api, session, how):
    p = make_pack(seed=3 if how == "flipped_bit" else 4)
    body = bytearray(p.data)
    pack_id = p.id
    if how == "flipped_bit":
        body[100] ^= 0x40
    else:
        pack_id = blake3.blake3(b"something else").hexdigest()
    before = gateway.snapshot()
    part = begin(api, session, pack_id, body)
    assert httpx.put(part["url"], content=bytes(body)).status_code == 200
    r = api.post(
        f"/v1/sessions/{session}/packs/{pack_id}/complete", json={"parts": [{"number": 1}]}
    )
    assert r.status_code == 422 and error_code(r) == "pack_corrupt"
    after = gateway.snapshot()
    assert after == before
    # and it cannot be named by a commit
    r = api.post(
        f"/v1/sessions/{session}/commit",
        json={
            "layout": "file",
            "files": [{"path": "f", "size": 50_000, "terms": [[pack_id, 0, 1, "0" * 64]]}],
        },
    )
    assert r.status_code == 422 and error_code(r) == "untrusted_chunks"
    assert gateway.snapshot() == before


def test_forged_and_expired_urls(gateway, api, session):
    p = make_pack(seed=5)
    part = begin(api, session, p.id, p.data)
    before = gateway.snapshot()
    url = urlparse(part["url"])
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    forged = {**q, "sig": "0" * 64}
    r = httpx.put(url._replace(query=urlencode(forged)).geturl(), content=bytes(p.data))
    assert r.status_code == 403 and error_code(r) == "bad_signature"
    other = {**q, "size": str(p.size + 1)}
    r = httpx.put(url._replace(query=urlencode(other)).geturl(), content=bytes(p.data))
    assert r.status_code == 403 and error_code(r) == "bad_signature"
    # re-sign with an expiry in the past using the gateway's own secret
    from chunkyard import signing

    stale = signing.sign(
        gateway.settings.secret,
        "PUT",
        url.path.removeprefix("/v1/blobs/"),
        {k: v for k, v in q.items() if k not in ("exp", "sig")},
        -10,
    )
    r = httpx.put(url._replace(query=urlencode(stale)).geturl(), content=bytes(p.data))
    assert r.status_code == 403 and error_code(r) == "url_expired"
    r = httpx.get(f"{gateway.url}/v1/blobs/packs/aa/{'a' * 64}?exp={int(time.time()) + 60}&sig=00")
    assert r.status_code == 403 and error_code(r) == "bad_signature"
    # a signature that is not ASCII (hmac.compare_digest refuses to compare it) is wrong too
    r = httpx.put(url._replace(query=urlencode({**q, "sig": "é" * 64})).geturl(), content=b"x")
    assert r.status_code == 403 and error_code(r) == "bad_signature"
    r = httpx.get(f"{gateway.url}/v1/blobs/packs/aa/{'a' * 64}?exp=1&sig=%C3%A9")
    assert r.status_code == 403 and error_code(r) == "bad_signature"
    assert gateway.snapshot() == before


def test_no_session_no_part_plan(gateway, api):
    """The first begin of a pack (no checksums yet) needs an open session as well."""
    r = api.post("/v1/sessions/0123abcd/packs", json={"pack": "a" * 64, "size": 100})
    assert r.status_code == 404 and error_code(r) == "session_not_found"


def test_commit_must_match_verified_content(gateway, api, session, client, tmp_path):
    """A commit names verified chunks it proves it holds, and sizes come from the catalog.
    Whatever is wrong with a term, the answer is the same: it says nothing about packs
    the caller could not name without holding their chunks."""
    data = random_bytes(200_000, seed=6)
    src = tmp_path / "ok.bin"
    src.write_bytes(data)
    r0 = client.push(src, "bad/commit")
    recon = api.get("/v1/artifacts/bad/commit/-/versions/1/files/0/reconstruction").json()
    pack_id = recon["terms"][0]["pack"]
    keys = chunk_keys(data)
    s = api.post("/v1/sessions", json={"name": "bad/commit"}).json()
    before = gateway.snapshot()
    commit = f"/v1/sessions/{s['session']}/commit"

    def files(size: int, terms: list) -> dict:
        return {"layout": "file", "files": [{"path": "x", "size": size, "terms": terms}]}

    n, good = len(keys), proof(s, keys)
    for terms in (
        [[pack_id, 0, n + 5, good]],  # beyond the pack's end
        [[pack_id, 0, n, "0" * 64]],  # no proof: naming a pack is not holding it
        [[pack_id, 0, n, proof(s, keys[1:] + keys[:1])]],  # a proof of other chunks
        [["f" * 64, 0, 1, good]],  # no such pack
    ):
        r = api.post(commit, json=files(200_000, terms))
        assert r.status_code == 422 and error_code(r) == "untrusted_chunks", r.text
        assert str(n) not in r.json()["error"]["message"]
    r = api.post(commit, json=files(123, [[pack_id, 0, n, good]]))
    assert r.status_code == 400 and error_code(r) == "invalid_manifest"
    assert gateway.snapshot() == before
    r = api.post(commit, json=files(200_000, [[pack_id, 0, n, good]]))  # held: it works
    assert r.status_code == 200 and r.json()["digest"] == r0["digest"]  # (and is unchanged)


def test_pull_detects_a_lying_digest(gateway, api, client, tmp_path):
    """A client may declare a wrong BLAKE3 for its own version; the pull catches it and
    writes nothing (the version's digest, which the gateway computed, stays true)."""
    data = random_bytes(150_000, seed=7)
    src = tmp_path / "lie.bin"
    src.write_bytes(data)
    honest = client.push(src, "bad/liar-source")
    recon = api.get("/v1/artifacts/bad/liar-source/-/versions/1/files/0/reconstruction").json()
    s = api.post("/v1/sessions", json={"name": "bad/liar"}).json()
    terms = [[recon["terms"][0]["pack"], 0, len(chunk_keys(data)), proof(s, chunk_keys(data))]]
    r = api.post(
        f"/v1/sessions/{s['session']}/commit",
        json={
            "layout": "file",
            "files": [{"path": "lie.bin", "size": 150_000, "b3sum": "2" * 64, "terms": terms}],
        },
    )
    assert r.status_code == 201 and r.json()["digest"] == honest["digest"]
    dest = tmp_path / "pulled.bin"
    with pytest.raises(DigestMismatch):
        client.pull("bad/liar", dest)
    assert not dest.exists() and list(tmp_path.glob(".pulled.bin*")) == []


def test_completion_takes_no_unknown_fields(gateway, api, session):
    """A completion names its parts and nothing else: an index sent along (earlier
    protocols took one) is refused, and changes nothing."""
    p = make_pack(seed=8)
    data = bytes(p.data)
    part = begin(api, session, p.id, data)
    assert httpx.put(part["url"], content=data).status_code == 200
    mid = gateway.snapshot()
    r = api.post(
        f"/v1/sessions/{session}/packs/{p.id}/complete",
        json={"parts": [{"number": 1}], "index": "AAAA"},
    )
    assert r.status_code == 400 and error_code(r) == "bad_request"
    assert gateway.snapshot() == mid
    r = api.post(f"/v1/sessions/{session}/packs/{p.id}/complete", json={"parts": [{"number": 1}]})
    assert r.status_code == 200 and r.json()["state"] == "verified"


def test_a_pack_without_records_is_refused(gateway, api, session):
    """48 bytes of header and footer that describe zero records: well-formed otherwise,
    but a pack holds at least one record (FORMAT.md)."""
    import struct

    index = b""
    footer = struct.pack(
        "<QIHH16s8s",
        8,
        0,
        packs.FORMAT_VERSION,
        0,
        blake3.blake3(index).digest()[:16],
        packs.FOOTER_MAGIC,
    )
    data = struct.pack("<4sHH", packs.MAGIC, packs.FORMAT_VERSION, 0) + footer
    pack_id = blake3.blake3(data).hexdigest()
    before = gateway.snapshot()
    part = begin(api, session, pack_id, data)
    assert httpx.put(part["url"], content=data).status_code == 200
    body = {"parts": [{"number": 1}]}
    r = api.post(f"/v1/sessions/{session}/packs/{pack_id}/complete", json=body)
    assert r.status_code == 422 and error_code(r) == "pack_corrupt", r.text
    assert "at least one record" in r.json()["error"]["message"]
    assert gateway.snapshot() == before
