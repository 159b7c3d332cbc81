"""HTTP for the client: the gateway's JSON API, and presigned requests to the store.

One urllib3 pool serves all threads (urllib3 rather than httpx: the CLI starts 0.1 s
faster, a part body goes out in one ``sendall``, and reads land straight in our
buffers). Connection failures, 429 and 5xx answers are retried with exponential
backoff; every other gateway error is raised as the typed error the gateway named.
"""

from __future__ import annotations

import json as jsonlib
import os
import random
import time
from typing import Any
from urllib.parse import urlencode

import urllib3

from ..errors import GatewayUnavailable, StoreError, from_json

DEFAULT_URL = "http://127.0.0.1:8080"
RETRIES = 5
RETRY_STATUS = {429, 500, 502, 503, 504}


def _backoff(attempt: int) -> None:
    time.sleep(min(8.0, 0.2 * 2**attempt) * (0.5 + random.random()))


class Transport:
    def __init__(self, url: str | None = None, timeout: float = 300.0) -> None:
        self.url = (url or os.environ.get("CHUNKYARD_URL") or DEFAULT_URL).rstrip("/")
        self.raw = urllib3.PoolManager(maxsize=32, block=False)
        self.raw_timeout = urllib3.Timeout(connect=10.0, read=timeout)
        self._timeout = timeout
        self._http: Any = None

    @property
    def http(self) -> Any:
        """An ``httpx.Client`` for the streaming calls of references (NDJSON progress,
        source downloads), imported only when one is made."""
        if self._http is None:
            import httpx

            self._http = httpx.Client(
                timeout=httpx.Timeout(self._timeout, connect=10.0), follow_redirects=False
            )
        return self._http

    def close(self) -> None:
        self.raw.clear()
        if self._http is not None:
            self._http.close()

    def _request(self, method: str, url: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        return self.raw.request(
            method, url, retries=False, redirect=False, timeout=self.raw_timeout, **kw
        )

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
        url = self.url + path + (f"?{urlencode(params)}" if params else "")
        if json is not None:
            body, headers = jsonlib.dumps(json).encode(), {"content-type": "application/json"}
        elif content is not None:
            body, headers = content, {"content-type": "application/octet-stream"}
        else:
            body, headers = None, {}
        for attempt in range(RETRIES + 1):
            try:
                resp = self._request(method, url, body=body, headers=headers)
            except urllib3.exceptions.HTTPError as exc:
                if attempt == RETRIES:
                    raise GatewayUnavailable(
                        f"cannot reach the gateway at {self.url}: {exc}", url=self.url
                    ) from exc
                _backoff(attempt)
                continue
            if resp.status in RETRY_STATUS and attempt < RETRIES:
                _backoff(attempt)
                continue
            try:
                data = jsonlib.loads(resp.data or b"null")
            except ValueError:
                data = {}
            if 200 <= resp.status < 300:
                return data
            raise from_json(resp.status, data)
        raise AssertionError("unreachable")

    # -- presigned requests to the store ------------------------------------
    def send(
        self,
        req: dict,
        content: bytes | memoryview | None = None,
        headers: dict | None = None,
        what: str = "store request",
    ) -> urllib3.BaseHTTPResponse:
        """Send one presigned request; retry transient failures. Raises StoreError
        (with ``status``) for a refusal, so callers can ask for a fresh URL."""
        all_headers = {**req.get("headers", {}), **(headers or {})}
        body = None if content is None else memoryview(content)  # sent as is, no copy
        for attempt in range(RETRIES + 1):
            try:
                resp = self._request(req["method"], req["url"], body=body, headers=all_headers)
            except urllib3.exceptions.HTTPError as exc:
                if attempt == RETRIES:
                    raise StoreError(f"{what} failed: {exc}") from exc
                _backoff(attempt)
                continue
            if resp.status in RETRY_STATUS and attempt < RETRIES:
                _backoff(attempt)
                continue
            if 200 <= resp.status < 300 or resp.status == 308:  # 308: GCS resumable
                return resp
            text = resp.data[:300].decode(errors="replace")
            raise StoreError(f"{what} was refused: HTTP {resp.status} {text}", status=resp.status)
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
                resp = self._request(
                    req["method"], req["url"], headers=headers, preload_content=False
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
