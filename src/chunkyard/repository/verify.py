"""``verify``: check a version against what it rests on. A reference's every object
against its pin; a stored version's every pack (present, right size) and every
reference object it borrows chunks from. What it finds is recorded, so that a drifted
object stops being a dedup target (and becomes one again if it is restored)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import Connection

from ..catalog import packs as packs_q
from ..catalog import references as refs_q
from ..catalog import versions as versions_q
from ..catalog.packs import PackRow
from ..catalog.versions import Ref, VersionRow
from ..manifest import loads
from ..packs import pack_key
from ..pins import Pin, parse_uri
from . import Repository
from .access import Principal
from .artifacts import find_version
from .references.reading import pin_of

log = logging.getLogger("chunkyard.verify")
#: store HEADs in flight when checking packs
CHECK_CONCURRENCY = 16


async def verify(repo: Repository, who: Principal, name: str, ref: Ref) -> dict[str, Any]:
    who.require("read", name)

    def tx(conn: Connection) -> tuple[VersionRow, list[tuple[str, Pin]], list[PackRow]]:
        v = find_version(conn, name, ref)
        files = versions_q.files_of(conn, v.id)
        if v.kind == "reference":
            pins = refs_q.pins(conn, [f.ref_object or "" for f in files])
            return v, [(f.path, pin_of(pins[f.ref_object or ""])) for f in files], []
        used = {t.pack for f in files for t in loads(f.manifest)}
        pins = refs_q.pins(conn, used)
        stored = packs_q.pack_rows(conn, used - set(pins))
        return v, [("", pin_of(r)) for r in pins.values()], list(stored.values())

    v, targets, stored = await repo.db.read(tx)
    prefix = parse_uri(v.source) if v.source else None
    checks = await repo.sources.check_all([p for _, p in targets], prefix)
    objects: list[dict[str, Any]] = []
    for (path, pin), (state, found, superseded) in zip(targets, checks, strict=True):
        entry: dict[str, Any] = {"uri": pin.uri, "state": state, "pin": pin.to_json()}
        if path:
            entry["path"] = path
        else:
            entry["pack"] = pin.id
        if state != "ok":
            entry["found"] = found.to_json()
        if superseded:
            entry["superseded"] = True
        objects.append(entry)
    objects += await _check_packs(repo, stored)
    states = [(p.id, c[0]) for (_, p), c in zip(targets, checks, strict=True)]
    hit = await repo.db.write(
        refs_q.record_checks,
        [pid for pid, s in states if s != "ok"],
        [pid for pid, s in states if s == "ok"],
        time.time(),
        repo.domain(name),
    )
    if hit:
        log.warning("reference objects drifted, no longer dedup targets: %s", hit)
    bad = sum(o["state"] != "ok" for o in objects)
    return {
        "name": name,
        "version": v.number,
        "kind": v.kind,
        "source": v.source,
        "ok": bad == 0,
        "checked": len(objects),
        "drifted": bad,
        "objects": objects,
    }


async def _check_packs(repo: Repository, rows: list[PackRow]) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def one(r: PackRow) -> dict[str, Any]:
        async with sem:
            info = await repo.store.stat(r.key or pack_key(r.id))
        state = "missing" if info is None else ("ok" if info.size == r.size else "changed")
        return {"pack": r.id, "state": state}

    return list(await asyncio.gather(*(one(r) for r in rows)))
