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
from chunkyard.catalog import packs as packs_q
from chunkyard.errors import NotFound
from conftest import begin_pack, chunk_keys, proof, random_bytes, start_gateway


@pytest.fixture
def external(tmp_path, monkeypatch):
    from chunkyard.repository import verifier

    monkeypatch.setattr(verifier, "STALL", 0.3)  # no verifier runs: commits verify soon
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


def missing_count(gw, keys: bytes, name: str = "trust/probe") -> int:
    """How many of these chunk keys a session of ``name`` (its domain) is told are
    missing."""
    with httpx.Client(base_url=gw.url) as c:
        sid = c.post("/v1/sessions", json={"name": name}).json()["session"]
        answer = c.post(f"/v1/sessions/{sid}/missing", content=keys).json()
    return sum(loc is None for loc in answer["locations"])


def test_uploaded_chunks_are_not_dedup_targets_until_verified(external, tmp_path):
    """A completed upload serves nobody until it was read back and checked: by the
    verifier, or by its own session's commit."""
    data = random_bytes(2_000_000, seed=80)
    keys = chunk_keys(data)
    upload_complete_pack(external, "trust/a", data)
    joined = b"".join(keys)
    assert missing_count(external, joined) == len(keys)
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 0
    run_verifier(external)
    assert missing_count(external, joined) == 0  # in its domain...
    assert missing_count(external, joined, "other/probe") == len(keys)  # ...and only there
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 1


def upload_complete_pack(gw, name: str, data: bytes) -> str:  # type: ignore[no-untyped-def]
    """Upload ``data`` as one pack in a session of ``name`` and complete it, as a client
    does (not verified yet: the gateway's verification is external); returns its id."""
    keys = chunk_keys(data)
    with httpx.Client(base_url=gw.url) as c:
        s = c.post("/v1/sessions", json={"name": name}).json()
        w = packs.PackWriter(4 * 1024 * 1024)
        pos = 0
        for key, n in zip(keys, [len(b) for b in _split(data)], strict=True):
            w.add(key, n, packs.SCHEME_RAW, data[pos : pos + n])
            pos += n
        p = w.finish()
        part = begin_pack(c, s["session"], p.id, bytes(p.data))
        assert httpx.put(part["url"], content=bytes(p.data)).status_code == 200
        done = c.post(
            f"/v1/sessions/{s['session']}/packs/{p.id}/complete", json={"parts": [{"number": 1}]}
        )
        assert done.json()["state"] == "complete"
    return p.id


def test_two_verifiers_of_one_upload_keep_the_pack(external):
    """Two processes (verifiers, or a verifier and a committing gateway) that verify the
    same upload at once: one makes it the pack's live copy, the other must see that it
    was settled, and must not delete the object as a redundant copy."""
    import asyncio

    from chunkyard.config import Settings
    from chunkyard.repository import Repository, verifier

    pack_id = upload_complete_pack(external, "trust/race", random_bytes(1_000_000, seed=87))

    async def both() -> list[str]:
        repos = [await Repository.open(Settings.load(external.data)) for _ in range(2)]
        try:
            ids = await repos[0].db.read(packs_q.uploads_awaiting_verification, 10)
            assert len(ids) == 1
            return await asyncio.gather(*(verifier.verify_upload(r, ids[0]) for r in repos))
        finally:
            for r in repos:
                await r.close()

    assert asyncio.run(both()) == ["verified", "verified"]
    store = external.data / "store"
    objects = [p for p in store.rglob(f"{pack_id}*") if ".uploads" not in p.parts]
    assert len(objects) == 1, objects
    assert httpx.get(f"{external.url}/v1/stats").json()["packs"] == 1


def _split(data: bytes) -> list[bytes]:
    from chunkyard.chunking import new_chunker

    return [data[c.offset : c.offset + c.length] for c in new_chunker().cut_buf(data)]


