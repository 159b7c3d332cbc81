"""Facts fixed when the catalog was made (``catalog_settings``), such as the depth of
the dedup domains: changing one would need the dedup index rebuilt."""

from __future__ import annotations

from sqlalchemy import Connection, select

from .schema import catalog_settings

DEDUP_DOMAIN_DEPTH = "dedup_domain_depth"


def setting(conn: Connection, key: str) -> str | None:
    return conn.execute(
        select(catalog_settings.c.value).where(catalog_settings.c.key == key)
    ).scalar()
