"""The upload protocol: session -> missing chunks -> packs (presigned parts) -> commit.

Trust: a pack's chunks enter the dedup index only after the gateway has read the pack
back from the store and checked its id and every chunk id (``packs.verify``). A commit
may name only chunks of verified packs (or of packs its own session completed); term
sizes are recomputed from the catalog, never taken from the client.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from .. import packs as packfmt
from ..catalog import packs as packs_q
from ..catalog import sessions as sessions_q
from ..catalog import versions as versions_q
from ..catalog.packs import PackRow
from ..catalog.sessions import SessionRow
from ..digest import DIGEST_SIZE, tree_digest
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
from ..manifest import Term, dumps, loads
from ..names import check_name, check_path, check_tags
from ..packs import pack_key
from ..stores.base import CompletedPart
from . import Repository, verifier
from .artifacts import apply_tags, summary

#: ids per missing-chunk query: 64 Ki ids = a 2 MiB body
MAX_QUERY_IDS = 65536
MAX_FILES = 1_000_000


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its terms, or the version it is unchanged from."""

    path: str
    size: int
    digest: str
    terms: tuple[Term, ...] = ()
    from_version: int | None = None


async def create_session(repo: Repository, name: str) -> dict[str, Any]:
    name = check_name(name)
    sid, now = uuid.uuid4().hex, time.time()
    expires_at = now + repo.settings.session_ttl
    await repo.db.write(sessions_q.insert_session, sid, name, now, expires_at)
    store = repo.store
    return {
        "session": sid,
        "name": name,
        "expires_at": expires_at,
        "part_checksum": store.part_checksum,
        "sequential_parts": store.sequential_parts,
        "pack_target_size": packfmt.TARGET_SIZE,
        # packs are cut into even parts of this size: a client can checksum them up
        # front and begin each pack with a single request
        "pack_part_size": store.plan_parts(packfmt.MAX_SIZE)[0].size,
        "pack_max_size": packfmt.MAX_SIZE,
        "query_batch": MAX_QUERY_IDS,
    }


def open_session(conn: Connection, sid: str, open_only: bool = True) -> SessionRow:
    row = sessions_q.session_row(conn, sid)
    if row is None or row.expires_at < time.time():
        raise SessionNotFound(f"no open upload session {sid!r}", session=sid)
    if open_only and row.state != "open":
        raise SessionNotFound(f"upload session {sid!r} is already committed", session=sid)
    return row


def _pack_in_session(conn: Connection, sid: str, pack_id: str) -> PackRow | None:
    open_session(conn, sid)
    return packs_q.pack_row(conn, pack_id)


async def find_chunks(repo: Repository, sid: str, body: bytes) -> dict[str, Any]:
    """Which of these chunk ids are already stored (in verified packs), and where."""
    if len(body) % DIGEST_SIZE:
        raise InvalidRequest("body must be a concatenation of 32-byte chunk ids")
    n = len(body) // DIGEST_SIZE
    if n > MAX_QUERY_IDS:
        raise BodyTooLarge(f"at most {MAX_QUERY_IDS} chunk ids per query", limit=MAX_QUERY_IDS)
    ids = [body[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE] for i in range(n)]

    def tx(conn: Connection) -> dict[bytes, tuple[str, int]]:
        open_session(conn, sid)
        return packs_q.chunk_locations(conn, ids)

    found = await repo.db.read(tx)
    pack_pos: dict[str, int] = {}
    locations: list[list[int] | None] = []
    for cid in ids:
        loc = found.get(cid)
        if loc is None:
            locations.append(None)
        else:
            locations.append([pack_pos.setdefault(loc[0], len(pack_pos)), loc[1]])
    return {"packs": list(pack_pos), "locations": locations}


