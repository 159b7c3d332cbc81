"""HMAC-signed, expiring URLs for the local store's blob endpoint.

The local store has no presigning of its own, so the gateway plays the object store:
it signs ``METHOD path?params`` with a secret and an expiry, and its blob endpoint
accepts only requests that carry a valid, unexpired signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlencode

from .errors import BadSignature, UrlExpired


def _message(method: str, path: str, params: dict[str, str]) -> bytes:
    items = sorted((k, v) for k, v in params.items() if k != "sig")
    return f"{method.upper()}\n{path}\n{urlencode(items)}".encode()


def sign(
    secret: bytes,
    method: str,
    path: str,
    params: dict[str, str],
    expires: int,
    now: float | None = None,
) -> dict[str, str]:
    """Return ``params`` plus ``exp`` and ``sig`` for a URL valid ``expires`` seconds."""
    signed = dict(params)
    signed["exp"] = str(int((now if now is not None else time.time()) + expires))
    mac = hmac.new(secret, _message(method, path, signed), hashlib.sha256)
    signed["sig"] = mac.hexdigest()
    return signed


def verify(
    secret: bytes, method: str, path: str, params: dict[str, str], now: float | None = None
) -> None:
    """Raise unless ``params`` carry a valid signature that has not expired."""
    sig = params.get("sig", "")
    try:
        exp = int(params.get("exp", ""))
    except ValueError:
        raise BadSignature("signed URL has no valid expiry") from None
    mac = hmac.new(secret, _message(method, path, params), hashlib.sha256).hexdigest()
    # compare_digest takes only ASCII strings: any other signature is simply wrong
    if not sig.isascii() or not hmac.compare_digest(mac, sig):
        raise BadSignature("signature does not match this request")
    if exp < (now if now is not None else time.time()):
        raise UrlExpired("signed URL has expired", expired_at=exp)
