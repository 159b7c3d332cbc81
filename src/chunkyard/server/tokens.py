"""Routes for tokens (admin only); the logic is in ``chunkyard.repository.tokens``."""

from __future__ import annotations

from typing import Any

from ..repository import tokens
from . import models as m
from .routing import Call, Endpoints

api = Endpoints()


@api.post(
    "/v1/tokens",
    "make a token (admin); the answer holds it, once",
    body=m.CreateToken,
    response=m.Token,
    status=201,
    body_limit=64 * 1024,
)
async def create_token(call: Call[None, None, m.CreateToken]) -> dict[str, Any]:
    b = call.body
    return await tokens.create(call.repo, call.who, list(b.scopes), b.ttl, b.label)


@api.get("/v1/tokens", "list tokens, without their secrets (admin)", response=m.Tokens)
async def list_tokens(call: Call[None, None, None]) -> dict[str, Any]:
    return await tokens.list_all(call.repo, call.who)


@api.add(
    "DELETE",
    "/v1/tokens/{id}",
    "revoke a token (admin)",
    params=m.TokenPath,
    response=m.Revoked,
)
async def revoke_token(call: Call[m.TokenPath, None, None]) -> dict[str, Any]:
    return await tokens.revoke(call.repo, call.who, call.path.id)
