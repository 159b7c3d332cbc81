"""Pulls on the gateway's own machine read local-store packs from their files, not
through the blob endpoint; anything that stops that falls back to the signed GET, and
only a client that asks, over loopback, learns where the files are."""

import os
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from chunkyard.client.transport import Transport
from chunkyard.errors import ChunkyardError
from chunkyard.stores.local import LocalStore
from conftest import random_bytes

MiB = 1024 * 1024


@pytest.fixture
def pushed(client: Client, tmp_path: Path) -> tuple[str, dict[str, bytes]]:
    """A version with one large file (paged reconstruction) and small ones (batched)."""
    root = tmp_path / "src"
    files = {"big.bin": random_bytes(3 * MiB + 5, seed=70)}
    files |= {f"small-{i}.json": random_bytes(2000 + i, seed=71 + i) for i in range(5)}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    name = f"team/local-{tmp_path.name[-12:]}"
    client.push(root, name)
    return name, files


def pulled_back(client: Client, name: str, dest: Path, files: dict[str, bytes]) -> None:
    client.pull(name, dest)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data


def test_a_pull_on_this_machine_reads_the_pack_files(gateway, pushed, tmp_path, monkeypatch):
    name, files = pushed
    served = []
    real = LocalStore.read_range
    monkeypatch.setattr(
        LocalStore, "read_range", staticmethod(lambda *a: served.append(a) or real(*a))
    )
    client = gateway.client()
    assert client.transport.local_reads
    pulled_back(client, name, tmp_path / "back", files)
    assert client.transport.bytes_read_locally >= sum(map(len, files.values())) // 2
    assert served == []  # no pack byte went through the blob endpoint


def test_local_reads_can_be_turned_off(gateway, pushed, tmp_path, monkeypatch):
    name, files = pushed
    monkeypatch.setenv("CHUNKYARD_LOCAL_READS", "0")
    client = gateway.client()
    assert not client.transport.local_reads
    pulled_back(client, name, tmp_path / "back", files)
    assert client.transport.bytes_read_locally == 0


def test_packs_it_cannot_read_come_over_http(gateway, pushed, tmp_path, monkeypatch):
    """Another user's store, a gateway in a container: the files named are not there
    (or not readable) for this client, which then sends the signed GET."""
    name, files = pushed
    monkeypatch.setattr(LocalStore, "local_path", lambda self, key: f"/nonexistent/{key}")
    client = gateway.client()
    pulled_back(client, name, tmp_path / "back", files)
    assert client.transport.bytes_read_locally == 0


