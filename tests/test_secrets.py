"""No secrets in what the gateway prints (logs, banner, errors, health), a gateway that
listens beyond loopback only with authentication or on purpose, and data files that
only their owner can read."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from chunkyard import Client
from chunkyard.cli import main
from chunkyard.errors import StoreError
from chunkyard.hosts import is_loopback
from chunkyard.server import cli as server_cli
from chunkyard.server import logs
from chunkyard.server.logs import redact
from conftest import ServedGateway, random_bytes

FAKE_TOKEN = "cy_" + "Zq3x_Kd9-" * 4 + "AbCdEfG"  # 43 url-safe characters after cy_
FAKE_PASSWORD = "hunter2-Pa55word"
FAKE_AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYFAKEKEY123"
FAKE_ACCOUNT_KEY = "Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFy+/abc=="
SIG = "0f" * 32


# -- the redaction helper ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("postgresql://chunk:hunter2@db.example:5432/cy", "hunter2", "postgresql://chunk:"),
        ("postgresql+asyncpg://u:p%40ss@h/db", "p%40ss", "@h/db"),
        (f"GET /v1/blobs/packs/ab/cd?exp=1&sig={SIG} HTTP/1.1", SIG, "/v1/blobs/packs/ab/cd?exp=1"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE&X-Amz-Signature=beefcafe1234",
            "beefcafe1234",
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAEXAMPLE%2F2024&X-Amz-Expires=9",
            "AKIAEXAMPLE",
            "X-Amz-Expires=9",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Security-Token=IQoJb3JpZ2luX2VjEXAMPLE&a=1",
            "IQoJb3JpZ2luX2VjEXAMPLE",
            "&a=1",
        ),
        (
            "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=sa%40proj.iam&X-Goog-Signature=a1b2c3d4e5",
            "a1b2c3d4e5",
            "X-Goog-Algorithm=GOOG4-RSA-SHA256",
        ),
        ("https://x/o?X-Goog-Credential=sa%40proj.iam&e=1", "sa%40proj.iam", "&e=1"),
        (
            "https://acct.blob.core.windows.net/c/k?sv=2023-01-03&se=2030&sr=b&sp=r"
            "&sig=Ab%2Bcd%3D&versionid=1",
            "Ab%2Bcd%3D",
            "&versionid=1",
        ),
        ("https://h/x?token=abcdef123&y=2", "abcdef123", "&y=2"),
        ("https://h/x?access_token=ya29.abcdef", "ya29.abcdef", "https://h/x?access_token="),
        (f"Authorization: Bearer {FAKE_TOKEN}", FAKE_TOKEN[3:], "Authorization: Bearer"),
        ("authorization: bearer ya29.a0AfH6SMBx-token", "ya29.a0AfH6SMBx-token", "bearer"),
        (f"token {FAKE_TOKEN} in a message", FAKE_TOKEN[3:], "in a message"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'Host': 'h'}", "dXNlcjpwYXNz", "'Host': 'h'"),
        ("Authorization: SharedKey acct:c2lnbmF0dXJl", "c2lnbmF0dXJl", "Authorization:"),
        (
            "Authorization: AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/2024, "
            "SignedHeaders=host, Signature=fe12ab",
            "fe12ab",
            "SignedHeaders=host",
        ),
        (
            "DefaultEndpointsProtocol=https;AccountName=acct;"
            f"AccountKey={FAKE_ACCOUNT_KEY};EndpointSuffix=core.windows.net",
            FAKE_ACCOUNT_KEY,
            "EndpointSuffix=core.windows.net",
        ),
        (
            "BlobEndpoint=https://a.blob;SharedAccessSignature=sv=2023&sig=Zz9%2B;x=y",
            "Zz9%2B",
            "x=y",
        ),
        (f"AWS_SECRET_ACCESS_KEY={FAKE_AWS_SECRET}", FAKE_AWS_SECRET, "AWS_SECRET_ACCESS_KEY="),
        ("aws_secret_access_key='s3cr3tvalue'", "s3cr3tvalue", "aws_secret_access_key="),
        ("GCS_HMAC_SECRET=gcsHmacSecretValue", "gcsHmacSecretValue", "GCS_HMAC_SECRET="),
        ('{"url": "http://h/v1/blobs/k?exp=1&sig=abc123"}', "abc123", '"url": "http://h/'),
    ],
)
def test_redact_masks_secret_and_keeps_the_rest(text: str, secret: str, kept: str) -> None:
    out = redact(text)
    assert secret not in out and "***" in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8080/v1/health",
        "catalog=sqlite:////var/lib/chunkyard/catalog.db  store=s3://bucket/prefix",
        "GET /v1/artifacts/team/model/-/versions/1/files/0/reconstruction?start=0 HTTP/1.1",
        "S3 store s3://b/p: check failed: bad credentials (check AWS_SECRET_ACCESS_KEY)",
        'connection failed: FATAL:  password authentication failed for user "chunk"',
        "digest 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_redact_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_is_idempotent() -> None:
    once = redact(f"postgresql://u:{FAKE_PASSWORD}@h/db?sig=abc Bearer {FAKE_TOKEN}")
    assert redact(once) == once


def test_remembered_values_are_masked_wherever_they_appear() -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        "CHUNKYARD_DB": f"postgresql://chunk:{FAKE_PASSWORD}@db/cy",
        "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=a;AccountKey={FAKE_ACCOUNT_KEY}",
    }
    logs.remember_environment(env)
    text = f"boto said {FAKE_AWS_SECRET!r}; pw {FAKE_PASSWORD}; key {FAKE_ACCOUNT_KEY}."
    out = redact(text)
    for secret in env.values():
        assert secret not in out
    for value in (FAKE_AWS_SECRET, FAKE_PASSWORD, FAKE_ACCOUNT_KEY):
        assert value not in out
    assert out.startswith("boto said")


def _emit(logger_name: str, *args: object, exc: BaseException | None = None) -> str:
    """Log one record through a handler carrying the filter; what it printed."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RedactFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    old, logger.propagate = logger.propagate, False
    try:
        logger.error(*args, exc_info=exc)  # type: ignore[arg-type]
    finally:
        logger.removeHandler(handler)
        logger.propagate = old
    return stream.getvalue()


