"""Connections to the catalog: SQLite (WAL) by default, PostgreSQL for teams.

Reads and writes take different transactions, from different pools. On SQLite a write
transaction starts with ``BEGIN IMMEDIATE``, so concurrent writers queue on the busy
timeout instead of failing with "database is locked" when a read transaction tries to
upgrade; reads stay concurrent thanks to WAL. On PostgreSQL both are ordinary
transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Database:
    """Reads and writes use separate connection pools, so that a crowd of readers (say
    a hundred clients asking which chunks exist) never holds every connection while a
    commit waits: measured, a session took 7.5 s to open under such load."""

    def __init__(self, url: str) -> None:
        self.url = _async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 60}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        # SQLite takes one writer at a time anyway: one connection, behind the lock
        writer_pool = {"pool_size": 1, "max_overflow": 0} if self.is_sqlite else {}
        self.writer: AsyncEngine = create_async_engine(self.url, **kwargs, **writer_pool)
        if self.is_sqlite:
            self._sqlite_setup(self.engine, write=False)
            self._sqlite_setup(self.writer, write=True)
        # Writers inside one process queue here rather than on SQLite's file lock,
        # which would hold threads in busy-wait.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @staticmethod
    def _sqlite_setup(engine: AsyncEngine, write: bool) -> None:
        sync_engine = engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(sync_engine, "begin")
        def _begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))

        def upgrade(sync_conn) -> None:  # type: ignore[no-untyped-def]
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.write() as conn:
            await conn.run_sync(upgrade)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is not None:
            await self._write_lock.acquire()
        try:
            async with self.writer.connect() as conn, conn.begin():
                yield conn
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    async def close(self) -> None:
        await self.engine.dispose()
        await self.writer.dispose()


def insert_ignoring_duplicates(dialect: str, table):  # type: ignore[no-untyped-def]
    """``INSERT … ON CONFLICT DO NOTHING`` for the dialect at hand."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
