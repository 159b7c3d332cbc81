"""The upload protocol: session → missing chunks → packs (presigned parts) → commit.

Trust: a pack's chunks enter the dedup index only after the gateway has read the pack
back from the store and checked its id and every chunk id (``packs.verify``). A commit
may name only chunks of verified packs; term sizes are recomputed from the catalog,
never taken from the client.
"""

from __future__ import annotations

import base64
import contextlib
import time
import uuid
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import packs as packfmt
from ..catalog import hot
from ..catalog.schema import (
    pack_entries,
    packs,
    sessions,
    version_files,
    versions,
)
from ..digest import DIGEST_SIZE, check_hex, tree_digest
from ..errors import (
    BodyTooLarge,
    InvalidManifest,
    InvalidRequest,
    PackCorrupt,
    PackNotFound,
    SessionNotFound,
    StoreError,
    UntrustedChunks,
    VersionNotFound,
)
from ..manifest import Term, dumps, loads, parse_terms
from ..names import check_name, check_path, check_tags
from ..packs import pack_key
from ..stores.base import CompletedPart
from . import verifier
from .artifacts import add_version, apply_tags, artifact_and_latest, version_json
from .core import Gateway

#: ids per missing-chunk query: 64 Ki ids = a 2 MiB body
MAX_QUERY_IDS = 65536
MAX_FILES = 1_000_000


async def create_session(gw: Gateway, name: object) -> dict[str, Any]:
    name = check_name(name)
    sid, now = uuid.uuid4().hex, time.time()
    async with gw.db.write() as conn:
        await conn.execute(
            sessions.insert().values(
                id=sid,
                artifact_name=name,
                state="open",
                created_at=now,
                expires_at=now + gw.settings.session_ttl,
            )
        )
    return {
        "session": sid,
        "name": name,
        "expires_at": now + gw.settings.session_ttl,
        "part_checksum": gw.store.part_checksum,
        "sequential_parts": gw.store.sequential_parts,
        "pack_target_size": packfmt.TARGET_SIZE,
        # packs are cut into even parts of this size: a client can checksum them up
        # front and begin each pack with a single request
        "pack_part_size": gw.store.plan_parts(packfmt.MAX_SIZE)[0].size,
        "pack_max_size": packfmt.MAX_SIZE,
        "query_batch": MAX_QUERY_IDS,
    }


def _check_session(conn: Connection, sid: str, open_only: bool = True) -> hot.SessionRow:
    row = hot.session_row(conn, sid)
    if row is None or row.expires_at < time.time():
        raise SessionNotFound(f"no open upload session {sid!r}", session=sid)
    if open_only and row.state != "open":
        raise SessionNotFound(f"upload session {sid!r} is already committed", session=sid)
    return row


async def _session(conn: AsyncConnection, sid: str, open_only: bool = True):  # type: ignore[no-untyped-def]
    return await conn.run_sync(_check_session, sid, open_only)


def _pack_row(conn: Connection, sid: str, pack_id: str):  # type: ignore[no-untyped-def]
    """The pack's catalog row (or None) in an open session."""
    _check_session(conn, sid)
    return conn.execute(select(packs).where(packs.c.id == pack_id)).first()


async def find_chunks(gw: Gateway, sid: str, body: bytes) -> dict[str, Any]:
    """Which of these chunk ids are already stored (in verified packs), and where."""
    if len(body) % DIGEST_SIZE:
        raise InvalidRequest("body must be a concatenation of 32-byte chunk ids")
    n = len(body) // DIGEST_SIZE
    if n > MAX_QUERY_IDS:
        raise BodyTooLarge(f"at most {MAX_QUERY_IDS} chunk ids per query", limit=MAX_QUERY_IDS)
    ids = [body[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE] for i in range(n)]

    def query(conn: Connection) -> dict[bytes, tuple[str, int]]:
        _check_session(conn, sid)
        return hot.chunk_locations(conn, ids)

    found = await gw.db.run(query)
    pack_pos: dict[str, int] = {}
    locations: list[list[int] | None] = []
    for cid in ids:
        loc = found.get(cid)
        if loc is None:
            locations.append(None)
        else:
            locations.append([pack_pos.setdefault(loc[0], len(pack_pos)), loc[1]])
    return {"packs": list(pack_pos), "locations": locations}


