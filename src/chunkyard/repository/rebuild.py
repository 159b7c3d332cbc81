"""``chunkyard db rebuild --from-store``: a working catalog from the store alone, after
the database was lost (FORMAT.md, "Rebuilding the catalog from the store").

It reads every metadata record under ``meta/`` (each checked against its key), leaves
out what tombstones cover, reads and verifies every pack a rebuilt stored version names
(which recovers the chunk keys, secret and so in no index), checks each version's
file ids and digest against what it read, and writes it all into an empty catalog in
one transaction: a rebuild that fails leaves the catalog as it was. Versions it cannot
vouch for (a pack gone or damaged, a digest that does not hold) are left out and
reported; their records stay, so a later rebuild can bring them back.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import Connection
from sqlalchemy.util import greenlet_spawn

from .. import packs as packfmt
from .. import records
from ..catalog import Database
from ..catalog import rebuild as rebuild_q
from ..catalog import versions as versions_q
from ..catalog.copy import Progress, Silent, empty_target, move_sequences
from ..catalog.db import safe_url
from ..config import Settings
from ..digest import tree_digest
from ..errors import InvalidManifest, InvalidName, PackCorrupt, RecordInvalid, StoreObjectMissing
from ..names import check_tree_dirs, domain_of
from ..pins import Pin, pins_digest
from ..stores import open_store
from ..stores.base import Store
from .references.indexing import pin_row
from .uploads import check_tree_extras

#: records and packs read from the store at once
PARALLEL_RECORDS = 16
PARALLEL_PACKS = 4
_PACK_KEY = re.compile(r"^packs/[0-9a-f]{2}/(?P<id>[0-9a-f]{64})(\.[0-9a-f]{1,64})?$")


@dataclass
class Found:
    """The records of the store, checked and grouped."""

    versions: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, int], str] = field(default_factory=dict)
    tags: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    moves: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    removed: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    count: int = 0
    tag_conflicts: list[str] = field(default_factory=list)

    def covered(self, name: str, number: int) -> bool:
        return any(r["first"] <= number <= r["last"] for r in self.removed.get(name, ()))


@dataclass
class Report:
    store: str
    catalog: str
    records: int = 0
    artifacts: int = 0
    versions: int = 0
    files: int = 0
    tags: int = 0
    aliases: int = 0
    alias_moves: int = 0
    removals: int = 0
    removed_versions: int = 0  # version records a tombstone covers: left out
    packs: int = 0
    pack_bytes: int = 0
    dedup_domain_depth: int | None = None
    #: versions left out, and why (a pack gone or damaged, a digest that does not hold)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    #: versions rebuilt whose files borrow chunks from indexed reference objects: those
    #: chunks are not checked, and the objects must be indexed again (``ref --index``)
    borrowing: list[dict[str, Any]] = field(default_factory=list)
    #: aliases whose last move points at a version not rebuilt (left out)
    dangling_aliases: list[dict[str, Any]] = field(default_factory=list)
    emptied: dict[str, int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tokens_rebuilt"] = False
        return out


async def rebuild(
    settings: Settings, force: bool = False, progress: Progress | None = None
) -> dict[str, Any]:
    """Rebuild the catalog ``settings.db_url`` names from the store
    ``settings.store_url``; the report."""
    progress = progress or Silent()
    t0 = time.monotonic()
    store = open_store(settings.store_url, secret=settings.secret)
    db = Database(settings.db_url, name="target catalog")
    try:
        await store.check()
        await db.migrate()
        report = Report(safe_url(settings.store_url), safe_url(settings.db_url))
        found = await read_records(store, progress)
        report.records = found.count
        homes = await _pack_homes(store)
        async with db.transaction(write=True) as conn:
            report.emptied = await greenlet_spawn(empty_target, conn, force, "rebuild")
            good = await _read_packs(store, conn, found, homes, report, progress)
            await greenlet_spawn(_write, conn, found, good, report, progress)
        report.seconds = round(time.monotonic() - t0, 3)
        return report.to_json()
    finally:
        await db.close()
        await store.close()


# -- reading the store ----------------------------------------------------------------
async def read_records(store: Store, progress: Progress | None = None) -> Found:
    """Every record under ``meta/``, checked (hash, kind, name, number, format) and
    grouped. A record that fails its check stops the rebuild: leaving out a tombstone
    would bring removed versions back."""
    progress = progress or Silent()
    keys = []
    async for info in store.list(records.PREFIX):
        if records.parse_key(info.key) is not None:
            keys.append(info.key)
    progress.table("records", len(keys))
    got: dict[str, dict[str, Any]] = {}
    gate = asyncio.Semaphore(PARALLEL_RECORDS)

    async def one(key: str) -> None:
        async with gate:
            try:
                data = await store.get(key)
            except StoreObjectMissing:  # deleted meanwhile (a removal's clean-up)
                return
        got[key] = records.decode(key, data)
        progress.advance("records", 1)

    await _all(one(key) for key in keys)
    found = Found(count=len(got))
    for key in sorted(got):
        _group(found, key, got[key])
    return found


def _group(found: Found, key: str, r: dict[str, Any]) -> None:
    kind, name = r["record"], r["name"]
    if kind == "version":
        at = (name, r["number"])
        if at in found.versions and found.versions[at] != r:
            raise RecordInvalid(
                f"two different records describe version {r['number']} of {name!r}: "
                f"{found.keys[at]} and {key} (was a new catalog started over this store?)",
                keys=[found.keys[at], key],
            )
        found.versions[at], found.keys[at] = r, key
    elif kind == "tags":
        have = found.tags.setdefault((name, r["number"]), {})
        for k, v in r["tags"].items():
            if have.setdefault(k, v) != v:
                found.tag_conflicts.append(f"{name}@{r['number']} {k}")
    elif kind == "alias":
        found.moves[name].append(r)
    else:
        found.removed[name].append(r)


async def _pack_homes(store: Store) -> dict[str, list[str]]:
    """Pack id -> the store keys holding a copy, in key order."""
    out: dict[str, list[str]] = defaultdict(list)
    async for info in store.list("packs/"):
        m = _PACK_KEY.match(info.key)
        if m is not None:
            out[m["id"]].append(info.key)
    for keys in out.values():
        keys.sort()
    return out


async def _read_packs(
    store: Store,
    conn: Connection,
    found: Found,
    homes: dict[str, list[str]],
    report: Report,
    progress: Progress,
) -> set[str]:
    """Read and verify every pack a live stored version names, inserting each that
    verifies; the ids of those."""
    wanted = sorted(
        {
            t[0]
            for (name, number), r in found.versions.items()
            if r["kind"] == "stored" and not found.covered(name, number)
            for f in r["files"]
            for t in f["manifest"]
        }
        & homes.keys()
    )
    progress.table("packs", len(wanted))
    gate, writing = asyncio.Semaphore(PARALLEL_PACKS), asyncio.Lock()
    good: set[str] = set()

    async def one(pack_id: str) -> None:
        for key in homes[pack_id]:
            async with gate:
                try:
                    data = await store.get(key)
                    checked = await anyio.to_thread.run_sync(packfmt.verify, pack_id, data)
                except (PackCorrupt, StoreObjectMissing):
                    continue
            entries = [
                (e.chunk_id, k, e.offset, e.stored_len, e.raw_len, e.scheme) for e, k in checked
            ]
            async with writing:
                await greenlet_spawn(
                    rebuild_q.add_pack, conn, pack_id, len(data), key, entries, time.time()
                )
            good.add(pack_id)
            report.packs += 1
            report.pack_bytes += len(data)
            break
        progress.advance("packs", 1)

    await _all(one(pack_id) for pack_id in wanted)
    return good


async def _all(jobs: Any) -> None:
    """Run the jobs at once; the first failure is raised as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            for job in jobs:
                tg.create_task(job)
    except BaseExceptionGroup as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


