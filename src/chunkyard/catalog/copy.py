"""``chunkyard db copy``: a whole catalog into another database (SQLite to PostgreSQL
when a team outgrows one machine, or back, or SQLite to SQLite).

The source is opened read-only (a SQLite file even without creating its ``-wal`` and
``-shm`` files; PostgreSQL with every transaction read-only) and read in one
transaction, so the copy is one consistent snapshot. The target is migrated to the
head first, must hold no rows (or is emptied, with ``force``), and is written in one
transaction: rows table by table in foreign-key order, in batches (memory stays bounded
by a batch, whatever the catalog's size), then PostgreSQL's id sequences are moved past
the copied ids. Before that transaction commits, the copy is checked from the copied
rows alone: row counts per table, and each stored version of format 3 rebuilt from its
files: every file id from the copied pack index rows its manifest names, and the
version digest from those. A check that fails rolls everything back.

Only the catalog is copied: the packs stay in their store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, Table, func, select, text
from sqlalchemy.util import greenlet_spawn

from ..digest import FileIdHasher, TreeFile, tree_digest
from ..errors import (
    CatalogNotEmpty,
    CatalogOutdated,
    CatalogTooNew,
    Conflict,
    CopyMismatch,
    InvalidRequest,
    NotACatalog,
)
from ..manifest import loads
from .db import BATCH, Database, check_url, safe_url, sidecars, sqlite_path
from .schema import catalog_settings, metadata, pack_entries, version_files, versions

#: every table of the catalog, parents before children (``alembic_version`` is not one:
#: the target gets its own by migrating)
TABLES: list[Table] = list(metadata.sorted_tables)


class Progress(Protocol):
    """What a copy reports as it goes (the command draws bars from it)."""

    def note(self, message: str) -> None: ...

    def table(self, name: str, total: int) -> None: ...

    def advance(self, name: str, rows: int) -> None: ...


class Silent:
    """A :class:`Progress` that reports nothing (``--json``, tests)."""

    def note(self, message: str) -> None:
        pass

    def table(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, rows: int) -> None:
        pass


@dataclass
class Checked:
    """What the check after a copy could and could not recompute."""

    #: stored versions of format 3: file ids and version digest rebuilt from rows
    stored_versions: int = 0
    files: int = 0  # their files
    #: reference versions whose digest is of content: recomputed from their files'
    #: recorded file ids (there are no chunks to rebuild them from)
    reference_content: int = 0
    #: reference versions whose digest is of pins, and stored versions of format 2
    #: (their digests are uploaders' b3sums): only counted and manifests parsed
    reference_pins: int = 0
    format2_versions: int = 0
    manifests: int = 0  # manifests parsed, over all versions

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class CopyReport:
    source: str  # URLs with passwords masked
    target: str
    tables: dict[str, int]  # rows copied per table
    emptied: dict[str, int]  # rows removed from the target first (``force``)
    sequences: dict[str, int] = field(default_factory=dict)  # next id, PostgreSQL
    checked: Checked = field(default_factory=Checked)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "tables": self.tables,
            "rows": sum(self.tables.values()),
            "emptied": self.emptied,
            "sequences": self.sequences,
            "checked": self.checked.to_json(),
            "packs_copied": False,
        }


async def copy_catalog(
    source_url: str, target_url: str, force: bool = False, progress: Progress | None = None
) -> CopyReport:
    """Copy the catalog at ``source_url`` into ``target_url`` and check the copy."""
    progress = progress or Silent()
    check_url(source_url)
    check_url(target_url)
    if _same_database(source_url, target_url):
        raise InvalidRequest("the source and the target are the same catalog")
    source = Database(source_url, read_only=True, name="source catalog")
    target = Database(target_url, name="target catalog")
    try:
        await _require_source(source)
        await target.migrate()
        path = sqlite_path(source_url)
        before = sidecars(path) if path is not None else set()
        if "-wal" in before:
            progress.note(
                f"the source has a {path}-wal file: a gateway may be using it; the copy is "
                "a snapshot as of now, and what it writes later is not copied"
            )
        async with source.transaction() as src, target.transaction(write=True) as dst:
            report = await greenlet_spawn(_copy, src, dst, force, progress)
            if path is not None and sidecars(path) != before:
                raise Conflict(
                    f"the source catalog {safe_url(source_url)} was opened by another "
                    "process while it was copied (a gateway?): nothing was copied; stop it "
                    "and copy again"
                )
        report.source, report.target = safe_url(source_url), safe_url(target_url)
        return report
    finally:
        await source.close()
        await target.close()


async def _require_source(source: Database) -> None:
    """The source must be a chunkyard catalog at this code's head: its tables are then
    the ones :data:`TABLES` describes."""
    status = await source.schema()
    if status.state == "behind":
        raise CatalogOutdated(
            f"the source catalog {status.url} is at schema revision {status.revision}, "
            f"older than this chunkyard's {status.head}: upgrade it first with "
            "`chunkyard db upgrade` (CHUNKYARD_DB=SOURCE_URL, or --data DIR), then copy",
            revision=status.revision,
            head=status.head,
        )
    if status.state == "ahead":
        raise CatalogTooNew(
            f"the source catalog {status.url} is at schema revision {status.revision}, "
            f"newer than this chunkyard knows ({status.head}): upgrade chunkyard",
            revision=status.revision,
            head=status.head,
        )
    if status.state != "current":
        raise NotACatalog(
            f"the source {status.url} is not a chunkyard catalog "
            + ("(it has no tables)" if status.state == "empty" else "(no alembic_version)")
        )


def _same_database(a: str, b: str) -> bool:
    from sqlalchemy import make_url

    pa, pb = sqlite_path(a), sqlite_path(b)
    if pa is not None or pb is not None:
        return pa is not None and pb is not None and pa == pb
    ua, ub = make_url(a), make_url(b)
    return (ua.host, ua.port or 5432, ua.database) == (ub.host, ub.port or 5432, ub.database)


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def empty_target(conn: Connection, force: bool, what: str = "copy") -> dict[str, int]:
    """Refuse a target catalog that holds rows (:class:`CatalogNotEmpty`), or with
    ``force`` empty it; the rows it held, per table. The migration writes
    ``catalog_settings`` (facts fixed at creation): those do not make a target "not
    empty" (the caller replaces them)."""
    held = {t.name: n for t in TABLES if t is not catalog_settings and (n := _count(conn, t))}
    if held and not force:
        listing = ", ".join(f"{name}: {n}" for name, n in sorted(held.items()))
        raise CatalogNotEmpty(
            f"the target catalog already holds rows ({listing}): {what} into an empty "
            "database, or pass --force to empty it first",
            rows=held,
        )
    for t in reversed(TABLES):
        conn.execute(t.delete())
    return held


