"""Faults on the way to and from the store: a part damaged in transit is refused by the
store and re-sent alone; URLs that expire mid-transfer are signed afresh."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.client.transport import Transport
from conftest import random_bytes, start_gateway
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
def store(request) -> str:
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
