"""Fixtures: a real gateway (uvicorn on 127.0.0.1, ephemeral port) per test module,
on SQLite and a local store in a temporary directory."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

import chunkyard
from chunkyard import Client
from chunkyard.config import Settings
from chunkyard.server import create_app

#: the code under test, for processes started here (whatever their working directory)
SRC = str(Path(chunkyard.__file__).resolve().parents[1])
#: pushes made by tests remember their sessions here, not in the user's ~/.cache
os.environ.setdefault("CHUNKYARD_STATE_DIR", tempfile.mkdtemp(prefix="chunkyard-state-"))

#: the longest test files (about a minute each, one worker), run first: pytest-xdist
#: hands whole files to its workers in collection order, and one of these started last
#: kept a worker busy alone at the end of the run
LONGEST_FIRST = (
    "test_resume.py",
    "test_fuzz.py",
    "test_rebuild.py",
    "test_team_scale.py",
    "test_references_stores.py",
    "test_gc.py",
    "test_migrate.py",
    "test_mlflow.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-file order kept


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: each test process draws its own ports (xdist workers seed from the OS)
_ports = random.Random()


def bindable(*ports: int) -> bool:
    """Whether every one of ``ports`` can be bound on 127.0.0.1 now."""
    try:
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def free_port(*offsets: int) -> int:
    """A port ``p`` free now (and ``p + k`` for each of ``offsets``, if given), below the
    kernel's ephemeral range: ports it hands out for port 0 are also the source ports of
    outgoing connections, and a server started on one a moment later, or again after a
    kill, found it taken by another test worker's connection."""
    offsets = offsets or (0,)
    top = _ephemeral_low() - max(offsets)
    if top <= 10_000 and offsets == (0,):  # no room below: the kernel's choice
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        p = _ports.randrange(10_000, top)
        if bindable(*(p + k for k in offsets)):
            return p
    raise AssertionError("no free port below the ephemeral range")


@dataclass
class RunningGateway:
    url: str
    data: Path
    settings: Settings

    def client(self) -> Client:
        return Client(self.url)

    def snapshot(self) -> dict:
        """Row counts of every catalog table and the set of store files: a rejected
        request must leave both exactly as they were. (Not counted: sessions, and the
        notes of metadata records, which a gateway drops in the background.)"""
        conn = sqlite3.connect(self.data / "catalog.db")
        try:
            tables = [
                r[0]
                for r in conn.execute(
                    "select name from sqlite_master where type='table'"
                    " and name not in ('sessions', 'meta_pending')"
                )
            ]
            counts = {t: conn.execute(f"select count(*) from {t}").fetchone()[0] for t in tables}
        finally:
            conn.close()
        store = self.data / "store"
        files = sorted(
            str(p.relative_to(store))
            for p in store.rglob("*")
            if p.is_file() and ".uploads" not in p.parts
        )
        return {"tables": counts, "store": files}


