"""The upload protocol: session -> missing chunks -> packs (presigned parts) -> commit.

Trust comes only from verified bytes (FORMAT.md, "Threat model"):
- every session uploads its packs to store keys of its own, so an upload that fails,
  lies about its size or sends other bytes blocks or spoils nobody else's;
- a pack's chunks become dedup targets only once the gateway has read it back and
  checked every chunk, and then only within the uploader's dedup domain;
- the missing-chunk query is asked with chunk keys, which only whoever holds the bytes
  can compute, so it tells nothing about content the caller does not hold;
- every term of a commit carries a proof over the keys of the chunks it names, keyed
  with the session's proof key: naming chunks grants nothing that holding them did not;
- the gateway computes each file's id (and so the version's digest) from the verified
  chunk ids, so a declared digest is never taken for content.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import Connection

from .. import digest as digests
from .. import packs as packfmt
from ..catalog import packs as packs_q
from ..catalog import sessions as sessions_q
from ..catalog import versions as versions_q
from ..catalog.packs import EntryRow, PackRow, UploadRow
from ..catalog.sessions import SessionRow
from ..digest import DEFAULT_MODE, DIGEST_SIZE, tree_digest
from ..errors import (
    BodyTooLarge,
    InvalidManifest,
    InvalidRequest,
    PackCorrupt,
    PackNotFound,
    PacksGone,
    SessionNotFound,
    StoreError,
    UntrustedChunks,
    VersionNotFound,
)
from ..manifest import Term, dumps, loads
from ..names import check_name, check_tags, check_tree_dirs, check_tree_paths
from ..parts import checksum_fits
from ..stores.base import CompletedPart, HeldPart, PartPlan
from . import Repository, metadata, verifier
from .access import Principal
from .artifacts import apply_tags, describe, summary

#: keys per missing-chunk query: 64 Ki keys = a 2 MiB body
MAX_QUERY_IDS = 65536
MAX_FILES = 1_000_000
#: empty directories of one tree version
MAX_DIRS = 1_000_000


@dataclass(frozen=True)
class TermRef:
    """``[pack, first, end, proof]`` of a commit: chunks ``first .. end-1`` of a pack,
    and the proof that the caller holds them (``digest.term_proof``)."""

    pack: str
    first: int
    end: int
    proof: str


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its terms, or the file of an earlier version it equals."""

    path: str
    size: int
    b3sum: str = ""  # the uploader's BLAKE3 of the content, checked by readers
    terms: tuple[TermRef, ...] = ()
    from_version: int | None = None
    file_id: str = ""  # with from_version: which file of that version
    mode: int | None = None  # a tree file's permission bits (None: DEFAULT_MODE)


async def create_session(repo: Repository, who: Principal, name: str) -> dict[str, Any]:
    name = check_name(name)
    who.require("write", name)
    now = time.time()
    row = SessionRow(
        id=uuid.uuid4().hex,
        artifact_name=name,
        state="open",
        version_id=None,
        created_at=now,
        expires_at=now + repo.settings.session_ttl,
        token_id=who.token_id,
        proof_key=secrets.token_hex(32),
    )
    await repo.db.write(sessions_q.insert_session, row)
    return _session_answer(repo, row)


async def resume_session(repo: Repository, who: Principal, sid: str) -> dict[str, Any]:
    """An open session again, as its opening answered it: a client that died (or lost
    the answer) resumes it, its proof key and the uploads begun in it, instead of
    sending again what the session holds. Expired, committed or another token's:
    ``session_not_found``, and the client opens a new one."""
    return _session_answer(repo, await repo.db.read(open_session, sid, who))


def _session_answer(repo: Repository, row: SessionRow) -> dict[str, Any]:
    store = repo.store
    return {
        "session": row.id,
        "name": row.artifact_name,
        "expires_at": row.expires_at,
        # keys this session's possession proofs; secret between gateway and client
        "proof_key": row.proof_key,
        "part_checksum": store.part_checksum,
        "sequential_parts": store.sequential_parts,
        "pack_target_size": repo.settings.pack_target,
        # packs are cut into even parts of this size: a client can checksum them up
        # front and begin each pack with a single request
        "pack_part_size": store.plan_parts(packfmt.MAX_SIZE)[0].size,
        "pack_max_size": packfmt.MAX_SIZE,
        "query_batch": MAX_QUERY_IDS,
    }


