"""Registering a reference version: check the request, the allow-list and the source,
take the pins, hash if asked, and commit the version in one transaction (whole or not
at all)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ...catalog import references as refs_q
from ...catalog import versions as versions_q
from ...digest import tree_digest
from ...names import check_name, check_tags
from ...pins import Pin, RefURI, check_allowed, parse_uri, pins_digest
from .. import Repository, metadata
from ..access import Principal
from ..artifacts import apply_tags, summary
from ..events import ndjson
from .indexing import Progress, hash_all, pin_row

log = logging.getLogger("chunkyard.references")


@dataclass
class Registration:
    """A checked registration request: the pins are taken, nothing is written yet."""

    name: str
    uri: RefURI
    layout: str
    files: list[tuple[str, Pin]]
    tags: dict[str, str]
    hash: bool
    index: bool

    @property
    def size(self) -> int:
        return sum(p.size for _, p in self.files)


async def prepare(
    repo: Repository,
    who: Principal,
    name: str,
    uri: str,
    tags: dict[str, str] | None = None,
    hash: bool = False,
    index: bool = False,
) -> Registration:
    """Check the request, the allow-list and the source; take the pins. Writes nothing,
    so bad input leaves catalog and store as they were."""
    name, tags = check_name(name), check_tags(tags)
    who.require("write", name)
    parsed = parse_uri(uri)
    check_allowed(parsed, repo.settings.ref_allow)
    files = await repo.sources.pin_objects(parsed, need_ranges=index)
    layout = "tree" if parsed.is_prefix else "file"
    return Registration(name, parsed, layout, files, tags, hash or index, index)


async def register(repo: Repository, reg: Registration, progress: Progress | None = None) -> dict:
    """Hash (if asked) and create the version; returns its summary."""
    progress = progress or Progress(len(reg.files), reg.size)
    started = time.monotonic()
    if reg.hash:
        await hash_all(repo, [p for _, p in reg.files], reg.name if reg.index else None, progress)
    out = await _commit(repo, reg)
    out.update(
        objects=len(reg.files),
        bytes_read=progress.bytes_read,
        seconds=round(time.monotonic() - started, 3),
    )
    return out


def register_events(repo: Repository, reg: Registration) -> AsyncIterator[bytes]:
    """NDJSON for a long registration: progress lines about every second, then one
    ``done`` line with the result, or one ``error`` line. If the client goes away the
    work stops (and no version appears)."""
    progress = Progress(len(reg.files), reg.size)

    def cancel() -> None:
        progress.cancelled = True

    return ndjson(register(repo, reg, progress), progress.to_json, f"registering {reg.uri}", cancel)


async def _commit(repo: Repository, reg: Registration) -> dict[str, Any]:
    known = await repo.db.read(refs_q.known, [p.id for _, p in reg.files])
    nothing = refs_q.Known("", "", False)
    files = [(path, pin, known.get(pin.id, nothing)) for path, pin in reg.files]
    if all(k.file_id for _, _, k in files):
        digest_of = "content"
        digest = (
            files[0][2].file_id
            if reg.layout == "file"
            else tree_digest((path, pin.size, k.file_id) for path, pin, k in files)
        )
    else:
        digest_of, digest = "pins", pins_digest((path, pin) for path, pin, _ in files)

    def tx(conn: Connection) -> dict[str, Any]:
        source, now = str(reg.uri), time.time()
        art_id = versions_q.ensure_artifact(conn, reg.name, now)
        latest = versions_q.find_version(conn, art_id, None)
        if latest is not None and (latest.kind, latest.source, latest.digest, latest.digest_of) == (
            "reference",
            source,
            digest,
            digest_of,
        ):  # the same objects at the same pins: that version already says it all
            apply_tags(conn, latest.id, reg.tags)
            return {**summary(conn, reg.name, latest), "created": False}
        refs_q.insert_pins(conn, [pin_row(pin, k.digest, k.file_id) for _, pin, k in files])
        v = versions_q.add_version(
            conn,
            art_id,
            kind="reference",
            layout=reg.layout,
            digest=digest,
            size=reg.size,
            file_count=len(files),
            created_at=now,
            source=source,
            digest_of=digest_of,
        )
        versions_q.insert_files(
            conn,
            v.id,
            [
                {
                    "idx": i,
                    "path": path,
                    "size": pin.size,
                    "digest": k.file_id,
                    "b3sum": k.digest,
                    "manifest": "[]",
                    "ref_object": pin.id,
                }
                for i, (path, pin, k) in enumerate(files)
            ],
        )
        apply_tags(conn, v.id, reg.tags)
        return {**summary(conn, reg.name, v), "created": True}

    return await metadata.write_after(repo, tx)
