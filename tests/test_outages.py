"""A push and a pull ride out a gateway that is briefly unreachable or answers 503.

All traffic, gateway API and presigned store requests alike (the local store's URLs
point at ``CHUNKYARD_PUBLIC_URL``), goes through :class:`faultproxy.FaultProxy` on
127.0.0.1, which can go dark: refuse new connections and reset the open ones. A
middleware in the gateway fails the first requests to chosen routes, with a 503 or by
taking the proxy dark for a moment, so each step of a push and a pull meets a fault at
least once."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import pytest

import conftest
from chunkyard import Client
from chunkyard.client.transport import RetryPolicy, Wait
from conftest import random_bytes, start_gateway
from faultproxy import FaultProxy

MiB = 1024 * 1024


class Faults:
    """ASGI middleware: the first ``times`` requests matching ``METHOD path-regex``
    answer 503 (``"503"``), find the gateway gone (``"dark"``: the proxy drops the
    connection and refuses new ones for a moment) or lose the answer of a request the
    gateway carried out (``"lost"``)."""

    def __init__(self, proxy: FaultProxy, rules: dict[str, tuple[str, int]]) -> None:
        self.proxy = proxy
        self.rules = {re.compile(k): list(v) for k, v in rules.items()}
        self.fired: Counter[str] = Counter()

    def wrap(self, app: Any) -> Any:
        async def faulty(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                for pattern, rule in self.rules.items():
                    if rule[1] and pattern.fullmatch(f"{scope['method']} {scope['path']}"):
                        rule[1] -= 1
                        self.fired[pattern.pattern] += 1
                        if rule[0] == "lost":
                            return await self._lose(app, scope, receive, send)
                        return await self._fail(rule[0], receive, send)
            await app(scope, receive, send)

        return faulty

    async def _lose(self, app: Any, scope: dict, receive: Any, send: Any) -> None:
        async def nowhere(message: dict) -> None:
            pass

        await app(scope, receive, nowhere)  # the app read the body and answered
        await self._fail("dark", receive, send, read=False)

    async def _fail(self, how: str, receive: Any, send: Any, read: bool = True) -> None:
        more = read
        while more:  # read the body first, as a real server would
            more = (await receive()).get("more_body", False)
        if how == "dark":
            self.proxy.outage(0.3)
            await asyncio.sleep(0.1)  # the answer below goes nowhere
        body = b'{"error": {"code": "gateway_unavailable", "message": "injected"}}'
        headers = [(b"content-type", b"application/json"), (b"retry-after", b"0")]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


SESSION = r"POST /v1/sessions/[^/]+"
VERSION = r"/v1/artifacts/outage/w/-/versions/[^/]+"
RULES = {
    # push
    r"GET /v1/artifacts/outage/w/-/versions/latest": ("503", 1),
    r"POST /v1/sessions": ("503", 2),
    SESSION + "/missing": ("dark", 1),
    SESSION + "/packs": ("503", 1),
    r"PUT /v1/blobs/.*": ("503", 2),  # the store, through presigned URLs
    SESSION + r"/packs/[^/]+/complete": ("dark", 1),
    SESSION + "/commit": ("dark", 1),
    # pull
    "GET " + VERSION + r"/files/\d+/reconstruction": ("dark", 1),
    r"GET /v1/blobs/.*": ("503", 2),
}
#: a small push (one request) whose answer is lost after the gateway stored it
SMALL = {r"POST /v1/artifacts/outage/s/-/versions": ("lost", 1)}


@pytest.fixture
def faulty_gateway(tmp_path, monkeypatch):
    proxy = FaultProxy()
    faults = Faults(proxy, {**RULES, **SMALL})
    monkeypatch.setenv("CHUNKYARD_LOCAL_READS", "0")  # pack reads through the proxy too
    real = conftest.create_app
    monkeypatch.setattr(conftest, "create_app", lambda settings: faults.wrap(real(settings)))
    gw, server, thread = start_gateway(tmp_path / "gw", CHUNKYARD_PUBLIC_URL=proxy.url)
    proxy.target = gw.url
    yield proxy, faults
    proxy.close()
    server.should_exit = True
    thread.join(timeout=10)


def test_push_and_pull_ride_out_outages(faulty_gateway, tmp_path):
    proxy, faults = faulty_gateway
    data = random_bytes(3 * MiB, seed=77)  # above the small-push limit: a session
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    waits: list[Wait] = []
    policy = RetryPolicy(attempts=200, deadline=60.0, base=0.02, cap=0.2)
    proxy.outage(0.5)  # the gateway is down when the push starts
    with Client(proxy.url, retry=policy, on_wait=waits.append) as c:
        pushed = c.push(src, "outage/w")
        c.pull("outage/w", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert pushed["created"] and pushed["version"] == 1
    want = {k: v[1] for k, v in RULES.items()}
    assert {k: n for k, n in faults.fired.items() if k in want} == want  # every fault met
    reasons = {w.reason for w in waits}
    assert "unreachable (ConnectionRefused)" in reasons and "answered HTTP 503" in reasons
    assert any(r.startswith("connection lost") for r in reasons)
    assert {w.what for w in waits} == {f"gateway at {proxy.url}", f"store at {proxy.url}"}


def test_a_small_push_whose_answer_was_lost_makes_one_version(faulty_gateway, tmp_path):
    """The retry of a one-request push that the gateway carried out answers the version
    it made (the content equals the latest), instead of making another."""
    proxy, faults = faulty_gateway
    src = tmp_path / "s.txt"
    src.write_bytes(b"lr: 0.001\n")
    policy = RetryPolicy(attempts=200, deadline=60.0, base=0.02, cap=0.2)
    with Client(proxy.url, retry=policy) as c:
        pushed = c.push(src, "outage/s")
        assert faults.fired[next(iter(SMALL))] == 1
        assert pushed["version"] == 1 and not pushed["created"]
        assert [v["version"] for v in c.versions("outage/s")] == [1]
