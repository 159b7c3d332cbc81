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


@dataclass(frozen=True)
class Term:
    pack: str
    first: int
    end: int
    size: int = 0  # raw bytes; filled in by the gateway from its catalog

    def to_json(self) -> list:
        return [self.pack, self.first, self.end, self.size]


def dumps(terms: Iterable[Term]) -> str:
    return json.dumps([t.to_json() for t in terms], separators=(",", ":"))


def loads(text: str) -> list[Term]:
    return [Term(p, f, e, s) for p, f, e, s in json.loads(text)]
