"""Push and pull through a gateway on every store: local, S3 (SeaweedFS), Azure
(Azurite) and GCS (the emulator). Pack bytes go straight between client and store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from conftest import RunningGateway, random_bytes, start_gateway
from stores.conftest import AZURE_ENV, S3_ENV, fresh_url, require_env

MiB = 1024 * 1024
STORES = {
    "local": (None, ()),
    "s3": ("CHUNKYARD_TEST_S3_URL", S3_ENV),
    "azure": ("CHUNKYARD_TEST_AZURE_URL", AZURE_ENV),
    "gcs": ("CHUNKYARD_TEST_GCS_URL", ("CHUNKYARD_TEST_GCS_URL", "STORAGE_EMULATOR_HOST")),
}


@pytest.fixture(scope="module", params=list(STORES))
def store_gateway(request, tmp_path_factory) -> Iterator[RunningGateway]:
    url_var, needed = STORES[request.param]
    env = {}
    if url_var:
        require_env(request.param, *needed)
        env["CHUNKYARD_STORE"] = fresh_url(os.environ[url_var])
    gw, server, thread = start_gateway(tmp_path_factory.mktemp(request.param), **env)
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


def test_push_pull_dedup_on_every_store(store_gateway, tmp_path: Path):
    data = bytearray(random_bytes(20 * MiB + 123, seed=70))  # > 16 MiB: a multipart pack
    src = tmp_path / "weights.bin"
    src.write_bytes(bytes(data))
    with Client(store_gateway.url) as c:
        first = c.push(src, "team/stores/model")
        assert first["created"] and first["bytes_uploaded"] >= len(data)
        c.pull("team/stores/model", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == bytes(data)
        data[5 * MiB : 5 * MiB + 100] = b"\xff" * 100
        src.write_bytes(bytes(data))
        second = c.push(src, "team/stores/model")
        assert second["version"] == 2 and second["bytes_uploaded"] < 2 * MiB
        c.pull("team/stores/model@2", tmp_path / "v2.bin")
        assert (tmp_path / "v2.bin").read_bytes() == bytes(data)
        # ranged read through the gateway's own streaming endpoint
        r = httpx.get(
            f"{store_gateway.url}/v1/artifacts/team/stores/model/-/versions/2/content",
            headers={"range": "bytes=5242000-5243000"},
        )
        assert r.status_code == 206 and r.content == bytes(data[5242000:5243001])


def test_many_small_files_on_every_store(store_gateway, tmp_path: Path):
    """Small files are pulled in batches: coalesced ranged GETs on each store."""
    root = tmp_path / "small"
    root.mkdir()
    files = {f"f{i:03d}": random_bytes(2000 + 37 * i, seed=300 + i) for i in range(120)}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    with Client(store_gateway.url) as c:
        c.push(root, "team/stores/small")
        c.pull("team/stores/small", tmp_path / "back")
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data


def test_reconstruction_urls_point_at_the_store(store_gateway, tmp_path: Path):
    src = tmp_path / "small.bin"
    src.write_bytes(random_bytes(300_000, seed=71))
    with Client(store_gateway.url) as c:
        c.push(src, "team/stores/direct")
    recon = httpx.get(
        f"{store_gateway.url}/v1/artifacts/team/stores/direct/-/versions/1/files/0/reconstruction"
    ).json()
    urls = [t["url"]["url"] for t in recon["terms"]]
    if store_gateway.settings.store_url.startswith("file:"):
        assert all(u.startswith(store_gateway.url + "/v1/blobs/") for u in urls)
    else:  # direct: the gateway signs, the store serves
        assert not any(u.startswith(store_gateway.url) for u in urls)
    # each URL reads its term's bytes, signed for that range where the store signs ranges
    for term in recon["terms"]:
        a, b = term["range"]
        assert term["url"]["headers"]["Range"] == f"bytes={a}-{b - 1}"
        r = httpx.get(term["url"]["url"], headers=term["url"]["headers"])
        assert r.status_code == 206 and len(r.content) == b - a
        # Azure cannot sign a range; the GCS emulator checks no signature at all
        if not store_gateway.settings.store_url.startswith(("az:", "gs:")):
            wider = {**term["url"]["headers"], "Range": f"bytes=0-{b + 100}"}
            assert httpx.get(term["url"]["url"], headers=wider).status_code in (400, 403)


@pytest.mark.parametrize(
    ("store", "env", "expect"),
    [
        ("s3", {"CHUNKYARD_STORE": "s3://no-such-bucket/x"}, "does not exist"),
        (
            "s3",
            {"CHUNKYARD_STORE": "s3://chunkyard-test/x", "AWS_SECRET_ACCESS_KEY": "wrong"},
            "access denied",
        ),
        (
            "s3",
            {"CHUNKYARD_STORE": "s3://chunkyard-test/x", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"},
            "connect",
        ),
        ("azure", {"CHUNKYARD_STORE": "az://no-such-container/x"}, "does not exist"),
        ("gcs", {"CHUNKYARD_STORE": "gs://no-such-bucket/x"}, "does not exist"),
        ("local", {"CHUNKYARD_STORE": "file:///proc/no/such/dir"}, "cannot be created"),
    ],
)
def test_the_gateway_refuses_to_start_on_a_useless_store(store, env, expect, tmp_path):
    url_var, needed = STORES[store]
    if url_var:
        require_env(store, *needed)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "chunkyard.cli",
            "serve",
            "--data",
            str(tmp_path),
            "--port",
            "1",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0
    assert "store_error" in p.stderr and expect in p.stderr.lower(), p.stderr
