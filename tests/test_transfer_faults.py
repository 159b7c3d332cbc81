"""Faults on the way to and from the store: a part damaged in transit is refused by the
store and re-sent alone; URLs that expire mid-transfer are signed afresh; a part sent
by hand with a wrong checksum is refused and commits nothing; a client whose session
named another part checksum than the store wants now follows the gateway."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from chunkyard import packs as packfmt
from chunkyard.client.transport import Transport
from chunkyard.parts import part_checksum
from chunkyard.stores import open_store
from conftest import chunk_keys, random_bytes, start_gateway
from stores.conftest import AZURE_ENV, S3_ENV, fresh_url, require_env

MiB = 1024 * 1024
# GCS is left out: its emulator checks neither checksums nor expiry
STORES = {
    "local": (None, ()),
    "s3": ("CHUNKYARD_TEST_S3_URL", S3_ENV),
    "azure": ("CHUNKYARD_TEST_AZURE_URL", AZURE_ENV),
}


def gateway_on(store: str, tmp: Path, **env: str):
    url_var, needed = STORES[store]
    if url_var:
        require_env(store, *needed)
        env["CHUNKYARD_STORE"] = fresh_url(os.environ[url_var])
    return start_gateway(tmp, **env)


@pytest.fixture(params=list(STORES))
def store(request, monkeypatch) -> str:
    # faults on the HTTP path: a pull on the local store's machine would read its
    # packs from their files, around them (tests/test_local_reads.py)
    monkeypatch.setenv("CHUNKYARD_LOCAL_READS", "0")
    return request.param


def test_a_part_damaged_in_transit_is_resent_alone(store, tmp_path, monkeypatch):
    gw, server, thread = gateway_on(store, tmp_path / "gw")
    sent: list[tuple[str, bool]] = []
    original = Transport.send

    def flaky_send(self, req, content=None, headers=None, what="store request"):
        if req["method"] == "PUT" and content is not None:
            damage = not any(s[0] == what for s in sent)  # first attempt of each part
            sent.append((what, damage))
            if damage:
                bad = bytearray(content)
                bad[len(bad) // 2] ^= 0xFF
                content = bytes(bad)
        return original(self, req, content, headers, what)

    monkeypatch.setattr(Transport, "send", flaky_send)
    try:
        data = random_bytes(3 * MiB, seed=90)
        src = tmp_path / "w.bin"
        src.write_bytes(data)
        with Client(gw.url) as c:
            r = c.push(src, "faults/damaged")
            c.pull("faults/damaged", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        parts = {w for w, _ in sent}
        assert len(sent) == 2 * len(parts)  # every part: one damaged try, one good re-send
        assert r["bytes_uploaded"] < len(data) + MiB
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_urls_that_expire_mid_transfer_are_refreshed(store, tmp_path, monkeypatch):
    gw, server, thread = gateway_on(store, tmp_path / "gw", CHUNKYARD_URL_EXPIRY="1")
    original_send, original_fetch = Transport.send, Transport.fetch_into
    slept = {"put": 0, "get": 0}

    def slow_send(self, req, content=None, headers=None, what="store request"):
        if req["method"] == "PUT" and not slept["put"]:
            slept["put"] = 1
            time.sleep(2.2)  # the URL the gateway handed out is now stale
        return original_send(self, req, content, headers, what)

    def slow_fetch(self, req, start, end, buf, what="store read"):
        if not slept["get"]:
            slept["get"] = 1
            time.sleep(2.2)
        return original_fetch(self, req, start, end, buf, what)

    monkeypatch.setattr(Transport, "send", slow_send)
    monkeypatch.setattr(Transport, "fetch_into", slow_fetch)
    try:
        data = random_bytes(2 * MiB, seed=91)
        src = tmp_path / "e.bin"
        src.write_bytes(data)
        with Client(gw.url) as c:
            c.push(src, "faults/expired")
            c.pull("faults/expired", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        assert slept == {"put": 1, "get": 1}
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _pack_objects(store_url: str) -> list[str]:
    async def listed() -> list[str]:
        store = open_store(store_url)
        try:
            return [info.key async for info in store.list("packs/")]
        finally:
            await store.close()

    return asyncio.run(listed())


def test_a_part_sent_with_a_wrong_crc32c_commits_nothing(tmp_path):
    """An attacker's way on S3: a pack begun with a CRC32C that is not its bytes', the
    bytes sent by hand to the presigned URL. SeaweedFS refuses them (BadDigest), the
    pack cannot complete, and neither the store nor the catalog holds anything of it;
    begun again with the right checksum, the same upload goes through."""
    gw, server, thread = gateway_on("s3", tmp_path / "gw")
    data = random_bytes(60_000, seed=93)
    w = packfmt.PackWriter(1024 * 1024)
    w.add(chunk_keys(data)[0], len(data), packfmt.SCHEME_RAW, data)
    p = w.finish()
    body = bytes(p.data)
    wrong = part_checksum("crc32c", body[:-1] + bytes([body[-1] ^ 1]))
    catalog = sqlite3.connect(gw.data / "catalog.db")
    try:
        with httpx.Client(base_url=gw.url) as h:
            session = h.post("/v1/sessions", json={"name": "faults/crc"}).json()
            assert session["part_checksum"] == "crc32c"
            sid = session["session"]
            begin = {"pack": p.id, "size": len(body), "checksums": [wrong]}
            part = h.post(f"/v1/sessions/{sid}/packs", json=begin).json()["parts"][0]
            assert part["headers"] == {"x-amz-checksum-crc32c": wrong}
            r = httpx.put(part["url"], headers=part["headers"], content=body)
            assert r.status_code == 400 and "BadDigest" in r.text, r.text[:300]
            done = h.post(
                f"/v1/sessions/{sid}/packs/{p.id}/complete",
                json={"parts": [{"number": 1, "checksum": wrong}]},
            )
            assert done.status_code == 400, done.text
            assert _pack_objects(gw.settings.store_url) == []
            assert catalog.execute("select count(*) from packs").fetchone()[0] == 0
            assert catalog.execute("select part_checksum from uploads").fetchall() == [("crc32c",)]

            begin["checksums"] = [part_checksum("crc32c", body)]
            part = h.post(f"/v1/sessions/{sid}/packs", json=begin).json()["parts"][0]
            r = httpx.put(part["url"], headers=part["headers"], content=body)
            assert r.status_code == 200, r.text[:300]
            done = h.post(
                f"/v1/sessions/{sid}/packs/{p.id}/complete",
                json={"parts": [{"number": 1, "checksum": begin["checksums"][0]}]},
            )
            assert done.status_code == 200, done.text
        assert len(_pack_objects(gw.settings.store_url)) == 1
    finally:
        catalog.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_client_follows_the_part_checksum_the_gateway_asks_for(tmp_path, monkeypatch):
    """A session answered while the store wanted SHA-256 (the gateway was restarted
    since on CRC32C): the first pack's SHA-256 checksums are answered
    ``need_checksums``, and from then on the client sends CRC32C up front."""
    gw, server, thread = gateway_on("s3", tmp_path / "gw", CHUNKYARD_PACK_TARGET=str(MiB))
    original = Transport.call
    asked: list[str] = []

    def stale_call(self, method, path, **kw):
        out = original(self, method, path, **kw)
        if method == "POST" and path == "/v1/sessions":
            out["part_checksum"] = "sha256"
        elif method == "POST" and path.endswith("/packs"):
            asked.append(out["state"])
        return out

    monkeypatch.setattr(Transport, "call", stale_call)
    try:
        data = random_bytes(5 * MiB, seed=94)
        src = tmp_path / "s.bin"
        src.write_bytes(data)
        with Client(gw.url) as c:
            c.push(src, "faults/stale")
            c.pull("faults/stale", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        # the packs in flight when the first answer came (two at most) asked again
        packs = asked.count("uploading")
        assert packs >= 5 and 1 <= asked.count("need_checksums") <= 2, asked
    finally:
        server.should_exit = True
        thread.join(timeout=10)