def open_session(conn: Connection, sid: str, who: Principal, open_only: bool = True) -> SessionRow:
    """The session, if it is live and ``who`` opened it (or is an admin); to anyone
    else it does not exist."""
    row = sessions_q.session_row(conn, sid)
    if (
        row is None
        or row.expires_at < time.time()
        or (row.token_id != who.token_id and not who.is_admin)
    ):
        raise SessionNotFound(f"no open upload session {sid!r}", session=sid)
    if open_only and row.state != "open":
        raise SessionNotFound(f"upload session {sid!r} is already committed", session=sid)
    who.require("write", row.artifact_name)
    return row


async def find_chunks(repo: Repository, who: Principal, sid: str, body: bytes) -> dict[str, Any]:
    """Which of these chunks (asked by their keys) the session's dedup domain holds in
    verified packs, and where."""
    if len(body) % DIGEST_SIZE:
        raise InvalidRequest("body must be a concatenation of 32-byte chunk keys")
    n = len(body) // DIGEST_SIZE
    if n > MAX_QUERY_IDS:
        raise BodyTooLarge(f"at most {MAX_QUERY_IDS} chunk keys per query", limit=MAX_QUERY_IDS)
    keys = [body[i * DIGEST_SIZE : (i + 1) * DIGEST_SIZE] for i in range(n)]

    def tx(conn: Connection) -> dict[bytes, tuple[str, int]]:
        sess = open_session(conn, sid, who)
        found = packs_q.chunk_locations(conn, repo.domain(sess.artifact_name), keys)
        return readable_locations(conn, who, found)

    found = await repo.db.read(tx)
    pack_pos: dict[str, int] = {}
    locations: list[list[int] | None] = []
    for key in keys:
        loc = found.get(key)
        if loc is None:
            locations.append(None)
        else:
            locations.append([pack_pos.setdefault(loc[0], len(pack_pos)), loc[1]])
    return {"packs": list(pack_pos), "locations": locations}


def readable_locations(
    conn: Connection, who: Principal, found: dict[bytes, tuple[str, int]]
) -> dict[bytes, tuple[str, int]]:
    """Chunks of indexed reference objects serve only those who may read the artifact
    that registered them: the source is theirs to change."""
    refs = {
        p.id
        for p in packs_q.pack_rows(conn, {loc[0] for loc in found.values()}).values()
        if p.artifact is not None and not who.can("read", p.artifact)
    }
    return {k: loc for k, loc in found.items() if loc[0] not in refs} if refs else found


def _pack_key(pack_id: str, upload_id: str) -> str:
    """A store key of this upload's own (FORMAT.md, global rule 2)."""
    return f"{packfmt.pack_key(pack_id)}.{upload_id[:16]}"


