"""HTTP for the client: the gateway's JSON API, and presigned requests to the store.

One pooled ``httpx.Client`` serves all threads. Connection failures, 429 and 5xx
answers are retried with exponential backoff; every other gateway error is raised as
the typed error the gateway named.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import httpx

from ..errors import ChunkyardError, GatewayUnavailable, StoreError, from_json

DEFAULT_URL = "http://127.0.0.1:8080"
RETRIES = 5
RETRY_STATUS = {429, 500, 502, 503, 504}


def _backoff(attempt: int) -> None:
    time.sleep(min(8.0, 0.2 * 2**attempt) * (0.5 + random.random()))


class Transport:
    def __init__(self, url: str | None = None, timeout: float = 300.0) -> None:
        self.url = (url or os.environ.get("CHUNKYARD_URL") or DEFAULT_URL).rstrip("/")
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=10.0), limits=limits, follow_redirects=False
        )

    def close(self) -> None:
        self.http.close()

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
        content: bytes | None = None,
        headers: dict | None = None,
        what: str = "store request",
    ) -> httpx.Response:
        """Send one presigned request; retry transient failures. Raises StoreError
        (with ``status``) for a refusal, so callers can ask for a fresh URL."""
        all_headers = {**req.get("headers", {}), **(headers or {})}
        for attempt in range(RETRIES + 1):
            try:
                resp = self.http.request(
                    req["method"], req["url"], content=content, headers=all_headers
                )
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    raise StoreError(f"{what} failed: {exc}") from exc
                _backoff(attempt)
                continue
            if resp.status_code in RETRY_STATUS and attempt < RETRIES:
                _backoff(attempt)
                continue
            if resp.is_success:
                return resp
            raise StoreError(
                f"{what} was refused: HTTP {resp.status_code} {resp.text[:300]}",
                status=resp.status_code,
            )
        raise AssertionError("unreachable")


__all__ = ["Transport", "ChunkyardError"]
