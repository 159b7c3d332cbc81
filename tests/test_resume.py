"""Resume after a crash: a push or pull killed with SIGKILL and run again, a gateway
killed mid-push and restarted, a SeaweedFS restarted mid-push.

Real processes and real signals throughout: ``chunkyard push``/``pull`` run as
subprocesses, the gateway is ``chunkyard serve``, SeaweedFS a private ``weed mini``.
Transfers go through a throttling TCP proxy on 127.0.0.1 so that a kill lands while
parts are on their way, whatever the machine's speed. "Not sent again" is proven with
counts: the parts the store holds before the run again (the catalog's unfinished
uploads, through ``Store.list_parts``, and the pack objects) against the client's own
``parts_sent``, and every version pulls back identical.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from chunkyard import packs as packfmt
from chunkyard.client.packer import Packer
from chunkyard.client.resume import PushRecord, partial_paths, push_key
from chunkyard.digest import chunk_id
from chunkyard.errors import StoreError
from chunkyard.stores import open_store
from chunkyard.stores.base import Store
from chunkyard.stores.s3 import S3Store
from conftest import SRC, GatewayProcess, child_env, free_port, random_bytes
from stores.conftest import S3_ENV, require_env

MiB = 1024 * 1024


class Throttle:
    """A TCP proxy from 127.0.0.1:``port`` to 127.0.0.1:``target`` that moves at most
    ``rate`` bytes a second (both directions together; None: no limit). A target that
    is down gets the client's connection closed, as a dead server would."""

    def __init__(self, target: int, rate: float | None) -> None:
        self.target, self.rate = target, rate
        self._lock = threading.Lock()
        self._next = time.monotonic()  # when the next byte may pass
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()

    def _pace(self, n: int) -> None:
        rate = self.rate
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now) + n / rate
            wait = self._next - now - n / rate
        if wait > 0:
            time.sleep(wait)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while not self._closed:
                for key, _ in sel.select(timeout=0.1):
                    data = key.fileobj.recv(64 * 1024)  # type: ignore[union-attr]
                    if not data:
                        return
                    self._pace(len(data))
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            a.close()
            b.close()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def chunkyard(env: dict[str, str], *args: str) -> subprocess.Popen:
    """``chunkyard ARGS --json`` in a process of its own (a new session: SIGKILL-able)."""
    return subprocess.Popen(
        [sys.executable, "-m", "chunkyard.cli", *args, "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finished(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out)
    result["stderr"] = err
    return result


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL, while it runs: a process that ended already fails the test."""
    if proc.poll() is not None:
        out, err = proc.communicate()
        raise AssertionError(f"it ended before it was killed ({proc.returncode}): {err[-3000:]}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Held:
    """The parts of a gateway's packs its store holds: every part of each pack object,
    and the parts each unfinished upload of the catalog holds (``Store.list_parts``)."""

    def __init__(self, data: Path, store: Callable[[], Store]) -> None:
        self.catalog, self.store = data / "catalog.db", store

    def _uploading(self) -> list[tuple[str, str, int]]:
        if not self.catalog.exists():
            return []
        conn = sqlite3.connect(f"file:{self.catalog}?mode=ro", uri=True, timeout=10)
        try:
            q = "select key, store_upload_id, size from uploads where state = 'uploading'"
            return conn.execute(q).fetchall()
        except sqlite3.OperationalError:  # no schema yet
            return []
        finally:
            conn.close()

    async def _count(self) -> tuple[int, int]:
        store = self.store()  # of this event loop
        try:
            objects = [info async for info in store.list("packs/")]
            whole = sum(len(store.plan_parts(info.size)) for info in objects)
            listed = 0
            for key, upload, size in self._uploading():
                listed += len(await store.list_parts(key, upload, size))
            return whole, listed
        finally:
            await store.close()

    def count(self) -> tuple[int, int]:
        """(parts of pack objects, parts of unfinished uploads)."""
        return asyncio.run(self._count())

    def settled(self, quiet: float = 1.2) -> tuple[int, int]:
        """The count once it has not changed for ``quiet`` seconds (parts a killed
        client had handed to its kernel, or to a throttle, still land: a 2 MiB part at
        the tests' 4 MiB/s takes 0.5 s, and one 0.4 s pause once missed one)."""
        last, since = self.count(), time.monotonic()
        while time.monotonic() - since < quiet:
            time.sleep(0.3)
            now = self.count()
            if now != last:
                last, since = now, time.monotonic()
        return last


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def client_env(url: str, state: Path) -> dict[str, str]:
    return child_env(CHUNKYARD_URL=url, CHUNKYARD_STATE_DIR=str(state))


def start_push(
    tmp_path: Path, state: Path, url: str, held: Held, size: int, parts: int
) -> tuple[bytes, list[str], dict[str, str], subprocess.Popen]:
    """``chunkyard push`` of ``size`` random bytes to the gateway at ``url``, running
    until the store holds ``parts`` of its parts. Returns the bytes, the command, its
    environment and its process."""
    data = random_bytes(size, seed=size)
    src = tmp_path / "ckpt.bin"
    src.write_bytes(data)
    env = client_env(url, state)
    args = ["push", str(src), "resume/ckpt"]
    push = chunkyard(env, *args)
    wait_until("parts in the store", lambda: sum(held.count()) >= parts or push.poll() is not None)
    return data, args, env, push


def pulled(tmp_path: Path, env: dict[str, str]) -> bytes:
    back = tmp_path / "back.bin"
    finished(chunkyard(env, "pull", "resume/ckpt", str(back)))
    return back.read_bytes()


# -- the client dies -----------------------------------------------------------------
def _push_killed_and_resumed(
    tmp_path: Path, state: Path, url: str, throttle: Throttle, held: Held, size: int
) -> None:
    """Push ``size`` random bytes to the gateway at ``url`` (parts go through
    ``throttle``), SIGKILL the push once the store holds some parts, push again: only
    the parts the store lacks are sent."""
    data, args, env, first = start_push(tmp_path, state, url, held, size, parts=3)
    kill(first)
    before = held.settled()
    records = list((state / "push").glob("*.json"))
    assert len(records) == 1, "the push remembers its session"

    throttle.rate = None
    second = finished(chunkyard(env, *args))
    whole, listed = held.count()
    assert listed == 0  # nothing is left unfinished
    assert second["resumed"] and second["created"] and second["version"] == 1
    # every part the store held is not sent again; everything else is sent once
    # (a pack the store completed just as the client died counts as resumed parts too)
    assert second["parts_resumed"] >= before[1]
    assert second["parts_sent"] == whole - sum(before), (second, before, whole)
    assert sum(before) >= 3 and second["parts_sent"] > 0
    assert not list((state / "push").glob("*.json")), "the record goes with the commit"
    assert pulled(tmp_path, env) == data


def test_a_killed_push_resumes_on_the_local_store(tmp_path, state):
    """Local store: one part per pack (2 MiB packs here), so what resumes is every
    pack the store holds, whole or as the part the gateway received."""
    throttle = Throttle(0, rate=4 * MiB)
    gw = GatewayProcess(
        tmp_path / "gw",
        {"CHUNKYARD_PACK_TARGET": str(2 * MiB), "CHUNKYARD_PUBLIC_URL": throttle.url},
    ).start()
    throttle.target = gw.port
    held = Held(gw.data, lambda: open_store((tmp_path / "gw" / "store").as_uri()))
    try:
        gw.wait_ready()
        _push_killed_and_resumed(tmp_path, state, throttle.url, throttle, held, 20 * MiB)
    finally:
        gw.stop()
        throttle.close()


def test_a_killed_push_resumes_on_s3(tmp_path, state, s3_url):
    """S3 (SeaweedFS): 16 MiB packs of 8 MiB parts; the parts of a pack in flight that
    the store holds (ListParts) are not sent again, nor are finished packs."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    throttle = Throttle(int(endpoint.rsplit(":", 1)[1]), rate=6 * MiB)
    gw = GatewayProcess(
        tmp_path / "gw",
        {
            "CHUNKYARD_STORE": s3_url,
            "CHUNKYARD_PACK_TARGET": str(16 * MiB),
            "AWS_ENDPOINT_URL": throttle.url,  # presigned parts go through the throttle
        },
    ).start()
    held = Held(gw.data, lambda: S3Store(s3_url))
    try:
        gw.wait_ready()
        _push_killed_and_resumed(tmp_path, state, gw.url, throttle, held, 40 * MiB)
    finally:
        gw.stop()
        throttle.close()


def test_a_push_begun_under_sha256_resumes_under_crc32c(tmp_path, state, s3_url):
    """A push killed while its gateway's store signed SHA-256 part checksums (the S3
    default before CRC32C), run again once the gateway was restarted on the CRC32C
    default: S3 holds an upload's parts to the algorithm it was created with, so each
    upload in flight is begun again under CRC32C (its parts sent again), packs finished
    before are not, and the version pulls back whole."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    throttle = Throttle(int(endpoint.rsplit(":", 1)[1]), rate=6 * MiB)
    gw = GatewayProcess(
        tmp_path / "gw",
        {
            "CHUNKYARD_STORE": f"{s3_url}?checksum=sha256",
            # packs of an 8 MiB part and a ~4 MiB one: the short part is held well
            # before the pack completes, and the push is killed then
            "CHUNKYARD_PACK_TARGET": str(12 * MiB),
            "AWS_ENDPOINT_URL": throttle.url,
        },
    ).start()
    held = Held(gw.data, lambda: S3Store(s3_url))
    catalog = gw.data / "catalog.db"
    try:
        gw.wait_ready()
        data, args, env, first = start_push(tmp_path, state, gw.url, held, 40 * MiB, parts=1)
        wait_until("a part of an unfinished upload", lambda: held.count()[1] >= 1)
        kill(first)
        before = held.settled()
        gw.stop()
        conn = sqlite3.connect(catalog)
        kinds = conn.execute("select part_checksum from uploads where state = 'uploading'")
        in_flight = [k for (k,) in kinds]
        conn.close()
        assert in_flight and set(in_flight) == {"sha256"}, in_flight
        assert before[1] > 0, "parts of an upload in flight are held"

        gw.env["CHUNKYARD_STORE"] = s3_url  # the default: CRC32C
        gw.start().wait_ready()
        throttle.rate = None
        second = finished(chunkyard(env, *args))
        whole, listed = held.count()
        assert listed == 0
        assert second["resumed"] and second["created"] and second["version"] == 1
        # no part of an upload begun under SHA-256 is taken: they are all sent again
        assert second["parts_resumed"] == 0
        assert second["parts_sent"] == whole - before[0], (second, before, whole)
        conn = sqlite3.connect(catalog)
        assert conn.execute("select count(*) from uploads").fetchone()[0] == 0
        conn.close()
        assert pulled(tmp_path, env) == data
    finally:
        gw.stop()
        throttle.close()


def test_a_killed_pull_resumes(tmp_path, state):
    """A pull killed half-way keeps what it wrote and verified; pulled again, it reads
    those bytes back (each chunk checked against its id) and fetches only the rest."""
    throttle = Throttle(0, rate=None)
    gw = GatewayProcess(tmp_path / "gw", {"CHUNKYARD_PUBLIC_URL": throttle.url}).start()
    throttle.target = gw.port
    try:
        gw.wait_ready()
        # a pull fetches 6 units of 8 MiB at once: a larger file, so that some are done
        # (and recorded) long before the last
        data = random_bytes(96 * MiB, seed=21)
        src = tmp_path / "weights.bin"
        src.write_bytes(data)
        # throttled through the proxy: not read from the pack files around it
        env = client_env(throttle.url, state) | {"CHUNKYARD_LOCAL_READS": "0"}
        pushed = finished(chunkyard(env, "push", str(src), "resume/weights"))

        throttle.rate = 16 * MiB
        dest = tmp_path / "out" / "weights.bin"
        dest.parent.mkdir()
        first = chunkyard(env, "pull", "resume/weights", str(dest))
        _, record = partial_paths(dest, pushed["digest"])

        def verified() -> int:
            try:
                return json.loads(record.read_text())["verified"]
            except (OSError, ValueError):
                return 0

        wait_until("a part of the file", lambda: verified() >= 8 * MiB or first.poll() is not None)
        kill(first)
        kept = verified()
        assert 8 * MiB <= kept < len(data) and not dest.exists()

        throttle.rate = None
        second = finished(chunkyard(env, "pull", "resume/weights", str(dest)))
        assert dest.read_bytes() == data
        # random bytes are stored raw: a pack byte fetched is a file byte
        assert second["bytes_resumed"] >= kept
        assert second["bytes_downloaded"] == len(data) - second["bytes_resumed"]
        assert sorted(p.name for p in dest.parent.iterdir()) == ["weights.bin"]
    finally:
        gw.stop()
        throttle.close()


# -- the gateway dies ----------------------------------------------------------------
def _push_through_an_outage(
    tmp_path: Path,
    state: Path,
    url: str,
    throttle: Throttle,
    held: Held,
    size: int,
    outage: Callable[[], None],
) -> dict:
    """Push ``size`` random bytes to the gateway at ``url`` (parts through
    ``throttle``), run ``outage`` (kill something, wait, start it again) once the store
    holds some parts, and check that the push rode it out in its one session: every
    part of the version's packs sent once (a part counts when the store answered it),
    the version pulls back identical. Returns the push's answer."""
    data, _, env, push = start_push(tmp_path, state, url, held, size, parts=2)
    assert push.poll() is None, "the push finished before the outage"
    outage()
    throttle.rate = None
    result = finished(push, timeout=120)
    assert "retrying" in result["stderr"], result["stderr"]  # it said it was waiting
    assert not result["resumed"] and result["created"]  # one run, one session
    whole, listed = held.count()
    assert listed == 0 and result["parts_sent"] == whole
    assert pulled(tmp_path, env) == data
    return result


def test_a_push_rides_out_a_gateway_killed_and_restarted(tmp_path, state):
    """The gateway is SIGKILLed mid-push and started again on the same port and
    catalog a few seconds later: the push waits, says so, and goes on in its session."""
    throttle = Throttle(0, rate=4 * MiB)
    env = {"CHUNKYARD_PACK_TARGET": str(2 * MiB), "CHUNKYARD_PUBLIC_URL": throttle.url}
    gw = GatewayProcess(tmp_path / "gw", env).start()
    throttle.target = gw.port
    held = Held(gw.data, lambda: open_store((tmp_path / "gw" / "store").as_uri()))

    def outage() -> None:
        gw.kill()
        time.sleep(3)
        gw.start().wait_ready()

    try:
        gw.wait_ready()
        result = _push_through_an_outage(
            tmp_path, state, throttle.url, throttle, held, 20 * MiB, outage
        )
        assert "gateway at" in result["stderr"]
        conn = sqlite3.connect(gw.data / "catalog.db")
        assert conn.execute("select count(*) from sessions").fetchone()[0] == 1
        conn.close()
    finally:
        gw.stop()
        throttle.close()


# -- the store dies ------------------------------------------------------------------
S3_KEY, S3_SECRET, BUCKET = "chunkyard", "chunkyard-test-secret", "resume-test"


class Seaweed:
    """A private ``weed mini`` (own ports, own data directory), started and killed
    here; the shared SeaweedFS of the other tests is never touched."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data").mkdir(parents=True)
        config = {
            "identities": [
                {
                    "name": S3_KEY,
                    "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (root / "s3.json").write_text(json.dumps(config))
        self.port = _free_block()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Seaweed:
        weed = Path(sys.executable).with_name("weed")
        p = self.port
        argv = [
            str(weed),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p}",
            f"-master.port={p + 1}",
            f"-volume.port={p + 2}",
            f"-filer.port={p + 3}",
            f"-admin.port={p + 4}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",
            f"-bucket={BUCKET}",
        ]
        with open(self.root / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_until("SeaweedFS", answers, timeout=60)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _free_block() -> int:
    """A port ``p`` with ``p .. p+4`` and their gRPC ports ``+10000`` all free, below
    the ephemeral range (:func:`conftest.free_port`): SeaweedFS binds them one service
    at a time, and again after each kill."""
    return free_port(*range(5), *range(10_000, 10_005))


def test_a_push_rides_out_seaweedfs_killed_and_restarted(tmp_path, state):
    """A private SeaweedFS is SIGKILLed mid-push and started again on its data: the
    client's part uploads and the gateway's store calls (answered 502) are retried
    until it is back, and the push goes on in its session."""
    require_env("s3", *S3_ENV)  # the binary comes with the S3 test setup
    weed = Seaweed(tmp_path / "weed").start()
    throttle = Throttle(weed.port, rate=6 * MiB)
    s3 = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    url = f"s3://{BUCKET}/t"
    env = {**s3, "CHUNKYARD_STORE": url, "CHUNKYARD_PACK_TARGET": str(16 * MiB)}
    gw = GatewayProcess(tmp_path / "gw", {**env, "AWS_ENDPOINT_URL": throttle.url})
    held = Held(gw.data, lambda: _private(weed.url))

    def outage() -> None:
        weed.kill()
        # longer than the gateway's own store retries ride out (~3 s), and than the
        # client may spend between parts (completing a pack): the client meets it
        time.sleep(5)
        weed.start()

    try:
        wait_until("the bucket", lambda: _bucket(weed.url), timeout=30)
        gw.start().wait_ready()
        _push_through_an_outage(tmp_path, state, gw.url, throttle, held, 48 * MiB, outage)
    finally:
        gw.stop()
        throttle.close()
        weed.kill()


def _private(endpoint: str) -> S3Store:
    return S3Store(
        f"s3://{BUCKET}/t", endpoint_url=endpoint, access_key=S3_KEY, secret_key=S3_SECRET
    )


def _bucket(endpoint: str) -> bool:
    """The private SeaweedFS has its bucket (``-bucket`` makes it once it is up)."""

    async def head() -> bool:
        store = _private(endpoint)
        try:
            await store.check()
            return True
        except StoreError:
            return False
        finally:
            await store.close()

    return asyncio.run(head())


# -- the records themselves ----------------------------------------------------------
def test_a_record_of_a_session_that_is_gone_starts_a_new_one(gateway, tmp_path, monkeypatch):
    """A record naming a session that was committed, that the gateway does not know, or
    that expired: the push opens a new session, and the record is gone afterwards."""
    state = tmp_path / "state"
    monkeypatch.setenv("CHUNKYARD_STATE_DIR", str(state))
    data = random_bytes(3 * MiB, seed=8)  # above the small-push limit: a session
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    name = "resume/fallback"
    with gateway.client() as c:
        t = c.transport
        committed = t.call("POST", "/v1/sessions", json={"name": name})
        empty = {"layout": "file", "files": [{"path": "e", "size": 0}]}
        t.call("POST", f"/v1/sessions/{committed['session']}/commit", json=empty)
        unknown = {**committed, "session": "0" * 32}
        expired = {**committed, "expires_at": time.time() - 1}
        for n, session in enumerate((committed, unknown, expired)):
            record = PushRecord.open(push_key(t.url, name, [(src, src.name)]))
            record.save(session)
            record.close()
            r = c.push(src, name)
            assert not r["resumed"] and r["version"] == 2 and r["created"] == (n == 0)
            assert not list((state / "push").glob("*.json"))
        c.pull(name, tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_push_records_are_keyed_by_the_files_and_held_by_one_process(tmp_path):
    """A record is another when a file changed (size or time); a second process that
    pushes the same files at the same time gets none (it opens a session of its own)."""
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 10)
    key = push_key("http://gw", "n/a", [(f, "a.bin")])
    assert key == push_key("http://gw", "n/a", [(f, "a.bin")])
    assert key != push_key("http://gw", "n/b", [(f, "a.bin")])
    rec = PushRecord.open(key, tmp_path)
    rec.save({"session": "s1", "name": "n/a", "expires_at": time.time() + 60})
    code = (
        "import sys; from pathlib import Path; from chunkyard.client.resume import PushRecord;"
        "r = PushRecord.open(sys.argv[1], Path(sys.argv[2])); print(r.session)"
    )
    other = [sys.executable, "-c", code, key, str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": SRC}
    assert subprocess.run(other, capture_output=True, text=True, env=env).stdout.strip() == "None"
    rec.close()
    assert subprocess.run(other, capture_output=True, text=True, env=env).stdout.strip() == "s1"
    os.utime(f, ns=(0, 0))
    assert push_key("http://gw", "n/a", [(f, "a.bin")]) != key


# -- packing is deterministic ----------------------------------------------------------
def _mixed(n: int, seed: int) -> bytes:
    """Random bytes and compressible text in uneven runs: chunks of many stored sizes."""
    rng = __import__("random").Random(seed)
    out = bytearray()
    while len(out) < n:
        if rng.random() < 0.5:
            out += rng.randbytes(rng.randrange(100_000, 700_000))
        else:
            words = [
                rng.choice(("alpha", "beta", "gamma", "delta", "step", "loss"))
                for _ in range(50_000)
            ]
            out += " ".join(f"{w}={rng.random():.3f}" for w in words).encode()[
                : rng.randrange(100_000, 700_000)
            ]
    return bytes(out[:n])


def holding(done: dict[bytes, tuple[str, int]]) -> Callable[[list[bytes]], dict]:
    """A missing-chunk lookup of a gateway that holds the chunks ``done`` (chunk id ->
    pack, index), as a session's finished packs."""

    def lookup(keys: list[bytes]) -> dict:
        packs: dict[str, int] = {}
        locations: list = []
        for key in keys:
            where = done.get(chunk_id(key))
            locations.append(
                None if where is None else [packs.setdefault(where[0], len(packs)), where[1]]
            )
        return {"packs": list(packs), "locations": locations}

    return lookup


def _pack_run(path: Path, done: dict[bytes, tuple[str, int]], target: int) -> list[packfmt.Pack]:
    """Push ``path`` through a packer whose gateway holds the chunks ``done`` (chunk id
    -> pack, index), as the session's finished packs; the packs it ships, with copies
    of their bytes."""
    shipped: list[tuple[str, list[bytes]]] = []
    lookup = holding(done)

    def ship(pack: packfmt.Pack) -> None:
        shipped.append(packfmt.Pack(pack.id, bytes(pack.data), list(pack.entries)))

    with Packer(lookup, ship, target) as packer:
        packer.add_file(path, path.name)
        packer.finish()
    return shipped  # type: ignore[return-value]


@pytest.mark.parametrize("kind", ["random", "mixed"])
def test_packing_is_deterministic_whatever_packs_were_finished(tmp_path, kind):
    """A push run again rebuilds exactly the packs an interrupted run had not finished,
    whichever of its packs the store holds: two are in flight at once, so the later of
    them may finish first, and the earlier must still end where it ended."""
    data = random_bytes(12 * MiB, seed=3) if kind == "random" else _mixed(12 * MiB, seed=3)
    src = tmp_path / "f.bin"
    src.write_bytes(data)
    first = _pack_run(src, {}, 1 * MiB)
    assert len(first) >= 8
    ids = [p.id for p in first]
    for finished_packs in ({1}, {0, 2}, {2, 3, 5}, set(range(0, len(first), 2)), {len(first) - 2}):
        done = {
            e.chunk_id: (first[i].id, n)
            for i in finished_packs
            for n, e in enumerate(first[i].entries)
        }
        again = [p.id for p in _pack_run(src, done, 1 * MiB)]  # shipped in any order
        assert sorted(again) == sorted(x for i, x in enumerate(ids) if i not in finished_packs)
