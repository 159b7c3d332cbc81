"""Manifests: how to rebuild one file from chunk ranges inside packs.

A manifest is an ordered list of terms ``(pack, first, end, size)``: chunks
``first..end-1`` of ``pack`` (``size`` raw bytes in all). Consecutive chunks of one pack
share a term, so a 100 GB file needs thousands of terms, not millions of chunk ids.
Stored as compact JSON ``[[pack, first, end, size], ...]`` (FORMAT.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .digest import check_hex
from .errors import InvalidManifest

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Term:
    pack: str
    first: int
    end: int
    size: int = 0  # raw bytes; filled in by the gateway from its catalog

    def to_json(self) -> list:
        return [self.pack, self.first, self.end, self.size]


def parse_terms(raw: object, limit: int = 10_000_000) -> list[Term]:
    """Validate terms sent by a client (sizes are recomputed by the gateway)."""
    if not isinstance(raw, list) or len(raw) > limit:
        raise InvalidManifest("terms must be a list")
    terms = []
    for t in raw:
        if not (isinstance(t, list) and len(t) in (3, 4)):
            raise InvalidManifest("each term is [pack, first, end]")
        pack, first, end = t[0], t[1], t[2]
        check_hex(pack, "pack id")
        if not (isinstance(first, int) and isinstance(end, int) and 0 <= first < end):
            raise InvalidManifest("term chunk range must satisfy 0 <= first < end", term=t)
        terms.append(Term(pack, first, end))
    return terms


def dumps(terms: Iterable[Term]) -> str:
    return json.dumps([t.to_json() for t in terms], separators=(",", ":"))


def loads(text: str) -> list[Term]:
    return [Term(p, f, e, s) for p, f, e, s in json.loads(text)]
