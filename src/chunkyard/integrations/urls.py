"""``chunkyard://`` URLs: which gateway, and which path on it.

``chunkyard://HOST:PORT/PATH`` names the gateway at ``http://HOST:PORT``, or the URL in
``CHUNKYARD_URL`` when that names the same host and port (so a gateway behind https
keeps its scheme); ``chunkyard:///PATH``, without a host, names ``CHUNKYARD_URL``'s
gateway (``http://127.0.0.1:8080`` by default). The bearer token is
``CHUNKYARD_TOKEN``'s. What PATH means is each adapter's: a name prefix for MLflow, a
name and a file path for fsspec.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

from ..client.api import Client
from ..client.profiles import DEFAULT_URL
from ..errors import InvalidRequest

SCHEME = "chunkyard"


def split_url(url: str) -> tuple[str, str]:
    """``chunkyard://HOST:PORT/a/b`` as (gateway URL, ``a/b``)."""
    parts = urlsplit(url)
    if parts.scheme != SCHEME:
        raise InvalidRequest(f"not a {SCHEME}:// URL: {url!r}")
    return gateway_url(parts.netloc), parts.path.strip("/")


def gateway_url(netloc: str) -> str:
    configured = (os.environ.get("CHUNKYARD_URL") or DEFAULT_URL).rstrip("/")
    if not netloc or urlsplit(configured).netloc == netloc:
        return configured
    return f"http://{netloc}"


def netloc_of(gateway: str) -> str:
    return urlsplit(gateway).netloc


_clients: dict[tuple[str, str | None], Client] = {}
_lock = threading.Lock()


def client_for(gateway: str, token: str | None = None) -> Client:
    """One client per gateway and token in a process: MLflow makes a repository object
    per call, and each would otherwise open its own connection pool."""
    token = token or os.environ.get("CHUNKYARD_TOKEN") or None
    with _lock:
        c = _clients.get((gateway, token))
        if c is None:
            c = _clients[(gateway, token)] = Client(gateway, token=token)
        return c