async def begin_pack(
    repo: Repository,
    who: Principal,
    sid: str,
    pack_id: str,
    size: int,
    checksums: list[str] | None,
) -> dict[str, Any]:
    """Start (or resume) this session's upload of one pack; returns presigned parts.

    Asking again returns fresh URLs for the same upload, so a client whose URLs expired,
    or that restarted, goes on where it was: parts the store holds already are answered
    ``stored`` (with their ETag) instead of with a URL. A pack whose chunks the session's domain
    holds already needs no upload at all (the commit still proves possession)."""
    store = repo.store
    plan = store.plan_parts(size)
    kind = store.part_checksum
    if kind and (checksums is None or not all(checksum_fits(kind, c) for c in checksums)):
        # the client cannot know the store's part plan, or computed the checksums the
        # store wanted when its session began (the store's kind changed): tell it, and
        # it asks again
        await repo.db.read(open_session, sid, who)
        return {
            "pack": pack_id,
            "state": "need_checksums",
            "checksum": kind,
            "parts": [{"number": p.number, "offset": p.offset, "size": p.size} for p in plan],
        }
    if kind and checksums is not None and len(checksums) != len(plan):
        raise InvalidRequest(
            f"this store needs a {kind} checksum per part",
            parts=[p.size for p in plan],
        )

    def tx(conn: Connection) -> tuple[SessionRow, bool, UploadRow | None]:
        sess = open_session(conn, sid, who)
        held = packs_q.held_in_domain(conn, repo.domain(sess.artifact_name), pack_id)
        return sess, held, packs_q.upload_of(conn, sid, pack_id)

    sess, held, upload = await repo.db.read(tx)
    if held:
        return {"pack": pack_id, "state": "verified", "parts": []}
    if upload is not None and upload.state == "complete":
        return {"pack": pack_id, "state": "complete", "parts": []}
    if upload is not None and (
        upload.state != "uploading"
        or upload.size != size
        # the store's upload holds parts to another checksum (the store's kind changed)
        or upload.part_checksum != store.part_checksum
    ):
        await _abandon(repo, upload)  # this session's own earlier attempt: start over
        upload = None
    if upload is None:
        upload_id = uuid.uuid4().hex
        key = _pack_key(pack_id, upload_id)
        store_upload = await store.create_upload(key, size)
        row = UploadRow(
            upload_id,
            sid,
            pack_id,
            size,
            store_upload,
            key,
            "uploading",
            time.time(),
            store.part_checksum,
        )
        raced = await repo.db.write(packs_q.insert_upload, row)
        if raced is not None:  # the same session asked twice at once: use the first
            await store.abort_upload(key, store_upload)
            row = raced
        upload = row
        stored = {}
    else:  # begun before: the parts the store holds need not come again
        stored = await _held_parts(repo, upload, plan, checksums)
    expiry = repo.settings.url_expiry
    parts = []
    for i, part in enumerate(plan):
        where = {"number": part.number, "offset": part.offset, "size": part.size}
        if part.number in stored:
            parts.append({**where, "stored": True, "etag": stored[part.number].etag})
            continue
        checksum = checksums[i] if kind and checksums else None
        req = await store.presign_part(
            upload.key, upload.store_upload_id, part, size, checksum, expiry
        )
        parts.append({**where, **req.to_json()})
    return {
        "pack": pack_id,
        "state": "uploading",
        "parts": parts,
        "sequential": store.sequential_parts,
        "expires_in": expiry,
    }


async def _held_parts(
    repo: Repository, upload: UploadRow, plan: list[PartPlan], checksums: list[str] | None
) -> dict[int, HeldPart]:
    """The parts of the plan the store holds whole, of the size planned and, where the
    store kept a checksum, with the one the client names now. Whatever else a part
    holds, the pack is verified against its id once complete."""
    want = {p.number: p for p in plan}
    out = {}
    listed = await repo.store.list_parts(upload.key, upload.store_upload_id, upload.size)
    if not listed:  # completed in the store, and the answer lost (the gateway died)?
        info = await repo.store.stat(upload.key)
        if info is not None and info.size == upload.size:
            return {p.number: HeldPart(p.number, p.size) for p in plan}
    for h in listed:
        p = want.get(h.number)
        if p is None or h.size != p.size:
            continue
        if h.checksum and checksums and h.checksum != checksums[p.number - 1]:
            continue
        out[h.number] = h
    return out


async def _abandon(repo: Repository, upload: UploadRow) -> None:
    with contextlib.suppress(StoreError):
        if upload.state == "uploading":
            await repo.store.abort_upload(upload.key, upload.store_upload_id)
        else:
            await repo.store.delete(upload.key)
    await repo.db.write(packs_q.drop_upload, upload.id)


