"""Bearer tokens: made once, shown once, kept as a hash.

A token is ``cy_`` followed by 43 URL-safe characters (32 random bytes); the catalog
keeps its SHA-256 (a fast hash is right for a secret of 256 random bits: there is
nothing to guess). Its public id, the first 12 hex digits of that hash, names it in
``token ls`` and ``token revoke``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import Database
from ..catalog import tokens as tokens_q
from ..catalog.tokens import TokenRow
from ..errors import NotFound, Unauthorized
from . import Repository
from .access import ANYONE, Principal, Scope, parse_scopes

PREFIX = "cy_"
#: how long a gateway trusts a token it looked up: a revocation takes effect within this
CACHE_SECONDS = 5.0
_cache: dict[str, tuple[float, Principal]] = {}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_token(
    conn: Connection,
    scopes: list[str],
    ttl: float | None = None,
    label: str | None = None,
    created_by: str | None = None,
) -> tuple[str, TokenRow]:
    """A new token and its row (in a write transaction). The token exists only here."""
    parsed = parse_scopes(scopes)
    token = PREFIX + secrets.token_urlsafe(32)
    digest = hash_token(token)
    now = time.time()
    row = TokenRow(
        id=digest[:12],
        hash=digest,
        scopes=" ".join(str(s) for s in parsed),
        label=label,
        created_at=now,
        created_by=created_by,
        expires_at=now + ttl if ttl else None,
        revoked_at=None,
    )
    tokens_q.insert_token(conn, row)
    return token, row


def describe(row: TokenRow) -> dict[str, Any]:
    """A token as ``token ls`` shows it: everything but its hash."""
    return {
        "id": row.id,
        "scopes": row.scopes.split(),
        "label": row.label,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
    }


async def create(
    repo: Repository, who: Principal, scopes: list[str], ttl: float | None, label: str | None
) -> dict[str, Any]:
    who.require("admin")
    token, row = await repo.db.write(make_token, scopes, ttl, label, who.token_id)
    return {**describe(row), "token": token}


async def list_all(repo: Repository, who: Principal) -> dict[str, Any]:
    who.require("admin")
    return {"tokens": [describe(r) for r in await repo.db.read(tokens_q.list_tokens)]}


async def revoke(repo: Repository, who: Principal, token_id: str) -> dict[str, Any]:
    who.require("admin")
    if not await repo.db.write(tokens_q.revoke, token_id, time.time()):
        raise NotFound(f"no live token {token_id!r}", token=token_id)
    _cache.clear()  # this gateway stops trusting it at once; others within CACHE_SECONDS
    return {"id": token_id, "revoked": True}


async def authenticate(repo: Repository, authorization: str | None) -> Principal:
    """The principal of a request's ``Authorization`` header; without auth, anyone."""
    if not repo.settings.auth:
        return ANYONE
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(PREFIX):
        raise Unauthorized("this gateway needs a bearer token (set CHUNKYARD_TOKEN)")
    digest = hash_token(token.strip())
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit is not None and hit[0] > now:
        return hit[1]
    row = await repo.db.read(tokens_q.token_by_hash, digest)
    wall = time.time()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at < wall):
        raise Unauthorized("the bearer token is not valid (unknown, revoked or expired)")
    principal = Principal(row.id, tuple(Scope.parse(s) for s in row.scopes.split()))
    if len(_cache) > 10_000:
        _cache.clear()
    until = now + CACHE_SECONDS
    if row.expires_at:
        until = min(until, now + row.expires_at - wall)
    _cache[digest] = (until, principal)
    return principal


async def offline(
    db_url: str,
    action: str,
    scopes: list[str] | None = None,
    ttl: float | None = None,
    label: str | None = None,
    token_id: str | None = None,
) -> dict[str, Any]:
    """``create``, ``ls`` or ``revoke`` straight against a catalog, with no gateway and
    no token: for an operator with the catalog in reach (the first admin token)."""
    db = Database(db_url)
    try:
        await db.migrate()
        if action == "create":
            token, row = await db.write(make_token, scopes or [], ttl, label, "offline")
            return {**describe(row), "token": token}
        if action == "ls":
            return {"tokens": [describe(r) for r in await db.read(tokens_q.list_tokens)]}
        if not await db.write(tokens_q.revoke, token_id, time.time()):
            raise NotFound(f"no live token {token_id!r}", token=token_id)
        return {"id": token_id, "revoked": True}
    finally:
        await db.close()