def _copy(src: Connection, dst: Connection, force: bool, progress: Progress) -> CopyReport:
    totals = {t.name: _count(src, t) for t in TABLES}
    held = empty_target(dst, force)
    if held:
        progress.note(
            f"emptying the target catalog first (--force): {sum(held.values())} rows "
            f"in {len(held)} tables"
        )
    copied: dict[str, int] = {}
    for t in TABLES:
        progress.table(t.name, totals[t.name])
        copied[t.name] = 0
        for rows in _batches(src, t):
            dst.execute(t.insert(), rows)
            copied[t.name] += len(rows)
            progress.advance(t.name, len(rows))
    sequences = move_sequences(dst)
    for t in TABLES:
        found = _count(dst, t)
        if not totals[t.name] == copied[t.name] == found:
            raise CopyMismatch(
                f"table {t.name}: {totals[t.name]} rows in the source, {copied[t.name]} "
                f"copied, {found} in the target",
                table=t.name,
            )
    progress.note("checking the copy: file ids and version digests from the copied rows")
    checked = check_versions(dst)
    return CopyReport("", "", copied, held, sequences, checked)


def _batches(conn: Connection, table: Table) -> Iterator[list[dict[str, Any]]]:
    """The rows of ``table`` in primary-key order, :data:`BATCH` at a time, streamed
    from the database (a server-side cursor on PostgreSQL)."""
    query = select(table).order_by(*table.primary_key.columns)
    result = conn.execution_options(yield_per=BATCH).execute(query)
    for part in result.partitions():
        yield [dict(r._mapping) for r in part]


def move_sequences(conn: Connection) -> dict[str, int]:
    """Set PostgreSQL's id sequences past the copied ids, so that the next insert does
    not take an id that exists; the next id of each. (SQLite takes the largest id plus
    one by itself.)"""
    if conn.dialect.name != "postgresql":
        return {}
    out: dict[str, int] = {}
    for t in TABLES:
        col = t.autoincrement_column
        if col is None:
            continue
        nxt = conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{t.name}', '{col.name}'), "
                f"COALESCE((SELECT MAX({col.name}) FROM {t.name}), 0) + 1, false)"
            )
        ).scalar()
        if nxt is not None:
            out[f"{t.name}.{col.name}"] = int(nxt)
    return out


