"""Trees like rsync: select part of a tree, skip what a destination holds already,
mirror a version exactly.

A pulled file gets the version's ``created_at`` as its mtime, so a later pull of the
same version into the same place finds it by size and mtime alone (the fast path).
Any other file of the right size is hashed the way its id in the version was computed
(chunk ids for format 3, BLAKE3 of the content before) and skipped only if it matches;
then it gets the version's mtime as well, so the next pull takes the fast path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

from ..digest import file_digest, file_id_of


def _candidates(rel: str) -> Iterable[str]:
    """The path and each of its parent directories: ``--exclude logs`` takes
    ``logs/a.txt`` too."""
    yield rel
    cut = rel.rfind("/")
    while cut > 0:
        yield rel[:cut]
        cut = rel.rfind("/", 0, cut)


def _matches(rel: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(c, p) for c in _candidates(rel) for p in patterns)


def selected(
    rel: str, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> bool:
    """Whether relative POSIX path ``rel`` is part of the selection: it matches an
    ``include`` glob (or there is none) and no ``exclude`` glob (exclude wins). A glob
    matches the path or one of its directories; ``*`` crosses ``/`` as in fnmatch."""
    if include and not _matches(rel, include):
        return False
    return not (exclude and _matches(rel, exclude))


def stamp_ns(created_at: float) -> int:
    """The mtime (ns) chunkyard gives the files it writes from a version."""
    return int(round(created_at * 1_000_000)) * 1000


def stamp(path: Path, ns: int) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def unchanged(entry: dict, target: Path, fmt: int, ns: int, reference: bool = False) -> bool:
    """Whether ``target`` already holds the content of the version's file ``entry``.
    A symlink or anything but a regular file is never taken as the file. A reference
    version's file is compared by the BLAKE3 recorded at registration, if any."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return False
    if not os.path.isfile(target) or target.is_symlink() or st.st_size != entry["size"]:
        return False
    if st.st_mtime_ns == ns:  # the fast path: chunkyard wrote it from this version
        return True
    if reference:
        with open(target, "rb") as f:
            same = bool(entry.get("b3sum")) and file_digest(f) == entry["b3sum"]
    elif fmt >= 3:
        from ..hashing import chunk_ids  # cutting (FastCDC): loaded when a file needs it

        same = file_id_of(chunk_ids(target, parallel=False)) == entry["digest"]
    else:
        with open(target, "rb") as f:
            same = file_digest(f) == entry["digest"]
    if same:
        stamp(target, ns)
    return same


def extras(
    dest: Path,
    keep: set[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    empty: Sequence[str] = (),
) -> tuple[list[Path], list[Path]]:
    """What ``--delete`` removes under ``dest``: files (and symlinks, never followed)
    whose relative path is selected but not in ``keep``, and the directories that hold
    nothing kept and are not the version's ``empty`` directories (or theirs): as
    ``rsync -r --delete``, which removes every directory the source lacks. Paths outside
    the selection are left alone, as rsync does."""
    files: list[Path] = []
    dirs: list[Path] = []
    keep_dirs = {d for rel in keep for d in list(_candidates(rel))[1:]}
    keep_dirs.update(d for rel in empty for d in _candidates(rel))
    for dirpath, dirnames, filenames in os.walk(dest, topdown=False, followlinks=False):
        here = Path(dirpath)
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            rel = (here / name).relative_to(dest).as_posix()
            if rel not in keep and selected(rel, include, exclude):
                files.append(here / name)
        rel_dir = here.relative_to(dest).as_posix()
        if here != dest and rel_dir not in keep_dirs and selected(rel_dir, include, exclude):
            dirs.append(here)
    return files, dirs


def apply_modes(todo: Iterable[tuple[dict, Path]]) -> None:
    """Give each file the permission bits its version records, exactly (as ``rsync -p``
    and ``tar -p`` do: the umask plays no part); a file of a version that records none
    is left as it is. Files written now have them already (they take them before their
    name); this sets those of files a pull skipped."""
    for entry, target in todo:
        mode = entry.get("mode")
        if mode is not None and stat.S_IMODE(target.lstat().st_mode) != mode:
            os.chmod(target, mode)


def delete(files: list[Path], dirs: list[Path]) -> int:
    """Remove what :func:`extras` listed (directories deepest first, only if empty by
    then); the number of files removed."""
    for f in files:
        f.unlink(missing_ok=True)
    for d in dirs:  # os.walk bottom-up: children come first
        with contextlib.suppress(OSError):  # holds something unselected: kept
            d.rmdir()
    return len(files)


def empty_dirs(dirs: Iterable[str], files: Iterable[str]) -> list[str]:
    """The directories of ``dirs`` that hold none of ``files`` and none of the other
    ``dirs``, sorted: what a tree version lists as its empty directories (the deeper
    ones imply their parents)."""
    listed = list(dirs)
    inner: set[str] = set()
    for rel in [*files, *listed]:
        inner.update(list(_candidates(rel))[1:])
    return sorted({d for d in listed if d not in inner}, key=lambda d: d.encode())
