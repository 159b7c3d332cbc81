"""Push: chunk and hash locally, upload only what the gateway lacks, commit.

The :class:`~chunkyard.client.packer.Packer` does the local work; this module wires it
to the gateway: its missing-chunk query as the lookup, presigned multipart uploads as
the way packs ship, and the one-transaction commit at the end.
"""

from __future__ import annotations

import base64
import os
import stat
import threading
import unicodedata
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import packs as packfmt
from ..digest import DEFAULT_MODE
from ..errors import (
    CatalogError,
    ChunkyardError,
    GatewayUnavailable,
    InvalidName,
    InvalidRequest,
    NotFound,
    PacksGone,
    StoreError,
)
from ..names import check_tree_dirs, check_tree_paths
from ..parts import part_checksum, plan_even_parts
from . import trees
from .packer import SMALL_MAX, FileResult, Packer
from .resume import PushRecord, push_key
from .transport import Transport, with_fresh_url

#: a part the store refuses with one of these is sent again with a fresh URL
PART_REFUSED = frozenset(
    {
        400,  # S3/Azure: BadDigest, Md5Mismatch (damaged in transit)
        401,
        403,  # expired URL
        404,  # the upload is gone (completed by an earlier try of this push)
        422,  # local store: checksum mismatch
    }
)


#: content up to this size (and SMALL_PUSH_FILES files) goes in one request, whole:
#: the gateway chunks and stores it (``CHUNKYARD_SMALL_PUSH_BYTES``, up to the
#: gateway's 4 MiB; 0: never). Above it, sending hashes first saves more than the
#: round trips cost: an unchanged 1 MiB re-push sends its bytes again this way.
SMALL_PUSH_BYTES = 1024 * 1024
SMALL_PUSH_MAX = 4 * 1024 * 1024
SMALL_PUSH_FILES = 1000
SMALL_PUSH_DIRS = 1000
#: pushes through a session tried again when garbage collection took a pack they
#: found (the gateway answers ``packs_gone``): each try asks again what is missing
COMMIT_ATTEMPTS = 3


def small_push_limit() -> int:
    raw = os.environ.get("CHUNKYARD_SMALL_PUSH_BYTES", "")
    try:
        return min(int(raw), SMALL_PUSH_MAX) if raw else SMALL_PUSH_BYTES
    except ValueError:
        raise InvalidRequest(f"CHUNKYARD_SMALL_PUSH_BYTES={raw!r} is not a number") from None


#: failures that may pass: a push that stopped on one keeps its session for a run again
TRANSIENT = (GatewayUnavailable, StoreError, CatalogError)


class _AlreadyStored(Exception):
    """The pack being sent was completed by another push meanwhile."""


