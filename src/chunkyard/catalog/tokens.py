"""Bearer tokens: the catalog keeps each token's SHA-256 only, never the token."""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import Connection, select

from .schema import tokens


class TokenRow(NamedTuple):
    id: str
    hash: str
    scopes: str  # space-separated
    label: str | None
    created_at: float
    created_by: str | None
    expires_at: float | None
    revoked_at: float | None


_TOKEN = [tokens.c[f] for f in TokenRow._fields]


def insert_token(conn: Connection, row: TokenRow) -> None:
    conn.execute(tokens.insert().values(**row._asdict()))


def token_by_hash(conn: Connection, token_hash: str) -> TokenRow | None:
    row = conn.execute(select(*_TOKEN).where(tokens.c.hash == token_hash)).first()
    return None if row is None else TokenRow(*row)


def list_tokens(conn: Connection) -> list[TokenRow]:
    return [TokenRow(*r) for r in conn.execute(select(*_TOKEN).order_by(tokens.c.created_at))]


def revoke(conn: Connection, token_id: str, now: float) -> bool:
    """Whether a live token of that id was revoked."""
    return bool(
        conn.execute(
            tokens.update()
            .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
    )
