"""Connections to the catalog: SQLite (WAL) by default, PostgreSQL for teams.

There is one way in: :meth:`Database.read` and :meth:`Database.write` run a plain
function over a synchronous SQLAlchemy ``Connection`` inside one transaction, and the
functions of this package (``catalog.sessions``, ``catalog.packs``, ...) are what such a
function calls. The service layer composes them; it never writes SQL.

- SQLite: synchronous connections on worker threads of our own (four readers, one
  writer), so a transaction runs on one thread; an async driver hops between the event
  loop and its thread for every cursor call (a missing-chunk query costs 2.6 ms of CPU
  through aiosqlite, 0.6 ms on one thread). Writes start with ``BEGIN IMMEDIATE``, so writers in
  other processes queue on the busy timeout instead of failing with "database is
  locked" when a read transaction tries to upgrade; WAL keeps readers concurrent.
- PostgreSQL: asyncpg, with the function run through ``AsyncConnection.run_sync``.

Reads and writes use separate pools, so that a crowd of readers (a hundred clients
asking which chunks exist) never holds every connection while a commit waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"

#: bound values per ``IN (...)`` list or multi-row statement, everywhere in the catalog
#: (SQLite allows 32,766 since 3.32, PostgreSQL 65,535; 500 keeps statements small enough
#: to plan quickly and to hold no lock for long)
BATCH = 500


def batched(items: Iterable[T], size: int = BATCH) -> Iterator[list[T]]:
    """``items`` in lists of at most ``size``."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def head_revision() -> str:
    """The newest migration's revision id. Migrations form one chain and each file is
    named after its revision (``0002_references.py`` holds revision ``0002``), which a
    test checks against Alembic's own answer."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _async_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._sync_reader: Engine | None = None
        self._sync_writer: Engine | None = None
        if self.is_sqlite:
            sync_url = url.replace("sqlite:", "sqlite+pysqlite:", 1)
            args = {"connect_args": {"timeout": 60, "check_same_thread": False}}
            self._sync_reader = create_engine(sync_url, **args)
            # SQLite takes one writer at a time anyway: one connection, behind the lock
            self._sync_writer = create_engine(sync_url, **args, pool_size=1, max_overflow=0)
            _sqlite_setup(self._sync_reader, write=False)
            _sqlite_setup(self._sync_writer, write=True)
            # own threads for each: a crowd of queries must not queue ahead of commits
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="cy-db-read")
            self._writers = ThreadPoolExecutor(1, thread_name_prefix="cy-db-write")
            # writers inside one process queue here rather than on SQLite's file lock,
            # which would hold threads in busy-wait
            self._write_lock = asyncio.Lock()
        else:
            self._engine = create_async_engine(_async_url(url))
            self._writer = create_async_engine(_async_url(url))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` inside one read transaction; its result."""
        if self._sync_reader is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._readers, _in_transaction, self._sync_reader, fn, args
            )
        async with self._connect(self._engine) as conn:
            return await conn.run_sync(fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(connection, *args)`` inside one write transaction: all of it or none."""
        if self._sync_writer is not None:
            loop = asyncio.get_running_loop()
            async with self._write_lock:
                return await loop.run_in_executor(
                    self._writers, _in_transaction, self._sync_writer, fn, args
                )
        async with self._connect(self._writer) as conn:
            return await conn.run_sync(fn, *args)

    @staticmethod
    @asynccontextmanager
    async def _connect(engine: AsyncEngine | None) -> AsyncIterator[AsyncConnection]:
        assert engine is not None
        async with engine.connect() as conn, conn.begin():
            yield conn

    async def revision(self) -> str | None:
        """The catalog's Alembic revision; None for a database without one."""
        try:
            return await self.read(_revision)
        except DBAPIError:  # no alembic_version table yet
            return None

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision. A catalog already there is
        left alone without importing Alembic, a third of a gateway's start-up time."""
        if await self.revision() == head_revision():
            return
        await self.write(_upgrade)

    async def close(self) -> None:
        for engine in (self._engine, self._writer):
            if engine is not None:
                await engine.dispose()
        for sync in (self._sync_reader, self._sync_writer):
            if sync is not None:
                sync.dispose()
        if self.is_sqlite:
            self._readers.shutdown(wait=True)
            self._writers.shutdown(wait=True)


def _sqlite_setup(engine: Engine, write: bool) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _in_transaction(engine: Engine, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args)


def _revision(conn: Connection) -> str | None:
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


#: the PostgreSQL advisory lock that migrations hold (any constant; "chky")
MIGRATION_LOCK = 0x63686B79


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    if conn.dialect.name == "postgresql":
        # gateways (or the workers of one) that start at once on a catalog migrate it one
        # at a time: the others wait here, then find it at head (SQLite: BEGIN IMMEDIATE)
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def insert_ignoring_duplicates(conn: Connection, table: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def raw_sqlite(conn: Connection) -> Any:
    """The ``sqlite3`` connection under ``conn`` (same transaction), or None on other
    databases. The statements a push runs per request use it: SQLAlchemy Core spends a
    few microseconds of Python per bound value (a missing-chunk query of 105 ids costs
    0.46 ms through Core and 0.11 ms on sqlite3; a pack's 400 index rows 3 and 2 ms)."""
    if conn.dialect.name != "sqlite":
        return None
    import sqlite3

    raw = conn.connection.driver_connection
    return raw if isinstance(raw, sqlite3.Connection) else None
