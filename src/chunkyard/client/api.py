"""``chunkyard.Client``: the public Python API, so training code can push and pull."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from ..errors import InvalidName, InvalidRequest
from ..names import check_alias, check_name, check_tags, parse_ref
from . import events, references
from .transport import OnWait, RetryPolicy, Transport, print_waits

# The push and pull machinery (chunking, packs, numpy) is imported by the methods that
# use it: a command that only asks the gateway (show, ls, tag) started in 0.39 s here,
# most of it loading what it never ran.

if TYPE_CHECKING:
    from .spool import Background, PushHandle


class Client:
    """A connection to one gateway (``url``, else ``CHUNKYARD_URL``, else
    ``http://127.0.0.1:8080``). Thread-safe; close it, or use it as a context manager.

    Requests that fail for a reason that may pass (the gateway or store unreachable,
    429, 5xx) are retried under ``retry`` (default :meth:`RetryPolicy.from_env`: about
    two minutes, ``CHUNKYARD_RETRY_ATTEMPTS`` / ``CHUNKYARD_RETRY_DEADLINE``); each wait
    is reported to ``on_wait``, which with ``progress`` prints a line to stderr. A gateway
    that runs with auth wants ``token`` (else ``CHUNKYARD_TOKEN``). ``push(...,
    wait=False)`` spools to ``spool`` (else ``CHUNKYARD_SPOOL_DIR``, else the user's
    cache directory)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        progress: bool = False,
        retry: RetryPolicy | None = None,
        on_wait: OnWait | None = None,
        spool: str | os.PathLike | None = None,
    ) -> None:
        self.spool_dir = spool
        self._background: Background | None = None
        self._background_lock = threading.Lock()
        if on_wait is None and progress:
            on_wait = print_waits()
        self.transport = Transport(url, retry=retry, on_wait=on_wait, token=token)
        self.url = self.transport.url
        self.show_progress = progress

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections. Spooled pushes still pending go on in a detached
        worker (``chunkyard queue`` shows them)."""
        if self._background is not None:
            self._background.close()
        self.transport.close()

    def _bar(self, label: str):  # type: ignore[no-untyped-def]
        from .progress import bar

        return bar(label, enabled=None if self.show_progress else False)

    @overload
    def push(
        self,
        path: str | os.PathLike,
        name: str,
        tags: dict[str, str] | None = None,
        *,
        wait: Literal[True] = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> dict[str, Any]: ...

    @overload
    def push(
        self,
        path: str | os.PathLike,
        name: str,
        tags: dict[str, str] | None = None,
        *,
        wait: Literal[False],
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> PushHandle: ...

    def push(
        self,
        path: str | os.PathLike,
        name: str,
        tags: dict[str, str] | None = None,
        *,
        wait: bool = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> dict[str, Any] | PushHandle:
        """Push a file or directory as a new version of ``name`` (or return the latest
        version if its content is identical). Returns a summary: ``name``, ``version``,
        ``digest``, ``size``, ``files``, ``chunks_total``, ``chunks_new``,
        ``bytes_uploaded``, ``parts_sent``, ``created``.

        A push of the same files that stopped before it committed (the process was
        killed, or gave up on an unreachable gateway) is resumed in its session: what
        the store holds of it is not sent again (``resumed``, ``parts_resumed``,
        ``packs_resumed``; see :mod:`chunkyard.client.resume`).

        With ``wait=False`` (training loops) it returns once the content is snapshotted
        into the spool (a reflink, else a copy: the file may be overwritten at once)
        with a :class:`~chunkyard.client.spool.PushHandle` (``id``, ``state()``,
        ``wait()``). A thread of this process pushes spooled jobs in order, through
        outages of the gateway; jobs left when the client closes or the process ends
        are pushed by a detached worker, or by the next process that spools.

        ``include``/``exclude``: globs on a tree's relative paths (exclude wins) that
        select the files pushed, as for :meth:`pull` (not with ``wait=False``)."""
        if not wait:
            if include or exclude:
                raise InvalidRequest("include/exclude select files of a push that waits")
            return self._spooler().push(path, name, tags)
        from . import upload

        check_name(name)
        tags = check_tags(tags)
        with self._bar(f"push {name}") as factory:
            return upload.push(
                self.transport, path, name, tags, factory, include=include, exclude=exclude
            )

    def _spooler(self) -> Background:
        with self._background_lock:
            if self._background is None:
                from .spool import Background

                t = self.transport
                self._background = Background(self.url, t.token, t.retry, self.spool_dir)
            return self._background

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike,
        *,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        delete: bool = False,
    ) -> dict[str, Any]:
        """Write ``name``, ``name@VERSION`` or ``name:ALIAS`` to ``dest``; every chunk and
        the whole content are verified. A reference version comes straight from its
        source, pinned; drift there raises :class:`~chunkyard.errors.ReferenceDrifted`.
        What an interrupted pull of the same file to the same place verified is kept
        (checked again) and the rest fetched: ``bytes_resumed``, ``bytes_downloaded``.

        Like rsync: files ``dest`` holds already are not written again
        (``files_skipped``, ``files_written``); ``include``/``exclude`` globs on the
        relative path select part of a tree (exclude wins); ``delete`` removes selected
        files the version lacks (``files_deleted``)."""
        from . import download

        name, version = parse_ref(ref)
        with self._bar(f"pull {name}") as factory:
            return download.pull(
                self.transport, name, version, dest, factory, include, exclude, delete
            )

    def add(
        self,
        name: str,
        files: Mapping[str, str | os.PathLike],
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A new version of ``name``: its latest version's files plus ``files``, which map
        paths in the version to local files (or to local directories, whose files go
        under that path; ``""`` is the root), replacing what is at those paths. Kept
        files are named by id, neither read nor sent; new ones are pushed as by
        :meth:`push`. Writers adding to one name at once keep each other's files."""
        from . import amend

        check_name(name)
        tags = check_tags(tags)
        entries = amend.local_entries(files)
        with self._bar(f"add {name}") as factory:
            total = sum(p.stat().st_size for p, _ in entries)
            progress = factory(total) if factory else None
            return amend.amend(self.transport, name, entries, tags=tags, progress=progress)

    def remove(
        self, name: str, paths: Iterable[str], tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A new version of ``name`` without the files at ``paths`` (a directory's path
        removes the files under it); nothing is sent."""
        from . import amend

        check_name(name)
        gone = {p.strip("/") for p in paths}

        def removed(path: str) -> bool:
            return path in gone or any(path.startswith(g + "/") for g in gone)

        return amend.amend(self.transport, name, [], removed, check_tags(tags))

    def read(
        self, ref: str, path: str | None = None, start: int = 0, length: int | None = None
    ) -> bytes:
        """Bytes ``[start, start+length)`` of file ``path`` of ``ref`` (None: a
        single-file version's file), read without fetching the rest of the file: only
        the chunks that hold the range come from the store, each verified."""
        from . import partial

        v = self.show(ref)
        entry = partial.find_file(v, path)
        end = entry["size"] if length is None else start + length
        return partial.read_range(self.transport, v, entry, start, end)

    def ref(
        self,
        name: str,
        uri: str,
        hash: bool = False,
        index: bool = False,
        tags: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register ``uri`` (``s3://bucket/key``, ``s3://bucket/prefix/``, ``gs://…``,
        ``az://container/…``, ``https://…``) as a new version of ``name`` without copying
        it: the gateway records a pin per object. ``hash`` also records each object's
        BLAKE3 digest (the gateway streams it once); ``index`` also its chunk ids, so
        pushes of the same bytes dedup against the source. Registering the same objects
        at the same pins again returns that version (``created`` False)."""
        check_name(name)
        body = {"name": name, "uri": uri, "hash": hash or index, "index": index}
        body["tags"] = check_tags(tags)
        with self._bar(f"hash {name}") as factory:
            return references.register(self.transport, body, factory)

    def verify(self, ref: str) -> dict[str, Any]:
        """Check ``name[@VERSION|:ALIAS]`` against its sources: for a reference, every
        object against its pin; for a stored version, its packs (and any reference
        object it borrows chunks from). Returns ``ok``, ``drifted`` and ``objects``
        (each with ``state`` ``ok``, ``changed`` or ``missing``)."""
        name, version = parse_ref(ref)
        v = "latest" if version is None else str(version)
        return self.transport.call("POST", f"/v1/artifacts/{name}/-/versions/{v}/verify")

    def show(self, ref: str) -> dict[str, Any]:
        name, version = parse_ref(ref)
        v = "latest" if version is None else str(version)
        return self.transport.call("GET", f"/v1/artifacts/{name}/-/versions/{v}")

    def versions(self, name: str) -> list[dict[str, Any]]:
        check_name(name)
        out, cursor = [], 0
        while cursor is not None:
            page = self.transport.call(
                "GET", f"/v1/artifacts/{name}/-/versions", params={"cursor": cursor}
            )
            out += page["versions"]
            cursor = page["next"]
        return out

    def ls(self, prefix: str = "") -> list[dict[str, Any]]:
        """Every artifact whose name starts with ``prefix`` (that the token may read)."""
        out, cursor = [], ""
        while cursor is not None:
            page = self.ls_page(prefix, cursor)
            out += page["artifacts"]
            cursor = page["next"]
        return out

    def ls_page(self, prefix: str = "", cursor: str = "", limit: int = 100) -> dict[str, Any]:
        """One page of artifacts by name: ``{"artifacts": [{"name", "latest",
        "versions"}], "next"}``; ``next`` (None on the last page) is the next cursor."""
        return self.transport.call(
            "GET", "/v1/artifacts", params={"prefix": prefix, "cursor": cursor, "limit": limit}
        )

    def find_versions(
        self,
        prefix: str = "",
        tags: dict[str, str] | None = None,
        cursor: str = "",
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of the versions that carry every tag of ``tags``, of artifacts whose
        name starts with ``prefix``, by name and version: ``{"versions": [summary...],
        "next"}``; ``next`` (None on the last page) is the next cursor."""
        params: dict[str, Any] = {"prefix": prefix, "cursor": cursor, "limit": limit}
        params["tag"] = [f"{k}={v}" for k, v in check_tags(tags).items()]
        return self.transport.call("GET", "/v1/versions", params=params)

    def set_alias(
        self, name: str, alias: str, version: int, expect: int | None = None
    ) -> dict[str, Any]:
        check_name(name)
        check_alias(alias)
        body: dict[str, Any] = {"version": version}
        if expect is not None:
            body["expect"] = expect
        return self.transport.call("PUT", f"/v1/artifacts/{name}/-/aliases/{alias}", json=body)

    def remove_alias(self, name: str, alias: str, expect: int | None = None) -> dict[str, Any]:
        """Remove an alias (with ``expect``: only if it points at that version now)."""
        check_name(name)
        check_alias(alias)
        params = {} if expect is None else {"expect": expect}
        return self.transport.call(
            "DELETE", f"/v1/artifacts/{name}/-/aliases/{alias}", params=params
        )

    def aliases(self, name: str) -> list[dict[str, Any]]:
        """An artifact's aliases: ``[{"alias", "version", "updated_at"}]``, by alias."""
        check_name(name)
        out, cursor = [], ""
        while cursor is not None:
            page = self.transport.call(
                "GET", f"/v1/artifacts/{name}/-/aliases", params={"cursor": cursor}
            )
            out += page["aliases"]
            cursor = page["next"]
        return out

    def alias_history(self, name: str, alias: str) -> list[dict[str, Any]]:
        """Every move of an alias, oldest first: ``[{"id", "version", "previous",
        "moved_at", "moved_by"}]`` (``version`` None: removed; ``previous`` None: it
        did not exist; ``moved_by``: the token id)."""
        check_name(name)
        check_alias(alias)
        out, cursor = [], 0
        while cursor is not None:
            page = self.transport.call(
                "GET",
                f"/v1/artifacts/{name}/-/aliases/{alias}/history",
                params={"cursor": cursor},
            )
            out += page["moves"]
            cursor = page["next"]
        return out

    def tag(self, ref: str, tags: dict[str, str]) -> dict[str, Any]:
        name, version = parse_ref(ref)
        v = "latest" if version is None else str(version)
        return self.transport.call(
            "POST", f"/v1/artifacts/{name}/-/versions/{v}/tags", json={"tags": check_tags(tags)}
        )

    def rm(self, ref: str, force: bool = False, yes: bool = False) -> dict[str, Any]:
        """Remove ``name@VERSION`` (a number), or every version of ``name``. ``force``
        also removes the aliases that point at what goes (without it, such aliases make
        the removal fail with :class:`~chunkyard.errors.VersionAliased`); ``yes``
        confirms removing every version of an artifact that has more than one. Returns
        ``{"name", "removed": [numbers], "aliases": [removed aliases], "already":
        [numbers removed before]}``. Numbers are never taken again; the space comes back
        at the next garbage collection."""
        name, version = parse_ref(ref)
        if (":" in ref and "@" not in ref) or ref.endswith("@latest"):
            raise InvalidName(f"rm takes NAME or NAME@NUMBER, not {ref!r}")
        params = {"force": int(force)} if force else {}
        if version is None:
            if yes:
                params["yes"] = 1
            return self.transport.call("DELETE", f"/v1/artifacts/{name}/-/versions", params=params)
        return self.transport.call(
            "DELETE", f"/v1/artifacts/{name}/-/versions/{version}", params=params
        )

    def stats(self) -> dict[str, Any]:
        return self.transport.call("GET", "/v1/stats")

    # -- the repository (admin) -------------------------------------------------------
    def gc(
        self,
        grace: float = 24 * 3600.0,
        dry_run: bool = False,
        delete_orphans: bool = False,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Garbage collection (admin): delete the packs no version names once verified
        more than ``grace`` seconds ago, abort the uploads of expired sessions and the
        multipart uploads no catalog row knows. ``dry_run`` only says what would go;
        ``delete_orphans`` also deletes objects under ``packs/`` no row names. Safe
        while pushes run. ``on_progress`` gets the gateway's progress lines (``phase``,
        ``files``, ``objects``, ``deleted``). Returns the summary (FORMAT.md, "Deleting")."""
        body = {"grace": grace, "dry_run": dry_run, "delete_orphans": delete_orphans}
        if on_progress is None:
            return self.transport.call("POST", "/v1/admin/gc", json=body)
        return events.call(self.transport, "/v1/admin/gc", body, on_progress)

    # -- tokens (admin) --------------------------------------------------------------
    def create_token(
        self, scopes: list[str], ttl: float | None = None, label: str | None = None
    ) -> dict[str, Any]:
        """A new token with ``scopes`` (``read:PREFIX``, ``write:PREFIX``, ``admin``),
        valid ``ttl`` seconds (forever if None). The answer's ``token`` is the only copy."""
        body: dict[str, Any] = {"scopes": scopes}
        if ttl is not None:
            body["ttl"] = ttl
        if label is not None:
            body["label"] = label
        return self.transport.call("POST", "/v1/tokens", json=body)

    def tokens(self) -> list[dict[str, Any]]:
        return self.transport.call("GET", "/v1/tokens")["tokens"]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.transport.call("DELETE", f"/v1/tokens/{token_id}")