async def begin_pack(gw: Gateway, sid: str, body: dict) -> dict[str, Any]:
    """Start (or resume) the multipart upload of one pack; returns presigned parts.

    Calling it again for a pack still uploading returns fresh URLs for the same upload,
    so a client whose URLs expired, or that restarted, goes on where it was. A pack
    already in the store (the same bytes make the same id) needs no upload at all.
    """
    pack_id = check_hex(body.get("pack"), "pack id")
    size = body.get("size")
    if not isinstance(size, int) or not (
        packfmt.HEADER_SIZE + packfmt.FOOTER_SIZE <= size <= packfmt.MAX_SIZE
    ):
        raise InvalidRequest(
            f"pack size must be between {packfmt.HEADER_SIZE + packfmt.FOOTER_SIZE}"
            f" and {packfmt.MAX_SIZE} bytes"
        )
    plan = gw.store.plan_parts(size)
    checksums = body.get("checksums")
    if gw.store.part_checksum and checksums is None:
        # the client cannot know the store's part plan: tell it, and it asks again
        return {
            "pack": pack_id,
            "state": "need_checksums",
            "checksum": gw.store.part_checksum,
            "parts": [{"number": p.number, "offset": p.offset, "size": p.size} for p in plan],
        }
    if gw.store.part_checksum and not (
        isinstance(checksums, list)
        and len(checksums) == len(plan)
        and all(isinstance(c, str) and len(c) < 100 for c in checksums)
    ):
        raise InvalidRequest(
            f"this store needs a {gw.store.part_checksum} checksum per part",
            parts=[p.size for p in plan],
        )
    key = pack_key(pack_id)
    row = await gw.db.run(lambda conn: _pack_row(conn, sid, pack_id))
    if row is not None and row.state in ("verified", "complete"):
        # already whole in the store (complete: its verification is pending, and a commit
        # that names it verifies it first): nothing to send
        return {"pack": pack_id, "state": row.state, "parts": []}
    if row is not None and row.size != size:
        raise InvalidRequest(f"pack {pack_id} is being uploaded with size {row.size}")
    if row is None:
        upload_id = await gw.store.create_upload(key, size)

        def insert(conn: Connection):  # type: ignore[no-untyped-def]
            row = conn.execute(select(packs).where(packs.c.id == pack_id)).first()
            if row is None:
                conn.execute(
                    packs.insert().values(
                        id=pack_id,
                        size=size,
                        chunk_count=0,
                        state="uploading",
                        session_id=sid,
                        upload_id=upload_id,
                        created_at=time.time(),
                    )
                )
            return row

        row = await gw.db.run(insert, write=True)
        if row is not None:  # another session began the same pack meanwhile: join it
            await gw.store.abort_upload(key, upload_id)
            upload_id = row.upload_id
    else:
        upload_id = row.upload_id
    expiry = gw.settings.url_expiry
    parts = []
    for i, part in enumerate(plan):
        req = await gw.store.presign_part(
            key, upload_id, part, size, checksums[i] if gw.store.part_checksum else None, expiry
        )
        parts.append(
            {"number": part.number, "offset": part.offset, "size": part.size, **req.to_json()}
        )
    return {
        "pack": pack_id,
        "state": "uploading",
        "parts": parts,
        "sequential": gw.store.sequential_parts,
        "expires_in": expiry,
    }


async def complete_pack(gw: Gateway, sid: str, pack_id: str, body: dict) -> dict[str, Any]:
    """Make the uploaded parts one object, index it from its footer, and verify it
    (now, or in the background: see :mod:`chunkyard.gateway.verifier`).

    A pack whose structure is wrong, or that fails inline verification, is removed from
    the store and the catalog: it never becomes visible, and the client gets
    ``pack_corrupt``.
    """
    check_hex(pack_id, "pack id")
    raw_parts = body.get("parts", [])
    if not isinstance(raw_parts, list) or len(raw_parts) > 10_000:
        raise InvalidRequest("parts must be a list of {number, etag}")
    try:
        completed = [
            CompletedPart(int(p["number"]), str(p.get("etag", "")), str(p.get("checksum", "")))
            for p in raw_parts
        ]
    except (KeyError, TypeError, ValueError):
        raise InvalidRequest("parts must be a list of {number, etag}") from None
    row = await gw.db.run(lambda conn: _pack_row(conn, sid, pack_id))
    if row is None:
        raise PackNotFound(f"pack {pack_id} was never begun", pack=pack_id)
    if row.state in ("complete", "verified"):
        return {"pack": pack_id, "state": row.state, "chunks": row.chunk_count}
    key = pack_key(pack_id)
    try:
        await gw.store.complete_upload(key, row.upload_id, completed)
    except StoreError:
        # a retried completion (the first one's answer was lost) finds the object there
        info = await gw.store.stat(key)
        if info is None or info.size != row.size:
            raise
    try:
        entries = await _claimed_index(body, row.size)
        if entries is None:
            entries = await verifier.read_index(gw, pack_id, row.size)
    except PackCorrupt:
        await verifier.remove(gw, pack_id)
        raise

    def record(conn: Connection) -> str | None:
        """Index the pack; the state it was already in if another completion won."""
        cur = conn.execute(select(packs.c.state).where(packs.c.id == pack_id)).scalar()
        if cur != "uploading":
            return cur
        conn.execute(
            packs.update()
            .where(packs.c.id == pack_id)
            .values(state="complete", chunk_count=len(entries))
        )
        hot.insert_pack_entries(conn, pack_id, entries)
        return None

    already = await gw.db.run(record, write=True)
    if already is not None:
        return {"pack": pack_id, "state": already, "chunks": len(entries)}
    state = "complete"
    if gw.verify_mode == "inline":
        state = await verifier.verify_pack(gw, pack_id, forget_on_failure=True)
    elif gw.verifier_wakeup is not None:
        gw.verifier_wakeup.set()
    return {"pack": pack_id, "state": state, "chunks": len(entries)}


