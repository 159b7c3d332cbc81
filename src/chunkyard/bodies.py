"""HTTP answer bodies read straight into a caller's buffer, under urllib3 (the client's
pulls, the gateway's reads of packs back from S3)."""

from __future__ import annotations

import http.client
from typing import Any

import urllib3


def body_reader(resp: urllib3.BaseHTTPResponse) -> Any:
    """What reads an answer's body straight into a caller's buffer: the standard
    library's response under urllib3's, when the body is not content-encoded.
    urllib3's own ``readinto`` reads into a fresh ``bytes`` and copies it over: for
    an 8 MiB range, 8 MiB of new pages and one more pass over them, about a third of
    the receiving side's work. Reading under it leaves urllib3's count of the bytes
    to come behind: call :func:`body_ended` once the body is whole, so that the
    connection goes back to the pool."""
    raw = getattr(resp, "_fp", None)
    if isinstance(raw, http.client.HTTPResponse) and not resp.headers.get("content-encoding"):
        return raw
    return resp


def body_ended(resp: urllib3.BaseHTTPResponse, reader: Any) -> None:
    """Tell urllib3 the body was read whole under it (see :func:`body_reader`): else
    it takes the end for a short read and drops the connection."""
    if reader is not resp:
        resp.length_remaining = 0  # type: ignore[attr-defined]