def test_filter_redacts_arguments_and_chained_tracebacks() -> None:
    url = f"https://b.s3.amazonaws.com/packs/x?X-Amz-Signature={SIG}"
    try:
        try:
            raise OSError(f"connect to {url} failed, Authorization: Bearer {FAKE_TOKEN}")
        except OSError as cause:
            raise StoreError(f"S3 store s3://b: get failed on {url}") from cause
    except StoreError as exc:
        out = _emit("chunkyard.server.test", "%s %s: %s", "GET", "/v1/x", exc.message, exc=exc)
    assert "GET /v1/x: S3 store s3://b: get failed" in out
    assert "Traceback" in out and "OSError" in out
    assert SIG not in out and FAKE_TOKEN not in out


def test_filter_keeps_the_access_log_format() -> None:
    """uvicorn's access formatter unpacks the record's arguments: they stay a tuple."""
    from uvicorn.logging import AccessFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    handler.addFilter(logs.RedactFilter())
    logger = logging.getLogger("uvicorn.access")  # the filter knows it by this name
    # earlier tests' gateways may have configured (or disabled) uvicorn's loggers
    saved = (logger.level, logger.disabled, logger.propagate)
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the logger's cache
    logger.disabled, logger.propagate = False, False
    logger.addHandler(handler)
    try:
        path = f"/v1/blobs/packs/ab/cd?exp=1&sig={SIG}"
        logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 206)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled, logger.propagate = saved[1], saved[2]
    line = stream.getvalue()
    assert line.startswith('127.0.0.1:5000 - "GET /v1/blobs/packs/ab/cd?exp=1&sig=*** HTTP/1.1"')
    assert SIG not in line


def test_uvicorn_log_config_filters_every_handler() -> None:
    config = logs.uvicorn_log_config()
    assert config["handlers"] and all("redact" in h["filters"] for h in config["handlers"].values())
    assert config["root"]["handlers"]


def test_banner_masks_the_catalog_password() -> None:
    settings = SimpleNamespace(
        db_url=f"postgresql://chunk:{FAKE_PASSWORD}@db.example/cy",
        store_url="s3://bucket/prefix",
        auth=False,
    )
    text = server_cli.banner(settings, "127.0.0.1", 8080)
    assert FAKE_PASSWORD not in text
    assert "postgresql://chunk:***@db.example/cy" in text and "s3://bucket/prefix" in text


