"""Removing versions (``chunkyard rm``): FORMAT.md, "Metadata objects", "Removing
versions".

A removal is one transaction: the versions' files (so their packs stop being
referenced: garbage collection takes them back), tags and aliases go, the removal is
kept so that no number is ever taken again, and a tombstone is noted for the store;
after the commit the tombstone is written, and only then the removed versions'
records deleted. Rules:
- an alias that points at a version being removed refuses the removal
  (``version_aliased``, naming them) unless ``force``, which removes them too, each as
  a move in its history;
- removing every version of an artifact that has more than one needs ``confirm`` (or
  ``force``): ``confirm_required`` otherwise;
- removing a version that was removed already changes nothing and says so (a retried
  request gets the answer it would have had).
A refused removal changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import versions as q
from ..errors import ConfirmRequired, VersionAliased, VersionNotFound
from ..names import check_name
from . import Repository, metadata
from .access import Principal
from .artifacts import find_artifact


async def remove(
    repo: Repository,
    who: Principal,
    name: str,
    number: int | None = None,
    force: bool = False,
    confirm: bool = False,
) -> dict[str, Any]:
    """Remove version ``number`` of ``name``, or (None) every version of it. Returns
    ``{"name", "removed": [numbers], "aliases": [aliases removed]}``."""
    check_name(name)
    who.require("write", name)

    def tx(conn: Connection) -> dict[str, Any]:
        art_id = find_artifact(conn, name)
        q.lock_artifact(conn, art_id)
        live = q.live_versions(conn, art_id)
        if number is not None:
            doomed = [v for v in live if v.number == number]
            if not doomed:
                if q.removal_of(conn, art_id, number) is not None:
                    return {"name": name, "removed": [], "aliases": [], "already": [number]}
                raise VersionNotFound(
                    f"artifact {name!r} has no version {number}", name=name, ref=number
                )
            first = last = number
        else:
            doomed = live
            if not doomed:
                return {"name": name, "removed": [], "aliases": [], "already": []}
            if len(doomed) > 1 and not (confirm or force):
                numbers = f"{doomed[0].number} to {doomed[-1].number}"
                raise ConfirmRequired(
                    f"{name!r} has {len(doomed)} versions ({numbers}): removing them all "
                    "needs confirmation (--yes)",
                    name=name,
                    versions=len(doomed),
                )
            first, last = 1, doomed[-1].number
        by_version = q.aliases_of(conn, [v.id for v in doomed])
        aliases = sorted(a for names in by_version.values() for a in names)
        if aliases and not force:
            numbers = {v.id: v.number for v in doomed}
            pointing = ", ".join(
                f"{a} -> {numbers[vid]}" for vid, names in sorted(by_version.items()) for a in names
            )
            raise VersionAliased(
                f"aliases of {name!r} point at what would be removed ({pointing}): move or "
                "remove them first, or force the removal (--force) to remove them too",
                name=name,
                aliases=aliases,
            )
        now = time.time()
        for alias in aliases:
            q.remove_alias(conn, art_id, alias, now, who.token_id)
        q.remove_versions(conn, art_id, [v.id for v in doomed], first, last, now, who.token_id)
        return {
            "name": name,
            "removed": [v.number for v in doomed],
            "aliases": aliases,
            "already": [],
        }

    return await metadata.write_after(repo, tx)
