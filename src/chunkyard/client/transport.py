"""HTTP for the client: the gateway's JSON API, and presigned requests to the store.

One pooled ``httpx.Client`` serves all threads. Connection failures, 429 and 5xx
answers are retried with exponential backoff; every other gateway error is raised as
the typed error the gateway named.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import urllib3

from ..errors import GatewayUnavailable, StoreError, from_json

DEFAULT_URL = "http://127.0.0.1:8080"
RETRIES = 5
RETRY_STATUS = {429, 500, 502, 503, 504}


def _backoff(attempt: int) -> None:
    time.sleep(min(8.0, 0.2 * 2**attempt) * (0.5 + random.random()))


def _pieces(view: memoryview, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A body as 1 MiB pieces: httpcore re-slices the unsent rest of a ``bytes`` body
    after every ``send()``, quadratic in the body size for multi-MiB parts."""
    for i in range(0, len(view), size):
        yield bytes(view[i : i + size])


class Transport:
    def __init__(self, url: str | None = None, timeout: float = 300.0) -> None:
        self.url = (url or os.environ.get("CHUNKYARD_URL") or DEFAULT_URL).rstrip("/")
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        # store reads: urllib3 (see fetch_into); one pool shared by all threads
        self.raw = urllib3.PoolManager(maxsize=32, block=False)
        self.raw_timeout = urllib3.Timeout(connect=10.0, read=timeout)
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), limits=limits, follow_redirects=False
        )

    def close(self) -> None:
        self.http.close()
        self.raw.clear()

    # -- the gateway API ----------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict | None = None,
    ) -> Any:
        headers = {"content-type": "application/octet-stream"} if content is not None else None
        for attempt in range(RETRIES + 1):
            try:
                resp = self.http.request(
                    method,
                    self.url + path,
                    json=json,
                    content=content,
                    params=params,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise GatewayUnavailable(
                        f"cannot reach the gateway at {self.url}: {exc}", url=self.url
                    ) from exc
                _backoff(attempt)
                continue
            if resp.status_code in RETRY_STATUS and attempt < RETRIES:
                _backoff(attempt)
                continue
            if resp.is_success:
                return resp.json()
            try:
                body = resp.json()
            except ValueError:
                body = {}
            raise from_json(resp.status_code, body)
        raise AssertionError("unreachable")

    # -- presigned requests to the store ------------------------------------
    def send(
        self,
        req: dict,
        content: bytes | memoryview | None = None,
        headers: dict | None = None,
        what: str = "store request",
    ) -> httpx.Response:
        """Send one presigned request; retry transient failures. Raises StoreError
        (with ``status``) for a refusal, so callers can ask for a fresh URL."""
        all_headers = {**req.get("headers", {}), **(headers or {})}
        if content is not None:
            all_headers["content-length"] = str(len(content))
        for attempt in range(RETRIES + 1):
            try:
                body = None if content is None else _pieces(memoryview(content))
                resp = self.http.request(
                    req["method"], req["url"], content=body, headers=all_headers
                )
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise StoreError(f"{what} failed: {exc}") from exc
                _backoff(attempt)
                continue
            if resp.status_code in RETRY_STATUS and attempt < RETRIES:
                _backoff(attempt)
                continue
            if resp.is_success or resp.status_code == 308:  # 308: GCS resumable, more to come
                return resp
            raise StoreError(
                f"{what} was refused: HTTP {resp.status_code} {resp.text[:300]}",
                status=resp.status_code,
            )
        raise AssertionError("unreachable")

    def fetch_into(
        self, req: dict, start: int, end: int, buf: bytearray, what: str = "store read"
    ) -> memoryview:
        """GET bytes ``[start, end)`` of a presigned object straight into ``buf``.

        urllib3 rather than httpx here: its ``readinto`` lets the socket write into our
        buffer in large reads with the GIL released, where httpx hands out 64 KiB
        pieces through Python (twice the client CPU per pulled byte)."""
        want = end - start
        headers = {**req.get("headers", {}), "range": f"bytes={start}-{end - 1}"}
        view = memoryview(buf)
        for attempt in range(RETRIES + 1):
            try:
                resp = self.raw.request(
                    req["method"],
                    req["url"],
                    headers=headers,
                    preload_content=False,
                    retries=False,
                    timeout=self.raw_timeout,
                )
            except urllib3.exceptions.HTTPError as exc:
                if attempt == RETRIES:
                    raise StoreError(f"{what} failed: {exc}") from exc
                _backoff(attempt)
                continue
            try:
                if resp.status in RETRY_STATUS and attempt < RETRIES:
                    _backoff(attempt)
                    continue
                if not 200 <= resp.status < 300:
                    text = resp.read(300).decode(errors="replace")
                    raise StoreError(
                        f"{what} was refused: HTTP {resp.status} {text}", status=resp.status
                    )
                pos = 0
                while pos < want:
                    n = resp.readinto(view[pos:want])
                    if not n:
                        break
                    pos += n
                if pos != want or resp.read(1):
                    raise StoreError(f"{what}: store did not send exactly {want} bytes")
                return view[:want]
            except urllib3.exceptions.HTTPError as exc:
                if attempt == RETRIES:
                    raise StoreError(f"{what} failed: {exc}") from exc
                _backoff(attempt)
            finally:
                resp.release_conn()
        raise AssertionError("unreachable")