async def begin_pack(
    repo: Repository, sid: str, pack_id: str, size: int, checksums: list[str] | None
) -> dict[str, Any]:
    """Start (or resume) the multipart upload of one pack; returns presigned parts.

    Calling it again for a pack still uploading returns fresh URLs for the same upload,
    so a client whose URLs expired, or that restarted, goes on where it was. A pack
    already in the store (the same bytes make the same id) needs no upload at all.
    """
    store = repo.store
    plan = store.plan_parts(size)
    if store.part_checksum and checksums is None:
        # the client cannot know the store's part plan: tell it, and it asks again
        await repo.db.read(open_session, sid)
        return {
            "pack": pack_id,
            "state": "need_checksums",
            "checksum": store.part_checksum,
            "parts": [{"number": p.number, "offset": p.offset, "size": p.size} for p in plan],
        }
    if store.part_checksum and (checksums is None or len(checksums) != len(plan)):
        raise InvalidRequest(
            f"this store needs a {store.part_checksum} checksum per part",
            parts=[p.size for p in plan],
        )
    key = pack_key(pack_id)
    row = await repo.db.read(_pack_in_session, sid, pack_id)
    if row is not None and row.state in ("verified", "complete"):
        # already whole in the store (complete: its verification is pending, and a commit
        # that names it verifies it first): nothing to send
        return {"pack": pack_id, "state": row.state, "parts": []}
    if row is not None and row.size != size:
        raise InvalidRequest(f"pack {pack_id} is being uploaded with size {row.size}")
    if row is None:
        upload_id = await store.create_upload(key, size)
        row = await repo.db.write(
            packs_q.insert_uploading, pack_id, size, sid, upload_id, time.time()
        )
        if row is not None:  # another session began the same pack meanwhile: join it
            await store.abort_upload(key, upload_id)
            upload_id = row.upload_id
    else:
        upload_id = row.upload_id
    expiry = repo.settings.url_expiry
    parts = []
    for i, part in enumerate(plan):
        checksum = checksums[i] if store.part_checksum and checksums else None
        req = await store.presign_part(key, upload_id, part, size, checksum, expiry)
        parts.append(
            {"number": part.number, "offset": part.offset, "size": part.size, **req.to_json()}
        )
    return {
        "pack": pack_id,
        "state": "uploading",
        "parts": parts,
        "sequential": store.sequential_parts,
        "expires_in": expiry,
    }


async def complete_pack(
    repo: Repository,
    sid: str,
    pack_id: str,
    parts: list[CompletedPart],
    index_tail: bytes | None,
) -> dict[str, Any]:
    """Make the uploaded parts one object, index it from its footer, and verify it
    (now, or in the background: see :mod:`chunkyard.repository.verifier`).

    ``index_tail`` is the pack's index and footer as its uploader sent them, parsed with
    the same checks as one read from the store (it saves a ranged read per pack;
    verification checks it against the stored bytes). A pack whose structure is wrong,
    or that fails inline verification, is removed from the store and the catalog: it
    never becomes visible, and the client gets ``pack_corrupt``.
    """
    row = await repo.db.read(_pack_in_session, sid, pack_id)
    if row is None:
        raise PackNotFound(f"pack {pack_id} was never begun", pack=pack_id)
    if row.state in ("complete", "verified"):
        return {"pack": pack_id, "state": row.state, "chunks": row.chunk_count}
    key = pack_key(pack_id)
    try:
        await repo.store.complete_upload(key, row.upload_id or "", parts)
    except StoreError:
        # a retried completion (the first one's answer was lost) finds the object there
        info = await repo.store.stat(key)
        if info is None or info.size != row.size:
            raise
    try:
        if index_tail is not None:
            entries = _claimed_index(index_tail, row.size)
        else:
            entries = await verifier.read_index(repo, pack_id, row.size)
    except PackCorrupt:
        await verifier.remove(repo, pack_id)
        raise
    already = await repo.db.write(packs_q.mark_complete, pack_id, entries)
    if already is not None:  # another completion of the same pack won
        return {"pack": pack_id, "state": already, "chunks": len(entries)}
    state = "complete"
    if repo.verify_mode == "inline":
        state = await verifier.verify_pack(repo, pack_id, forget_on_failure=True)
    else:
        repo.verify_wakeup.set()
    return {"pack": pack_id, "state": state, "chunks": len(entries)}


def _claimed_index(tail: bytes, size: int) -> list[packfmt.Entry]:
    entries = packfmt.index_from_tail(tail, size)
    if isinstance(entries, int):
        raise PackCorrupt("the index sent is shorter than the pack's index")
    last = entries[-1]
    if len(tail) != size - last.offset - last.stored_len:
        raise PackCorrupt("the index sent does not match the pack's size")
    return entries


def parse_files(layout: str, files: list[FileEntry]) -> None:
    """The rules of a commit's file list that its schema cannot express."""
    if layout == "file" and len(files) != 1:
        raise InvalidManifest("a 'file' version has exactly one file")
    if len(files) > MAX_FILES:
        raise InvalidManifest(f"a version holds at most {MAX_FILES} files")
    seen = set()
    for f in files:
        check_path(f.path)
        if f.path in seen:
            raise InvalidManifest(f"file {f.path!r} appears twice")
        seen.add(f.path)
        if f.from_version is None and not f.terms and f.size:
            raise InvalidManifest(f"file {f.path!r} has bytes but no terms")