async def complete_pack(
    repo: Repository, who: Principal, sid: str, pack_id: str, parts: list[CompletedPart]
) -> dict[str, Any]:
    """Make the uploaded parts one object and verify it (now, or in the background:
    see :mod:`chunkyard.repository.verifier`). A pack that fails verification inline
    is removed, and the client gets ``pack_corrupt``."""

    def tx(conn: Connection) -> UploadRow | None:
        open_session(conn, sid, who)
        return packs_q.upload_of(conn, sid, pack_id)

    upload = await repo.db.read(tx)
    if upload is None:
        held = await repo.db.read(packs_q.pack_row, pack_id)
        if held is not None and held.state == "verified":  # verified and dropped meanwhile
            return {"pack": pack_id, "state": "verified", "chunks": held.chunk_count}
        raise PackNotFound(f"pack {pack_id} was never begun in this session", pack=pack_id)
    if upload.state == "corrupt":
        raise PackCorrupt(f"pack {pack_id} as this session uploaded it failed verification")
    if upload.state == "uploading":
        try:
            await repo.store.complete_upload(upload.key, upload.store_upload_id, parts)
        except StoreError:
            # a retried completion (the first one's answer was lost) finds the object there
            info = await repo.store.stat(upload.key)
            if info is None or info.size != upload.size:
                raise
        await repo.db.write(packs_q.mark_upload, upload.id, "complete")
    if repo.verify_mode == "inline":
        state = await verifier.verify_upload(repo, upload.id, forget_on_failure=True)
        row = await repo.db.read(packs_q.pack_row, pack_id)
        return {"pack": pack_id, "state": state, "chunks": row.chunk_count if row else 0}
    repo.verify_wakeup.set()
    return {"pack": pack_id, "state": "complete", "chunks": 0}


def check_files(layout: str, files: list[FileEntry], dirs: Sequence[str] = ()) -> None:
    """The rules of a commit's file list that its schema cannot express."""
    if layout == "file" and len(files) != 1:
        raise InvalidManifest("a 'file' version has exactly one file")
    check_tree_extras(layout, (f.mode for f in files), dirs)
    if len(files) > MAX_FILES:
        raise InvalidManifest(f"a version holds at most {MAX_FILES} files")
    seen = set()
    for f in files:
        if f.path in seen:
            raise InvalidManifest(f"file {f.path!r} appears twice")
        seen.add(f.path)
        if f.from_version is None and not f.terms and f.size:
            raise InvalidManifest(f"file {f.path!r} has bytes but no terms")
        if f.from_version is not None and not f.file_id:
            raise InvalidManifest(f"file {f.path!r}: from_version needs the file's id")
        if any(t.first >= t.end for t in f.terms):
            raise InvalidManifest(f"file {f.path!r}: a term must satisfy first < end")
    check_tree_paths(f.path for f in files)  # writable together, in NFC
    check_tree_dirs(dirs, (f.path for f in files))


def check_tree_extras(layout: str, modes: Iterable[int | None], dirs: Sequence[str]) -> None:
    """Modes and empty directories belong to trees (a single file's version digest is
    its file id, which holds neither)."""
    if layout == "file" and (dirs or any(m is not None for m in modes)):
        raise InvalidManifest("a 'file' version records no mode and no directory: push a tree")
    if len(dirs) > MAX_DIRS:
        raise InvalidManifest(f"a version lists at most {MAX_DIRS} empty directories")


def tree_mode(layout: str, mode: int | None) -> int | None:
    """What the catalog records of a file's mode: a tree file's bits (a commit that
    names none means the default, FORMAT.md "Push"), nothing for a single file."""
    return (DEFAULT_MODE if mode is None else mode) if layout == "tree" else None


async def commit(
    repo: Repository,
    who: Principal,
    sid: str,
    layout: str,
    files: list[FileEntry],
    tags: dict[str, str],
    always_new: bool = False,
    dirs: Sequence[str] = (),
) -> dict[str, Any]:
    """Create the new version in one transaction: it appears whole or not at all.
    ``dirs``: a tree's empty directories.

    Content identical to the latest version (the same digest, which the gateway
    computes from verified chunks) returns that version instead of creating one,
    unless ``always_new``."""
    await anyio.to_thread.run_sync(check_files, layout, files, dirs)  # long lists: off the loop
    tags = check_tags(tags)
    await _verify_own_uploads(repo, who, sid, {t.pack for f in files for t in f.terms})
    return await metadata.write_after(
        repo, _commit, repo, who, sid, layout, files, tags, always_new, dirs
    )


async def _verify_own_uploads(repo: Repository, who: Principal, sid: str, names: set[str]) -> None:
    """This session's uploads of named packs that nobody verified yet are checked now,
    before the commit may rely on them (by the external verifier, when one runs)."""
    if not names:
        return

    def tx(conn: Connection) -> list[UploadRow]:
        open_session(conn, sid, who, open_only=False)
        return list(packs_q.session_uploads(conn, sid, names).values())

    waiting = [u.id for u in await repo.db.read(tx) if u.state == "complete"]
    if waiting and repo.verify_mode == "external":
        waiting = await verifier.await_external(repo, waiting)
    for upload_id in waiting:
        with contextlib.suppress(PackCorrupt):
            await verifier.verify_upload(repo, upload_id)


