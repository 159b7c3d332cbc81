"""An fsspec filesystem on ``chunkyard://HOST:PORT/NAME[@VERSION|:ALIAS][/PATH]`` URLs.

Where the name ends: names hold only ``A-Z a-z 0-9 . _ - /``, so the first segment
with ``@`` or ``:`` ends it (``team/ds@3/train.csv``, ``team/ds:champion/x``,
``team/ds@latest/x``). Without one, the name is the longest leading part of the path
that names an existing artifact (``team/ds/train.csv`` is file ``train.csv`` of
``team/ds`` when ``team/ds`` exists), and a path that no artifact holds is a directory
of names, or, written to, a new artifact of one file (``df.to_csv("chunkyard://h/team/
data/train.csv")`` makes ``team/data/train.csv``). So MLflow's artifact URIs are fsspec
URLs of the same files. Reads without a version read the latest one, pinned when the
file is opened; a file path holding ``@`` or ``:`` needs an explicit ``@latest/``.

Reads are ranged: a file opened for reading fetches the blocks it is asked for (pack
ranges straight from the store, every chunk verified), never the whole file. Writes
(``open(..., "wb")``, ``put``, ``pipe``) become a new version holding the previous
version's files plus the written one, sending only chunks the gateway lacks; ``rm``
makes a version without the file. Versions never change: writing to ``@3`` or an
alias is refused, and no artifact is ever deleted.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

try:
    from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
    from fsspec.utils import stringify_path
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chunkyard's filesystem needs fsspec: pip install 'chunkyard[fsspec]'"
    ) from exc

from ..client import amend, partial
from ..errors import InvalidName, NotFound
from ..names import check_name, parse_ref
from .urls import SCHEME, client_for, gateway_url, netloc_of

_PREFIX = f"{SCHEME}://"


class ChunkyardFileSystem(AbstractFileSystem):
    """Artifacts of one gateway as files and directories (see the module's doc)."""

    protocol = SCHEME
    root_marker = ""

    def __init__(self, gateway: str | None = None, token: str | None = None, **kwargs: Any):
        super().__init__(gateway=gateway, token=token, **kwargs)
        self.gateway = gateway or gateway_url("")
        self.client = client_for(self.gateway, token)
        self._names: set[str] = set()  # names seen to exist (no artifact is ever deleted)

    # -- paths -------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith(_PREFIX):
            path = path[len(_PREFIX) :].partition("/")[2]
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith(_PREFIX):
            return {"gateway": gateway_url(path[len(_PREFIX) :].partition("/")[0])}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        return f"{_PREFIX}{netloc_of(self.gateway)}/{self._strip_protocol(name)}"

    def _is_name(self, candidate: str) -> bool:
        if candidate in self._names:
            return True
        try:
            check_name(candidate)
        except InvalidName:
            return False
        page = self.client.ls_page(candidate, limit=1)["artifacts"]
        if page and page[0]["name"] == candidate:
            self._names.add(candidate)
            return True
        return False

    def _resolve(self, path: str) -> tuple[str, int | str | None, str, bool] | None:
        """(name, version or alias, path in the version, whether the URL said where the
        name ends) of a stripped path; None when no artifact holds it."""
        segments = path.split("/") if path else []
        for i, segment in enumerate(segments):
            if "@" in segment or ":" in segment:
                name, ref = parse_ref("/".join(segments[: i + 1]))
                return name, ref, "/".join(segments[i + 1 :]), True
        for k in range(len(segments), 0, -1):
            if self._is_name("/".join(segments[:k])):
                return "/".join(segments[:k]), None, "/".join(segments[k:]), False
        return None

    def _show(self, name: str, ref: int | str | None) -> dict[str, Any]:
        text = name if ref is None else f"{name}@{ref}" if isinstance(ref, int) else f"{name}:{ref}"
        try:
            return self.client.show(text)
        except NotFound as exc:
            raise FileNotFoundError(text) from exc

    # -- listing -----------------------------------------------------------------
    @staticmethod
    def _file(path: str, v: dict[str, Any], f: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": path,
            "size": f["size"],
            "type": "file",
            "artifact": v["name"],
            "version": v["version"],
            "kind": v["kind"],
            "format": v.get("format", 2),
            "index": f["index"],
            "path": f["path"],
            "digest": f["digest"],
            "b3sum": f.get("b3sum", ""),
            "created": v["created_at"],
        }

    @staticmethod
    def _dir(path: str) -> dict[str, Any]:
        return {"name": path, "size": 0, "type": "directory"}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        found = self._resolve(path)
        if found is None:
            if not path or self.client.ls_page(path + "/", limit=1)["artifacts"]:
                return self._dir(path)
            raise FileNotFoundError(path)
        name, ref, inner, _ = found
        v = self._show(name, ref)
        files = v["file_list"]
        if not inner and v["layout"] == "file":
            return self._file(path, v, files[0])
        for f in files:
            if f["path"] == inner:
                return self._file(path, v, f)
        if not inner or any(f["path"].startswith(inner + "/") for f in files):
            return self._dir(path)
        raise FileNotFoundError(path)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        found = self._resolve(path)
        out: dict[str, dict[str, Any]] = {}
        if found is not None:
            name, ref, inner, explicit = found
            v = self._show(name, ref)
            if not inner and v["layout"] == "file":
                out[path] = self._file(path, v, v["file_list"][0])
            prefix = f"{inner}/" if inner else ""
            for f in v["file_list"] if v["layout"] == "tree" else []:
                if f["path"] == inner:
                    out = {path: self._file(path, v, f)}
                    break
                if f["path"].startswith(prefix):
                    head, sep, _ = f["path"][len(prefix) :].partition("/")
                    full = f"{path}/{head}" if path else head
                    out.setdefault(full, self._dir(full) if sep else self._file(full, v, f))
        if found is None or not (found[2] or found[3]):  # names below it, too
            out.update({k: i for k, i in self._names_below(path).items() if k not in out})
        if not out and (path or found is not None):
            raise FileNotFoundError(path)
        listing = sorted(out.values(), key=lambda i: i["name"])
        return listing if detail else [i["name"] for i in listing]

    def _names_below(self, path: str) -> dict[str, dict[str, Any]]:
        """The artifact names below ``path`` as its entries: a name with names below it
        is a directory, a single-file artifact a file, a tree a directory."""
        prefix = f"{path}/" if path else ""
        heads: dict[str, bool] = {}  # entry -> has names below it
        for a in self.client.ls(prefix):
            self._names.add(a["name"])
            head, sep, _ = a["name"][len(prefix) :].partition("/")
            heads[prefix + head] = heads.get(prefix + head, False) or bool(sep)
        out = {}
        for full, deeper in heads.items():
            v = None if deeper else self._show(full, None)
            if v is not None and v["layout"] == "file":
                out[full] = self._file(full, v, v["file_list"][0])
            else:
                out[full] = self._dir(full)
        return out

    # -- reading -------------------------------------------------------------------
    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        **kwargs: Any,
    ) -> ChunkyardFile:
        return ChunkyardFile(self, path, mode, block_size, autocommit, cache_options, **kwargs)

    def _read(self, details: dict[str, Any], start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file ``details`` (an :meth:`info`) describes."""
        v = {"name": details["artifact"], "version": details["version"], "kind": details["kind"]}
        return partial.read_range(self.client.transport, v, details, start, end)

    def _file_info(self, path: str) -> dict[str, Any]:
        details = self.info(path)
        if details["type"] != "file":
            raise IsADirectoryError(path)
        return details

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        details = self._file_info(path)
        size = details["size"]
        start = 0 if start is None else max(0, size + start) if start < 0 else start
        end = size if end is None else max(0, size + end) if end < 0 else min(end, size)
        return self._read(details, start, end)

    def get_file(self, rpath: str, lpath: Any, callback: Any = None, **kwargs: Any) -> None:
        """Pull one file whole (in parallel, verified against its file id)."""
        if not isinstance(lpath, str | os.PathLike) or self.isdir(rpath):
            return super().get_file(rpath, lpath, **kwargs)
        d = self._file_info(rpath)
        v = {k: d[k] for k in ("version", "kind", "format")} | {"name": d["artifact"]}
        Path(lpath).parent.mkdir(parents=True, exist_ok=True)
        partial.pull_files(self.client.transport, v, [(d, Path(lpath))])

    # -- writing -------------------------------------------------------------------
    def _write(self, local: str | os.PathLike, path: str, modes: bool = False) -> dict[str, Any]:
        """Make the local file ``local`` the file at ``path``, as a new version;
        ``modes``: with its mode (a file of the caller's, not a temporary one)."""
        path = self._strip_protocol(path)
        found = self._resolve(path)
        t = self.client.transport
        if found is None:  # a new artifact of one file, named by the path
            try:
                check_name(path)
            except InvalidName as exc:
                raise ValueError(
                    f"{path!r} is no artifact name: write to NAME@latest/PATH ({exc.message})"
                ) from exc
            entries = [(Path(local), path.rsplit("/", 1)[-1])]
            out = amend.amend(t, path, entries, layout="file")
            self._names.add(path)
            return out
        name, ref, inner, _ = found
        if ref is not None:
            raise PermissionError(f"{path}: versions never change; write to {name}@latest/...")
        if inner:
            entries = amend.local_entries({inner: local})
            return amend.amend(t, name, entries, modes=modes)
        v = self._show(name, None)
        if v["layout"] != "file":
            raise IsADirectoryError(path)
        entries = [(Path(local), v["file_list"][0]["path"])]
        return amend.amend(t, name, entries, lambda p: True, layout="file")

    def put_file(
        self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kw: Any
    ) -> None:
        if os.path.isdir(lpath):
            return  # directories exist through their files
        if mode == "create" and self.exists(rpath):
            raise FileExistsError(rpath)
        self._write(lpath, rpath, modes=True)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if mode == "create" and self.exists(path):
            raise FileExistsError(path)
        with tempfile.TemporaryDirectory(prefix="chunkyard-") as tmp:
            local = Path(tmp) / "data"
            local.write_bytes(value)
            self._write(local, path)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        details = self.info(path)
        found = self._resolve(path)
        if details["type"] != "file" or found is None:
            raise IsADirectoryError(path)
        name, ref, inner, _ = found
        if ref is not None or not inner:
            raise PermissionError(f"{path}: chunkyard deletes no version and no artifact")
        self.client.remove(name, [inner])

    def _rm(self, path: str) -> None:
        self.rm_file(path)


class ChunkyardFile(AbstractBufferedFile):
    """Reads fetch only the blocks asked for, from the version pinned at open; writes
    spool to a local temporary file and become a version on close."""

    def __init__(
        self,
        fs: ChunkyardFileSystem,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        **kwargs: Any,
    ) -> None:
        if mode == "rb":
            details = fs._file_info(path)
            super().__init__(
                fs, path, mode, block_size or "default", autocommit,
                cache_options=cache_options, size=details["size"], **kwargs,
            )  # fmt: skip
            self.details = details
        elif mode in ("wb", "xb"):
            if mode == "xb" and fs.exists(path):
                raise FileExistsError(path)
            super().__init__(fs, path, "wb", block_size or "default", autocommit, **kwargs)
            self._spool: Any = None
        else:
            raise NotImplementedError(f"mode {mode!r}: chunkyard files are read or written whole")

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs._read(self.details, start, end)

    def _initiate_upload(self) -> None:
        self._spool = tempfile.NamedTemporaryFile(prefix=".chunkyard-", delete=False)  # noqa: SIM115

    def _upload_chunk(self, final: bool = False) -> bool:
        self._spool.write(self.buffer.getbuffer())
        if final:
            self._spool.close()
            try:
                self.fs._write(self._spool.name, self.path)
            finally:
                os.unlink(self._spool.name)
        return True
