"""The spool (``Client.push(..., wait=False)``, ``chunkyard push --background``): the
caller is back at once, the bytes pushed are the ones it had when it asked, and the
job survives an unreachable gateway, a killed worker and a refusal, against real
gateways, real worker processes and real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import urllib3

import chunkyard
from chunkyard import Client
from chunkyard.client.spool import Spool
from chunkyard.client.transport import RetryPolicy
from chunkyard.errors import Forbidden
from conftest import cli, free_port, random_bytes, start_gateway

#: the code under test, for the processes started here
SRC = str(Path(chunkyard.__file__).resolve().parents[1])
#: an attempt against a gateway that is down fails fast, and the next comes soon
FAST = {"CHUNKYARD_RETRY_ATTEMPTS": "2", "CHUNKYARD_RETRY_DEADLINE": "0.5"}


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A spool of this test's own; detached workers (started with this spool in their
    environment) are stopped at the end, by pid."""
    root = tmp_path / "spool"
    monkeypatch.setenv("CHUNKYARD_SPOOL_DIR", str(root))
    monkeypatch.setenv("CHUNKYARD_SPOOL_BACKOFF", "0.3")
    yield root
    for pid in _workers_of(root):
        os.kill(pid, signal.SIGKILL)


def _workers_of(root: Path) -> list[int]:
    mark = f"CHUNKYARD_SPOOL_DIR={root}".encode()
    out = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def env_for(url: str, spool: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update(CHUNKYARD_URL=url, CHUNKYARD_SPOOL_DIR=str(spool), CHUNKYARD_SPOOL_BACKOFF="0.3")
    env.update(extra)
    return env


def wait_for(what: str, cond, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (out := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)
    return out


def done_result(spool: Path, job_id: str) -> dict | None:
    where, job = Spool(spool).find(job_id)
    assert where != "failed", job.state if job else None
    return job.state["result"] if where == "done" and job else None


def pulled(client: Client, ref: str, tmp_path: Path) -> bytes:
    dest = tmp_path / f"pulled-{ref.replace('/', '_')}"
    client.pull(ref, dest)
    return dest.read_bytes()


# -- 1: back at once, and the bytes of the moment ----------------------------------------
def test_push_background_returns_and_the_version_holds_the_bytes_of_that_moment(
    gateway, spool_dir, tmp_path
):
    ckpt = tmp_path / "ckpt.bin"
    original = random_bytes(3 << 20, seed=1)
    ckpt.write_bytes(original)
    out = cli(env_for(gateway.url, spool_dir), "push", str(ckpt), "spool/bg/a", "--background")
    assert out.returncode == 0, out.stderr
    assert "spooled spool/bg/a as job" in out.stdout and "worker pid" in out.stdout
    job_id = out.stdout.split("as job ")[1].split(":")[0]
    # the next checkpoint, written in place: the same inode, truncated, then rewritten
    with open(ckpt, "r+b") as f:
        f.write(b"\xff" * 65536)
    with open(ckpt, "wb") as f:
        f.write(random_bytes(2 << 20, seed=2))
    result = wait_for("the background push", lambda: done_result(spool_dir, job_id))
    with gateway.client() as c:
        assert pulled(c, f"spool/bg/a@{result['version']}", tmp_path) == original
    assert not (spool_dir / "done" / job_id / "data").exists()  # the snapshot is freed

    # the same from Python: push(wait=False) hands back a handle before the push
    ckpt.write_bytes(original[::-1])
    with Client(gateway.url) as c:
        handle = c.push(ckpt, "spool/bg/a", {"step": "2"}, wait=False)
        with open(ckpt, "r+b") as f:
            f.write(b"\0" * (1 << 20))
        v = handle.wait(timeout=60)
        assert (handle.state(), v["version"], v["created"]) == ("done", 2, True)
        assert pulled(c, "spool/bg/a@2", tmp_path) == original[::-1]
        assert c.show("spool/bg/a@2")["tags"] == {"step": "2"}


# -- 2: the gateway is down: jobs wait, in order ------------------------------------------
class GatewayProcess:
    """``chunkyard serve`` on a port fixed in advance, so clients can be pointed at it
    before it runs."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "chunkyard.cli", "serve", "--port", str(self.port)]
        env = env_for(self.url, self.data / "unused-spool")
        self.proc = subprocess.Popen(
            [*argv, "--data", str(self.data)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "gateway exited"
            try:
                return httpx.get(self.url + "/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the gateway to start", up)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)


def test_jobs_wait_out_a_gateway_that_is_down_and_commit_in_spool_order(
    spool_dir, tmp_path, monkeypatch
):
    for k, v in FAST.items():  # for the worker that takes over when the client closes
        monkeypatch.setenv(k, v)
    gw = GatewayProcess(tmp_path / "gw")
    contents = [random_bytes(200_000 + i, seed=10 + i) for i in range(3)]
    handles = []
    c = Client(gw.url, retry=RetryPolicy(attempts=2, deadline=0.5))
    for i, data in enumerate(contents):
        p = tmp_path / "ckpt.bin"
        p.write_bytes(data)  # one path, overwritten for each checkpoint
        handles.append(c.push(p, "spool/down/model", {"step": str(i)}, wait=False))
    other = tmp_path / "other.bin"
    other.write_bytes(b"another artifact")
    handles.append(c.push(other, "spool/down/other", wait=False))

    def tried() -> list[dict]:
        out = cli(env_for(gw.url, spool_dir), "queue", "--json")
        assert out.returncode == 0, out.stderr
        jobs = json.loads(out.stdout)
        first = {j["name"]: j for j in reversed(jobs["pending"])}
        if all(j["attempts"] >= 2 for j in first.values()):
            return jobs
        return []

    jobs = wait_for("attempts against the gateway that is down", tried)
    assert [j["id"] for j in jobs["pending"]] == [h.id for h in handles]
    assert jobs["workers"] == {gw.url: os.getpid()}  # this process's thread drains
    model = [j for j in jobs["pending"] if j["name"] == "spool/down/model"]
    assert model[0]["last_error"]["code"] == "gateway_unavailable"
    # a job waits while an earlier one of its name is pending: never tried yet
    assert [j["attempts"] for j in model[1:]] == [0, 0]
    human = cli(env_for(gw.url, spool_dir), "queue").stdout
    assert "spool/down/model" in human and "last error: cannot reach the gateway" in human

    c.close()  # the process goes on without its thread: a detached worker takes over
    gw.start()
    try:
        results = [h.wait(timeout=60) for h in handles]
        assert [r["version"] for r in results] == [1, 2, 3, 1]
        with Client(gw.url) as reader:
            for i, data in enumerate(contents):
                assert pulled(reader, f"spool/down/model@{i + 1}", tmp_path) == data
                assert reader.show(f"spool/down/model@{i + 1}")["tags"] == {"step": str(i)}
        assert Spool(spool_dir).pending() == []
        assert not any((spool_dir / "done" / h.id / "data").exists() for h in handles)
        assert "committed" in (spool_dir / "worker.log").read_text()  # the detached one
    finally:
        gw.stop()


# -- 3: a worker killed after its commit, before it filed the job --------------------------
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


class HoldingProxy:
    """An HTTP proxy in front of a gateway that holds the answer of the ``nth`` request
    that makes a version (forwarded and carried out by the gateway) until released: a
    worker killed meanwhile dies after its commit, before it heard of it."""

    def __init__(self, target: str, nth: int) -> None:
        self.target, self.nth = target, nth
        self.commits: list[str] = []
        self.held, self.release = threading.Event(), threading.Event()
        self.pool = urllib3.PoolManager()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size) if size else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                resp = proxy.pool.request(
                    self.command, proxy.target + self.path, body=body, headers=headers,
                    retries=False, redirect=False,
                )  # fmt: skip
                # a session's commit, or a small push (one request)
                if self.command == "POST" and self.path.endswith(("/commit", "/-/versions")):
                    proxy.commits.append(self.path)
                    if len(proxy.commits) == proxy.nth:
                        proxy.held.set()
                        proxy.release.wait()
                        self.close_connection = True
                        return
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("content-length", str(len(resp.data)))
                self.end_headers()
                self.wfile.write(resp.data)

            do_GET = do_POST = do_PUT = do_DELETE = forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("small_push", ["0", "1048576"], ids=["session", "small"])
def test_a_worker_killed_after_a_commit_makes_no_duplicate_version(
    gateway, spool_dir, tmp_path, small_push
):
    """Through an upload session, the job records the session and its commit before
    sending it, and sends that again; a small push (one request, no session) is sent
    again whole, and the gateway answers content equal to the latest with that version."""
    name = f"spool/kill/{'session' if small_push == '0' else 'small'}"
    proxy = HoldingProxy(gateway.url, nth=2)
    try:
        spool = Spool(spool_dir)
        contents = [random_bytes(150_000, seed=20 + i) for i in range(3)]
        jobs = []
        for data in contents:
            p = tmp_path / "ckpt.bin"
            p.write_bytes(data)
            jobs.append(spool.add(p, name, proxy.url))
        env = env_for(proxy.url, spool_dir, CHUNKYARD_SMALL_PUSH_BYTES=small_push)
        worker = subprocess.Popen(
            [sys.executable, "-m", "chunkyard.cli", "queue", "drain"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proxy.held.wait(60), "the second commit never came"
            with gateway.client() as c:  # the gateway made version 2 ...
                assert [v["version"] for v in c.versions(name)] == [1, 2]
            os.kill(worker.pid, signal.SIGKILL)  # ... and the worker dies before it hears so
        finally:
            worker.kill()
            worker.wait()
        proxy.release.set()
        recorded = json.loads((spool_dir / "jobs" / jobs[1].id / "state.json").read_text())
        assert "result" not in recorded and recorded["attempts"] == 1
        if small_push == "0":
            assert recorded["commit"]["session"] in proxy.commits[1]

        again = subprocess.run(
            [sys.executable, "-m", "chunkyard.cli", "queue", "drain"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "committed 2, failed 0, pending 0" in again.stdout
        # the second job's commit went again, the same request: its version answered
        assert proxy.commits[2] == proxy.commits[1]
        results = [done_result(spool_dir, j.id) for j in jobs]
        assert [r["version"] for r in results] == [1, 2, 3]
        with gateway.client() as c:
            assert [v["version"] for v in c.versions(name)] == [1, 2, 3]
            for i, data in enumerate(contents):
                assert pulled(c, f"{name}@{i + 1}", tmp_path) == data
    finally:
        proxy.close()


def test_two_workers_at_once_push_each_job_once(gateway, spool_dir, tmp_path):
    proxy = HoldingProxy(gateway.url, nth=0)  # holds nothing; counts the commits
    try:
        spool = Spool(spool_dir)
        for i in range(4):
            p = tmp_path / f"f{i}.bin"
            p.write_bytes(random_bytes(20_000, seed=50 + i))
            spool.add(p, f"spool/two/m{i % 2}", proxy.url)
        argv = [sys.executable, "-m", "chunkyard.cli", "queue", "drain", "--json"]
        env = env_for(proxy.url, spool_dir)
        workers = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE) for _ in range(2)]
        reports = [json.loads(w.communicate(timeout=60)[0]) for w in workers]
        assert sorted(r["committed"] for r in reports) == [0, 4]
        assert len(proxy.commits) == 4 and spool.pending() == []
        with gateway.client() as c:
            assert [v["version"] for v in c.versions("spool/two/m0")] == [1, 2]
    finally:
        proxy.close()


def test_a_process_killed_while_spooling_leaves_a_whole_job_or_none(gateway, spool_dir, tmp_path):
    """Killed at any moment of spooling, a job is either whole in jobs/ or debris in
    tmp/ that no worker takes (and the next worker clears away)."""
    ckpt = tmp_path / "big.bin"
    original = random_bytes(64 << 20, seed=40)
    ckpt.write_bytes(original)
    code = (
        "import sys; from chunkyard.client.spool import Spool; "
        "Spool(sys.argv[1]).add(sys.argv[2], 'spool/crash/model', sys.argv[3])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(spool_dir), str(ckpt), gateway.url],
        env=env_for(gateway.url, spool_dir),
    )
    try:
        wait_for("spooling to begin", lambda: list((spool_dir / "tmp").glob("*/data/*")))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    spool = Spool(spool_dir)
    for job in spool.pending():  # taken in time: it is whole
        assert job.data.read_bytes() == original
    if not spool.pending():
        assert list((spool_dir / "tmp").iterdir())  # the debris, never listed
    spool.clean()
    assert not list((spool_dir / "tmp").iterdir())


# -- 4: a refusal fails the job for good ------------------------------------------------
def _offline_token(data: Path, scope: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "token", "create", "--data", str(data)]
        + ["--scope", scope],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def secured(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("secured")
    gw, server, thread = start_gateway(data, CHUNKYARD_AUTH="1")
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


def test_a_refused_job_moves_to_failed_with_its_error_and_can_be_retried(
    secured, spool_dir, tmp_path
):
    reader = _offline_token(secured.data, "read:spool/")
    writer = _offline_token(secured.data, "write:spool/")
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(random_bytes(5000, seed=30))
    b.write_bytes(random_bytes(5000, seed=31))
    with Client(secured.url, token=reader) as c:
        ha = c.push(a, "spool/refused/a", wait=False)
        hb = c.push(b, "spool/refused/b", wait=False)
        for h in (ha, hb):
            with pytest.raises(Forbidden):
                h.wait(timeout=60)
            assert h.state() == "failed"
    listed = cli(env_for(secured.url, spool_dir), "queue", "--json")
    failed = json.loads(listed.stdout)["failed"]
    assert [j["id"] for j in failed] == [ha.id, hb.id]
    assert failed[0]["attempts"] == 1 and failed[0]["last_error"]["code"] == "forbidden"
    assert "spool/refused/a" in failed[0]["last_error"]["message"]
    assert (spool_dir / "failed" / ha.id / "data" / "a.bin").exists()  # kept, to retry

    env = env_for(secured.url, spool_dir, CHUNKYARD_TOKEN=writer)
    assert cli(env, "queue", "retry", "nosuchjob").returncode == 2
    retried = cli(env, "queue", "retry", ha.id)
    assert retried.returncode == 0 and f"job {ha.id} is pending again" in retried.stdout
    assert wait_for("the retried job", lambda: done_result(spool_dir, ha.id))["version"] == 1
    dropped = cli(env, "queue", "drop", "--all")
    assert dropped.returncode == 0 and f"job {hb.id} dropped" in dropped.stdout
    assert Spool(spool_dir).failed() == [] and Spool(spool_dir).pending() == []
    with Client(secured.url, token=writer) as c:
        assert pulled(c, "spool/refused/a", tmp_path) == a.read_bytes()


def test_what_a_push_would_refuse_is_refused_before_anything_is_spooled(spool_dir, tmp_path):
    with Client("http://127.0.0.1:9", spool=spool_dir) as c:
        for bad in ("../up", "a//b", ""):
            with pytest.raises(chunkyard.errors.InvalidName):
                c.push(tmp_path, bad, wait=False)
        with pytest.raises(chunkyard.errors.InvalidRequest, match="does not exist"):
            c.push(tmp_path / "missing", "spool/x", wait=False)
    assert not any((spool_dir / "jobs").iterdir()) and not any((spool_dir / "tmp").iterdir())


def test_cleanup_leaves_a_job_alone_while_its_writer_holds_its_lock(spool_dir):
    import fcntl

    spool = Spool(spool_dir)
    tmp = spool_dir / "tmp"
    with open(tmp / "J.lock", "w") as held:  # a writer at work, as Spool.add holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        (tmp / "J" / "data").mkdir(parents=True)
        spool.clean()
        assert (tmp / "J" / "data").is_dir()
    spool.clean()  # the writer is gone: its debris goes
    assert not list(tmp.iterdir())
