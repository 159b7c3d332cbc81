"""Reference versions end to end, with http(s)-style sources on 127.0.0.1 (allowed by
CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS=1 in this test configuration): register without
reading, pull through pinned requests, hash, index and dedup, verify, drift, the
allow-list and the address guard."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from chunkyard import Client
from chunkyard.errors import (
    AddressForbidden,
    ArtifactNotFound,
    InvalidReference,
    ReferenceDrifted,
    ReferenceNotAllowed,
    SourceNotFound,
)
from conftest import RunningGateway, cli, file_id, random_bytes, start_gateway
from http_source import Source

MiB = 1024 * 1024
pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture(scope="module")
def source() -> Iterator[Source]:
    src = Source()
    yield src
    src.close()


def _gateway(tmp_path_factory, name: str, **env: str) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(tmp_path_factory.mktemp(name), **env)
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def gateway(source, tmp_path_factory) -> Iterator[RunningGateway]:
    """Allows exactly the test source, private networks included."""
    yield from _gateway(
        tmp_path_factory,
        "refs",
        CHUNKYARD_REF_ALLOW=f"{source.url}/files/,{source.url}/redirect/",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    )


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    """Allows any http(s) URL, but not private networks."""
    yield from _gateway(tmp_path_factory, "strict", CHUNKYARD_REF_ALLOW="http://,https://")


@pytest.fixture
def client(gateway) -> Iterator[Client]:
    with gateway.client() as c:
        yield c


def test_register_reads_nothing_and_pull_comes_from_the_source(gateway, client, source, tmp_path):
    data = random_bytes(3 * MiB + 5, seed=1)
    uri = source.put("/files/model.safetensors", data)
    sent = source.body_bytes
    r = client.ref("refs/plain", uri, tags={"origin": "hub"})
    assert r["created"] and r["kind"] == "reference" and r["digest_of"] == "pins"
    assert r["bytes_read"] == 0 and source.body_bytes == sent  # HEAD only
    assert source.requests[("GET", "/files/model.safetensors")] == 0
    v = client.show("refs/plain")
    assert v["kind"] == "reference" and v["source"] == uri and v["tags"] == {"origin": "hub"}
    (f,) = v["file_list"]
    assert f["path"] == "model.safetensors" and f["uri"] == uri and f["size"] == len(data)
    assert f["pin"]["etag"] == source.etag("/files/model.safetensors") and not f["indexed"]
    out = tmp_path / "out.bin"
    assert client.pull("refs/plain", out)["kind"] == "reference"
    assert out.read_bytes() == data
    assert not list(tmp_path.glob(".*partial"))
    # curl-style, through the gateway, with a range
    url = f"{gateway.url}/v1/artifacts/refs/plain/-/versions/latest/content"
    part = httpx.get(url, headers={"range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    # the same objects at the same pins again: the same version
    again = client.ref("refs/plain", uri)
    assert not again["created"] and again["version"] == 1


def test_drift_fails_pull_and_verify(client, source, tmp_path):
    data = random_bytes(400_000, seed=2)
    uri = source.put("/files/drift.bin", data)
    client.ref("refs/drift", uri)
    assert client.verify("refs/drift")["ok"]
    source.put("/files/drift.bin", random_bytes(400_000, seed=3))  # same size, new bytes
    report = client.verify("refs/drift")
    assert not report["ok"] and report["drifted"] == 1
    assert report["objects"][0]["state"] == "changed" and report["objects"][0]["uri"] == uri
    out = tmp_path / "drift.bin"
    with pytest.raises(ReferenceDrifted) as caught:
        client.pull("refs/drift", out)
    assert uri in caught.value.message and caught.value.detail["path"] == "drift.bin"
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no leftovers
    del source.files["/files/drift.bin"]
    assert client.verify("refs/drift")["objects"][0]["state"] == "missing"
    with pytest.raises(ReferenceDrifted):
        client.pull("refs/drift", out)


def test_hash_records_the_digest_and_pull_checks_it(client, source, tmp_path):
    data = random_bytes(2 * MiB, seed=4)
    uri = source.put("/files/liar.bin", data)
    r = client.ref("refs/hashed", uri, hash=True)
    assert r["digest_of"] == "content" and r["digest"] == file_id(data)
    assert r["bytes_read"] == len(data)
    assert client.show("refs/hashed")["file_list"][0]["digest"] == r["digest"]
    # a server that keeps its ETag and ignores conditions while the bytes change:
    # only the recorded digest can tell, and it does
    source.fixed_etag["/files/liar.bin"] = source.etag("/files/liar.bin")
    source.ignore_conditions.add("/files/liar.bin")
    source.put("/files/liar.bin", random_bytes(2 * MiB, seed=5))
    source.mtimes["/files/liar.bin"] -= 10  # and its Last-Modified
    out = tmp_path / "liar.bin"
    with pytest.raises(ReferenceDrifted) as caught:
        client.pull("refs/hashed", out)
    assert caught.value.detail["state"] == "content" and not out.exists()


def test_index_lets_pushes_dedup_against_the_source(gateway, client, source, tmp_path):
    data = random_bytes(4 * MiB + 77, seed=6)
    uri = source.put("/files/base.bin", data)
    r = client.ref("refs/indexed", uri, hash=True, index=True)
    assert r["digest"] == file_id(data)
    assert client.show("refs/indexed")["file_list"][0]["indexed"]
    local = tmp_path / "same.bin"
    local.write_bytes(data)
    pushed = client.push(local, "refs/finetune")
    assert pushed["chunks_new"] == 0 and pushed["bytes_uploaded"] == 0
    back = tmp_path / "back.bin"
    client.pull("refs/finetune", back)  # chunks read from the source, ids verified
    assert back.read_bytes() == data
    # a fine-tune: a small edit sends about that much
    edited = bytearray(data)
    edited[MiB : MiB + 1000] = random_bytes(1000, seed=7)
    local.write_bytes(bytes(edited))
    second = client.push(local, "refs/finetune")
    assert 0 < second["bytes_uploaded"] < MiB
    client.pull("refs/finetune@2", back)
    assert back.read_bytes() == bytes(edited)
    content = f"{gateway.url}/v1/artifacts/refs/finetune/-/versions/1/content"
    assert httpx.get(content).content == data  # through the gateway, from the source
    # the source drifts: the stored versions that borrow from it say so
    source.put("/files/base.bin", random_bytes(len(data), seed=8))
    report = client.verify("refs/finetune@1")
    assert report["kind"] == "stored" and not report["ok"]
    assert [o["state"] for o in report["objects"] if o.get("uri") == uri] == ["changed"]
    with pytest.raises(ReferenceDrifted):
        client.pull("refs/finetune@1", tmp_path / "never.bin")
    assert not (tmp_path / "never.bin").exists()
    # and the drifted object is no longer a dedup target
    local.write_bytes(data)
    third = client.push(local, "refs/finetune")
    assert third["chunks_new"] == third["chunks_total"] > 0


def test_hashing_reports_progress_and_stops_when_the_client_leaves(gateway, client, source):
    data = random_bytes(2 * MiB, seed=15)
    uri = source.put("/files/slow.bin", data)
    source.slow["/files/slow.bin"] = 0.05  # 32 pieces: ~1.6 s
    body = {"name": "refs/slow", "uri": uri, "hash": True}
    headers = {"accept": "application/x-ndjson"}
    url = f"{gateway.url}/v1/references"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    assert events[-1]["event"] == "done"
    assert events[-1]["result"]["digest"] == file_id(data)
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and progress[-1]["bytes"] == len(data) and progress[-1]["bytes_done"] > 0
    # a client that leaves: the gateway stops reading the source, and no version appears
    uri = source.put("/files/slow2.bin", random_bytes(4 * MiB, seed=16))
    source.slow["/files/slow2.bin"] = 0.05  # ~3.2 s in all
    before = source.body_bytes
    body = {"name": "refs/slow2", "uri": uri, "hash": True}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert json.loads(next(r.iter_lines()))["event"] == "progress"
    time.sleep(3.5)
    assert source.body_bytes - before < 4 * MiB
    with pytest.raises(ArtifactNotFound):
        client.show("refs/slow2")


def test_references_mix_with_stored_versions(client, source, tmp_path):
    local = tmp_path / "w.bin"
    local.write_bytes(random_bytes(100_000, seed=9))
    client.push(local, "refs/mixed")
    data = random_bytes(200_000, seed=10)
    r = client.ref("refs/mixed", source.put("/files/mixed.bin", data), tags={"k": "v"})
    assert r["version"] == 2
    assert [v["kind"] for v in client.versions("refs/mixed")] == ["stored", "reference"]
    client.set_alias("refs/mixed", "champion", 2)
    client.tag("refs/mixed:champion", {"eval": "0.9"})
    assert client.show("refs/mixed:champion")["tags"] == {"k": "v", "eval": "0.9"}
    assert {"name": "refs/mixed", "latest": 2, "versions": 2} in client.ls("refs/")
    client.pull("refs/mixed:champion", tmp_path / "champ.bin")
    assert (tmp_path / "champ.bin").read_bytes() == data
    assert client.stats()["referenced_bytes"] >= 200_000


def test_sources_that_offer_less(client, source, tmp_path):
    """No HEAD (as a presigned GET URL): size from a one-byte ranged GET. No ETag: the
    pin is Last-Modified, sent as If-Unmodified-Since."""
    data = random_bytes(150_000, seed=11)
    uri = source.put("/files/nohead.bin", data)
    source.no_head.add("/files/nohead.bin")
    source.no_etag.add("/files/nohead.bin")
    r = client.ref("refs/nohead", uri)
    assert r["size"] == len(data)
    pin = client.show("refs/nohead")["file_list"][0]["pin"]
    assert pin["etag"] == "" and pin["last_modified"]
    client.pull("refs/nohead", tmp_path / "a.bin")
    assert (tmp_path / "a.bin").read_bytes() == data
    source.put("/files/nohead.bin", data)  # same bytes, touched
    assert not client.verify("refs/nohead")["ok"]


def test_redirects_are_followed_and_guarded(client, source, tmp_path, tmp_path_factory):
    data = random_bytes(50_000, seed=12)
    source.put("/files/target.bin", data)
    source.redirects["/redirect/ok.bin"] = f"{source.url}/files/target.bin"
    r = client.ref("refs/redirected", f"{source.url}/redirect/ok.bin")
    assert r["size"] == len(data)
    client.pull("refs/redirected", tmp_path / "r.bin")
    assert (tmp_path / "r.bin").read_bytes() == data
    source.redirects["/redirect/file.bin"] = "file:///etc/passwd"
    with pytest.raises(InvalidReference):
        client.ref("refs/evil", f"{source.url}/redirect/file.bin")
    # the metadata endpoint is outside this allow-list, so that refuses it first; where
    # the allow-list admits any http URL (and private networks), the address guard
    # refuses it before connecting
    source.redirects["/redirect/evil.bin"] = "http://169.254.169.254/latest/meta-data/iam"
    with pytest.raises(ReferenceNotAllowed):
        client.ref("refs/evil", f"{source.url}/redirect/evil.bin")
    source.redirects["/redirect/evil6.bin"] = "http://[fd00:ec2::254]/latest/meta-data/iam"
    source.redirects["/redirect/evil-octal.bin"] = "http://0251.0376.0251.0376/latest"
    source.redirects["/redirect/evil-compat.bin"] = "http://[::a9fe:a9fe]/latest"
    for gw in _gateway(
        tmp_path_factory,
        "open",
        CHUNKYARD_REF_ALLOW="http://",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    ):
        with gw.client() as c:
            for path in ("evil", "evil6", "evil-octal", "evil-compat"):
                with pytest.raises(AddressForbidden):
                    c.ref("refs/evil", f"{source.url}/redirect/{path}.bin")


def _post_ref(gw: RunningGateway, uri: str, **body: object) -> httpx.Response:
    """A registration as a raw request, the way the review sent them."""
    return httpx.post(
        f"{gw.url}/v1/references", json={"name": "refs/x", "uri": uri, **body}, timeout=60
    )


def _refused(gw: RunningGateway, uri: str, status: int, code: str, **body: object) -> dict:
    """Registering ``uri`` fails with ``status``/``code`` and changes nothing."""
    before = gw.snapshot()
    r = _post_ref(gw, uri, **body)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert gw.snapshot() == before
    return r.json()["error"]


@pytest.fixture
def elsewhere() -> Iterator[Source]:
    """A second server on 127.0.0.1 (another port), outside every allow-list here."""
    src = Source()
    yield src
    src.close()


def test_every_redirect_hop_must_be_under_the_allow_list(gateway, source, elsewhere):
    """The allow-list admits {source}/files/ and {source}/redirect/; a redirect from an
    allowed URL to another port, another path or another host is refused, naming the
    hop, before anything connects there, and nothing is registered."""
    data = b"secret" * 1000
    source.put("/files/public.bin", data)
    source.put("/private/secret.bin", data)
    elsewhere.put("/files/public.bin", data)
    start = f"{source.url}/redirect"
    port = source.port
    hops = {
        "port.bin": (f"{elsewhere.url}/files/public.bin", f"{elsewhere.url}/files/public.bin"),
        "path.bin": ("/private/secret.bin", f"{source.url}/private/secret.bin"),
        "relative.bin": ("../private/secret.bin", f"{source.url}/private/secret.bin"),
        "host.bin": (
            f"http://localhost:{port}/files/public.bin",
            f"http://localhost:{port}/files/public.bin",
        ),
        # another notation of the same host is read as that host, then checked
        "octal.bin": (
            f"http://0177.0.0.1:{port}/private/secret.bin",
            f"{source.url}/private/secret.bin",
        ),
        # a second hop: the first stays inside, the second leaves
        "twice.bin": (f"{start}/twice-2.bin", f"{source.url}/private/secret.bin"),
    }
    source.redirects["/redirect/twice-2.bin"] = "/private/secret.bin"
    for name, (location, _) in hops.items():
        source.redirects[f"/redirect/{name}"] = location
    for name, (_, hop) in hops.items():
        for body in ({}, {"hash": True}, {"hash": True, "index": True}):
            err = _refused(gateway, f"{start}/{name}", 403, "reference_not_allowed", **body)
            assert err["detail"]["uri"] == hop and hop in err["message"], err
            assert err["detail"]["redirected_from"] == f"{start}/{name}"
    assert not elsewhere.requests  # never contacted
    assert not [k for k in source.requests if k[1].startswith("/private/")]
    # through the client library too
    with gateway.client() as c, pytest.raises(ReferenceNotAllowed) as caught:
        c.ref("refs/x", f"{start}/port.bin")
    assert caught.value.detail["uri"] == f"{elsewhere.url}/files/public.bin"
    # hops that cannot be read as one URL, or that hide a '..', are invalid
    source.redirects["/redirect/dots.bin"] = "/files/%2e%2e/private/secret.bin"
    source.redirects["/redirect/servlet.bin"] = "/files/..;/private/secret.bin"
    source.redirects["/redirect/badhost.bin"] = "http://0999.0.0.1/files/x.bin"
    source.redirects["/redirect/port0.bin"] = "http://127.0.0.1:0/files/x.bin"
    for name in ("dots", "servlet", "badhost", "port0"):
        err = _refused(gateway, f"{start}/{name}.bin", 400, "invalid_reference")
        assert err["detail"]["uri"] == f"{start}/{name}.bin"
    # a loop ends
    source.redirects["/redirect/loop.bin"] = "/redirect/loop.bin"
    _refused(gateway, f"{start}/loop.bin", 400, "invalid_reference")
    # and a redirect that stays inside is still followed
    source.redirects["/redirect/inside.bin"] = f"http://0x7f.1:{port}/files/public.bin"
    r = _post_ref(gateway, f"{start}/inside.bin")
    assert r.status_code == 201 and r.json()["size"] == len(data), r.text


def test_a_changed_redirect_is_not_followed_outside_the_allow_list(
    gateway, client, source, tmp_path
):
    """A redirected reference pins the URI that was registered; every later HEAD or GET
    follows its redirects again, and a hop that now leaves the allow-list fails every
    read (pull, content, pinned requests, chunks borrowed from it, hashing) with
    reference_not_allowed instead of being followed."""
    data = random_bytes(3 * MiB + 11, seed=30)
    source.put("/files/moving.bin", data)
    source.put("/private/moving.bin", data)  # the same bytes and ETag: a pin would hold
    uri = f"{source.url}/redirect/moving.bin"
    source.redirects["/redirect/moving.bin"] = "/files/moving.bin"
    r = client.ref("refs/moving", uri, hash=True, index=True)
    assert r["created"]
    (f,) = client.show("refs/moving")["file_list"]
    assert f["uri"] == uri  # the registered URI, not where the redirect ended
    local = tmp_path / "copy.bin"
    local.write_bytes(data)
    assert client.push(local, "refs/moving-copy")["chunks_new"] == 0  # borrows its chunks
    content = f"{gateway.url}/v1/artifacts/refs/moving/-/versions/latest/content"
    copy = f"{gateway.url}/v1/artifacts/refs/moving-copy/-/versions/latest/content"
    sources = f"{gateway.url}/v1/artifacts/refs/moving/-/versions/latest/sources"
    assert httpx.get(content, headers={"range": "bytes=0-9"}).content == data[:10]
    assert httpx.get(copy, headers={"range": "bytes=0-9"}).content == data[:10]
    # the redirect now points outside the allow-list
    source.redirects["/redirect/moving.bin"] = "/private/moving.bin"
    before = gateway.snapshot()
    for ref in ("refs/moving", "refs/moving-copy"):
        with pytest.raises(ReferenceNotAllowed) as caught:
            client.pull(ref, tmp_path / "out.bin")
        assert caught.value.detail["uri"] == f"{source.url}/private/moving.bin"
        assert not (tmp_path / "out.bin").exists()
        with pytest.raises(ReferenceNotAllowed):
            client.verify(ref)
    resp = httpx.get(sources)
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "reference_not_allowed"
    for url in (content, copy):  # the answer has started before the source is asked: cut
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(url, headers={"range": "bytes=0-9"})
    for body in ({"hash": True}, {"hash": True, "index": True}, {}):
        err = _refused(gateway, uri, 403, "reference_not_allowed", **body)
        assert err["detail"]["uri"] == f"{source.url}/private/moving.bin"
    assert not [k for k in source.requests if k[1] == "/private/moving.bin"]
    assert gateway.snapshot() == before
    # pointed back inside, it reads again
    source.redirects["/redirect/moving.bin"] = f"http://0177.0.0.1:{source.port}/files/moving.bin"
    client.pull("refs/moving-copy", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert client.verify("refs/moving")["ok"]


@pytest.mark.parametrize(
    ("uri", "address"),
    [
        ("http://0177.0.0.1:{port}/files/exists.bin", "127.0.0.1"),
        ("http://0x7f.1:{port}/files/exists.bin", "127.0.0.1"),
        ("http://2130706433:{port}/files/exists.bin", "127.0.0.1"),
        ("http://127.1:{port}/files/exists.bin", "127.0.0.1"),
        ("http://0x7F.0.0.0x1:{port}/files/exists.bin", "127.0.0.1"),
        ("http://0/files/exists.bin", "0.0.0.0"),
        ("http://[::ffff:127.0.0.1]:{port}/files/exists.bin", "::ffff:127.0.0.1"),
        ("http://[0:0:0:0:0:FFFF:7F00:1]:{port}/files/exists.bin", "::ffff:127.0.0.1"),
        ("http://[::7f00:1]:{port}/files/exists.bin", "::7f00:1"),
        ("http://[::ffff:0:7f00:1]:{port}/files/exists.bin", "::ffff:0:7f00:1"),
        ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/files/exists.bin", "127.0.0.1"),
        ("http://127\u30020\u30020\u30021:{port}/files/exists.bin", "127.0.0.1"),
        ("http://0251.0376.0251.0376/latest/meta-data/iam", "169.254.169.254"),
        ("http://[fec0::1]/x.bin", "fec0::1"),
    ],
)
def test_hosts_in_other_notations_are_guarded(strict_gateway, source, uri, address):
    """Any notation of an internal address is that address: refused (403), never a 500."""
    source.put("/files/exists.bin", b"x" * 1000)
    err = _refused(strict_gateway, uri.format(port=source.port), 403, "address_forbidden")
    assert err["detail"]["address"] == address


@pytest.mark.parametrize(
    "uri",
    [
        "http://0999.0.0.1/f.bin",  # octal without octal digits
        "http://09.1/f.bin",
        "http://1.2.3.4.5/f.bin",
        "http://256.256.256.256/f.bin",
        "http://1.16777216/f.bin",
        "http://4294967296/f.bin",
        "http://foo.0x7f/f.bin",
        "http://" + "9" * 5000 + "/f.bin",
        "http://" + "a" * 64 + ".example/f.bin",  # label too long
        "http://" + "a." * 127 + "example/f.bin",  # host too long
        "http://a..b/f.bin",
        "http://.example.com/f.bin",
        "http://example.com./f.bin",
        "http://-x.example/f.bin",
        "http://ex%41mple.com/f.bin",
        "http://\u2603.net/f.bin",  # not valid IDNA 2008
        "http://\u2024.com/f.bin",  # one dot leader
        "http://\u00fc" + "\u00fc" * 70 + ".example/f.bin",
        "http://a\uff03b/f.bin",  # '#' under NFKC
        "http://example.com:0/f.bin",
        "http://example.com:99999/f.bin",
        "http://example.com:+80/f.bin",
        "http://example.com:\u0668\u0660/f.bin",  # Arabic-Indic digits
        "http://[fe80::1%25eth0]/f.bin",
        "http://[v1.x]/f.bin",
        "http://[::1/f.bin",
        "http://[::1]x/f.bin",
        "http://::1/f.bin",
        "https://h.example/files/..;/admin/f.bin",
        "https://h.example/files/a\\..\\b.bin",
    ],
)
def test_unreadable_hosts_and_ports_are_invalid(strict_gateway, uri):
    """What cannot be read as one host and port is a 400, before any connection."""
    _refused(strict_gateway, uri, 400, "invalid_reference")


def test_the_octal_host_of_the_review(tmp_path, source):
    """The review's request: the URI's prefix is allowed, private networks are not. The
    allow-list reads its hosts as URIs are read, so a prefix in one notation admits the
    same host in another, and an IDNA host is compared in its ASCII form."""
    gw, server, thread = start_gateway(
        tmp_path, CHUNKYARD_REF_ALLOW=f"http://0177.0.0.1/,http://127.0.0.1:{source.port}/"
    )
    try:
        for uri in (
            "http://0177.0.0.1/f",
            "http://127.0.0.1/f",
            "http://0x7f.1/f",
            f"http://2130706433:{source.port}/files/x.bin",
        ):
            err = _refused(gw, uri, 403, "address_forbidden")
            assert err["detail"]["address"] == "127.0.0.1"
        err = _refused(gw, "http://B\u00fccher.example/f", 403, "reference_not_allowed")
        assert err["detail"]["uri"] == "http://xn--bcher-kva.example/f"
        _refused(gw, "http://0178.0.0.1/f", 400, "invalid_reference")
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_bad_references_change_nothing(gateway, client, source):
    source.put("/files/exists.bin", b"x" * 1000)
    before = gateway.snapshot()
    cases = [
        (ReferenceNotAllowed, "http://127.0.0.1:1/other/x.bin"),
        (ReferenceNotAllowed, f"{source.url}/elsewhere/x.bin"),
        (ReferenceNotAllowed, "s3://chunkyard-test/x"),
        (InvalidReference, f"{source.url}/files/../files/exists.bin"),
        (InvalidReference, f"{source.url}/files/"),
        (InvalidReference, "ftp://host/x"),
        (SourceNotFound, f"{source.url}/files/missing.bin"),
    ]
    for cls, uri in cases:
        with pytest.raises(cls):
            client.ref("refs/bad", uri)
    resp = httpx.post(f"{gateway.url}/v1/references", json={"name": "refs/bad", "uri": 5})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_reference"
    resp = httpx.post(
        f"{gateway.url}/v1/references",
        json={"name": "refs/bad", "uri": "http://127.0.0.1:1/x.bin"},
    )
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "reference_not_allowed"
    assert gateway.snapshot() == before


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:{port}/files/exists.bin",
        "http://127.0.0.1:{port}/files/exists.bin",
        "http://[::1]:{port}/files/exists.bin",
        "http://10.0.0.1/model.bin",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[fd00:ec2::254]/latest/meta-data/iam",
        "http://[::ffff:127.0.0.1]:{port}/files/exists.bin",
        "https://0.0.0.0/x.bin",
    ],
)
def test_private_addresses_are_refused(strict_gateway, source, uri):
    source.put("/files/exists.bin", b"x" * 1000)
    before = strict_gateway.snapshot()
    with strict_gateway.client() as c, pytest.raises(AddressForbidden) as caught:
        c.ref("refs/ssrf", uri.format(port=source.port))
    assert caught.value.code == "address_forbidden"
    assert strict_gateway.snapshot() == before


def test_nothing_allowed_by_default(tmp_path_factory, source):
    for gw in _gateway(tmp_path_factory, "closed"):
        with gw.client() as c, pytest.raises(ReferenceNotAllowed):
            c.ref("refs/closed", source.put("/files/closed.bin", b"x"))


def test_cli_ref_verify_show(gateway, source, tmp_path):
    env = {**os.environ, "CHUNKYARD_URL": gateway.url}

    def cy(*args: str) -> subprocess.CompletedProcess:
        return cli(env, *args)

    data = random_bytes(300_000, seed=13)
    uri = source.put("/files/cli.bin", data)
    p = cy("ref", "refs/cli", uri, "--hash", "--tag", "a=b", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["kind"] == "reference" and r["digest"] == file_id(data)
    p = cy("show", "refs/cli")
    assert p.returncode == 0 and "kind: reference" in p.stdout and uri in p.stdout
    p = cy("verify", "refs/cli", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"]
    source.put("/files/cli.bin", random_bytes(300_000, seed=14))
    p = cy("verify", "refs/cli@1", "--json")
    assert p.returncode == 5 and json.loads(p.stdout)["drifted"] == 1
    p = cy("verify", "refs/cli")
    assert p.returncode == 5 and "changed" in p.stdout and "cli.bin" in p.stdout
    p = cy("pull", "refs/cli", str(tmp_path / "x.bin"), "--json")
    assert p.returncode == 5 and json.loads(p.stdout)["error"]["code"] == "reference_drifted"
    p = cy("ref", "refs/cli", "http://127.0.0.1:1/nope.bin")
    assert p.returncode == 1 and "reference_not_allowed" in p.stderr


@pytest.fixture(scope="module")
def pg_gateway(source, tmp_path_factory) -> Iterator[RunningGateway]:
    from stores.conftest import require_env

    require_env("postgres", "CHUNKYARD_TEST_POSTGRES_URL")
    base = os.environ["CHUNKYARD_TEST_POSTGRES_URL"]
    name = "t_" + os.urandom(5).hex()
    subprocess.run(["psql", base, "-qc", f"create database {name}"], check=True)
    yield from _gateway(
        tmp_path_factory,
        "refs-pg",
        CHUNKYARD_DB=base.rsplit("/", 1)[0] + "/" + name,
        CHUNKYARD_REF_ALLOW=f"{source.url}/files/",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    )
    subprocess.run(["psql", base, "-qc", f"drop database {name} with (force)"], check=False)


def test_references_on_postgres(pg_gateway, source, tmp_path):
    """The migration and every reference query run unchanged on PostgreSQL."""
    data = random_bytes(MiB + 3, seed=40)
    uri = source.put("/files/pg.bin", data)
    with pg_gateway.client() as c:
        r = c.ref("pg/ref", uri, hash=True, index=True)
        assert r["digest"] == file_id(data)
        assert not c.ref("pg/ref", uri, hash=True)["created"]
        local = tmp_path / "pg.bin"
        local.write_bytes(data)
        assert c.push(local, "pg/copy")["chunks_new"] == 0
        c.pull("pg/copy", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == data
        source.put("/files/pg.bin", random_bytes(MiB + 3, seed=41))
        assert not c.verify("pg/ref")["ok"] and not c.verify("pg/copy")["ok"]
        source.put("/files/pg.bin", data)  # restored: the same (content) ETag again
        assert c.verify("pg/ref")["ok"]
        assert c.push(local, "pg/copy2")["chunks_new"] == 0  # and a dedup target again


async def test_local_store_pins_through_the_blob_endpoint(gateway):
    """The local store implements pinned reads too: its blob endpoint answers 412 once
    the file changed."""
    from chunkyard.stores.local import LocalStore

    s = gateway.settings
    store = LocalStore(s.data_dir / "store", blob_url=s.public_url + "/v1/blobs", secret=s.secret)
    pinned = s.data_dir / "store" / "refs-test" / "pinned"
    pinned.parent.mkdir(parents=True, exist_ok=True)
    pinned.write_bytes(b"first")
    info = await store.stat("refs-test/pinned")
    req = await store.presign_get("refs-test/pinned", 60, if_match=info.etag)
    async with httpx.AsyncClient() as http:
        assert (await http.get(req.url, headers=req.headers)).content == b"first"
        pinned.write_bytes(b"second, longer")
        assert (await http.get(req.url, headers=req.headers)).status_code == 412
        plain = await store.presign_get("refs-test/pinned", 60)
        assert (await http.get(plain.url)).content == b"second, longer"
    await store.delete("refs-test/pinned")