def _commit(
    conn: Connection,
    repo: Repository,
    who: Principal,
    sid: str,
    layout: str,
    files: list[FileEntry],
    tags: dict[str, str],
    always_new: bool = False,
    dirs: Sequence[str] = (),
) -> dict[str, Any]:
    sess = open_session(conn, sid, who, open_only=False)
    name = sess.artifact_name
    if sess.state in sessions_q.COMMITTED:
        # a retry (the first answer was lost): answer as the first did
        v = None if sess.version_id is None else versions_q.version_by_id(conn, sess.version_id)
        if v is None:
            raise VersionNotFound(
                f"the version this session made of {name!r} was removed since", name=name
            )
        return {**summary(conn, name, v), "created": sess.state == "committed"}
    art_id = versions_q.ensure_artifact(conn, name, time.time())
    rows = _file_rows(conn, who, sess, art_id, layout, files)
    v, created = add_version(conn, art_id, layout, rows, tags, always_new, dirs)
    sessions_q.mark_committed(conn, sid, v.id, created)
    if not created:
        return {**summary(conn, name, v), "created": False}
    domain = repo.domain(name)
    for pack, first, end in _merged((t.pack, t.first, t.end) for f in files for t in f.terms):
        packs_q.index_chunks(conn, pack, domain, first, end)  # proven: dedup targets here
    return {**describe(name, v, tags, []), "created": True}


def add_version(
    conn: Connection,
    art_id: int,
    layout: str,
    rows: list[dict[str, Any]],
    tags: dict[str, str],
    always_new: bool = False,
    dirs: Sequence[str] = (),
) -> tuple[versions_q.VersionRow, bool]:
    """A new version of the files ``rows`` (``version_files`` rows, their digests from
    verified chunks) and a tree's empty directories ``dirs``, or the latest version if
    its content is the same (unless ``always_new``): then the tags move to it. Returns
    the version and whether it is new."""
    digest = (
        rows[0]["digest"]
        if layout == "file"
        else tree_digest(((r["path"], r["size"], r["digest"], r.get("mode")) for r in rows), dirs)
    )
    latest = versions_q.find_version(conn, art_id, None)
    if (
        not always_new
        and latest is not None
        and latest.format >= 3
        and (latest.kind, latest.layout, latest.digest) == ("stored", layout, digest)
    ):
        apply_tags(conn, latest.id, tags)
        return latest, False
    v = versions_q.add_version(
        conn,
        art_id,
        number=versions_q.next_number(conn, art_id, latest.number if latest is not None else 0),
        kind="stored",
        layout=layout,
        digest=digest,
        size=sum(r["size"] for r in rows),
        file_count=len(rows),
        created_at=time.time(),
        dirs=versions_q.dirs_text(dirs),
    )
    versions_q.insert_files(conn, v.id, rows)
    apply_tags(conn, v.id, tags)
    return v, True


def _merged(ranges: Any) -> list[tuple[str, int, int]]:
    """Chunk ranges per pack with overlapping and adjacent ones joined."""
    out: list[tuple[str, int, int]] = []
    for pack, first, end in sorted(ranges):
        if out and out[-1][0] == pack and first <= out[-1][2]:
            out[-1] = (pack, out[-1][1], max(end, out[-1][2]))
        else:
            out.append((pack, first, end))
    return out


