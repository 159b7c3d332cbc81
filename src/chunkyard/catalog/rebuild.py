"""The rows ``chunkyard db rebuild --from-store`` writes into an empty catalog, from the
store's metadata records and verified packs (FORMAT.md, "Rebuilding the catalog from
the store"). Versions keep their numbers and times, alias moves their ids; nothing is
noted for the store (it holds all of it already)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, select

from ..digest import tree_digest
from ..manifest import Term
from .copy import entries_for, file_id_of
from .db import batched
from .packs import index_chunks, insert_entries
from .references import insert_pins
from .schema import (
    alias_moves,
    aliases,
    artifacts,
    catalog_settings,
    packs,
    removals,
    version_files,
    versions,
)
from .settings import DEDUP_DOMAIN_DEPTH
from .versions import dirs_text


def add_artifact(conn: Connection, name: str, created_at: float) -> int:
    q = artifacts.insert().values(name=name, created_at=created_at).returning(artifacts.c.id)
    return int(conn.execute(q).scalar_one())


def add_pack(
    conn: Connection,
    pack_id: str,
    size: int,
    key: str,
    entries: Sequence[tuple[bytes, bytes, int, int, int, int]],
    now: float,
) -> None:
    """A verified pack, live at store ``key``, with its index (chunk keys included);
    its chunks become dedup targets only through the versions that name them."""
    conn.execute(
        packs.insert().values(
            id=pack_id,
            size=size,
            chunk_count=len(entries),
            state="verified",
            created_at=now,
            verified_at=now,
            key=key,
        )
    )
    insert_entries(conn, pack_id, entries)


def check_stored(
    conn: Connection,
    layout: str,
    digest: str,
    files: list[dict[str, Any]],
    dirs: Sequence[str] = (),
) -> str:
    """Why a stored version of format 3 does not hold ("" if it does): each file's id
    and size recomputed from the pack entries its manifest names, and the version's
    digest from those (with the files' modes and the empty directories ``dirs``)."""
    listing = []
    for f in files:
        terms = [Term(*t) for t in f["manifest"]]
        fid, covered = file_id_of(entries_for(conn, terms), terms)
        if fid != f["digest"] or covered != f["size"]:
            return f"file {f['path']!r}: its chunks give file id {fid or '-'} over {covered} bytes"
        listing.append((f["path"], f["size"], f["digest"], f.get("mode")))
    ours = listing[0][2] if layout == "file" and len(listing) == 1 else tree_digest(listing, dirs)
    return "" if ours == digest else f"its files give digest {ours}, the record says {digest}"


def add_version(
    conn: Connection, art_id: int, record: dict[str, Any], pins: list[dict[str, Any]]
) -> int:
    """A version from its record, with its files, and ``pins`` (``ref_objects`` rows, in
    the order of its reference files): its id."""
    r = record
    vid = conn.execute(
        versions.insert()
        .values(
            artifact_id=art_id,
            number=r["number"],
            kind=r["kind"],
            layout=r["layout"],
            digest=r["digest"],
            size=r["size"],
            file_count=len(r["files"]),
            created_at=r["created_at"],
            source=r["source"],
            digest_of=r["digest_of"],
            format=r["format"],
            dirs=dirs_text(r.get("dirs") or []),
        )
        .returning(versions.c.id)
    ).scalar_one()
    rows, pin_ids = [], iter(p["id"] for p in pins)
    for idx, f in enumerate(r["files"]):
        row = {
            "version_id": vid,
            "idx": idx,
            "path": f["path"],
            "size": f["size"],
            "digest": f["digest"],
            "b3sum": f["b3sum"],
            "manifest": "[]",
            "ref_object": None,
            "mode": f.get("mode"),
        }
        if "pin" in f:
            row["ref_object"] = next(pin_ids)
        else:
            row["manifest"] = json.dumps(f["manifest"], separators=(",", ":"))
        rows.append(row)
    for batch in batched(rows, 5000):
        conn.execute(version_files.insert(), batch)
    insert_pins(conn, pins)
    return int(vid)


def index_terms(conn: Connection, domain: str, terms: list[tuple[str, int, int]]) -> None:
    """The chunks these terms name become dedup targets in ``domain``, as the commits
    that named them made them."""
    for pack, first, end in terms:
        index_chunks(conn, pack, domain, first, end)


def known_packs(conn: Connection, ids: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for batch in batched(sorted(set(ids))):
        out.update(conn.execute(select(packs.c.id).where(packs.c.id.in_(batch))).scalars())
    return out


def add_moves(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Alias moves with the ids (``seq``) they had: later moves keep sorting after."""
    for batch in batched(rows):
        conn.execute(alias_moves.insert(), batch)


def add_alias(
    conn: Connection, art_id: int, alias: str, version_id: int, updated_at: float
) -> None:
    conn.execute(
        aliases.insert().values(
            artifact_id=art_id, name=alias, version_id=version_id, updated_at=updated_at
        )
    )


def add_removal(conn: Connection, art_id: int, record: dict[str, Any]) -> None:
    conn.execute(
        removals.insert().values(
            artifact_id=art_id,
            first=record["first"],
            last=record["last"],
            removed_at=record["removed_at"],
            removed_by=record["removed_by"],
        )
    )


def set_domain_depth(conn: Connection, depth: int) -> None:
    conn.execute(catalog_settings.delete().where(catalog_settings.c.key == DEDUP_DOMAIN_DEPTH))
    conn.execute(catalog_settings.insert().values(key=DEDUP_DOMAIN_DEPTH, value=str(depth)))
