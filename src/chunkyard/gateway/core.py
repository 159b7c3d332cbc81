"""The gateway's state: settings, catalog and store. Stateless beyond these two."""

from __future__ import annotations

from ..catalog import Database
from ..config import Settings
from ..stores import open_store
from ..stores.base import Store


def pack_key(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


class Gateway:
    def __init__(self, settings: Settings, db: Database, store: Store) -> None:
        self.settings = settings
        self.db = db
        self.store = store

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        store = open_store(
            settings.store_url, public_url=settings.public_url, secret=settings.secret
        )
        await store.check()
        db = Database(settings.db_url)
        await db.migrate()
        return cls(settings, db, store)

    async def close(self) -> None:
        await self.store.close()
        await self.db.close()