async def _claimed_index(body: dict, size: int) -> list[packfmt.Entry] | None:
    """The pack's index as its uploader sent it (``index``: base64 of the pack's tail,
    index and footer), parsed with the same checks as one read from the store; it saves
    a ranged read per pack. Verification later checks it against the stored bytes."""
    raw = body.get("index")
    if raw is None:
        return None
    try:
        tail = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError):
        raise InvalidRequest("index must be base64") from None
    entries = packfmt.index_from_tail(tail, size)
    if isinstance(entries, int) or len(tail) != size - entries[-1].offset - entries[-1].stored_len:
        raise PackCorrupt("the index sent does not match the pack's size")
    return entries


def _parse_commit(body: dict) -> tuple[str, list[dict], dict[str, str]]:
    layout = body.get("layout")
    if layout not in ("file", "tree"):
        raise InvalidManifest("layout must be 'file' or 'tree'")
    files = body.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise InvalidManifest("files must be a list")
    if layout == "file" and len(files) != 1:
        raise InvalidManifest("a 'file' version has exactly one file")
    out, seen = [], set()
    for f in files:
        if not isinstance(f, dict):
            raise InvalidManifest("each file is an object")
        path = check_path(f.get("path"))
        if path in seen:
            raise InvalidManifest(f"file {path!r} appears twice")
        seen.add(path)
        size = f.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"file {path!r} needs a non-negative integer size")
        digest = check_hex(f.get("digest"), f"digest of {path!r}")
        entry: dict[str, Any] = {"path": path, "size": size, "digest": digest}
        if "from_version" in f:
            if not isinstance(f["from_version"], int):
                raise InvalidManifest("from_version must be a version number")
            entry["from_version"] = f["from_version"]
        else:
            entry["terms"] = parse_terms(f.get("terms", []))
            if not entry["terms"] and size:
                raise InvalidManifest(f"file {path!r} has bytes but no terms")
        out.append(entry)
    return layout, out, check_tags(body.get("tags"))


def _resolve_terms(
    sid: str, path: str, size: int, terms: list[Term], facts: dict[str, tuple[Any, list[int]]]
) -> list[Term]:
    """Check that every term names chunks of a usable pack (verified, or completed by
    this very session) and compute its size from the catalog (``facts``: see
    :func:`_pack_facts`)."""
    resolved, total = [], 0
    for t in terms:
        p, ends = facts[t.pack]
        usable = p is not None and (
            p.state in ("verified", "reference")  # reference: an indexed source object
            or (p.state == "complete" and p.session_id == sid)
        )
        if not usable:
            raise UntrustedChunks(
                f"file {path!r} names pack {t.pack}, which is not a verified pack", pack=t.pack
            )
        if t.end > p.chunk_count or t.end >= len(ends):
            raise InvalidManifest(
                f"pack {t.pack} has {p.chunk_count} chunks, term asks for {t.first}..{t.end}"
            )
        n = ends[t.end] - ends[t.first]
        resolved.append(Term(t.pack, t.first, t.end, n))
        total += n
    if total != size:
        raise InvalidManifest(
            f"terms of {path!r} cover {total} bytes, but its size is {size}",
            path=path,
            covered=total,
            size=size,
        )
    return resolved


async def _pack_facts(conn: AsyncConnection, names: set[str]) -> dict[str, tuple[Any, list[int]]]:
    """Pack id -> (its row or None, raw bytes before each chunk and after the last) for
    every pack a commit names: two queries per 500 packs. It was two per pack: a
    commit of 1 GiB names 32, and each query was a round trip to the database thread."""
    facts: dict[str, tuple[Any, list[int]]] = {}
    ordered = sorted(names)
    for i in range(0, len(ordered), 500):
        batch = ordered[i : i + 500]
        rows = await conn.execute(
            select(packs.c.id, packs.c.state, packs.c.chunk_count, packs.c.session_id).where(
                packs.c.id.in_(batch)
            )
        )
        found = {r.id: r for r in rows}
        ends: dict[str, list[int]] = {pack_id: [0] for pack_id in found}
        if found:
            entries = await conn.execute(
                select(pack_entries.c.pack_id, pack_entries.c.raw_len)
                .where(pack_entries.c.pack_id.in_(list(found)))
                .order_by(pack_entries.c.pack_id, pack_entries.c.idx)
            )
            for pack_id, raw_len in entries:
                run = ends[pack_id]
                run.append(run[-1] + raw_len)
        for pack_id in batch:
            facts[pack_id] = (found.get(pack_id), ends.get(pack_id, [0]))
    return facts