# -- writing the catalog (one transaction, synchronous) ------------------------------
def _write(
    conn: Connection, found: Found, good: set[str], report: Report, progress: Progress
) -> None:
    depths = {r["dedup_domain_depth"] for r in found.versions.values()}
    if len(depths) > 1:
        raise RecordInvalid(
            f"version records name different dedup domain depths ({sorted(depths)}): "
            "they come from different catalogs"
        )
    depth = depths.pop() if depths else None
    if depth is not None:
        rebuild_q.set_domain_depth(conn, depth)
        report.dedup_domain_depth = depth
    pins = {  # pin id -> a reference file holding it: what borrowed terms name
        Pin(**_pin_args(f["pin"])).id
        for r in found.versions.values()
        if r["kind"] == "reference"
        for f in r["files"]
    }
    names = sorted(set(n for n, _ in found.versions) | set(found.moves) | set(found.removed))
    progress.table("versions", len(found.versions))
    ids: dict[tuple[str, int], int] = {}
    for name in names:
        art_id = rebuild_q.add_artifact(conn, name, _born(found, name))
        report.artifacts += 1
        for r in found.removed.get(name, ()):
            rebuild_q.add_removal(conn, art_id, r)
            report.removals += 1
        mine = sorted((n, r) for (nm, n), r in found.versions.items() if nm == name)
        for number, r in mine:
            progress.advance("versions", 1)
            if found.covered(name, number):
                report.removed_versions += 1
                continue
            vid = _version(conn, art_id, name, r, good, pins, depth or 0, report)
            if vid is None:
                continue
            ids[(name, number)] = vid
            new = found.tags.get((name, number), {})
            versions_q.insert_tags(conn, vid, new, note=False)
            report.tags += len(new)
        _aliases(conn, art_id, name, found.moves.get(name, []), ids, report)
    report.sequences = move_sequences(conn)


