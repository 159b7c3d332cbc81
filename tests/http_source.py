"""A small http(s)-style source on 127.0.0.1 for reference tests: ETag, Last-Modified,
Range, If-Match, If-Unmodified-Since, redirects, and switches to misbehave (no HEAD, no
ETag, ignore conditions). It counts the body bytes it sends, so a test can show that
registering reads none."""

from __future__ import annotations

import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import blake3


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive, as real servers do) and no log lines in test output."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass


class Source:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self.redirects: dict[str, str] = {}
        self.no_head: set[str] = set()
        self.no_etag: set[str] = set()
        self.ignore_conditions: set[str] = set()
        self.fixed_etag: dict[str, str] = {}  # a server that lies about its ETag
        self.slow: dict[str, float] = {}  # seconds per 64 KiB sent
        self.requests: Counter = Counter()
        self.body_bytes = 0
        self._clock = 1_700_000_000.0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def put(self, path: str, data: bytes) -> str:
        with self._lock:
            self._clock += 10  # Last-Modified has one-second resolution
            self.files[path] = data
            self.mtimes[path] = self._clock
        return f"{self.url}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def etag(self, path: str) -> str:
        return self.fixed_etag.get(path) or blake3.blake3(self.files[path]).hexdigest()[:20]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        src = self

        class Handler(QuietHandler):
            def _reply(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "content-length" not in headers:
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD" or not body:
                    return
                delay = src.slow.get(self.path, 0.0)
                step = 65536 if delay else len(body)
                for i in range(0, len(body), step):
                    if delay:
                        time.sleep(delay)
                    try:
                        self.wfile.write(body[i : i + step])
                    except OSError:  # the reader went away
                        return
                    with src._lock:
                        src.body_bytes += len(body[i : i + step])

            def do_HEAD(self) -> None:  # noqa: N802
                self.do_GET()

            def do_GET(self) -> None:  # noqa: N802
                path = self.path
                src.requests[(self.command, path)] += 1
                if path in src.redirects:
                    return self._reply(302, {"location": src.redirects[path]})
                if self.command == "HEAD" and path in src.no_head:
                    return self._reply(405, {})
                data = src.files.get(path)
                if data is None:
                    return self._reply(404, {}, b"not found")
                etag = f'"{src.etag(path)}"'
                modified = formatdate(src.mtimes[path], usegmt=True)
                headers = {"last-modified": modified, "accept-ranges": "bytes"}
                if path not in src.no_etag:
                    headers["etag"] = etag
                if path not in src.ignore_conditions:
                    want = self.headers.get("if-match")
                    if want and want != etag:
                        return self._reply(412, {}, b"precondition failed")
                    since = self.headers.get("if-unmodified-since")
                    if since and since != modified:
                        return self._reply(412, {}, b"precondition failed")
                rng = self.headers.get("range")
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].partition("-")
                    start = int(first)
                    end = len(data) if not last else min(len(data), int(last) + 1)
                    if start >= len(data):
                        return self._reply(416, {"content-range": f"bytes */{len(data)}"})
                    headers["content-range"] = f"bytes {start}-{end - 1}/{len(data)}"
                    return self._reply(206, headers, data[start:end])
                headers["content-length"] = str(len(data))
                return self._reply(200, headers, data)

        return Handler