# -- loopback-only unless authenticated ------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.2", False),
        ("gateway.example", False),
        ("localhost.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.fixture
def private_umask() -> Iterator[None]:
    """``serve`` sets the process umask; keep it from leaking into other tests."""
    old = os.umask(0o022)
    os.umask(old)  # reading the umask means setting it
    yield
    os.umask(old)


def test_workers_carry_auth_through_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_umask: None
) -> None:
    import uvicorn

    for name in ("CHUNKYARD_AUTH", "CHUNKYARD_DATA", "CHUNKYARD_HOST", "CHUNKYARD_PORT"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores it afterwards
        monkeypatch.delenv(name)
    seen: list[dict] = []

    def fake_run(app: object, **kw: object) -> None:
        seen.append({"app": app, "auth": os.environ.get("CHUNKYARD_AUTH"), **kw})

    monkeypatch.setattr(uvicorn, "run", fake_run)
    data = tmp_path / "d"
    argv = ["serve", "--data", str(data), "--host", "0.0.0.0", "--port", "1", "--workers", "2"]
    assert main([*argv, "--auth"]) == 0
    assert seen[-1]["app"] == "chunkyard.server.app:app_from_env" and seen[-1]["auth"] == "1"
    assert "redact" in seen[-1]["log_config"]["filters"]
    from chunkyard.config import Settings

    assert Settings.load(os.environ["CHUNKYARD_DATA"]).auth

    monkeypatch.setenv("CHUNKYARD_AUTH", "1")  # the environment alone turns it on
    assert main(argv) == 0 and seen[-1]["auth"] == "1"
    monkeypatch.setenv("CHUNKYARD_AUTH", "0")
    assert main([*argv, "--insecure"]) == 0 and seen[-1]["auth"] == "0"


def _run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example"])
def test_non_loopback_without_auth_refuses_to_start(tmp_path: Path, host: str) -> None:
    data = tmp_path / "d"
    env = {"CHUNKYARD_AUTH": ""}
    p = _run_cli(["serve", "--data", str(data), "--host", host, "--port", "1"], env)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert host in lines[0] and "--auth" in lines[0] and "--insecure" in lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not data.exists()  # refused before touching anything


def test_start_up_errors_mask_credentials(tmp_path: Path) -> None:
    env = {"CHUNKYARD_STORE": f"https://chunk:{FAKE_PASSWORD}@store.example/packs"}
    p = _run_cli(["serve", "--data", str(tmp_path / "d"), "--port", "1", "--json"], env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert json.loads(p.stdout)["error"]["code"] == "bad_request"
    assert "chunk:***@store.example" in p.stderr
    assert FAKE_PASSWORD not in p.stdout + p.stderr


# -- a real gateway process ------------------------------------------------------------


def test_insecure_serves_beyond_loopback_with_a_warning(tmp_path: Path) -> None:
    env = {"CHUNKYARD_AUTH": ""}
    gw = ServedGateway(tmp_path / "d", tmp_path / "log", "--host", "0.0.0.0", "--insecure", env=env)
    out = gw.stop()
    warnings = [line for line in out.splitlines() if "warning" in line.lower()]
    assert any("without authentication" in w and "--insecure" in w for w in warnings), out
    assert "Traceback" not in out


def test_gateway_logs_no_secrets(tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = {
        "AWS_SECRET_ACCESS_KEY": FAKE_AWS_SECRET,
        "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=a;AccountKey={FAKE_ACCOUNT_KEY}",
        "CHUNKYARD_DB": f"sqlite:///{data / 'catalog.db'}",
        "CHUNKYARD_AUTH": "",
    }
    gw = ServedGateway(data, tmp_path / "log", "--log-level", "info", env=env)
    sigs: set[str] = set()
    try:
        auth = {"Authorization": f"Bearer {FAKE_TOKEN}"}
        with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as http:
            health = http.get("/v1/health")
            assert health.status_code == 200
            assert str(tmp_path) not in health.text and "store" not in health.json()
            # a token in the query string, as some clients send it, reaches the access log
            assert http.get(f"/v1/health?access_token={FAKE_TOKEN}").status_code == 200

            src = tmp_path / "model.bin"
            src.write_bytes(random_bytes(200_000, seed=7))
            with Client(gw.url) as c:
                c.push(src, "secrets/model")
                c.pull("secrets/model@1", tmp_path / "back.bin")
            assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()

            answer = http.get("/v1/artifacts/secrets/model/-/versions/1/files/0/reconstruction")
            assert answer.status_code == 200, answer.text
            sigs = set(re.findall(r"[?&]sig=([0-9a-f]{16,})", answer.text))
            assert sigs, answer.text
            for term in answer.json()["terms"]:
                url = term["url"]["url"]
                assert http.get(url, headers=term["url"]["headers"]).status_code == 206
                tampered = re.sub(r"sig=[0-9a-f]+", "sig=" + "0" * 64, url)
                assert http.get(tampered).status_code == 403  # a refusal is logged too
    finally:
        log = gw.stop()

    assert "Traceback" not in log
    for sig in sigs:
        assert sig not in log
    assert "/v1/blobs/" in log and "sig=***" in log, log  # the access log did print them
    assert not re.search(r"sig=(?!\*\*\*)", log), log
    for secret in (FAKE_TOKEN, FAKE_TOKEN[3:], FAKE_AWS_SECRET, FAKE_ACCOUNT_KEY):
        assert secret not in log
    assert (data / "secret.key").read_text().strip() not in log

    # owner-only data: the directory, the catalog (and its -wal/-shm), the secret, packs
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("catalog.db", "secret.key"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert [p for p in (data / "store" / "packs").rglob("*") if p.is_file()]
    for p in [data, *data.rglob("*")]:
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p