def _born(found: Found, name: str) -> float:
    times = [r["created_at"] for (n, _), r in found.versions.items() if n == name]
    times += [r["moved_at"] for r in found.moves.get(name, ())]
    times += [r["removed_at"] for r in found.removed.get(name, ())]
    return min(times) if times else time.time()


def _pin_args(p: dict[str, Any]) -> dict[str, Any]:
    return {
        "uri": p["uri"],
        "size": p["size"],
        "etag": p["etag"],
        "version_id": p["version_id"],
        "last_modified": p["last_modified"],
        "weak_etag": p["weak_etag"],
    }


def _version(
    conn: Connection,
    art_id: int,
    name: str,
    r: dict[str, Any],
    good: set[str],
    pins: set[str],
    depth: int,
    report: Report,
) -> int | None:
    """Insert one version if it holds; its id, or None (left out, reported)."""
    where = {"name": name, "version": r["number"]}
    borrowed: set[str] = set()
    if r["kind"] == "stored":
        named = {t[0] for f in r["files"] for t in f["manifest"]}
        borrowed = (named - good) & pins
        lost = named - good - borrowed
        if lost:
            report.skipped.append(
                {
                    **where,
                    "reason": f"{len(lost)} pack(s) missing or damaged",
                    "packs": sorted(lost),
                }
            )
            return None
        why = _check_tree(r)
        if why:
            report.skipped.append({**where, "reason": why})
            return None
        if r["format"] >= 3 and not borrowed:
            dirs = r.get("dirs") or []
            why = rebuild_q.check_stored(conn, r["layout"], r["digest"], r["files"], dirs)
            if why:
                report.skipped.append({**where, "reason": why})
                return None
    else:
        why = _check_reference(r)
        if why:
            report.skipped.append({**where, "reason": why})
            return None
    pins = [
        pin_row(Pin(**_pin_args(f["pin"])), f["b3sum"], f["digest"])
        for f in r["files"]
        if "pin" in f
    ]
    vid = rebuild_q.add_version(conn, art_id, r, pins)
    if r["kind"] == "stored":
        terms = [(t[0], t[1], t[2]) for f in r["files"] for t in f["manifest"] if t[0] in good]
        rebuild_q.index_terms(conn, domain_of(name, depth), terms)
    if borrowed:
        report.borrowing.append({**where, "objects": sorted(borrowed)})
    report.versions += 1
    report.files += len(r["files"])
    return vid


def _check_tree(r: dict[str, Any]) -> str:
    """Why a stored version's modes or empty directories cannot be ("" if they can):
    as a commit would check them (a record is checked against its key, but not for
    sense)."""
    modes = [f.get("mode") for f in r["files"]]
    dirs = r.get("dirs") or []
    try:
        if any(m is not None and not (isinstance(m, int) and 0 <= m <= 0o777) for m in modes):
            raise InvalidManifest("a file mode is not between 0 and 0o777")
        check_tree_extras(r["layout"], modes, dirs)
        check_tree_dirs(dirs, (f["path"] for f in r["files"]), nfc=False)
    except (InvalidManifest, InvalidName) as exc:
        return exc.message
    return ""


def _check_reference(r: dict[str, Any]) -> str:
    """Why a reference version's digest does not follow from its files ("" if it does)."""
    files = r["files"]
    if r["digest_of"] == "pins":
        ours = pins_digest((f["path"], Pin(**_pin_args(f["pin"]))) for f in files)
    elif r["layout"] == "file" and len(files) == 1:
        ours = files[0]["digest"]
    else:
        ours = tree_digest((f["path"], f["size"], f["digest"]) for f in files)
    return "" if ours == r["digest"] else f"its files give digest {ours}, the record {r['digest']}"


def _aliases(
    conn: Connection,
    art_id: int,
    name: str,
    moves: list[dict[str, Any]],
    ids: dict[tuple[str, int], int],
    report: Report,
) -> None:
    """Replay an artifact's alias moves in order: the history as it was (same move
    ids), and each alias where its last move left it."""
    moves = sorted(moves, key=lambda m: m["seq"])
    rows, where = [], {}
    for m in moves:
        number = m["version"]
        rows.append(
            {
                "id": m["seq"],
                "artifact_id": art_id,
                "alias": m["alias"],
                "version_id": ids.get((name, number)) if number is not None else None,
                "number": number,
                "previous": m["previous"],
                "moved_at": m["moved_at"],
                "moved_by": m["moved_by"],
            }
        )
        where[m["alias"]] = (number, m["moved_at"])
    rebuild_q.add_moves(conn, rows)
    report.alias_moves += len(rows)
    for alias, (number, at) in sorted(where.items()):
        if number is None:
            continue
        vid = ids.get((name, number))
        if vid is None:
            report.dangling_aliases.append({"name": name, "alias": alias, "version": number})
            continue
        rebuild_q.add_alias(conn, art_id, alias, vid, at)
        report.aliases += 1
