"""What ``fsck`` reads of the catalog besides the manifests (:func:`catalog.gc.manifest_page`):
the raw lengths of packs' chunks, to check terms' ranges and sizes, and versions' names,
to say which a damaged chunk affects."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from .db import batched
from .schema import artifacts, pack_entries, versions


def raw_lengths(conn: Connection, ids: Iterable[str]) -> dict[str, list[int]]:
    """Each pack's chunks' raw lengths, in order (none for a pack without index rows)."""
    out: dict[str, list[int]] = {}
    for batch in batched(sorted(set(ids))):
        q = (
            select(pack_entries.c.pack_id, pack_entries.c.raw_len)
            .where(pack_entries.c.pack_id.in_(batch))
            .order_by(pack_entries.c.pack_id, pack_entries.c.idx)
        )
        for pack, n in conn.execute(q):
            out.setdefault(pack, []).append(n)
    return out


def version_labels(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    """``name@number`` of those versions."""
    out: dict[int, str] = {}
    for batch in batched(sorted(set(ids))):
        q = (
            select(versions.c.id, artifacts.c.name, versions.c.number)
            .join(artifacts, artifacts.c.id == versions.c.artifact_id)
            .where(versions.c.id.in_(batch))
        )
        out.update((vid, f"{name}@{number}") for vid, name, number in conn.execute(q))
    return out