def _file_rows(
    conn: Connection,
    who: Principal,
    sess: SessionRow,
    art_id: int,
    layout: str,
    files: list[FileEntry],
) -> list[dict[str, Any]]:
    """The ``version_files`` rows of a commit: each term checked against the catalog
    and its proof, each file's id computed from the verified chunk ids. Every pack the
    version will name (its terms', and those of the files it reuses) is read locked
    and must not be one garbage collection took (FORMAT.md, "Deleting")."""
    named = {t.pack for f in files for t in f.terms}
    earlier: dict[int, dict[tuple[str, int], versions_q.FileRow]] = {}
    for v in {f.from_version for f in files if f.from_version is not None}:
        earlier[v] = versions_q.stored_files_by_id(conn, art_id, v)
    reused = {
        t.pack
        for f in files
        if f.from_version is not None
        and (old := earlier[f.from_version].get((f.file_id, f.size))) is not None
        for t in loads(old.manifest)
    }
    rows = packs_q.lock_packs(conn, named | reused)
    require_live(rows)
    entries = PackIndexes(conn)
    proof_key = bytes.fromhex(sess.proof_key or "")
    out = []
    for idx, f in enumerate(files):
        if f.from_version is not None:
            old = earlier[f.from_version].get((f.file_id, f.size))
            if old is None:
                raise VersionNotFound(
                    f"version {f.from_version} of {sess.artifact_name!r} has no file "
                    f"{f.file_id} of {f.size} bytes"
                )
            manifest, fid, b3sum = old.manifest, old.digest, f.b3sum or old.b3sum
        else:
            terms, fid = _resolve(who, f, rows, entries, proof_key)
            manifest, b3sum = dumps(terms), f.b3sum
        out.append(
            {
                "idx": idx,
                "path": f.path,
                "size": f.size,
                "digest": fid,
                "b3sum": b3sum,
                "manifest": manifest,
                "mode": tree_mode(layout, f.mode),
            }
        )
    return out


class PackIndexes:
    """The index rows of a commit's packs, read a pack at a time as its terms name it,
    the last few kept: reading every row of every pack a commit names at once held
    ~400 bytes per chunk in the gateway (25 MB for a 4 GiB file, gigabytes for the
    largest checkpoints). Terms come in file order, so a pack is usually read once."""

    KEEP = 4

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._kept: dict[str, list[EntryRow]] = {}

    def of(self, pack_id: str) -> list[EntryRow]:
        run = self._kept.pop(pack_id, None)
        if run is None:
            run = packs_q.index_of(self.conn, pack_id)
            if len(self._kept) >= self.KEEP:
                del self._kept[next(iter(self._kept))]
        self._kept[pack_id] = run  # most recently used last
        return run


def require_live(rows: dict[str, PackRow]) -> None:
    """Refuse (``packs_gone``) a version that would name packs garbage collection has
    condemned or deleted; the client asks again what is missing and uploads it."""
    gone = sorted(p for p, row in rows.items() if row.state in packs_q.GONE)
    if gone:
        raise PacksGone(
            f"{len(gone)} pack(s) this commit names were garbage-collected since the "
            "session found them: ask which chunks are missing again and upload those",
            packs=gone[:100],
        )


def _resolve(
    who: Principal,
    f: FileEntry,
    rows: dict[str, PackRow],
    entries: PackIndexes,
    proof_key: bytes,
) -> tuple[list[Term], str]:
    """Check every term of a file and compute its size from the catalog and its id from
    the verified chunk ids. A term that names a pack that is not usable, chunks beyond
    a pack's end, or chunks its proof does not cover gets the same answer, which says
    nothing about packs the caller could not name without holding their chunks."""
    resolved, ids, total = [], digests.FileIdHasher(), 0
    for i, t in enumerate(f.terms):
        p = rows.get(t.pack)
        run = entries.of(t.pack) if p is not None else []
        ok = (
            p is not None
            and p.state in packs_q.USABLE
            and (p.artifact is None or who.can("read", p.artifact))
            and t.end <= len(run)
        )
        if ok:
            want = digests.term_proof(proof_key, (e.chunk_key for e in run[t.first : t.end]))
            ok = hmac.compare_digest(want, t.proof)
        if not ok:
            raise UntrustedChunks(
                f"file {f.path!r}, term {i}: this session has not shown that it holds the "
                "chunks the term names (or they are in no verified pack)",
                path=f.path,
                term=i,
            )
        chosen = run[t.first : t.end]
        n = sum(e.raw_len for e in chosen)
        resolved.append(Term(t.pack, t.first, t.end, n))
        for e in chosen:
            ids.update(e.chunk_id, e.raw_len)
        total += n
    if total != f.size:
        raise InvalidManifest(
            f"terms of {f.path!r} cover {total} bytes, but its size is {f.size}",
            path=f.path,
            covered=total,
            size=f.size,
        )
    return resolved, ids.hexdigest()