def test_a_lying_pack_is_caught_and_commits_refused(external, tmp_path):
    """A pack whose index claims a chunk it does not hold fails verification when its
    own session commits; the commit is refused and the chunk offered to nobody."""
    raw = [random_bytes(40_000, seed=81), random_bytes(40_000, seed=82)]
    w = packs.PackWriter(1024 * 1024)
    w.add(blake3.blake3(raw[0]).digest(), len(raw[0]), packs.SCHEME_RAW, raw[0])
    lie = blake3.blake3(b"victim content").digest()  # claims a chunk it does not hold
    w.add(lie, len(raw[1]), packs.SCHEME_RAW, raw[1])
    p = w.finish()
    data = bytes(p.data)
    with httpx.Client(base_url=external.url) as c:
        s = c.post("/v1/sessions", json={"name": "trust/liar"}).json()
        sid = s["session"]
        part = begin_pack(c, sid, p.id, data)
        assert httpx.put(part["url"], content=data).status_code == 200
        done = c.post(f"/v1/sessions/{sid}/packs/{p.id}/complete", json={"parts": [{"number": 1}]})
        assert done.json()["state"] == "complete"
        r = c.post(
            f"/v1/sessions/{sid}/commit",
            json={
                "layout": "file",
                "files": [
                    {
                        "path": "x",
                        "size": 80_000,
                        "terms": [[p.id, 0, 2, proof(s, [blake3.blake3(raw[0]).digest(), lie])]],
                    }
                ],
            },
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "untrusted_chunks", r.text
    assert missing_count(external, lie, "trust/probe") == 1  # never offered to anyone
    run_verifier(external)
    assert missing_count(external, lie, "trust/probe") == 1
    with Client(external.url) as c, pytest.raises(NotFound):
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


def test_a_commit_verifies_its_own_uploads_first(external, tmp_path: Path):
    """Nobody verified the session's packs yet (the external verifier has not run):
    its commit verifies them on the spot before it may name them."""
    src = tmp_path / "c.bin"
    src.write_bytes(random_bytes(1_500_000, seed=84))  # above the small-push limit
    with Client(external.url) as c:
        c.push(src, "trust/c1")
        assert c.stats()["packs"] == 1
        c.pull("trust/c1", tmp_path / "c1")
    assert (tmp_path / "c1").read_bytes() == src.read_bytes()


def test_a_commit_waits_for_a_running_verifier(external, tmp_path, monkeypatch):
    """With ``chunkyard verifier`` running, the commit leaves verification to it: the
    gateway reads back and checks no pack itself."""
    from chunkyard.repository import uploads, verifier

    monkeypatch.setattr(verifier, "STALL", 30.0)
    in_gateway: list[str] = []
    monkeypatch.setattr(
        uploads.verifier, "verify_upload", lambda repo, uid, *a: in_gateway.append(uid)
    )
    env = {**os.environ, "CHUNKYARD_DATA": str(external.data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chunkyard.cli", "verifier"], env=env, stderr=subprocess.PIPE
    )
    try:
        src = tmp_path / "w.bin"
        src.write_bytes(random_bytes(3_000_000, seed=88))
        with Client(external.url) as c:
            c.push(src, "trust/waits")
            c.pull("trust/waits", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        assert in_gateway == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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


def test_a_store_hiccup_while_verifying_is_one_log_line_and_retried(external, caplog):
    """A pack the store fails to read back stays complete, to be verified on a later
    pass; the log says so in one line (a StoreError is no bug: no traceback)."""
    import asyncio
    import logging

    from chunkyard.config import Settings
    from chunkyard.errors import StoreError
    from chunkyard.repository import Repository, verifier

    upload_complete_pack(external, "trust/hiccup", random_bytes(500_000, seed=88))

    async def twice() -> tuple[int, int]:
        repo = await Repository.open(Settings.load(external.data))
        try:

            async def fail(key: str, buf: bytearray) -> int:
                raise StoreError("S3 store s3://x: get failed: connection lost")

            real, repo.store.read_into = repo.store.read_into, fail  # type: ignore[method-assign]
            first = await verifier.verify_pending(repo)
            repo.store.read_into = real  # type: ignore[method-assign]
            return first, await verifier.verify_pending(repo)
        finally:
            await repo.close()

    with caplog.at_level(logging.WARNING, logger="chunkyard.verifier"):
        assert asyncio.run(twice()) == (0, 1)
    failed = [r for r in caplog.records if "will retry" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert "connection lost" in failed[0].getMessage()


def test_a_verifier_prepares_its_store_before_the_first_pack(external):
    """The store's slow first use (S3's presigning client, ~0.2 s) happens when the
    verifier starts, not inside the first push it verifies; a store that fails to
    prepare is verified from all the same (its reads say what is wrong)."""
    import asyncio

    from chunkyard.config import Settings
    from chunkyard.repository import Repository, verifier

    upload_complete_pack(external, "trust/prepare", random_bytes(300_000, seed=89))
    seen: list[str] = []

    async def go() -> None:
        repo = await Repository.open(Settings.load(external.data))
        try:
            read = repo.store.read_into

            def prepare() -> None:
                seen.append("prepare")
                raise OSError("no model files")

            async def read_into(key: str, buf: bytearray) -> int:
                seen.append("read")
                return await read(key, buf)

            repo.store.prepare = prepare  # type: ignore[method-assign]
            repo.store.read_into = read_into  # type: ignore[method-assign]
            await verifier.run(repo, once=True)
        finally:
            await repo.close()

    asyncio.run(go())
    assert seen == ["prepare", "read"]
