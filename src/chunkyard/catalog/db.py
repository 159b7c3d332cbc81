"""Connections to the catalog: SQLite (WAL) by default, PostgreSQL for teams.

Reads and writes take different transactions, from different pools. On SQLite a write
transaction starts with ``BEGIN IMMEDIATE``, so concurrent writers queue on the busy
timeout instead of failing with "database is locked" when a read transaction tries to
upgrade; reads stay concurrent thanks to WAL. On PostgreSQL both are ordinary
transactions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def head_revision() -> str:
    """The newest migration's revision id. Migrations form one chain and each file is
    named after its revision (``0002_references.py`` holds revision ``0002``), which a
    test checks against Alembic's own answer."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _async_url(url: str) -> str:
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Database:
    """Reads and writes use separate connection pools, so that a crowd of readers (say
    a hundred clients asking which chunks exist) never holds every connection while a
    commit waits: measured, a session took 7.5 s to open under such load.

    Hot paths use :meth:`run`, which runs a plain function over a synchronous
    connection: on SQLite the whole transaction then runs on one worker thread, where
    aiosqlite hops between the event loop and its thread for every cursor call (a
    missing-chunk query cost 2.6 ms of CPU that way, 0.6 ms this way)."""

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
        self.sync_reader: Engine | None = None
        self.sync_writer: Engine | None = None
        if self.is_sqlite:
            self._sqlite_setup(self.engine.sync_engine, write=False)
            self._sqlite_setup(self.writer.sync_engine, write=True)
            sync_url = self.url.replace("sqlite+aiosqlite:", "sqlite+pysqlite:", 1)
            sync_args = {"connect_args": {"timeout": 60, "check_same_thread": False}}
            self.sync_reader = create_engine(sync_url, **sync_args)
            self.sync_writer = create_engine(sync_url, **sync_args, **writer_pool)
            self._sqlite_setup(self.sync_reader, write=False)
            self._sqlite_setup(self.sync_writer, write=True)
            # own threads for each: a crowd of queries must not queue ahead of commits
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="cy-db-read")
            self._writers = ThreadPoolExecutor(1, thread_name_prefix="cy-db-write")
        # Writers inside one process queue here rather than on SQLite's file lock,
        # which would hold threads in busy-wait.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    @staticmethod
    def _sqlite_setup(sync_engine: Engine, write: bool) -> None:
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

    async def revision(self) -> str | None:
        """The catalog's Alembic revision; None for a database without one."""
        try:
            async with self.read() as conn:
                return (
                    await conn.execute(text("SELECT version_num FROM alembic_version"))
                ).scalar()
        except DBAPIError:  # no alembic_version table yet
            return None

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision. A catalog already there is
        left alone without importing Alembic: that import alone was a third of the
        1.3 s a gateway or ``verifier --once`` took to start."""
        if await self.revision() == head_revision():
            return
        from alembic import command
        from alembic.config import Config

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

    async def run(self, fn: Callable[[Connection], T], *, write: bool = False) -> T:
        """``fn(connection)`` inside one read (or write) transaction; its result."""
        if self.sync_reader is None or self.sync_writer is None:
            async with self.write() if write else self.read() as conn:
                return await conn.run_sync(fn)
        loop = asyncio.get_running_loop()
        if not write:
            return await loop.run_in_executor(self._readers, _in_transaction, self.sync_reader, fn)
        assert self._write_lock is not None
        async with self._write_lock:
            return await loop.run_in_executor(self._writers, _in_transaction, self.sync_writer, fn)

    async def close(self) -> None:
        await self.engine.dispose()
        await self.writer.dispose()
        for engine in (self.sync_reader, self.sync_writer):
            if engine is not None:
                engine.dispose()
        if self.sync_reader is not None:
            self._readers.shutdown(wait=True)
            self._writers.shutdown(wait=True)


def _in_transaction(engine: Engine, fn: Callable[[Connection], Any]) -> Any:
    with engine.connect() as conn, conn.begin():
        return fn(conn)


def insert_ignoring_duplicates(dialect: str, table):  # type: ignore[no-untyped-def]
    """``INSERT … ON CONFLICT DO NOTHING`` for the dialect at hand."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()