def test_a_pack_file_cut_short_is_read_over_http_and_fails_as_before(
    gateway, client, tmp_path, monkeypatch
):
    data = random_bytes(2 * MiB, seed=80)
    (tmp_path / "w.bin").write_bytes(data)
    client.push(tmp_path / "w.bin", "team/local-short")
    packs = [p for p in (gateway.data / "store" / "packs").rglob("*") if p.is_file()]
    newest = max(packs, key=lambda p: p.stat().st_mtime_ns)
    whole = newest.read_bytes()
    newest.write_bytes(whole[: len(whole) // 2])
    try:
        fresh = gateway.client()
        with pytest.raises(ChunkyardError) as err:
            fresh.pull("team/local-short", tmp_path / "out.bin")
        assert fresh.transport.bytes_read_locally == 0
        assert not (tmp_path / "out.bin").exists()
        assert "Traceback" not in str(err.value)
    finally:
        newest.write_bytes(whole)
    gateway.client().pull("team/local-short", tmp_path / "again.bin")
    assert (tmp_path / "again.bin").read_bytes() == data


def test_the_reader_takes_only_whole_ranges_of_regular_files(tmp_path):
    t = Transport("http://127.0.0.1:9")
    f = tmp_path / "f"
    f.write_bytes(bytes(range(256)) * 4)
    buf = memoryview(bytearray(100))
    assert bytes(t._read_file(str(f), 10, buf)) == (bytes(range(256)) * 4)[10:110]
    assert t._read_file(str(f), 1000, buf) is None  # only 24 bytes left
    assert t._read_file(str(tmp_path / "missing"), 0, buf) is None
    assert t._read_file(str(tmp_path), 0, buf) is None  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert t._read_file(str(fifo), 0, buf) is None  # not opened, so not waited on
    assert t._read_file("/dev/zero", 0, buf) is None  # a device: not opened either
    (tmp_path / "link").symlink_to(f)
    assert t._read_file(str(tmp_path / "link"), 0, buf) is None
    assert t._read_file("bad\0path", 0, buf) is None
    assert t._read_file(str(f), 2**63, buf) is None
    assert t.bytes_read_locally == 100


PACK = "ab" + "0" * 62


@pytest.mark.parametrize(
    ("file", "kept"),
    [
        (f"/srv/store/packs/ab/{PACK}", True),
        (f"/srv/store/packs/ab/{PACK}.0123456789abcdef", True),
        (f"/srv/store/packs/ab/{PACK}x", False),  # another name
        (f"/srv/store/packs/cd/{PACK}", False),
        (f"/srv/store/other/ab/{PACK}", False),
        (f"packs/ab/{PACK}", False),  # relative: to the client's working directory
        ("/home/user/.ssh/id_ed25519", False),
        ("/proc/self/mem", False),
        ("/dev/watchdog", False),
        (17, False),
    ],
)
def test_only_files_named_as_the_packs_own_are_opened(file, kept):
    """A gateway that lies names any path it likes; the client opens none but those of
    the pack it reads (and checks every chunk of that)."""
    from chunkyard.client.download import own_file

    url = {"method": "GET", "url": "http://127.0.0.1:1/v1/blobs/x", "headers": {}, "file": file}
    assert ("file" in own_file(url, PACK)) is kept
    assert "file" not in own_file(url, "not-a-pack-id")


@pytest.mark.parametrize(
    ("peer", "headers", "local"),
    [
        (("127.0.0.1", 5000), {}, True),
        (("::1", 5000), {}, True),
        (("127.0.0.1", 5000), {"x-forwarded-for": "127.0.0.1"}, False),  # a proxy's
        (("127.0.0.1", 5000), {"forwarded": "for=127.0.0.1"}, False),
        (("203.0.113.9", 5000), {}, False),
        (("localhost", 5000), {}, False),  # only an address counts
        (None, {}, False),
    ],
)
def test_which_requests_come_from_this_machine(peer, headers, local):
    from starlette.requests import Request

    from chunkyard.server.routing import Call

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": peer,
    }
    call = Call(None, None, Request(scope), None, None, None)  # type: ignore[arg-type]
    assert call.from_this_machine is local


def test_a_gateway_can_keep_its_files_to_itself(tmp_path, monkeypatch):
    from conftest import start_gateway

    gw, server, thread = start_gateway(tmp_path / "gw", CHUNKYARD_LOCAL_READS="0")
    try:
        (tmp_path / "w.bin").write_bytes(random_bytes(2 * MiB, seed=81))
        client = gw.client()
        client.push(tmp_path / "w.bin", "team/private")
        page = httpx.get(
            f"{gw.url}/v1/artifacts/team/private/-/versions/1/files/0/reconstruction",
            params={"local": "true"},
        ).json()
        assert page["terms"] and not any("file" in t["url"] for t in page["terms"])
        client.pull("team/private", tmp_path / "back.bin")
        assert client.transport.bytes_read_locally == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://10.1.2.3:8080", False),
        ("https://gateway.example", False),
    ],
)
def test_only_a_client_of_a_gateway_on_loopback_reads_files(url, local, monkeypatch):
    monkeypatch.delenv("CHUNKYARD_LOCAL_READS", raising=False)
    assert Transport(url).local_reads is local


def test_file_names_go_only_to_loopback_clients_that_ask(gateway, pushed):
    """A crafted client: paths of the gateway's files are not for other machines (here
    one behind a proxy on the gateway's host, which uvicorn names by its
    ``X-Forwarded-For``), nor for a client that did not ask."""
    name, files = pushed
    base = f"{gateway.url}/v1/artifacts/{name}/-/versions/1"
    big = sorted(files).index("big.bin")

    def files_named(headers: dict[str, str], **query: str) -> list:
        page = httpx.get(f"{base}/files/{big}/reconstruction", params=query, headers=headers)
        assert page.status_code == 200, page.text
        batch = httpx.post(
            f"{base}/reconstructions", json={"files": [0]}, params=query, headers=headers
        )
        assert batch.status_code == 200, batch.text
        terms = page.json()["terms"] + batch.json()["reads"]
        return [t["url"].get("file") for t in terms]

    asked = files_named({}, local="true")
    assert asked and all(f and Path(f).is_file() for f in asked)
    assert not any(files_named({}))
    assert not any(files_named({"x-forwarded-for": "203.0.113.9"}, local="true"))
    assert not any(files_named({"x-forwarded-for": "127.0.0.1"}, local="true"))
    assert not any(files_named({}, local="false"))
    bad = httpx.get(f"{base}/files/{big}/reconstruction", params={"local": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
