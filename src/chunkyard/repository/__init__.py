"""What a chunkyard repository does: its catalog and its store together, and the
behaviour built on them (``uploads``, ``downloads``, ``artifacts``, ``references``,
``verifier``, ``verify``). Typed arguments in, plain results out; no HTTP (that is
``chunkyard.server``) and no SQL (that is ``chunkyard.catalog``).

A :class:`Repository` holds no fact of its own beyond the catalog and the store, so
any number of gateway processes can serve one repository.
"""

from __future__ import annotations

import asyncio
import shlex

from ..catalog import Database
from ..catalog.settings import DEDUP_DOMAIN_DEPTH, setting
from ..config import Settings
from ..names import domain_of
from ..stores import open_store
from ..stores.base import Store
from .sources import Sources

VERIFY_MODES = ("inline", "background", "external")


class Repository:
    def __init__(
        self, settings: Settings, db: Database, store: Store, domain_depth: int = 1
    ) -> None:
        self.settings = settings
        self.db = db
        self.store = store
        #: how many leading name segments make a dedup domain (fixed in the catalog)
        self.domain_depth = domain_depth
        #: verifications running in this process, so that two callers share one
        self.verifying: dict[str, asyncio.Future] = {}
        #: pending metadata records (note ids) this process is writing to the store, or
        #: wrote and has yet to drop the notes of (``settled``, in batches)
        self.describing: set[int] = set()
        self.settled: list[int] = []
        #: the buckets and servers reference versions point at
        self.sources = Sources(settings)
        self.verify_mode = settings.verify or (
            "inline" if store.url.startswith("file:") else "background"
        )
        if self.verify_mode not in VERIFY_MODES:
            raise ValueError("CHUNKYARD_VERIFY must be inline, background or external")
        #: set when a pack awaits verification, for whoever verifies in the background
        self.verify_wakeup = asyncio.Event()

    @classmethod
    async def open(cls, settings: Settings, store: Store | None = None) -> Repository:
        """Check the store and the catalog's schema: an empty database gets one, a
        catalog at another revision than this code's is refused
        (:class:`~chunkyard.errors.CatalogOutdated`, ``CatalogTooNew``), since other
        gateways may share it: upgrading is ``chunkyard db upgrade``."""
        opened = store is None
        store = store or open_store(settings.store_url, secret=settings.secret)
        await store.check()
        db = Database(settings.db_url, pool=settings.db_pool)
        try:
            await db.require_current(upgrade_command(settings))
            depth = await db.read(setting, DEDUP_DOMAIN_DEPTH)
        except BaseException:
            await db.close()
            if opened:
                await store.close()
            raise
        return cls(settings, db, store, int(depth or 1))

    def domain(self, name: str) -> str:
        """The dedup domain of an artifact name."""
        return domain_of(name, self.domain_depth)

    async def close(self) -> None:
        await self.sources.close()
        await self.store.close()
        await self.db.close()


def default_catalog(data_dir: object) -> str:
    """The catalog URL of a data dir when ``CHUNKYARD_DB`` is not set."""
    return f"sqlite:///{data_dir}/catalog.db"


def upgrade_command(settings: Settings) -> str:
    """The command that upgrades this gateway's catalog, for the refusal to start."""
    if settings.db_url == default_catalog(settings.data_dir):
        return f"chunkyard db upgrade --data {shlex.quote(str(settings.data_dir))}"
    return "chunkyard db upgrade (with the same CHUNKYARD_DB)"