# -- the check --------------------------------------------------------------------
def check_versions(conn: Connection) -> Checked:
    """Recompute what can be recomputed of every version from the catalog's rows alone,
    as the gateway computed it at commit (FORMAT.md, "Digests"): for a stored version of
    format 3, each file's id from the ``pack_entries`` rows its manifest's terms name,
    and the version's digest from those ids (the file id for layout ``file``, the tree
    digest for ``tree``). That proves manifests and pack index rows arrived intact. Of
    other versions the file count is checked and each manifest parsed."""
    checked = Checked()
    after = 0
    while True:
        page = conn.execute(
            select(versions).where(versions.c.id > after).order_by(versions.c.id).limit(BATCH)
        ).all()
        if not page:
            return checked
        for v in page:
            _check_version(conn, v, checked)
        after = page[-1].id


def _check_version(conn: Connection, v: Any, checked: Checked) -> None:
    where = f"version {v.id} (artifact {v.artifact_id}, number {v.number})"
    rebuild = v.kind == "stored" and v.format >= 3
    listed = rebuild or (v.kind == "reference" and v.digest_of == "content")
    listing: list[TreeFile] = []  # one version's files: its tree digest
    count = size = 0
    for page in _file_pages(conn, v.id):
        terms = {}
        for f in page:
            try:
                terms[f.idx] = loads(f.manifest)
            except (ValueError, TypeError) as exc:
                raise CopyMismatch(
                    f"{where}, file {f.path!r}: its manifest does not parse", version=v.id
                ) from exc
        checked.manifests += len(page)
        index = entries_for(conn, [t for ts in terms.values() for t in ts]) if rebuild else {}
        for f in page:
            if rebuild:
                fid, covered = file_id_of(index, terms[f.idx])
                if fid != f.digest or covered != f.size:
                    raise CopyMismatch(
                        f"{where}, file {f.path!r}: its file id recomputed from the copied "
                        f"pack entries is {fid} over {covered} bytes, the row says "
                        f"{f.digest} over {f.size}",
                        version=v.id,
                        path=f.path,
                    )
                checked.files += 1
            if listed:
                listing.append((f.path, f.size, f.digest, f.mode))
            count += 1
            size += f.size
    if count != v.file_count or (v.kind == "stored" and size != v.size):
        raise CopyMismatch(
            f"{where}: {count} files of {size} bytes copied, the version says "
            f"{v.file_count} files of {v.size} bytes",
            version=v.id,
        )
    if listed:
        if v.layout == "file" and count == 1:
            digest = listing[0][2]
        else:
            digest = tree_digest(listing, json.loads(v.dirs) if v.dirs else [])
        if digest != v.digest:
            raise CopyMismatch(
                f"{where}: its digest recomputed from the copied files is {digest}, "
                f"the version says {v.digest}",
                version=v.id,
            )
    if rebuild:
        checked.stored_versions += 1
    elif v.kind == "reference":
        if listed:
            checked.reference_content += 1
        else:
            checked.reference_pins += 1
    else:
        checked.format2_versions += 1


def _file_pages(conn: Connection, version_id: int) -> Iterator[Sequence[Any]]:
    """A version's files in order, :data:`BATCH` at a time (a tree may hold 500,000)."""
    after = -1
    while True:
        page = conn.execute(
            select(version_files)
            .where(version_files.c.version_id == version_id, version_files.c.idx > after)
            .order_by(version_files.c.idx)
            .limit(BATCH)
        ).all()
        if not page:
            return
        yield page
        after = page[-1].idx


def entries_for(conn: Connection, terms: list[Any]) -> dict[str, dict[int, tuple[bytes, int]]]:
    """(chunk id, raw length) by pack and index, for every chunk the terms name: per
    pack, the rows from the first chunk named to the last."""
    spans: dict[str, tuple[int, int]] = {}
    for t in terms:
        lo, hi = spans.get(t.pack, (t.first, t.end))
        spans[t.pack] = (min(lo, t.first), max(hi, t.end))
    out: dict[str, dict[int, tuple[bytes, int]]] = {}
    for pack, (lo, hi) in spans.items():
        rows = conn.execute(
            select(pack_entries.c.idx, pack_entries.c.chunk_id, pack_entries.c.raw_len).where(
                pack_entries.c.pack_id == pack,
                pack_entries.c.idx >= lo,
                pack_entries.c.idx < hi,
            )
        )
        out[pack] = {r[0]: (bytes(r[1]), r[2]) for r in rows}
    return out


def file_id_of(index: dict[str, dict[int, tuple[bytes, int]]], terms: list[Any]) -> tuple[str, int]:
    """A file's id and size from its terms; "" if a chunk they name has no index row."""
    ids, covered = FileIdHasher(), 0
    for t in terms:
        entries = index.get(t.pack, {})
        for i in range(t.first, t.end):
            entry = entries.get(i)
            if entry is None:
                return "", covered
            ids.update(*entry)
            covered += entry[1]
    return ids.hexdigest(), covered
