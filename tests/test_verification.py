"""The trust rule: chunks become dedup targets only after their pack was verified,
whichever way verification runs (inline, background task, external process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import blake3
import httpx
import pytest

from chunkyard import Client, packs
from chunkyard.errors import PackCorrupt
from conftest import begin_pack, random_bytes, start_gateway


@pytest.fixture
def external(tmp_path):
    gw, server, thread = start_gateway(tmp_path / "gw", CHUNKYARD_VERIFY="external")
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


def run_verifier(gw) -> None:
    env = {**os.environ, "CHUNKYARD_DATA": str(gw.data)}
    p = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "verifier", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr


def missing_count(gw, ids: bytes) -> int:
    with httpx.Client(base_url=gw.url) as c:
        sid = c.post("/v1/sessions", json={"name": "probe/x"}).json()["session"]
        answer = c.post(f"/v1/sessions/{sid}/missing", content=ids).json()
    return sum(loc is None for loc in answer["locations"])


def chunk_ids_of(gw, name: str) -> bytes:
    recon = httpx.get(f"{gw.url}/v1/artifacts/{name}/-/versions/latest/files/0/reconstruction")
    return b"".join(bytes.fromhex(c[0]) for t in recon.json()["terms"] for c in t["chunks"])


def test_unverified_chunks_are_not_dedup_targets_until_the_verifier_ran(external, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(2_000_000, seed=80))
    with Client(external.url) as c:
        r = c.push(src, "trust/a")
        c.pull("trust/a", tmp_path / "back")  # usable by its own uploader at once
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    ids = chunk_ids_of(external, "trust/a")
    assert missing_count(external, ids) == len(ids) // 32 == r["chunks_total"]
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 0
    run_verifier(external)
    assert missing_count(external, ids) == 0
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 1


def test_a_lying_pack_is_caught_and_its_version_fails_loudly(external, tmp_path):
    raw = [random_bytes(40_000, seed=81), random_bytes(40_000, seed=82)]
    w = packs.PackWriter(1024 * 1024)
    w.add(blake3.blake3(raw[0]).digest(), len(raw[0]), packs.SCHEME_RAW, raw[0])
    lie = blake3.blake3(b"victim content").digest()  # claims a chunk it does not hold
    w.add(lie, len(raw[1]), packs.SCHEME_RAW, raw[1])
    p = w.finish()
    data = bytes(p.data)
    with httpx.Client(base_url=external.url) as c:
        sid = c.post("/v1/sessions", json={"name": "trust/liar"}).json()["session"]
        part = begin_pack(c, sid, p.id, data)
        assert httpx.put(part["url"], content=data).status_code == 200
        done = c.post(f"/v1/sessions/{sid}/packs/{p.id}/complete", json={"parts": [{"number": 1}]})
        assert done.json()["state"] == "complete"
        digest = blake3.blake3(raw[0] + raw[1]).hexdigest()
        r = c.post(
            f"/v1/sessions/{sid}/commit",
            json={
                "layout": "file",
                "files": [{"path": "x", "size": 80_000, "digest": digest, "terms": [[p.id, 0, 2]]}],
            },
        )
        assert r.status_code == 201
    assert missing_count(external, lie) == 1  # never offered to anyone
    run_verifier(external)
    assert missing_count(external, lie) == 1
    with Client(external.url) as c, pytest.raises(PackCorrupt):
        c.pull("trust/liar", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_background_verification_in_the_gateway(tmp_path):
    gw, server, thread = start_gateway(tmp_path / "gw", CHUNKYARD_VERIFY="background")
    try:
        src = tmp_path / "b.bin"
        src.write_bytes(random_bytes(1_500_000, seed=83))
        with Client(gw.url) as c:
            c.push(src, "trust/b")
            deadline = time.time() + 20
            while c.stats()["packs"] < 1:
                assert time.time() < deadline, "background verifier did not verify the pack"
                time.sleep(0.1)
            second = c.push(src, "trust/b-copy")
        assert second["bytes_uploaded"] == 0 and second["chunks_new"] == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_commit_verifies_a_foreign_unverified_pack_first(external, tmp_path: Path):
    """Two uploads of the same content race: the second names the first one's pack,
    which is verified on the spot before the commit may use it."""
    src = tmp_path / "c.bin"
    src.write_bytes(random_bytes(600_000, seed=84))
    with Client(external.url) as c:
        c.push(src, "trust/c1")
        recon = httpx.get(
            f"{external.url}/v1/artifacts/trust/c1/-/versions/1/files/0/reconstruction"
        ).json()
        terms = [[t["pack"], 0, len(t["chunks"])] for t in recon["terms"]]
        with httpx.Client(base_url=external.url) as h:
            sid = h.post("/v1/sessions", json={"name": "trust/c2"}).json()["session"]
            r = h.post(
                f"/v1/sessions/{sid}/commit",
                json={
                    "layout": "file",
                    "files": [
                        {
                            "path": "c.bin",
                            "size": 600_000,
                            "digest": recon["digest"],
                            "terms": terms,
                        }
                    ],
                },
            )
        assert r.status_code == 201, r.text
        assert c.stats()["packs"] == 1
        c.pull("trust/c2", tmp_path / "c2")
    assert (tmp_path / "c2").read_bytes() == src.read_bytes()


def test_a_pack_stored_but_not_yet_verified_is_not_uploaded_again(external, tmp_path):
    """The same content pushed again before the verifier ran makes the very same pack:
    the gateway says it is stored, the client sends nothing, the commit verifies it."""
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(3_000_000, seed=86))
    with Client(external.url) as c:
        first = c.push(src, "again/a")
        second = c.push(src, "again/b")  # another name: not a re-push of the latest
        c.pull("again/b", tmp_path / "back")
    assert first["bytes_uploaded"] > 0
    assert second["bytes_uploaded"] == 0
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 1  # verified at commit
