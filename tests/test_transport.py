"""The client transport's one retry policy: its bounds (tries, deadline, Retry-After),
which answers are retried and which fail at once, the presigned-URL renewal helper, and
how waits are reported. Time is faked where bounds are checked; real requests go to a
tiny scripted HTTP server on 127.0.0.1 with millisecond backoff."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chunkyard import Client
from chunkyard.client.download import fetch_reference
from chunkyard.client.references import NDJSON, register
from chunkyard.client.transport import (
    RetryPolicy,
    Transient,
    Transport,
    Wait,
    parse_retry_after,
    retry_call,
    with_fresh_url,
)
from chunkyard.errors import (
    ChunkyardError,
    Conflict,
    GatewayUnavailable,
    InvalidRequest,
    NotFound,
    ReferenceDrifted,
    StoreError,
    StoreObjectMissing,
)
from http_source import QuietHandler

FAST = RetryPolicy(attempts=8, deadline=30.0, base=0.001, cap=0.005)


# -- the policy on its own ---------------------------------------------------------
def test_backoff_grows_with_jitter_up_to_the_cap():
    p = RetryPolicy(attempts=100, deadline=1e9, base=0.5, cap=10.0)
    for attempt in range(1, 40):
        full = min(10.0, 0.5 * 2 ** (attempt - 1))
        for _ in range(20):
            d = p.delay(attempt, 0.0)
            assert d is not None and 0.5 * full <= d <= full


def test_tries_and_deadline_both_bound_the_waits():
    p = RetryPolicy(attempts=4, deadline=60.0, base=1.0, cap=1.0)
    assert p.delay(3, 0.0) is not None
    assert p.delay(4, 0.0) is None  # four tries made: give up
    assert p.delay(1, 60.0) is None  # deadline reached
    assert p.delay(1, 59.9) == pytest.approx(0.1)  # the last wait ends at the deadline
    assert RetryPolicy(attempts=1).delay(1, 0.0) is None  # attempts=1: no retry at all


def test_retry_after_replaces_the_backoff_within_the_deadline():
    p = RetryPolicy(attempts=10, deadline=100.0, base=0.5, cap=1.0)
    assert p.delay(1, 0.0, retry_after=7.0) == 7.0  # longer than cap: the server knows
    assert p.delay(1, 0.0, retry_after=0.0) == 0.0
    assert p.delay(1, 90.0, retry_after=3600.0) == 10.0  # never past the deadline
    assert parse_retry_after("3") == 3.0 and parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("inf") is None
    later = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert later is not None and 20 < later <= 31
    assert parse_retry_after(formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_defaults_ride_out_two_minutes_and_env_configures_them():
    d = RetryPolicy()
    assert d.deadline >= 120 and d.attempts >= 20
    # even the shortest waits the jitter allows add up to more than a minute
    shortest = sum(0.5 * min(d.cap, d.base * 2 ** (n - 1)) for n in range(1, d.attempts))
    assert shortest > 60
    env = {"CHUNKYARD_RETRY_ATTEMPTS": "3", "CHUNKYARD_RETRY_DEADLINE": "7.5"}
    assert RetryPolicy.from_env(env) == RetryPolicy(attempts=3, deadline=7.5)
    assert RetryPolicy.from_env({}) == RetryPolicy()
    for bad in ({"CHUNKYARD_RETRY_ATTEMPTS": "many"}, {"CHUNKYARD_RETRY_ATTEMPTS": "0"}):
        with pytest.raises(InvalidRequest, match="CHUNKYARD_RETRY"):
            RetryPolicy.from_env(bad)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _always_transient(calls: list[int]):
    def attempt() -> None:
        calls.append(1)
        raise Transient(GatewayUnavailable("down"), "unreachable (ConnectionRefused)")

    return attempt


def test_retry_call_stops_at_the_attempt_count():
    t, calls, waits = FakeTime(), [], []
    policy = RetryPolicy(attempts=5, deadline=1e6, base=1.0, cap=2.0)
    with pytest.raises(GatewayUnavailable) as caught:
        retry_call(policy, "gateway at x", _always_transient(calls), waits.append, t.clock, t.sleep)
    assert len(calls) == 5 and len(t.slept) == 4 and caught.value.detail["tries"] == 5
    assert [w.attempt for w in waits] == [2, 3, 4, 5]
    assert all(isinstance(w, Wait) and w.what == "gateway at x" for w in waits)


def test_retry_call_stops_at_the_deadline():
    t, calls = FakeTime(), []
    policy = RetryPolicy(attempts=10_000, deadline=100.0, base=1.0, cap=4.0)
    with pytest.raises(GatewayUnavailable):
        retry_call(policy, "gateway", _always_transient(calls), None, t.clock, t.sleep)
    assert t.now == pytest.approx(100.0)  # the last wait ends at the deadline, no later
    assert 25 <= len(calls) <= 110


def test_retry_call_reports_each_wait():
    t, waits, left = FakeTime(), [], [2]

    def attempt() -> str:
        if left[0]:
            left[0] -= 1
            raise Transient(GatewayUnavailable("down"), "answered HTTP 503", retry_after=4.0)
        return "ok"

    policy = RetryPolicy(attempts=10, deadline=100.0)
    assert (
        retry_call(policy, "gateway at http://gw", attempt, waits.append, t.clock, t.sleep) == "ok"
    )
    assert [(w.attempt, w.delay, w.gives_up_in) for w in waits] == [(2, 4.0, 100.0), (3, 4.0, 96.0)]
    assert str(waits[1]) == (
        "gateway at http://gw answered HTTP 503; retrying in 4.0 s (attempt 3, gives up in 96 s)"
    )


def test_other_errors_are_not_retried():
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise NotFound("no such thing")

    with pytest.raises(NotFound):
        retry_call(RetryPolicy(), "gateway", attempt)
    assert len(calls) == 1


def test_fresh_urls_for_refused_requests_only():
    sent, renewed = [], []

    def send(req: dict) -> str:
        sent.append(req["url"])
        if req["status"]:
            raise StoreError("refused", status=req["status"])
        return req["url"]

    def renew(exc: StoreError) -> dict:
        renewed.append(exc.detail["status"])
        return {"url": f"u{len(renewed)}", "status": 0 if len(renewed) == 2 else 403}

    assert with_fresh_url(send, {"url": "u0", "status": 403}, renew) == "u2"
    assert sent == ["u0", "u1", "u2"] and renewed == [403, 403]
    # a status outside the refused set is not renewed
    sent.clear()
    with pytest.raises(StoreError):
        with_fresh_url(send, {"url": "x", "status": 404}, renew)
    assert sent == ["x"]
    # renewals run out
    with pytest.raises(StoreError):
        with_fresh_url(send, {"url": "y", "status": 401}, lambda e: {"url": "z", "status": 401})


# -- against a scripted server --------------------------------------------------------
class Scripted:
    """Answers each request with the next scripted answer (then 200 with ``body``): a
    status, ``(status, headers)`` or ``(status, headers, body)``; status ``"cut"`` is a
    200 that sends half the promised ``body``, then closes the connection."""

    def __init__(self) -> None:
        self.script: deque[Any] = deque()
        self.seen: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []
        self.peers: list[int] = []  # the client's port of each request: its connection
        self.body = b'{"ok": true}'
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        s = self

        class Handler(QuietHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                s.seen.append((self.command, self.path))
                s.peers.append(self.client_address[1])
                s.headers.append({k.lower(): v for k, v in self.headers.items()})
                step = s.script.popleft() if s.script else 200
                status, headers, *rest = step if isinstance(step, tuple) else (step, {})
                cut = status == "cut"
                if cut:
                    status, rest = 200, [s.body]
                body = rest[0] if rest else s.body if status < 300 else _error_body(status)
                self.send_response(status)
                for k, v in {"content-length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if cut else body)
                self.close_connection = cut

            do_GET = do_POST = do_PUT = answer  # noqa: N815

        return Handler


def _error_body(status: int) -> bytes:
    code = {400: "bad_request", 404: "not_found", 409: "conflict", 503: "gateway_unavailable"}
    err = {"code": code.get(status, "error"), "message": f"scripted {status}"}
    return json.dumps({"error": err}).encode()


@pytest.fixture
def scripted():
    s = Scripted()
    yield s
    s.close()


@pytest.fixture
def transport(scripted):
    waits: list[Wait] = []
    t = Transport(scripted.url, retry=FAST, on_wait=waits.append)
    t.waits = waits  # type: ignore[attr-defined]
    yield t
    t.close()


def test_transient_answers_are_retried(scripted, transport):
    scripted.script.extend([503, (429, {"retry-after": "0"}), 408, 500, 502, 504])
    assert transport.call("GET", "/v1/stats") == {"ok": True}
    assert len(scripted.seen) == 7
    assert [w.reason for w in transport.waits][:2] == ["answered HTTP 503", "answered HTTP 429"]
    assert transport.waits[1].delay == 0.0  # Retry-After: 0 honoured


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InvalidRequest),
        (404, NotFound),
        (409, Conflict),
        (401, ChunkyardError),
        (501, ChunkyardError),
    ],
)
def test_programming_errors_fail_at_once(scripted, transport, status, error):
    scripted.script.append(status)
    with pytest.raises(error):
        transport.call("POST", "/v1/sessions", json={"name": "x"})
    assert len(scripted.seen) == 1 and not transport.waits


def test_a_missing_store_object_is_not_retried(scripted, transport):
    """A 502 that names a missing object will not get better by asking again."""
    gone = json.dumps({"error": {"code": "store_object_missing", "message": "gone"}})
    scripted.script.append((502, {}, gone.encode()))
    with pytest.raises(StoreObjectMissing):
        transport.call("GET", "/v1/artifacts/a/-/versions/1")
    assert len(scripted.seen) == 1


def test_retries_stop_at_the_attempt_count(scripted, transport):
    scripted.script.extend([503] * 20)
    with pytest.raises(GatewayUnavailable) as caught:
        transport.call("GET", "/v1/stats")
    assert len(scripted.seen) == FAST.attempts == caught.value.detail["tries"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_an_unreachable_gateway_is_retried_then_reported():
    waits: list[Wait] = []
    t = Transport(f"http://127.0.0.1:{_closed_port()}", retry=FAST, on_wait=waits.append)
    with pytest.raises(GatewayUnavailable, match="cannot reach the gateway"):
        t.call("GET", "/v1/stats")
    assert len(waits) == FAST.attempts - 1
    assert waits[0].reason == "unreachable (ConnectionRefused)"


def test_progress_prints_one_line_per_wait(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    policy = RetryPolicy(attempts=3, deadline=30.0, base=0.001, cap=0.001)
    with Client(url, progress=True, retry=policy) as c, pytest.raises(GatewayUnavailable):
        c.stats()
    lines = capsys.readouterr().err.splitlines()
    # two waits within a second: said once
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"chunkyard: gateway at {url} unreachable (ConnectionRefused); retrying in 0.0 s "
        "(attempt 2, gives up in 30 s)"
    )
    with Client(url, retry=policy) as c, pytest.raises(GatewayUnavailable):
        c.stats()
    assert not capsys.readouterr().err  # without progress: silent


def test_the_client_takes_its_policy_from_the_environment(monkeypatch):
    monkeypatch.setenv("CHUNKYARD_RETRY_ATTEMPTS", "4")
    monkeypatch.setenv("CHUNKYARD_RETRY_DEADLINE", "9")
    with Client("http://127.0.0.1:1") as c:
        assert c.transport.retry == RetryPolicy(attempts=4, deadline=9.0)
    with Client("http://127.0.0.1:1", retry=FAST) as c:
        assert c.transport.retry is FAST


def test_store_requests_share_the_policy(scripted, transport):
    req = {"method": "PUT", "url": scripted.url + "/part?sig=secret", "headers": {}}
    scripted.script.extend([503, 500])
    resp = transport.send(req, content=memoryview(b"x" * 1000), what="upload of part 1")
    assert resp.status == 200 and len(scripted.seen) == 3
    assert {w.what for w in transport.waits} == {f"store at {scripted.url}"}  # no signature
    scripted.script.append(403)  # refused: the caller may renew the URL
    with pytest.raises(StoreError) as caught:
        transport.send(req, content=b"x", what="upload of part 1")
    assert caught.value.detail["status"] == 403 and len(scripted.seen) == 4


def test_a_read_cut_short_is_read_again(scripted, transport):
    scripted.body = bytes(range(256)) * 64
    scripted.script.extend(["cut", 503])
    req = {"method": "GET", "url": scripted.url + "/pack", "headers": {}}
    buf = bytearray(len(scripted.body))
    got = transport.fetch_into(req, 0, len(buf), buf)
    assert bytes(got) == scripted.body and len(scripted.seen) == 3
    assert transport.waits[0].reason.startswith("connection lost")


def test_reads_into_a_buffer_keep_their_connection(scripted, transport):
    """Pack reads land in the caller's buffer straight off the socket, and the
    connection then serves the next read: not one connection per range."""
    scripted.body = bytes(range(256)) * 64
    req = {"method": "GET", "url": scripted.url + "/pack", "headers": {}}
    buf = bytearray(len(scripted.body) + 10)
    for _ in range(3):
        assert bytes(transport.fetch_into(req, 0, len(scripted.body), buf)) == scripted.body
    assert len(scripted.seen) == 3 and len(set(scripted.peers)) == 1
    with pytest.raises(StoreError, match="did not send exactly"):  # more than asked for
        transport.fetch_into(req, 0, len(scripted.body) - 1, buf)


def test_a_reference_download_renews_resumes_and_reports_drift(scripted, transport, tmp_path):
    data = bytes(range(256)) * 1000
    modified = "Tue, 14 Nov 2023 22:13:20 GMT"
    ref = {"uri": "https://models.example/w.bin", "size": len(data), "etag": ""}
    ref |= {"version_id": None, "last_modified": modified}
    fresh = {"method": "GET", "url": scripted.url + "/w.bin?sig=2", "headers": {}}
    plan = json.dumps({"reference": {**ref, "request": fresh}}).encode()
    half = len(data) // 2
    rest = {"content-range": f"bytes {half}-{len(data) - 1}/{len(data)}"}
    scripted.body = data
    scripted.script.extend([403, (200, {}, plan), "cut", (206, rest, data[half:])])
    entry = {"index": 0, "path": "w.bin", "digest": None}
    ref["request"] = {"method": "GET", "url": scripted.url + "/w.bin?sig=1", "headers": {}}

    fetch_reference(transport, "/v1/artifacts/a/-/versions/1", entry, tmp_path / "w.bin", None, ref)
    assert (tmp_path / "w.bin").read_bytes() == data
    assert [p for _, p in scripted.seen] == [
        "/w.bin?sig=1",  # expired
        "/v1/artifacts/a/-/versions/1/files/0/reconstruction",  # a fresh request
        "/w.bin?sig=2",  # cut short
        "/w.bin?sig=2",  # resumed
    ]
    assert scripted.headers[3]["range"] == f"bytes={half}-"
    for status, state in ((404, "missing"), (410, "missing"), (412, "changed")):
        scripted.script.append(status)
        with pytest.raises(ReferenceDrifted) as caught:
            fetch_reference(transport, "/v1/x", entry, tmp_path / "d.bin", None, ref)
        assert caught.value.detail["state"] == state and caught.value.detail["path"] == "w.bin"
        assert caught.value.detail["uri"] == ref["uri"] and not (tmp_path / "d.bin").exists()


def test_a_registration_stream_lost_midway_is_asked_again(scripted, transport):
    events = [
        {"event": "progress", "bytes": 100, "bytes_done": 40},
        {"event": "progress", "bytes": 100, "bytes_done": 100},
        {"event": "done", "result": {"name": "r", "version": 1, "size": 100}},
    ]
    lines = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    scripted.body = lines
    ndjson = {"content-type": NDJSON}
    scripted.script.extend([("cut", ndjson), (200, ndjson, lines)])
    advanced: list[int] = []
    result = register(transport, {"name": "r", "uri": "u", "hash": True}, lambda n: advanced.append)
    assert result["version"] == 1 and len(scripted.seen) == 2
    assert advanced == [40, 60]  # the second stream starts over: no byte counted twice
    assert scripted.headers[1]["accept"] == NDJSON