async def commit(
    repo: Repository, sid: str, layout: str, files: list[FileEntry], tags: dict[str, str]
) -> dict[str, Any]:
    """Create the new version in one transaction: it appears whole or not at all.

    Content identical to the latest version (same layout and digest) returns that
    version instead of creating a new one.
    """
    parse_files(layout, files)
    tags = check_tags(tags)
    digest = (
        files[0].digest
        if layout == "file"
        else tree_digest((f.path, f.size, f.digest) for f in files)
    )
    await _verify_foreign_packs(repo, sid, {t.pack for f in files for t in f.terms})
    return await repo.db.write(_commit, sid, layout, files, tags, digest)


async def _verify_foreign_packs(repo: Repository, sid: str, names: set[str]) -> None:
    """Packs another upload completed but nobody verified yet are checked now, before
    this commit may rely on them."""
    if not names:
        return
    pending = await repo.db.read(packs_q.with_state, names, "complete")
    for row in pending:
        if row.session_id != sid:
            with contextlib.suppress(PackCorrupt):
                await verifier.verify_pack(repo, row.id)


def _commit(
    conn: Connection,
    sid: str,
    layout: str,
    files: list[FileEntry],
    tags: dict[str, str],
    digest: str,
) -> dict[str, Any]:
    sess = open_session(conn, sid, open_only=False)
    name = sess.artifact_name
    if sess.state == "committed" and sess.version_id is not None:  # a retry: answer it
        return {
            **summary(conn, name, versions_q.version_by_id(conn, sess.version_id)),
            "created": False,
        }
    art_id = versions_q.ensure_artifact(conn, name, time.time())
    latest = versions_q.find_version(conn, art_id, None)
    if latest is not None and (latest.kind, latest.layout, latest.digest) == (
        "stored",
        layout,
        digest,
    ):
        apply_tags(conn, latest.id, tags)
        sessions_q.mark_committed(conn, sid, latest.id)
        return {**summary(conn, name, latest), "created": False}
    rows = _file_rows(conn, sid, name, art_id, files)
    v = versions_q.add_version(
        conn,
        art_id,
        kind="stored",
        layout=layout,
        digest=digest,
        size=sum(f.size for f in files),
        file_count=len(files),
        created_at=time.time(),
    )
    versions_q.insert_files(conn, v.id, rows)
    apply_tags(conn, v.id, tags)
    sessions_q.mark_committed(conn, sid, v.id)
    return {**summary(conn, name, v), "created": True}


def _file_rows(
    conn: Connection, sid: str, name: str, art_id: int, files: list[FileEntry]
) -> list[dict[str, Any]]:
    """The ``version_files`` rows of a commit, each manifest checked against the catalog."""
    named = {t.pack for f in files for t in f.terms}
    rows, ends = packs_q.pack_rows(conn, named), packs_q.chunk_ends(conn, named)
    earlier: dict[int, dict[tuple[str, int], str]] = {}  # files of reused versions
    out = []
    for idx, f in enumerate(files):
        if f.from_version is not None:
            number = f.from_version
            if number not in earlier:
                earlier[number] = versions_q.manifests_by_content(conn, art_id, number)
            manifest = earlier[number].get((f.digest, f.size))
            if manifest is None:
                raise VersionNotFound(
                    f"version {number} of {name!r} has no file with digest {f.digest}"
                )
            loads(manifest)
        else:
            manifest = dumps(_resolve_terms(sid, f, rows, ends))
        out.append(
            {"idx": idx, "path": f.path, "size": f.size, "digest": f.digest, "manifest": manifest}
        )
    return out


def _resolve_terms(
    sid: str, f: FileEntry, rows: dict[str, PackRow], ends: dict[str, list[int]]
) -> list[Term]:
    """Check that every term names chunks of a usable pack (verified, or completed by
    this very session) and compute its size from the catalog."""
    resolved, total = [], 0
    for t in f.terms:
        p = rows.get(t.pack)
        usable = p is not None and (
            p.state in packs_q.USABLE or (p.state == "complete" and p.session_id == sid)
        )
        if p is None or not usable:
            raise UntrustedChunks(
                f"file {f.path!r} names pack {t.pack}, which is not a verified pack", pack=t.pack
            )
        run = ends.get(t.pack, [0])
        if t.end > p.chunk_count or t.end >= len(run):
            raise InvalidManifest(
                f"pack {t.pack} has {p.chunk_count} chunks, term asks for {t.first}..{t.end}"
            )
        n = run[t.end] - run[t.first]
        resolved.append(Term(t.pack, t.first, t.end, n))
        total += n
    if total != f.size:
        raise InvalidManifest(
            f"terms of {f.path!r} cover {total} bytes, but its size is {f.size}",
            path=f.path,
            covered=total,
            size=f.size,
        )
    return resolved
