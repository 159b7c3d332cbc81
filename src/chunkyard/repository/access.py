"""Who may do what: a request's principal and its scopes.

A token holds scopes, each ``read:PREFIX``, ``write:PREFIX`` (which includes reading),
``metrics`` (scraping ``/metrics`` only: what a Prometheus server holds) or ``admin``
(everything, and the commands that manage tokens and the catalog). A
prefix names artifacts at segment boundaries: ``read:team-a/`` covers ``team-a/x`` and
``team-a/x/y``; ``read:team-a/model`` covers ``team-a/model`` and what is under it;
``read:*`` covers every name. Decisions look at names only, never at what exists, so a
refusal says nothing about the catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Forbidden, InvalidRequest

ACTIONS = ("read", "write")
#: scopes without a prefix: they are about the gateway, not about names
WHOLE = ("admin", "metrics")
_PREFIX = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,99}(/[A-Za-z0-9][A-Za-z0-9._-]{0,99})*/?)$")


@dataclass(frozen=True)
class Scope:
    action: str  # read | write | admin
    prefix: str = ""

    @classmethod
    def parse(cls, text: str) -> Scope:
        if text in WHOLE:
            return cls(text)
        action, sep, prefix = text.partition(":")
        if not sep or action not in ACTIONS or not _PREFIX.fullmatch(prefix):
            raise InvalidRequest(
                f"invalid scope {text[:100]!r}: use read:PREFIX, write:PREFIX, metrics or admin "
                "(PREFIX a name prefix such as team-a/ or team-a/model, or *)"
            )
        return cls(action, prefix)

    def covers(self, action: str, name: str) -> bool:
        if self.action == "admin":
            return True
        if self.action == "metrics" or action == "metrics":
            return self.action == action
        if action == "write" and self.action != "write":
            return False
        if action == "admin":
            return False
        p = self.prefix
        if p == "*":
            return True
        return name == p.rstrip("/") or name.startswith(p if p.endswith("/") else p + "/")

    def __str__(self) -> str:
        return (
            self.action if self.action in ("admin", "metrics") else f"{self.action}:{self.prefix}"
        )


@dataclass(frozen=True)
class Principal:
    """Whoever makes a request: a token (``token_id``) with its scopes, or, on a
    gateway without auth, anyone (allowed everything)."""

    token_id: str | None
    scopes: tuple[Scope, ...]

    def can(self, action: str, name: str = "") -> bool:
        return any(s.covers(action, name) for s in self.scopes)

    def require(self, action: str, name: str = "") -> None:
        if not self.can(action, name):
            what = (
                f"{action} rights"
                if action in ("admin", "metrics")
                else f"{action} access to {name!r}"
            )
            raise Forbidden(f"this token has no {what}", token=self.token_id, needs=action)

    @property
    def is_admin(self) -> bool:
        return self.can("admin")


#: every request on a gateway that runs without auth (loopback only, or --insecure)
ANYONE = Principal(None, (Scope("admin"),))


def parse_scopes(texts: list[str]) -> tuple[Scope, ...]:
    if not texts:
        raise InvalidRequest("a token needs at least one scope")
    return tuple(Scope.parse(t) for t in texts)