def start_gateway(
    data: Path, **env: str
) -> tuple[RunningGateway, uvicorn.Server, threading.Thread]:
    port = free_port()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings.load(data, "127.0.0.1", port)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("gateway did not start")
        time.sleep(0.02)
    return RunningGateway(f"http://127.0.0.1:{port}", data, settings), server, thread


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """Every test starts with umask 022 and leaves the one it found: a push records
    its files' modes (so a digest depends on them), and commands run in this process
    (``db rebuild``, ``serve``) set a private umask of their own."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(tmp_path_factory.mktemp("gw"))
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[Client]:
    with gateway.client() as c:
        yield c


def random_bytes(n: int, seed: int = 0) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def begin_pack(api, sid: str, pack_id: str, data: bytes) -> dict:
    """Begin a single-part pack upload the way a client does (with the store's part
    checksum); returns the presigned part."""
    import base64

    import blake3

    r = api.post(f"/v1/sessions/{sid}/packs", json={"pack": pack_id, "size": len(data)})
    assert r.status_code == 200, r.text
    plan = r.json()
    if plan["state"] == "need_checksums":
        assert plan["checksum"] == "blake3" and len(plan["parts"]) == 1
        checksum = base64.b64encode(blake3.blake3(data).digest()).decode()
        r = api.post(
            f"/v1/sessions/{sid}/packs",
            json={"pack": pack_id, "size": len(data), "checksums": [checksum]},
        )
        assert r.status_code == 200, r.text
        plan = r.json()
    return plan["parts"][0]


def _loopback(host: str) -> None:
    import ipaddress

    try:
        ok = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise AssertionError(f"a test tried to connect to {host}")


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests of outbound http refuse to connect anywhere but loopback, whatever the code
    under test decides: a guard that failed open must fail the test, not reach out."""
    import httpcore

    sync_orig = httpcore.SyncBackend.connect_tcp
    async_orig = httpcore.AnyIOBackend.connect_tcp

    def sync_connect(self, host, port, *args, **kw):  # type: ignore[no-untyped-def]
        _loopback(host)
        return sync_orig(self, host, port, *args, **kw)

    async def async_connect(self, host, port, *args, **kw):  # type: ignore[no-untyped-def]
        _loopback(host)
        return await async_orig(self, host, port, *args, **kw)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", sync_connect)
    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", async_connect)


def file_id(data: bytes) -> str:
    """The file id of content (FORMAT.md, "Digests"): from its chunks' ids and sizes."""
    from chunkyard.chunking import new_chunker
    from chunkyard.digest import chunk_id, chunk_key
    from chunkyard.digest import file_id as from_chunks

    cuts = new_chunker().cut_buf(data) if data else []
    view = memoryview(data)
    return from_chunks(
        (chunk_id(chunk_key(view[c.offset : c.offset + c.length])), c.length) for c in cuts
    )


def chunk_keys(data: bytes) -> list[bytes]:
    """The chunk keys of content, in order (what a client proves possession with)."""
    from chunkyard.chunking import new_chunker
    from chunkyard.digest import chunk_key

    view = memoryview(data)
    cuts = new_chunker().cut_buf(data) if data else []
    return [chunk_key(view[c.offset : c.offset + c.length]) for c in cuts]


def proof(session: dict, keys: list[bytes]) -> str:
    """The possession proof of a term over chunks with these keys, in ``session``."""
    from chunkyard.digest import term_proof

    return term_proof(bytes.fromhex(session["proof_key"]), keys)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``chunkyard ARGS`` in a new process with ``env``, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


class ServedGateway:
    """``chunkyard serve`` in a subprocess, its stdout and stderr in one file."""

    def __init__(self, data: Path, log: Path, *args: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "chunkyard.cli", "serve", "--data", str(data)]
        cmd += ["--port", str(self.port), *args]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
        deadline = time.time() + 30
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("gateway did not start:\n" + log.read_text())
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(extra)
    return env


class GatewayProcess:
    """``python -m chunkyard.cli serve`` on a fixed port, so it can be killed and
    restarted where its clients expect it."""

    def __init__(self, data: Path, env: dict[str, str], workers: int = 1) -> None:
        self.data, self.env, self.workers = data, env, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> GatewayProcess:
        argv = [sys.executable, "-m", "chunkyard.cli", "serve", "--port", str(self.port)]
        argv += ["--data", str(self.data), "--workers", str(self.workers)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=child_env(**self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its workers go with it
            )
        return self

    def wait_ready(self, timeout: float = 40.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.url} exited:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"gateway {self.url} did not start:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, no goodbye: whatever it held in memory is gone."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def s3_url() -> Iterator[str]:
    """A fresh prefix in the test bucket, emptied afterwards."""
    from stores.conftest import S3_ENV, fresh_url, require_env

    env = require_env("s3", *S3_ENV)
    url = fresh_url(env["CHUNKYARD_TEST_S3_URL"])
    yield url

    async def empty() -> None:
        from chunkyard.stores.s3 import S3Store

        store = S3Store(url)
        try:
            for key in [info.key async for info in store.list("")]:
                await store.delete(key)
        finally:
            await store.close()

    asyncio.run(empty())
