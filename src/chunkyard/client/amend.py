"""Amend: a new version of a tree made of the latest version plus or minus some files.

Training code writes a run's files one call at a time (MLflow's ``log_artifact``, an
fsspec write). Each call becomes a whole new version, at the price of the new bytes
only: the latest version's other files are named by their file ids (``from_version``
in the commit, FORMAT.md "Commit": nothing of them is read or sent) and the new files
go through an upload session like any push, so chunks the dedup domain holds are not
sent again.

Two writers amending one name at once both start from the same latest version, and
the commit that lands second would drop the other's files. So a writer whose version
is not the one right after its base brings forward what the versions in between added
or changed (paths it wrote itself keep its own content), in one more commit that sends
no bytes, and looks again until no one slipped in. Merges only add: a removal racing
another writer's amend may be undone by it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest, NotFound, TagConflict
from ..names import check_tree_paths
from .packer import FileResult, reused
from .transport import Transport
from .upload import Uploader, _add_all, file_mode, list_tree, version_paths


def _show(transport: Transport, name: str, ref: str | int) -> dict[str, Any] | None:
    try:
        return transport.call("GET", f"/v1/artifacts/{name}/-/versions/{ref}")
    except NotFound:
        return None


def _base(transport: Transport, name: str) -> dict[str, Any] | None:
    """The latest version, which an amendment builds on (None: the name is new)."""
    v = _show(transport, name, "latest")
    if v is not None and (v["kind"] != "stored" or v.get("format", 2) < 3):
        raise InvalidRequest(
            f"version {v['version']} of {name!r} is a {v['kind']} version of format "
            f"{v.get('format', 2)}: files can be added only to stored versions of format 3 "
            "(push the whole tree instead)",
            name=name,
        )
    return v


def local_entries(files: Mapping[str, str | os.PathLike]) -> list[tuple[Path, str]]:
    """``{path in the version: local file or directory}`` as (local file, path) pairs:
    a directory's files go under its path (``""``: the root), keeping theirs."""
    out: list[tuple[Path, str]] = []
    for at, local in files.items():
        at = at.strip("/")
        p = Path(local)
        if p.is_dir():
            out += [(f, f"{at}/{rel}" if at else rel) for f, rel in list_tree(p)]
        elif p.is_file():
            if not at:
                raise InvalidRequest(f"{p} is a file: give the path it takes in the version")
            out.append((p, at))
        else:
            raise InvalidRequest(f"{p} does not exist or is not a regular file")
    return version_paths(out)


def _parents(path: str) -> Iterable[str]:
    """The directories of a path, innermost first (``a/b/c``: ``a/b``, ``a``)."""
    cut = path.rfind("/")
    while cut > 0:
        yield path[:cut]
        cut = path.rfind("/", 0, cut)


def _clash_test(new: set[str]) -> Callable[[str], bool]:
    """Whether a kept file must give way to new files at ``new``: the same path, a
    directory of a new file, or a file where a new one needs a directory."""
    new_dirs = {d for p in new for d in _parents(p)}
    return lambda p: p in new or p in new_dirs or any(d in new for d in _parents(p))


def _without_clashes(files: dict[str, tuple[int, dict]]) -> dict[str, tuple[int, dict]]:
    """Merged files where one path is a file in one version and a directory in
    another: the newer side stays."""
    newest: dict[str, int] = {}  # directory -> newest version of a file under it
    for p, (n, _) in files.items():
        for d in _parents(p):
            newest[d] = max(newest.get(d, 0), n)
    out = dict(files)
    for d, n in newest.items():
        if d in files:
            if files[d][0] < n:
                out.pop(d, None)
            else:
                out = {p: v for p, v in out.items() if not p.startswith(d + "/")}
    return out