async def commit(gw: Gateway, sid: str, body: dict) -> dict[str, Any]:
    """Create the new version in one transaction: it appears whole or not at all.

    Content identical to the latest version (same layout and digest) returns that
    version instead of creating a new one.
    """
    layout, files, new_tags = _parse_commit(body)
    digest = (
        files[0]["digest"]
        if layout == "file"
        else tree_digest((f["path"], f["size"], f["digest"]) for f in files)
    )
    await _verify_foreign_packs(gw, sid, files)
    for attempt in range(5):
        try:
            return await _commit_once(gw, sid, layout, files, new_tags, digest)
        except IntegrityError:  # a concurrent writer took the number (PostgreSQL); retry
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


async def _verify_foreign_packs(gw: Gateway, sid: str, files: list[dict]) -> None:
    """Packs another upload completed but nobody verified yet are checked now, before
    this commit may rely on them."""
    names = {t.pack for f in files for t in f.get("terms", [])}
    if not names:
        return
    pending = []
    async with gw.db.read() as conn:
        for i in range(0, len(names), 500):
            batch = list(names)[i : i + 500]
            rows = await conn.execute(
                select(packs.c.id, packs.c.session_id).where(
                    packs.c.id.in_(batch), packs.c.state == "complete"
                )
            )
            pending += [r.id for r in rows if r.session_id != sid]
    for pack_id in pending:
        with contextlib.suppress(PackCorrupt):
            await verifier.verify_pack(gw, pack_id)


async def _commit_once(
    gw: Gateway, sid: str, layout: str, files: list[dict], new_tags: dict[str, str], digest: str
) -> dict[str, Any]:
    async with gw.db.write() as conn:
        sess = await _session(conn, sid, open_only=False)
        name = sess.artifact_name
        if sess.state == "committed":  # a retried commit: answer what it made
            v = (await conn.execute(select(versions).where(versions.c.id == sess.version_id))).one()
            return {**await version_json(conn, name, v), "created": False}
        now = time.time()
        art_id, latest = await artifact_and_latest(conn, name, now)
        if (
            latest is not None
            and latest.kind == "stored"
            and latest.layout == layout
            and latest.digest == digest
        ):
            await apply_tags(conn, latest.id, new_tags)
            await conn.execute(
                sessions.update()
                .where(sessions.c.id == sid)
                .values(state="committed", version_id=latest.id)
            )
            return {**await version_json(conn, name, latest), "created": False}
        facts = await _pack_facts(conn, {t.pack for f in files for t in f.get("terms", [])})
        rows = []
        earlier: dict[int, dict[tuple[str, int], bytes]] = {}  # files of reused versions
        for idx, f in enumerate(files):
            if "from_version" in f:
                number = f["from_version"]
                if number not in earlier:
                    found = await conn.execute(
                        select(
                            version_files.c.digest, version_files.c.size, version_files.c.manifest
                        )
                        .join(versions, versions.c.id == version_files.c.version_id)
                        .where(versions.c.artifact_id == art_id, versions.c.number == number)
                    )
                    earlier[number] = {(r.digest, r.size): r.manifest for r in found}
                manifest = earlier[number].get((f["digest"], f["size"]))
                if manifest is None:
                    raise VersionNotFound(
                        f"version {f['from_version']} of {name!r} has no file "
                        f"with digest {f['digest']}"
                    )
                loads(manifest)
            else:
                manifest = dumps(_resolve_terms(sid, f["path"], f["size"], f["terms"], facts))
            rows.append(
                {
                    "idx": idx,
                    "path": f["path"],
                    "size": f["size"],
                    "digest": f["digest"],
                    "manifest": manifest,
                }
            )
        vid = await add_version(
            conn,
            art_id,
            kind="stored",
            layout=layout,
            digest=digest,
            size=sum(f["size"] for f in files),
            file_count=len(files),
            created_at=now,
        )
        if rows:
            await conn.execute(version_files.insert(), [{"version_id": vid, **r} for r in rows])
        await apply_tags(conn, vid, new_tags)
        await conn.execute(
            sessions.update().where(sessions.c.id == sid).values(state="committed", version_id=vid)
        )
        v = (await conn.execute(select(versions).where(versions.c.id == vid))).one()
        return {**await version_json(conn, name, v), "created": True}
