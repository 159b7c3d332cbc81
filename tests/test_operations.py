"""What operators watch: /healthz, /readyz, /metrics and JSON logs with request ids,
scraped from a live ``chunkyard serve`` with two worker processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from chunkyard.repository.access import Scope
from chunkyard.server import logs
from conftest import ServedGateway, random_bytes


def _token(data: Path, *scopes: str) -> str:
    args = [sys.executable, "-m", "chunkyard.cli", "token", "create", "--data", str(data)]
    for s in scopes:
        args += ["--scope", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=os.environ.copy())
    return re.search(r"cy_[A-Za-z0-9_-]+", out.stdout).group(0)


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in the exposition text."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("ops")
    data = tmp / "data"
    admin = _token(data, "admin")
    scraper = _token(data, "metrics")
    gw = ServedGateway(
        data, tmp / "log", "--auth", "--workers", "2", "--log-format", "json", env={}
    )
    try:
        yield gw, data, admin, scraper
    finally:
        gw.stop()


def test_health_and_readiness(served) -> None:
    gw, data, _, _ = served
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"
    ready = httpx.get(gw.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "catalog": "ok", "store": "ok"}


def test_metrics_count_requests_bytes_and_dedup(served, tmp_path: Path) -> None:
    gw, _, admin, scraper = served
    payload = random_bytes(3 << 20, seed=7)
    (tmp_path / "a.bin").write_bytes(payload)
    with Client(gw.url, token=admin) as c:
        c.push(tmp_path / "a.bin", "ops/model")
        c.push(tmp_path / "a.bin", "ops/model-copy")  # all of it dedups
    assert httpx.get(gw.url + "/metrics").status_code == 401
    refused = httpx.get(gw.url + "/metrics", headers={"authorization": "Bearer " + admin})
    assert refused.status_code == 200  # admin may too
    # the metrics scope reads metrics and nothing else
    r = httpx.get(
        gw.url + "/v1/artifacts/ops/model", headers={"authorization": "Bearer " + scraper}
    )
    assert r.status_code in (403, 404)  # refused (a name it may not read is not shown)
    text = ""
    for _ in range(4):  # two workers: every scrape sums both, whichever answers
        resp = httpx.get(gw.url + "/metrics", headers={"authorization": "Bearer " + scraper})
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.text
    requests = _samples(text, "chunkyard_http_requests_total")
    commits = [v for k, v in requests.items() if "/commit" in k and 'status="201"' in k]
    assert sum(commits) >= 2, text
    assert all('route="/v1/sessions/{sid}/commit"' in k for k in requests if "commit" in k)
    assert _samples(text, "chunkyard_http_received_bytes_total")[""] > 0
    assert sum(_samples(text, "chunkyard_http_request_duration_seconds_count").values()) > 0
    assert _samples(text, "chunkyard_logical_bytes")[""] == 2 * len(payload)
    assert 1.9 < _samples(text, "chunkyard_dedup_ratio")[""] <= 2.01
    assert _samples(text, "chunkyard_sessions_open")[""] >= 0
    assert "chunkyard_verification_backlog_packs" in text


def test_errors_carry_a_request_id_found_in_the_json_log(served) -> None:
    gw, _, admin, _ = served
    with Client(gw.url, token=admin) as c, pytest.raises(Exception) as info:
        c.pull("ops/no-such-thing", "/tmp/never")
    rid = info.value.request_id
    assert rid and re.fullmatch(r"[0-9a-f]{16}", rid)
    # a request id the caller brings (a load balancer's) is kept
    r = httpx.get(gw.url + "/healthz", headers={"x-request-id": "lb-1234"})
    assert r.headers["x-request-id"] == "lb-1234"
    lines = [json.loads(x) for x in gw.log.read_text().splitlines() if x.startswith("{")]
    mine = [x for x in lines if x.get("request_id") == rid]
    assert mine and mine[0]["logger"] == "chunkyard.access"
    assert mine[0]["status"] == 404 and mine[0]["route"].startswith("/v1/artifacts")
    assert all(admin not in json.dumps(x) for x in lines)


def test_cli_prints_the_request_id_of_an_error(served, tmp_path: Path) -> None:
    gw, _, admin, _ = served
    env = {**os.environ, "CHUNKYARD_URL": gw.url, "CHUNKYARD_TOKEN": admin}
    out = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "pull", "ops/none", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 3
    assert re.search(r"\(request id [0-9a-f]{16}\)$", out.stderr.strip()), out.stderr


def test_not_ready_when_the_store_does_not_answer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gw = ServedGateway(data, tmp_path / "log", env={})
    try:
        shutil.rmtree(data / "store")
        (data / "store").write_text("not a directory")  # every store call now fails
        r = httpx.get(gw.url + "/readyz")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "not ready" and body["catalog"] == "ok"
        assert body["store"] != "ok"
        assert httpx.get(gw.url + "/healthz").status_code == 200  # alive, not ready
    finally:
        gw.stop()


def test_json_formatter_is_one_object_a_line_with_redaction() -> None:
    import logging

    record = logging.LogRecord("x", logging.ERROR, "f", 1, "token cy_%s", ("A" * 43,), None)
    logs.redact_record(record)
    token = logs.REQUEST_ID.set("abc")
    try:
        out = json.loads(logs.JsonFormatter().format(record))
    finally:
        logs.REQUEST_ID.reset(token)
    assert out["request_id"] == "abc" and out["level"] == "error"
    assert "A" * 43 not in out["message"]


def test_metrics_scope_is_its_own() -> None:
    s = Scope.parse("metrics")
    assert s.covers("metrics", "") and not s.covers("read", "x")
    assert Scope.parse("admin").covers("metrics", "")
    assert not Scope.parse("read:*").covers("metrics", "")