def amend(
    transport: Transport,
    name: str,
    entries: list[tuple[Path, str]],
    remove: Callable[[str], bool] = lambda path: False,
    tags: dict[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
    layout: str = "tree",
    modes: bool = True,
) -> dict[str, Any]:
    """A new version of ``name``: the latest version's files, less those ``remove``
    selects and those the new ``entries`` (local file, path) replace, plus the entries
    (``layout`` "file": one file, which is then the version's only file). ``modes``:
    the entries keep their local files' modes (False: temporary files, whose mode says
    nothing; they take the default).
    Returns the version's summary with the push's ``chunks_total``, ``chunks_new`` and
    ``bytes_uploaded``; ``created`` is False if the content equals the latest version."""
    base = _base(transport, name)
    written = {rel for _, rel in entries}
    old = base["file_list"] if base else []
    clashes = _clash_test(written)
    kept = [
        reused(f["path"], f["size"], {**f, "version": base["version"]})  # type: ignore[index]
        for f in old
        if not remove(f["path"]) and not clashes(f["path"])
    ]
    if not kept and not entries:
        raise InvalidRequest(f"that would leave no file in {name!r}", name=name)
    known = {f["path"]: {**f, "version": base["version"]} for f in old} if base else {}
    up = Uploader(transport, name, progress)
    try:
        results = _add_all(up.packer, entries, known) if entries else []
        up.packer.finish()
        for result, (local, _) in zip(results, entries, strict=True):
            result.mode = file_mode(local) if modes else None  # not the replaced file's
        files = sorted(kept + results, key=lambda f: f.path)
        check_tree_paths((f.path for f in files), nfc=False)
        if layout == "file" and len(files) != 1:
            raise InvalidRequest(f"a single-file version holds one file, not {len(files)}")
        dirs = _still_empty((base.get("dirs") or []) if base else [], files)
        version = _commit(up, layout, files, tags or {}, dirs)
    finally:
        up.close()
    stats = up.packer.stats
    if layout == "tree" and version.get("created", True):
        version = _bring_forward(transport, name, base, version, written)
    return {
        **version,
        "chunks_total": stats.chunks_total,
        "chunks_new": stats.chunks_new,
        "bytes_uploaded": stats.bytes_uploaded,
    }


def _still_empty(dirs: list[str], files: list[FileResult]) -> list[str]:
    """The empty directories a version carries forward: those that no file of it now
    fills (or stands at)."""
    taken = {f.path for f in files} | {d for f in files for d in _parents(f.path)}
    return [d for d in dirs if d not in taken and not any(p in taken for p in _parents(d))]


def _commit(
    up: Uploader,
    layout: str,
    files: list[FileResult],
    tags: dict[str, str],
    dirs: list[str] | None = None,
) -> dict:
    """Commit; content equal to the latest version's makes no version, and the tags
    would go on that one, where tags already set (write-once) keep their values."""
    dirs = dirs if layout == "tree" else None
    try:
        return up.commit(layout, files, tags, dirs=dirs or ())
    except TagConflict:
        return up.commit(layout, files, {}, dirs=dirs or ())


def _bring_forward(
    transport: Transport,
    name: str,
    base: dict[str, Any] | None,
    mine: dict[str, Any],
    written: set[str],
) -> dict[str, Any]:
    """After committing ``mine`` on top of ``base``: while other versions landed in
    between, commit ``mine`` plus what they added or changed (see the module's doc)."""
    seen = {f["path"]: f["digest"] for f in base["file_list"]} if base else {}
    after = base["version"] if base else 0
    while mine["version"] > after + 1:
        mine = _show(transport, name, mine["version"]) or mine  # with its file list
        files = {f["path"]: (mine["version"], f) for f in mine["file_list"]}
        for n in range(after + 1, mine["version"]):
            theirs = _show(transport, name, n)
            for f in theirs["file_list"] if theirs and theirs["kind"] == "stored" else []:
                p = f["path"]
                if p in written or seen.get(p) == f["digest"]:
                    continue  # ours, or not changed by them
                if p not in files or files[p][1]["digest"] != f["digest"]:
                    files[p] = (n, f)
        if all(n == mine["version"] for n, _ in files.values()):
            return mine
        merged: list[FileResult] = [
            reused(path, f["size"], {**f, "version": n})
            for path, (n, f) in sorted(_without_clashes(files).items())
        ]
        between = f"{after + 1}-{mine['version'] - 1}"
        seen = {f["path"]: f["digest"] for f in mine["file_list"]}
        after = mine["version"]
        up = Uploader(transport, name)
        try:
            dirs = _still_empty(mine.get("dirs") or [], merged)
            nxt = _commit(up, "tree", merged, {"merged": between}, dirs)
        finally:
            up.close()
        if not nxt.get("created", True):
            return nxt
        mine = nxt
    return mine
