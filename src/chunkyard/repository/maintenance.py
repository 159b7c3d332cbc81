"""Operator work on a catalog, with no gateway in between: where its schema stands
(``chunkyard db status``), upgrading it (``db upgrade``), copying it into another
database (``db copy``), rebuilding it from the store (``db rebuild --from-store``), and
the check ``serve`` makes before it starts, so that a catalog it cannot use is refused
with one line rather than a traceback from inside the web server."""

from __future__ import annotations

from typing import Any

from ..catalog import Database
from ..catalog.copy import Progress, copy_catalog
from ..catalog.db import SchemaStatus, head_revision, safe_url, sqlite_path
from ..config import Settings
from ..stores.base import Store
from . import metadata, rebuild, upgrade_command


async def status(db_url: str) -> dict[str, Any]:
    """The catalog's revision, this code's head and what follows; read-only (a SQLite
    file that does not exist yet is not created: it is reported empty)."""
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        return SchemaStatus(safe_url(db_url), None, head_revision(), "empty").to_json()
    db = Database(db_url, read_only=True)
    try:
        return (await db.schema()).to_json()
    finally:
        await db.close()


async def upgrade(db_url: str) -> dict[str, Any]:
    """Apply the migrations the catalog lacks (the whole schema to an empty database)."""
    db = Database(db_url)
    try:
        before, after = await db.migrate()
    finally:
        await db.close()
    return {"catalog": safe_url(db_url), "from": before, "to": after, "upgraded": before != after}


async def check(settings: Settings, store: Store) -> None:
    """What ``serve`` checks before it starts: the catalog can be opened and is at this
    code's head (an empty database gets the schema now), and is not an empty one over a
    store that describes versions (FORMAT.md, "Metadata objects", rule 6)."""
    db = Database(settings.db_url)
    try:
        await db.require_current(upgrade_command(settings))
        await metadata.refuse_lost_catalog(db, store)
    finally:
        await db.close()


async def copy(
    source_url: str, target_url: str, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Copy a whole catalog into another database and check the copy (see
    :mod:`chunkyard.catalog.copy`); the summary."""
    return (await copy_catalog(source_url, target_url, force, progress)).to_json()


async def rebuild_from_store(
    settings: Settings, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Rebuild the catalog from the store's records and packs (see
    :mod:`chunkyard.repository.rebuild`); the report."""
    return await rebuild.rebuild(settings, force, progress)
