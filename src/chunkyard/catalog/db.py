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

Schema: one Alembic chain for both databases. A gateway creates the schema in an empty
database but never upgrades an existing one (:meth:`Database.require_current`): other
gateways of older code may share the catalog, so upgrading is the operator's step
(``chunkyard db upgrade``, :meth:`Database.migrate`).
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import (
    CatalogOutdated,
    CatalogTooNew,
    CatalogUnreachable,
    InvalidRequest,
    NotACatalog,
)
from ..version import __version__

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


def known_revisions() -> list[str]:
    """Every migration's revision id, oldest first. Migrations form one chain and each
    file is named after its revision (``0002_references.py`` holds revision ``0002``),
    which a test checks against Alembic's own answer."""
    return sorted(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def head_revision() -> str:
    """The newest migration's revision id."""
    return known_revisions()[-1]


def safe_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def check_url(url: str) -> None:
    """Refuse a URL that names no database chunkyard can keep a catalog in."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is None or parsed.get_backend_name() not in ("sqlite", "postgresql", "postgres"):
        raise InvalidRequest(
            f"not a catalog URL: {safe_url(url)!r} (use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DATABASE)"
        )


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite catalog URL; None for other databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


#: files SQLite keeps beside a database while it is open (or after a crash)
SIDECARS = ("-wal", "-shm", "-journal")


def sidecars(path: Path) -> set[str]:
    """Which of SQLite's files beside ``path`` exist."""
    return {s for s in SIDECARS if os.path.exists(f"{path}{s}")}


def _read_only_sqlite_url(url: str) -> str:
    """A URL that opens a SQLite file read-only and, when no process has it open (no
    ``-wal`` or ``-shm`` beside it), as immutable: a plain read-only open of a WAL
    database creates those two files, which would write beside a catalog that must be
    left untouched. (With them present, SQLite uses them and creates nothing.)"""
    path = sqlite_path(url)
    if path is None:
        raise InvalidRequest(f"{url!r} names no SQLite file to read")
    query = "mode=ro&uri=true" + ("" if sidecars(path) else "&immutable=1")
    return f"sqlite+pysqlite:///file:{quote(str(path))}?{query}"


def _async_url(url: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


@dataclass(frozen=True)
class SchemaStatus:
    """Where a catalog's schema stands against this code's migrations."""

    url: str  # password masked
    revision: str | None  # None: no schema revision at all
    head: str
    #: empty (no tables) | current | behind (``db upgrade``) | ahead (upgrade chunkyard)
    #: | foreign (tables, but no schema revision: not a chunkyard catalog)
    state: str
    tables: tuple[str, ...] = ()

    @property
    def upgrade_needed(self) -> bool:
        return self.state == "behind"

    def to_json(self) -> dict[str, Any]:
        return {
            "catalog": self.url,
            "revision": self.revision,
            "head": self.head,
            "state": self.state,
            "upgrade_needed": self.upgrade_needed,
        }


class Database:
    def __init__(
        self, url: str, read_only: bool = False, name: str = "catalog", pool: int = 5
    ) -> None:
        """``read_only``: open so that nothing can be written, not even SQLite's files
        beside the database (the source of ``db copy``, ``db status``). ``name`` says
        which catalog messages are about ("source catalog"). ``pool``: PostgreSQL
        connections kept open per pool (as many more for bursts)."""
        self.url = url
        self.name = name
        self.read_only = read_only
        self.is_sqlite = url.startswith("sqlite")
        self.dialect = "sqlite" if self.is_sqlite else "postgresql"
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._sync_reader: Engine | None = None
        self._sync_writer: Engine | None = None
        if self.is_sqlite:
            if read_only:
                sync_url = _read_only_sqlite_url(url)
            else:
                sync_url = url.replace("sqlite:", "sqlite+pysqlite:", 1)
            args = {"connect_args": {"timeout": 60, "check_same_thread": False}}
            self._sync_reader = create_engine(sync_url, **args)
            # SQLite takes one writer at a time anyway: one connection, behind the lock
            self._sync_writer = create_engine(sync_url, **args, pool_size=1, max_overflow=0)
            _sqlite_setup(self._sync_reader, write=False, read_only=read_only)
            _sqlite_setup(self._sync_writer, write=True, read_only=read_only)
            # own threads for each: a crowd of queries must not queue ahead of commits
            self._readers = ThreadPoolExecutor(4, thread_name_prefix="cy-db-read")
            self._writers = ThreadPoolExecutor(1, thread_name_prefix="cy-db-write")
            # writers inside one process queue here rather than on SQLite's file lock,
            # which would hold threads in busy-wait
            self._write_lock = asyncio.Lock()
        else:
            pg_args: dict[str, Any] = {"pool_size": pool, "max_overflow": pool}
            if read_only:  # the server refuses every write, whatever the code does
                settings = {"default_transaction_read_only": "on"}
                pg_args["connect_args"] = {"server_settings": settings}
            self._engine = create_async_engine(_async_url(url), **pg_args)
            self._writer = create_async_engine(_async_url(url), **pg_args)

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

    @asynccontextmanager
    async def transaction(self, write: bool = False) -> AsyncIterator[Connection]:
        """One transaction held open across awaits, for a long job (``db copy``) that
        works on two databases at once; committed when the block ends, rolled back if
        it raises. Reads see one snapshot (REPEATABLE READ on PostgreSQL). On
        PostgreSQL the connection may only be used inside SQLAlchemy's
        ``greenlet_spawn``, as ``run_sync`` does."""
        if self.is_sqlite:
            engine = self._sync_writer if write else self._sync_reader
            assert engine is not None
            with engine.connect() as conn, conn.begin():
                yield conn
            return
        async_engine = self._writer if write else self._engine
        assert async_engine is not None
        async with async_engine.connect() as aconn:
            if not write:
                aconn = await aconn.execution_options(isolation_level="REPEATABLE READ")
            async with aconn.begin():
                assert aconn.sync_connection is not None
                yield aconn.sync_connection

    async def revision(self) -> str | None:
        """The catalog's Alembic revision; None for a database without one."""
        return (await self.schema()).revision

    async def schema(self) -> SchemaStatus:
        """Where the schema stands, without importing Alembic (a third of a gateway's
        start-up time). A database that cannot be opened is a :class:`CatalogUnreachable`
        (a file that is no SQLite database: :class:`NotACatalog`)."""
        try:
            revision, tables = await self.read(_probe)
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            if "file is not a database" in reason:
                raise NotACatalog(
                    f"the {self.name} {safe_url(self.url)} is not a chunkyard catalog: {reason}"
                ) from exc
            raise self._unreachable(reason) from exc
        except OSError as exc:  # asyncpg: no server at that address
            raise self._unreachable(str(exc)) from exc
        head = head_revision()
        if revision is None:
            state = "foreign" if tables else "empty"
        elif revision == head:
            state = "current"
        elif revision in known_revisions():
            state = "behind"
        else:
            state = "ahead"
        return SchemaStatus(safe_url(self.url), revision, head, state, tuple(tables))

    def _unreachable(self, reason: str) -> CatalogUnreachable:
        return CatalogUnreachable(
            f"cannot open the {self.name} {safe_url(self.url)}: {reason}", catalog=self.name
        )

    async def require_current(self, upgrade_hint: str = "chunkyard db upgrade") -> None:
        """What a gateway does at start: create the schema in an empty database, accept
        one at this code's head, and refuse any other with a typed error that says
        what to run (``upgrade_hint`` names the catalog for ``db upgrade``)."""
        status = await self.schema()
        if status.state == "empty":
            try:
                await self.write(_upgrade)
            except DBAPIError:  # another gateway starting at once may have made it
                if (await self.schema()).state != "current":
                    raise
        elif status.state == "behind":
            raise CatalogOutdated(
                f"the {self.name} {status.url} is at schema revision {status.revision}, "
                f"older than this chunkyard's {status.head}: stop the gateways that use it "
                f"and run `{upgrade_hint}`",
                revision=status.revision,
                head=status.head,
            )
        elif status.state != "current":
            self._refuse(status)

    def _refuse(self, status: SchemaStatus) -> NoReturn:
        """Raise the error for a schema no migration of this code can start from."""
        if status.state == "ahead":
            raise CatalogTooNew(
                f"the {self.name} {status.url} is at schema revision {status.revision}, "
                f"which this chunkyard ({__version__}, newest revision {status.head}) does "
                "not know: a newer chunkyard upgraded it; upgrade chunkyard",
                revision=status.revision,
                head=status.head,
            )
        shown = ", ".join(status.tables[:5]) + (", ..." if len(status.tables) > 5 else "")
        raise NotACatalog(
            f"the {self.name} {status.url} is not a chunkyard catalog: it has tables "
            f"({shown}) but no schema revision (alembic_version)",
            tables=list(status.tables[:20]),
        )

    async def migrate(self) -> tuple[str | None, str]:
        """Bring the schema to the newest Alembic revision: ``(from, to)``. An empty
        database gets the whole schema; one at a revision this code does not know, or
        with tables but no revision, is refused with a typed error rather than
        Alembic's own."""
        status = await self.schema()
        if status.state == "current":
            return status.revision, status.head
        if status.state in ("ahead", "foreign"):
            self._refuse(status)
        before = await self.write(_upgrade)
        return before, status.head

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


def _sqlite_setup(engine: Engine, write: bool, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        if read_only:
            cur.execute("PRAGMA query_only=ON")
        else:
            _wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write and not read_only else "BEGIN")


def _wal(cur: sqlite3.Cursor, timeout: float = 60.0) -> None:
    """Put the database in WAL mode (a no-op once it is). Two connections that both
    find a new file in rollback mode and convert it at once would deadlock, so SQLite
    answers one of them "database is locked" without waiting (its busy handler is
    skipped there): gateways starting together on a new catalog hit that. Retry."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.05))


def _in_transaction(engine: Engine, fn: Callable[..., Any], args: Sequence[Any]) -> Any:
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args)


def _probe(conn: Connection) -> tuple[str | None, list[str]]:
    """The schema revision (None without one) and the tables of the database."""
    tables = sorted(inspect(conn).get_table_names())
    if "alembic_version" not in tables:
        return None, tables
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar(), tables


#: the PostgreSQL advisory lock that migrations hold (any constant; "chky")
MIGRATION_LOCK = 0x63686B79


def _upgrade(conn: Connection) -> str | None:
    """Run the migrations up to the head; the revision the schema was at."""
    from alembic import command
    from alembic.config import Config

    if conn.dialect.name == "postgresql":
        # gateways (or the workers of one) that start at once on a catalog migrate it one
        # at a time: the others wait here, then find it at head (SQLite: BEGIN IMMEDIATE)
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    before = _probe(conn)[0]
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    return before


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


def ping(conn: Connection) -> None:
    """The cheapest round trip that proves the catalog answers: for readiness checks."""
    conn.execute(text("SELECT 1"))