class Uploader:
    """One push session: many files, shared packs, one commit.

    With a ``record`` of an earlier run of the same push that did not commit (it was
    killed, or gave up on an unreachable gateway), the session it opened is resumed
    while it is open: the packs rebuilt the same way are answered ``complete`` (sent
    before), or with the parts the store holds marked ``stored``; only the rest is sent."""

    def __init__(
        self,
        transport: Transport,
        name: str,
        progress: Callable[[int], None] | None = None,
        record: PushRecord | None = None,
    ) -> None:
        self.t = transport
        self.record = record or PushRecord()
        self.session = self._resume(name)
        self.resumed = self.session is not None
        if self.session is None:
            self.session = transport.call("POST", "/v1/sessions", json={"name": name})
            self.record.save(self.session)
        self.sid = self.session["session"]
        self._count = threading.Lock()
        self.sequential = self.session.get("sequential_parts", False)
        self.parts = ThreadPoolExecutor(8, thread_name_prefix="cy-part")
        self.packer = Packer(
            self._lookup,
            self._ship,
            self.session.get("pack_target_size", packfmt.TARGET_SIZE),
            progress,
            proof_key=bytes.fromhex(self.session["proof_key"]),
        )

    def close(self) -> None:
        self.packer.close()
        self.parts.shutdown(wait=True, cancel_futures=True)

    def _resume(self, name: str) -> dict | None:
        """The session an interrupted run of this push opened, if it is still open (not
        expired, not committed, ours); else None."""
        sid = self.record.session
        if sid is None:
            return None
        try:
            session = self.t.call("GET", f"/v1/sessions/{sid}")
        except NotFound:  # expired or committed (or a gateway without the route)
            return None
        except ChunkyardError as exc:
            if exc.code == "method_not_allowed":
                return None
            raise
        return session if session.get("name") == name else None

    def _counted(self, **add: int) -> None:
        with self._count:
            for what, n in add.items():
                setattr(self.packer.stats, what, getattr(self.packer.stats, what) + n)

    def _lookup(self, keys: list[bytes]) -> dict:
        return self.t.call("POST", f"/v1/sessions/{self.sid}/missing", content=b"".join(keys))

    def _checksums(self, kind: str, pack: packfmt.Pack, parts: list[dict]) -> list[str]:
        view = memoryview(pack.data)
        return [part_checksum(kind, view[p["offset"] : p["offset"] + p["size"]]) for p in parts]

    def _ship(self, pack: packfmt.Pack) -> None:
        body: dict[str, Any] = {"pack": pack.id, "size": pack.size}
        kind, part_size = self.session.get("part_checksum"), self.session.get("pack_part_size")
        if kind and part_size:  # checksum the parts up front: one request per pack
            parts = [
                {"offset": p.offset, "size": p.size} for p in plan_even_parts(pack.size, part_size)
            ]
            body["checksums"] = self._checksums(kind, pack, parts)
        plan = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
        if plan["state"] == "need_checksums":
            # the session's answer named none, or another kind (the gateway's store
            # changed since): checksum this pack and the next as the gateway asks
            self.session["part_checksum"] = plan["checksum"]
            body["checksums"] = self._checksums(plan["checksum"], pack, plan["parts"])
            plan = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
            if plan["state"] == "need_checksums":
                raise InvalidRequest(f"the gateway refused the {plan['checksum']} part checksums")
        if plan["state"] != "uploading":  # the very same pack is in the store already
            if plan["state"] == "complete":  # sent by an interrupted run of this push
                self._counted(packs_resumed=1)
            return
        try:
            etags = self._send_parts(pack, body, plan["parts"])
        except _AlreadyStored:  # this session's upload of it is complete already
            return
        self.t.call(
            "POST", f"/v1/sessions/{self.sid}/packs/{pack.id}/complete", json={"parts": etags}
        )

    def _send_parts(self, pack: packfmt.Pack, body: dict, parts: list[dict]) -> list[dict]:
        view = memoryview(pack.data)

        def put(part: dict, data: memoryview, what: str) -> str:
            """One part, unless the store holds it already; its ETag."""
            if part.get("stored"):
                self._counted(parts_resumed=1)
                return part.get("etag") or ""
            resp = self.t.send(part, content=data, what=what)
            self._counted(parts_sent=1, bytes_uploaded=len(data))
            return resp.headers.get("etag", "")

        def send(part: dict) -> dict:
            number = part["number"]
            data = view[part["offset"] : part["offset"] + part["size"]]
            what = f"upload of pack {pack.id[:12]} part {number}"

            def renew(exc: StoreError) -> dict:
                fresh = self.t.call("POST", f"/v1/sessions/{self.sid}/packs", json=body)
                if fresh["state"] != "uploading":
                    raise _AlreadyStored from exc
                return next(p for p in fresh["parts"] if p["number"] == number)

            etag = with_fresh_url(lambda p: put(p, data, what), part, renew, PART_REFUSED)
            done = {"number": number, "etag": etag}
            if body.get("checksums"):
                done["checksum"] = body["checksums"][number - 1]
            return done

        if self.sequential or len(parts) == 1:
            return [send(p) for p in parts]
        return list(self.parts.map(send, parts))

    def commit(
        self,
        layout: str,
        files: list[FileResult],
        tags: dict[str, str],
        before: Callable[[str, dict], None] | None = None,
        always_new: bool = False,
        dirs: Sequence[str] = (),
    ) -> dict:
        """``always_new``: a version even if the content equals the latest's; ``dirs``:
        a tree's empty directories (:func:`chunkyard.client.trees.empty_dirs`)."""
        listed = [f.to_json() for f in files]
        if layout == "file":  # a single file's version records no mode
            for f in listed:
                f.pop("mode", None)
        body: dict[str, Any] = {"layout": layout, "files": listed}
        body["tags"] = tags
        if always_new:  # only when asked: gateways before it refuse the field
            body["always_new"] = True
        if dirs and layout == "tree":  # likewise
            body["dirs"] = list(dirs)
        if before is not None:  # the spool records it: sent again, it answers the same
            before(self.sid, body)
        return self.t.call("POST", f"/v1/sessions/{self.sid}/commit", json=body)


