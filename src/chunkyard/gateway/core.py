"""The gateway's state: settings, catalog and store (and the clients of reference
sources). Stateless beyond the catalog and the store."""

from __future__ import annotations

import asyncio
import contextlib

from ..catalog import Database
from ..config import Settings
from ..stores import open_store
from ..stores.base import Store
from .sources import Sources


class Gateway:
    def __init__(self, settings: Settings, db: Database, store: Store) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        #: the buckets and servers reference versions point at
        self.sources = Sources(settings)
        self.verify_mode = settings.verify or (
            "inline" if store.url.startswith("file:") else "background"
        )
        if self.verify_mode not in ("inline", "background", "external"):
            raise ValueError("CHUNKYARD_VERIFY must be inline, background or external")
        self.verifier_wakeup: asyncio.Event | None = None
        self._verifier: asyncio.Task | None = None

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        store = open_store(
            settings.store_url, public_url=settings.public_url, secret=settings.secret
        )
        await store.check()
        db = Database(settings.db_url)
        await db.migrate()
        gw = cls(settings, db, store)
        if gw.verify_mode == "background":
            from . import verifier

            gw.verifier_wakeup = asyncio.Event()
            gw._verifier = asyncio.create_task(verifier.run(gw, gw.verifier_wakeup))
        return gw

    async def close(self) -> None:
        if self._verifier is not None:
            self._verifier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._verifier
        await self.sources.close()
        await self.store.close()
        await self.db.close()
