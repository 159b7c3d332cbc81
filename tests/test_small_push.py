"""Small pushes in one request: the gateway chunks, dedups, packs and commits content
it holds whole. The same rules as the upload protocol, tested as a client would see
them and as an attacker would try them."""

import base64
import os

import httpx
import pytest

from chunkyard.digest import tree_digest
from chunkyard.errors import InvalidManifest
from conftest import file_id, random_bytes

MiB = 1024 * 1024


@pytest.fixture
def api(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def body(files: dict[str, bytes], layout: str = "tree", **extra) -> dict:
    enc = [{"path": p, "data": base64.b64encode(d).decode()} for p, d in files.items()]
    return {"layout": layout, "files": enc, **extra}


def count_requests(monkeypatch) -> list[str]:
    from chunkyard.client import transport

    seen: list[str] = []
    real = transport.Transport.call

    def call(self, method, path, **kw):
        seen.append(f"{method} {path}")
        return real(self, method, path, **kw)

    monkeypatch.setattr(transport.Transport, "call", call)
    return seen


def test_a_small_tree_is_one_request_and_pulls_back(client, tmp_path, monkeypatch):
    root = tmp_path / "run"
    (root / "cfg").mkdir(parents=True)
    files = {
        "cfg/train.yaml": b"lr: 0.001\nbatch: 64\n",
        "metrics.json": random_bytes(300_000, seed=1),
        "empty": b"",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    seen = count_requests(monkeypatch)
    r = client.push(root, "small/tree", tags={"step": "100"})
    assert seen == ["POST /v1/artifacts/small/tree/-/versions"]
    assert r["created"] and r["files"] == 3 and r["tags"] == {"step": "100"}
    assert r["size"] == sum(map(len, files.values()))
    assert r["digest"] == tree_digest((p, len(d), file_id(d)) for p, d in sorted(files.items()))
    assert r["chunks_new"] == r["chunks_total"] > 2 and r["bytes_uploaded"] > 300_000
    out = tmp_path / "out"
    client.pull("small/tree", out)
    assert {p: (out / p).read_bytes() for p in files} == files

    again = client.push(root, "small/tree")
    assert not again["created"] and again["version"] == r["version"]
    assert again["chunks_new"] == 0 and again["bytes_uploaded"] == 0


def test_small_and_large_pushes_share_chunks(client, tmp_path, monkeypatch):
    """Chunks the gateway stored are dedup targets for the upload protocol, and the
    other way round."""
    monkeypatch.setenv("CHUNKYARD_SMALL_PUSH_BYTES", str(4 * MiB))  # 3 MiB: one request
    data = random_bytes(3 * MiB, seed=2)
    (tmp_path / "a.bin").write_bytes(data)
    first = client.push(tmp_path / "a.bin", "small/shared-a")
    assert first["bytes_uploaded"] > 2 * MiB
    big = data + random_bytes(2 * MiB, seed=3)
    (tmp_path / "b.bin").write_bytes(big)
    second = client.push(tmp_path / "b.bin", "small/shared-b")  # 5 MiB: upload protocol
    assert second["bytes_uploaded"] < 2.2 * MiB
    (tmp_path / "c.bin").write_bytes(big[-3 * MiB :])
    third = client.push(tmp_path / "c.bin", "small/shared-c")  # small, mostly known
    assert third["chunks_new"] <= 3 and third["bytes_uploaded"] < 300_000
    for name, want in [("small/shared-b", big), ("small/shared-c", big[-3 * MiB :])]:
        client.pull(name, tmp_path / "out.bin")
        assert (tmp_path / "out.bin").read_bytes() == want


def test_the_session_path_is_used_when_small_pushes_are_off(client, tmp_path, monkeypatch):
    monkeypatch.setenv("CHUNKYARD_SMALL_PUSH_BYTES", "0")
    (tmp_path / "x.txt").write_bytes(b"hello")
    seen = count_requests(monkeypatch)
    r = client.push(tmp_path / "x.txt", "small/off")
    assert "POST /v1/sessions" in seen and r["created"]


def test_a_file_layout_holds_one_file(gateway, api):
    before = gateway.snapshot()
    two = body({"a": b"1", "b": b"2"}, layout="file")
    r = api.post("/v1/artifacts/small/bad/-/versions", json=two)
    assert r.status_code == InvalidManifest.status
    assert r.json()["error"]["code"] == InvalidManifest.code
    assert gateway.snapshot() == before


@pytest.mark.parametrize(
    "files, code",
    [
        ({"../up": b"x"}, "invalid_name"),
        ({"a/./b": b"x"}, "invalid_name"),
        ({"a": b"x", "a/b": b"y"}, "invalid_name"),
        ({"x" * 300: b"x"}, "invalid_name"),
    ],
)
def test_hostile_paths_change_nothing(gateway, api, files, code):
    before = gateway.snapshot()
    r = api.post("/v1/artifacts/small/hostile/-/versions", json=body(files))
    assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, r.text
    assert gateway.snapshot() == before


def test_crafted_bodies_change_nothing(gateway, api):
    before = gateway.snapshot()
    url = "/v1/artifacts/small/crafted/-/versions"
    dup = {"layout": "tree", "files": [{"path": "a", "data": ""}, {"path": "a", "data": ""}]}
    cases = [
        (dup, "invalid_manifest"),
        ({"layout": "tree", "files": [{"path": "a", "data": "not base64!"}]}, None),
        ({"layout": "tree", "files": [{"path": "a", "data": 7}]}, None),
        ({"layout": "blob", "files": []}, "invalid_manifest"),
        ({**body({"a": b"x"}), "sneaky": 1}, None),
        ({**body({"a": b"x"}), "tags": {"bad tag": "v"}}, None),
    ]
    for payload, code in cases:
        r = api.post(url, json=payload)
        assert 400 <= r.status_code < 500, (payload, r.text)
        if code:
            assert r.json()["error"]["code"] == code, (payload, r.text)
    too_big = body({"a": os.urandom(4 * MiB), "b": b"1"})
    r = api.post(url, json=too_big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert api.post("/v1/artifacts/../x/-/versions", json=body({"a": b"x"})).status_code in (
        400,
        404,
        422,
    )
    assert gateway.snapshot() == before


def test_an_empty_tree_and_an_empty_file(client, api, tmp_path):
    r = api.post("/v1/artifacts/small/empty/-/versions", json=body({}, layout="tree"))
    assert r.status_code == 201 and r.json()["files"] == 0
    (tmp_path / "e").write_bytes(b"")
    v = client.push(tmp_path / "e", "small/empty-file")
    assert v["size"] == 0 and v["digest"] == file_id(b"")
    client.pull("small/empty-file", tmp_path / "e2")
    assert (tmp_path / "e2").read_bytes() == b""