def walk_tree(root: Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """Regular files under ``root`` as (path, relative POSIX path), sorted, and the
    relative path of every directory below ``root``; symlinks and special files are
    refused rather than silently skipped (a symlink to a directory is not followed,
    and not listed)."""
    out: list[tuple[Path, str]] = []
    dirs: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        dirs += [
            (here / d).relative_to(root).as_posix() for d in dirnames if not (here / d).is_symlink()
        ]
        for name in sorted(filenames):
            p = here / name
            if p.is_symlink() or not p.is_file():
                raise InvalidRequest(f"{p} is not a regular file (symlinks are not pushed)")
            out.append((p, p.relative_to(root).as_posix()))
    return out, dirs


def list_tree(root: Path) -> list[tuple[Path, str]]:
    """The regular files of :func:`walk_tree`."""
    return walk_tree(root)[0]


def version_dirs(dirs: list[str], entries: list[tuple[Path, str]]) -> list[str]:
    """A tree's empty directories (the deepest ones, in Unicode NFC, sorted) from every
    directory listed and the files' paths in the version, checked."""
    empty = trees.empty_dirs(
        [unicodedata.normalize("NFC", d) for d in dirs], [r for _, r in entries]
    )
    check_tree_dirs(empty, (rel for _, rel in entries))
    return empty


def file_mode(path: Path) -> int:
    """What a push records of a file's mode: its permission bits (no setuid, setgid or
    sticky bit, FORMAT.md "Digests")."""
    return stat.S_IMODE(path.stat().st_mode) & 0o777


def version_paths(entries: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Each file with its path in the version, in Unicode NFC (as the gateway wants
    them: macOS lists names decomposed), all checked before anything is sent: a name
    no file system can hold, or two that become one, fails the push at once."""
    out, seen = [], {}
    for p, rel in entries:
        name = unicodedata.normalize("NFC", rel)
        if name in seen:
            raise InvalidName(
                f"{seen[name]} and {p} have the same name in Unicode NFC: a version "
                "holds one of them",
                path=name,
            )
        seen[name] = p
        out.append((p, name))
    check_tree_paths(name for _, name in out)
    return out


def _add_all(
    packer: Packer, entries: list[tuple[Path, str]], known: dict[str, dict]
) -> list[FileResult]:
    """Every file into the packer, results in the order of ``entries``: small files
    first, many at a time, then each large one."""
    small = [i for i, (p, _) in enumerate(entries) if p.stat().st_size <= SMALL_MAX]
    out: dict[int, FileResult] = {}
    batch = [(entries[i][0], entries[i][1], known.get(entries[i][1])) for i in small]
    for i, result in zip(small, packer.add_small_files(batch), strict=True):
        out[i] = result
    large = [i for i in range(len(entries)) if i not in out]
    files = [(entries[i][0], entries[i][1], known.get(entries[i][1])) for i in large]
    for i, result in zip(large, packer.add_files(files), strict=True):
        out[i] = result
    return [out[i] for i in range(len(entries))]


def _latest(transport: Transport, name: str) -> dict | None:
    try:
        v = transport.call("GET", f"/v1/artifacts/{name}/-/versions/latest")
    except NotFound:
        return None
    return v if v.get("kind") == "stored" else None


def push(
    transport: Transport,
    path: str | os.PathLike,
    name: str,
    tags: dict[str, str] | None = None,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    before_commit: Callable[[str, dict], None] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Push a file or a directory as a new version of ``name``; returns its summary.
    ``include``/``exclude`` globs select the files of a tree pushed
    (:func:`chunkyard.client.trees.selected`).
    ``before_commit(session, body)`` is told the commit before it is sent (a repeated
    commit of a committed session answers that session's version).

    Files whose path and size match the latest version are cut and hashed first; if
    their file id (from the chunk ids) matches that file's, which the gateway computed
    from verified chunks, they are reused without reading them again."""
    root = Path(path)
    if not root.exists():
        raise InvalidRequest(f"{root} does not exist")
    layout = "tree" if root.is_dir() else "file"
    listed, dirs = walk_tree(root) if layout == "tree" else ([(root, root.name)], [])
    if layout == "tree" and (include or exclude):
        listed = [(p, rel) for p, rel in listed if trees.selected(rel, include, exclude)]
        dirs = [d for d in dirs if trees.selected(d, include, exclude)]
        if not listed:
            raise InvalidRequest(f"no file under {root} is selected by --include/--exclude")
    entries = version_paths(listed)
    dirs = version_dirs(dirs, entries)
    modes = [file_mode(p) for p, _ in entries] if layout == "tree" else None
    total = sum(p.stat().st_size for p, _ in entries)
    progress = progress_factory(total) if progress_factory else None
    small = len(entries) <= SMALL_PUSH_FILES and len(dirs) <= SMALL_PUSH_DIRS
    if total <= small_push_limit() and small:
        version = _push_small(transport, name, layout, entries, tags or {}, modes, dirs)
        if version is not None:
            if progress is not None:
                progress(total)
            return version
    latest = _latest(transport, name)
    known: dict[str, dict] = {}
    # file ids exist from format 3 on: older versions' digests are only their uploaders'
    if latest is not None and latest["layout"] == layout and latest.get("format", 2) >= 3:
        files = latest["file_list"]
        seen = {"version": latest["version"], "created_at": latest.get("created_at", 0.0)}
        if layout == "file" and files:  # one file: compare content whatever its name
            known = {entries[0][1]: {**files[0], **seen}}
        else:
            known = {f["path"]: {**f, **seen} for f in files}
    record = PushRecord.open(push_key(transport.url, name, entries))
    sent = 0
    try:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            up = Uploader(transport, name, progress if attempt == 1 else None, record)
            try:
                results = _add_all(up.packer, entries, known)
                up.packer.finish()
                for result, mode in zip(results, modes or [None] * len(results), strict=True):
                    result.mode = mode
                version = up.commit(layout, results, tags or {}, before_commit, dirs=dirs)
                break
            except PacksGone:
                # garbage collection took packs the lookup found (FORMAT.md, "Deleting"):
                # a new session asks again which chunks are missing and sends those
                record.clear()
                if attempt == COMMIT_ATTEMPTS:
                    raise
            finally:
                up.close()
                sent += up.packer.stats.bytes_uploaded
        record.clear()
    except ChunkyardError as exc:
        if not isinstance(exc, TRANSIENT):  # refused: a run again starts afresh
            record.clear()
        raise
    finally:
        record.close()
    stats = up.packer.stats
    return {
        **version,
        "size": total,
        "files": len(results),
        "chunks_total": stats.chunks_total,
        "chunks_new": stats.chunks_new,
        "bytes_uploaded": sent,
        "parts_sent": stats.parts_sent,
        # what an interrupted run of this push had sent already, in the session resumed
        "resumed": up.resumed,
        "parts_resumed": stats.parts_resumed,
        "packs_resumed": stats.packs_resumed,
    }


def _push_small(
    transport: Transport,
    name: str,
    layout: str,
    entries: list[tuple[Path, str]],
    tags: dict[str, str],
    modes: list[int] | None = None,
    dirs: Sequence[str] = (),
) -> dict[str, Any] | None:
    """Small content in one request (one round trip instead of six; the gateway
    dedups it as any other). None: the gateway predates this request, or a file grew
    past the limit while being read: push through an upload session instead.
    ``modes``: each tree file's; ``dirs``: a tree's empty directories."""
    files: list[dict[str, Any]] = []
    total = 0
    for i, (p, rel) in enumerate(entries):
        data = p.read_bytes()
        total += len(data)
        if total > SMALL_PUSH_MAX:
            return None
        files.append({"path": rel, "data": base64.b64encode(data).decode()})
        if modes is not None and modes[i] != DEFAULT_MODE:  # absent: the default
            files[-1]["mode"] = modes[i]
    body: dict[str, Any] = {"layout": layout, "files": files, "tags": tags}
    if dirs:  # only when there are any: gateways before them refuse the field
        body["dirs"] = list(dirs)
    try:
        return transport.call("POST", f"/v1/artifacts/{name}/-/versions", json=body)
    except ChunkyardError as exc:
        if exc.code == "method_not_allowed":
            return None
        raise
