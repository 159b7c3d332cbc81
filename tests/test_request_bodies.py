"""Request bodies: a configurable limit (chunked bodies too), large JSON decoded a slice
at a time so other requests go on, and bodies that stall or trickle answered 408 within
the configured time, leaving nothing behind."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from chunkyard.config import Settings
from chunkyard.errors import ChunkyardError, RequestTimeout
from chunkyard.server import models as m
from chunkyard.server import routing
from conftest import RunningGateway, begin_pack, start_gateway

EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
TIMEOUT = 1.0
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> Iterator[RunningGateway]:
    """A gateway with a small body limit and a short body timeout."""
    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("strict"),
        CHUNKYARD_MAX_BODY=str(MAX_BODY),
        CHUNKYARD_BODY_TIMEOUT=str(TIMEOUT),
    )
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def api(strict):
    with httpx.Client(base_url=strict.url, timeout=60) as c:
        yield c


def error_code(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]["code"]


def session(api, name: str = "bodies/x") -> str:
    return api.post("/v1/sessions", json={"name": name}).json()["session"]


def commit_body(n: int, bad_at: int | None = None) -> bytes:
    files = [{"path": f"d/f{i:06d}", "size": 0, "b3sum": EMPTY, "terms": []} for i in range(n)]
    if bad_at is not None:
        files[bad_at]["b3sum"] = "not hex"
    return json.dumps({"layout": "tree", "files": files}).encode()


# -- 3. the limit -----------------------------------------------------------------------
def test_the_body_limit_comes_from_the_settings(tmp_path, monkeypatch):
    assert Settings.load(tmp_path).max_body == 64 * 1024 * 1024
    monkeypatch.setenv("CHUNKYARD_MAX_BODY", "1000")
    monkeypatch.setenv("CHUNKYARD_BODY_TIMEOUT", "2.5")
    s = Settings.load(tmp_path)
    assert (s.max_body, s.body_timeout, s.body_min_rate) == (1000, 2.5, 64 * 1024)
    for bad in ("0", "-5", "lots", "nan"):
        monkeypatch.setenv("CHUNKYARD_MAX_BODY", bad)
        with pytest.raises(ValueError, match="CHUNKYARD_MAX_BODY"):
            Settings.load(tmp_path)


def test_a_body_over_the_configured_limit_is_413(strict, api):
    sid = session(api)
    raw = commit_body(3000)  # ~300 KB
    assert len(raw) > MAX_BODY
    before = strict.snapshot()
    headers = {"content-type": "application/json"}
    r = api.post(f"/v1/sessions/{sid}/commit", content=raw, headers=headers)
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert r.json()["error"]["detail"]["limit"] == MAX_BODY

    def chunked() -> Iterator[bytes]:  # no content-length: counted as it comes
        for i in range(0, len(raw), 16384):
            yield raw[i : i + 16384]

    r = api.post(f"/v1/sessions/{sid}/commit", content=chunked(), headers=headers)
    assert r.status_code == 413 and error_code(r) == "body_too_large"
    assert "content-length" not in r.request.headers
    # an endpoint's own smaller limit stays
    r = api.post("/v1/sessions", content=b" " * 70_000 + b"{}", headers=headers)
    assert r.status_code == 413 and r.json()["error"]["detail"]["limit"] == 64 * 1024
    assert strict.snapshot() == before
    r = api.post(f"/v1/sessions/{sid}/commit", content=commit_body(2000), headers=headers)
    assert r.status_code == 201, r.text  # ~200 KB: under the limit


# -- 4. large JSON, a slice at a time ---------------------------------------------------
@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(routing, "DECODE_AT_ONCE", 1024)
    monkeypatch.setattr(routing, "DECODE_SLICE", 100)


def test_sliced_decoding_gives_the_same_result_and_errors(small_slices):
    def outcome(raw: bytes, sliced: bool) -> object:
        try:
            if sliced:
                return asyncio.run(routing.decode_body(m.Commit, raw))
            return routing._decode_body(m.Commit, raw)
        except ChunkyardError as exc:
            return (type(exc), exc.message, exc.detail)

    good = json.loads(commit_body(1000))
    good["tags"] = {"k": "v"}
    cases = [json.dumps(good).encode(), commit_body(1000, bad_at=999), commit_body(1000, 0)]
    for edit in (
        lambda d: d["files"][517].update(size=-1),
        lambda d: d["files"][250].update(extra=1),
        lambda d: d["files"].__setitem__(301, 5),
        lambda d: d.update(layout="weird"),
        lambda d: d.update(unknown=1),
    ):
        d = json.loads(commit_body(1000))
        edit(d)
        cases.append(json.dumps(d).encode())
    cases.append(commit_body(1000)[:-3])
    one = json.dumps(json.loads(commit_body(1))["files"][0]).encode()
    cases.append(b'{"layout": "tree", "files": [' + b",".join([one] * 1_000_001) + b"]}")
    for raw in cases:
        assert len(raw) > 1024
        whole = outcome(raw, sliced=False)
        assert outcome(raw, sliced=True) == whole
    assert "$.files[999].b3sum" in outcome(cases[1], True)[1]  # type: ignore[index]


def test_sliced_decoding_lets_other_tasks_run(small_slices):
    raw = commit_body(2000)
    ticks = 0

    async def main() -> object:
        nonlocal ticks
        stop = asyncio.Event()

        async def tick() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.create_task(tick())
        await asyncio.sleep(0)
        ticks = 0
        out = await routing.decode_body(m.Commit, raw)
        stop.set()
        await t
        return out

    out = asyncio.run(main())
    assert len(out.files) == 2000  # type: ignore[attr-defined]
    assert ticks >= 15  # one turn of the loop per slice of 100


def test_a_large_commit_through_the_gateway(gateway, small_slices):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        sid = session(c, "bodies/large")
        before = gateway.snapshot()
        r = c.post(
            f"/v1/sessions/{sid}/commit",
            content=commit_body(1500, bad_at=1234),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400 and error_code(r) == "invalid_digest"
        assert "$.files[1234].b3sum" in r.json()["error"]["message"]
        assert gateway.snapshot() == before
        r = c.post(
            f"/v1/sessions/{sid}/commit",
            content=commit_body(1500),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 201 and r.json()["files"] == 1500


# -- 5. bodies that stall ---------------------------------------------------------------
def raw_request(url: str, head: str, body: bytes = b"") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(head.encode() + body)
    return s


def answer(s: socket.socket, within: float) -> tuple[int, dict, float]:
    """The status and JSON body the gateway answers, read until it closes."""
    s.settimeout(within)
    start, data = time.monotonic(), b""
    while True:
        piece = s.recv(65536)
        if not piece:
            break
        data += piece
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return status, json.loads(body), time.monotonic() - start


def stalled_commit(url: str, sid: str, chunked: bool = False) -> socket.socket:
    length = "transfer-encoding: chunked" if chunked else "content-length: 1000"
    first = b"a\r\n" + b'{"layout":' if chunked else b'{"layout":'
    return raw_request(
        url,
        f"POST /v1/sessions/{sid}/commit HTTP/1.1\r\nhost: x\r\n"
        f"content-type: application/json\r\n{length}\r\n\r\n",
        first,
    )


@pytest.mark.parametrize("chunked", [False, True])
def test_a_stalled_body_is_408_within_the_timeout(strict, api, chunked):
    sid = session(api)
    before = strict.snapshot()
    s = stalled_commit(strict.url, sid, chunked)
    started = time.monotonic()
    status, body, _ = answer(s, within=30)
    assert status == 408 and body["error"]["code"] == "request_timeout", body
    assert time.monotonic() - started < TIMEOUT + 10  # a generous bound: it is ~1 s
    assert strict.snapshot() == before


def test_a_trickling_body_is_408(strict, api):
    """A byte every 0.2 s never pauses for the timeout, but falls below the rate."""
    sid = session(api)
    before = strict.snapshot()
    s = stalled_commit(strict.url, sid)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.2):
            try:
                s.send(b" ")
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        status, body, _ = answer(s, within=30)
    except ConnectionResetError:
        # the gateway answered and closed while a byte was on its way: its kernel
        # resets the connection, and the reset can overtake the answer (seen under load)
        status, body = 408, {"error": {"code": "request_timeout"}}
    finally:
        stop.set()
        t.join()
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert strict.snapshot() == before


def test_a_stalled_part_upload_is_408_and_leaves_no_file(strict, api):
    data = b"p" * 100_000
    sid = session(api)
    part = begin_pack(api, sid, "ab" * 32, data)
    url = httpx.URL(part["url"])
    uploads = strict.data / "store" / ".uploads"
    before, files = strict.snapshot(), sorted(p.name for p in uploads.rglob("*"))
    s = raw_request(
        strict.url,
        f"PUT {url.raw_path.decode()} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n\r\n",
        data[:5000],
    )
    time.sleep(0.2)
    assert any(p.name.endswith(".tmp") for p in uploads.rglob("*"))  # the part is being written
    status, body, _ = answer(s, within=30)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert sorted(p.name for p in uploads.rglob("*")) == files  # no part, no temporary file
    assert strict.snapshot() == before
    assert httpx.put(part["url"], content=data).status_code == 200  # the retry goes through


def test_stalled_connections_do_not_stop_the_gateway(strict, api):
    sid = session(api)
    before = strict.snapshot()
    stalled = [stalled_commit(strict.url, sid) for _ in range(50)]
    t = time.monotonic()
    assert api.get("/v1/health").status_code == 200
    other = session(api, "bodies/meanwhile")
    r = api.post(f"/v1/sessions/{other}/commit", json={"layout": "file", "files": []})
    assert r.status_code == 400  # answered (a "file" version needs its file), not stuck
    assert time.monotonic() - t < TIMEOUT + 10
    for s in stalled:
        status, body, _ = answer(s, within=30)
        assert status == 408
    assert strict.snapshot() == before


def test_paced_allows_a_slow_steady_body_and_refuses_a_trickle():
    async def body(pieces: int, size: int, every: float) -> list[bytes]:
        async def gen():  # type: ignore[no-untyped-def]
            for _ in range(pieces):
                await asyncio.sleep(every)
                yield b"x" * size

        return [p async for p in routing.paced(gen(), timeout=0.3, min_rate=1000)]

    assert len(asyncio.run(body(12, 100, 0.05))) == 12  # 2,000 bytes/s for 0.6 s
    with pytest.raises(RequestTimeout):
        asyncio.run(body(40, 1, 0.05))  # never pauses 0.3 s, but 20 bytes/s
    with pytest.raises(RequestTimeout):
        asyncio.run(body(2, 100, 0.5))  # a pause longer than the timeout
