"""The SSRF guard: which addresses http(s) references may reach, checked in the
connection layer. Nothing here sends a packet beyond loopback: refused addresses are
refused before connecting, and a recording backend proves it."""

import ipaddress
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import httpx
import pytest

from chunkyard.errors import AddressForbidden
from chunkyard.netguard import LOCATION, GuardedBackend, forbidden_reason, guarded_client


@pytest.mark.parametrize(
    ("addr", "allowed", "allowed_with_private"),
    [
        ("127.0.0.1", False, True),
        ("::1", False, True),
        ("10.0.0.1", False, True),
        ("172.16.5.4", False, True),
        ("192.168.1.1", False, True),
        ("100.64.0.1", False, True),  # carrier-grade NAT
        ("fd12::1", False, True),
        ("fe80::1", False, True),
        ("169.254.10.10", False, True),
        ("169.254.169.254", False, False),  # metadata: never
        ("fd00:ec2::254", False, False),
        ("100.100.100.200", False, False),
        ("168.63.129.16", False, False),
        ("::ffff:169.254.169.254", False, False),
        ("::ffff:127.0.0.1", False, True),
        ("64:ff9b::a00:1", False, True),  # NAT64 of 10.0.0.1
        ("0.0.0.0", False, False),
        ("::", False, False),
        ("224.0.0.1", False, False),
        ("ff02::1", False, False),
        ("::7f00:1", False, True),  # IPv4-compatible 127.0.0.1
        ("::a9fe:a9fe", False, False),  # IPv4-compatible metadata
        ("::ffff:0:a00:1", False, True),  # IPv4-translated 10.0.0.1
        ("64:ff9b:1::a9fe:a9fe", False, False),  # local-use NAT64 of the metadata
        ("::808:808", False, True),  # IPv4-compatible, public inside: still reserved
        ("fec0::1", False, True),  # site-local
        ("::ffff:8.8.8.8", True, True),
        ("64:ff9b::808:808", True, True),
        ("8.8.8.8", True, True),
        ("2001:4860:4860::8888", True, True),
    ],
)
def test_address_policy(addr, allowed, allowed_with_private):
    ip = ipaddress.ip_address(addr)
    assert (forbidden_reason(ip) is None) == allowed
    assert (forbidden_reason(ip, allow_private=True) is None) == allowed_with_private


class Recorder(httpcore.NetworkBackend):
    """Records connection attempts instead of making them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.calls.append(host)
        raise httpcore.ConnectError("recorder: not connecting")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://localhost:9/x",  # a name that resolves to loopback
        "http://[::1]:9/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[fd00:ec2::254]/x",
        "http://[::ffff:10.0.0.1]/x",
        "http://0.0.0.0:9/x",
    ],
)
def test_refused_before_connecting(url):
    rec = Recorder()
    with (
        guarded_client(False, GuardedBackend(False, rec)) as client,
        pytest.raises(AddressForbidden) as caught,
    ):
        client.get(url)
    assert rec.calls == []
    assert caught.value.code == "address_forbidden"


def test_metadata_refused_even_with_private_networks():
    rec = Recorder()
    with guarded_client(True, GuardedBackend(True, rec)) as client:
        with pytest.raises(AddressForbidden):
            client.get("http://169.254.169.254/latest/meta-data/iam")
        with pytest.raises(httpx.ConnectError):
            client.get("http://127.0.0.1:9/x")  # allowed: reaches the (recording) backend
    assert rec.calls == ["127.0.0.1"]  # the checked address itself, not the name


def test_connects_to_the_checked_address():
    class Hello(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with guarded_client(True) as client:
            assert client.get(f"http://localhost:{port}/").text == "hello"
        with guarded_client(False) as client, pytest.raises(AddressForbidden):
            client.get(f"http://localhost:{port}/")
    finally:
        server.shutdown()


def test_a_name_the_resolver_cannot_encode_is_a_connect_error():
    rec = Recorder()
    with (
        guarded_client(True, GuardedBackend(True, rec)) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get("http://" + "a" * 64 + ".example/x")  # label too long for IDNA
    assert rec.calls == []


def test_redirect_targets_are_left_to_the_caller():
    """httpx would parse a Location by its own rules (and fail on 0177.0.0.1); the
    guarded client hands it over untouched instead."""

    class Moved(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(302)
            self.send_header("location", "http://0177.0.0.1/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Moved)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with guarded_client(True) as client:
            r = client.get(f"http://127.0.0.1:{server.server_address[1]}/")
        assert r.status_code == 302 and "location" not in r.headers
        assert r.extensions[LOCATION] == "http://0177.0.0.1/elsewhere"
    finally:
        server.shutdown()
