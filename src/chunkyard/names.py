"""Artifact names (``team/project/model``), version references, aliases, tags and the
paths of files inside a version.

Names are hierarchical, ``/``-separated; each segment starts with a letter or digit and
holds only ``A-Z a-z 0-9 . _ -``. So no ``..``, no empty segment, no absolute path, no
control characters, no ``-`` segment (the URL separator), and names are safe as URL
paths and as directory names. Each rule is one regular expression, used both here and
in the API's schema (``chunkyard.server.models``), so the two cannot disagree.

File paths are any text a file system can hold, within limits every common one has:
relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no backslash, no drive
letter (``C:``) in front, no control or bidirectional-override character, at most 255
bytes a segment and 4,096 bytes in all (UTF-8). Within one version no path is twice and
none is a directory of another (``x`` and ``x/y``), so every version can be written out
(:func:`check_tree_paths`). New paths and tag values must be in Unicode NFC, so that
one name has one spelling: ``é`` as one code point or as ``e`` and a combining accent
would otherwise be two files that many file systems (macOS) take for one. Paths that
differ only in case are two files (as on Linux and in S3); written out on a
case-insensitive file system, one replaces the other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import InvalidName

MAX_NAME = 256
MAX_SEGMENTS = 16
MAX_TAG_VALUE = 4096
MAX_TAGS = 256
#: a file path's length, bytes of UTF-8 (Linux's PATH_MAX)
MAX_PATH = 4096
#: a file path segment's length, bytes of UTF-8 (NAME_MAX of ext4, XFS, APFS, NTFS...)
MAX_SEGMENT = 255
RESERVED_ALIASES = {"latest"}

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
NAME_PATTERN = rf"^{_SEGMENT}(/{_SEGMENT}){{0,{MAX_SEGMENTS - 1}}}$"
ALIAS_PATTERN = r"^(?!latest$)[A-Za-z][A-Za-z0-9._-]{0,63}$"
#: a version number (ASCII digits, below 2**63), ``latest`` or an alias
VERSION_REF_PATTERN = r"^(latest|[0-9]{1,18}|[A-Za-z][A-Za-z0-9._-]{0,63})$"
TAG_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
#: characters no tag value or file path may hold: C0 and C1 controls, DEL, and the
#: bidirectional overrides and isolates that make text display other than it reads
UNSAFE_CHARS = "\\x00-\\x1f\\x7f-\\x9f\\u202a-\\u202e\\u2066-\\u2069"
TAG_VALUE_PATTERN = f"^[^{UNSAFE_CHARS}]*$"

_NAME = re.compile(NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_VERSION_REF = re.compile(VERSION_REF_PATTERN)
_TAG_KEY = re.compile(TAG_KEY_PATTERN)
_UNSAFE = re.compile(f"[{UNSAFE_CHARS}]")
#: a Windows drive in front of a path (``C:``, ``c:x``): absolute or drive-relative there
_DRIVE = re.compile(r"[A-Za-z]:")


def is_nfc(text: str) -> bool:
    return text.isascii() or unicodedata.is_normalized("NFC", text)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("artifact name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidName(f"artifact name is longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid artifact name {name[:MAX_NAME]!r}: 1 to {MAX_SEGMENTS} '/'-separated "
            "segments, each starting with a letter or digit and holding only A-Z a-z 0-9 . _ -",
            name=name[:MAX_NAME],
        )
    return name


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidName(
            "alias must start with a letter, hold only A-Z a-z 0-9 . _ -, at most 64 "
            "characters, and not be 'latest'",
            alias=str(alias)[:80],
        )
    return alias


def check_tags(tags: object) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise InvalidName(f"tags must be an object of at most {MAX_TAGS} string keys and values")
    for k, v in tags.items():
        if not isinstance(k, str) or not _TAG_KEY.fullmatch(k):
            raise InvalidName(f"invalid tag key {str(k)[:80]!r}")
        if not isinstance(v, str) or len(v) > MAX_TAG_VALUE or _UNSAFE.search(v):
            raise InvalidName(
                f"invalid value for tag {k!r}: at most {MAX_TAG_VALUE} characters, no "
                "control characters or bidirectional overrides"
            )
        if not is_nfc(v):
            raise InvalidName(
                f"the value of tag {k!r} is not in Unicode normal form NFC "
                "(unicodedata.normalize('NFC', value) gives the form to send)"
            )
    return dict(tags)


def version_ref(text: str) -> int | str | None:
    """A version reference as a URL segment: ``3``, ``latest`` (None) or an alias."""
    if not _VERSION_REF.fullmatch(text):
        raise InvalidName(f"invalid version reference {text[:80]!r}: a number, latest or an alias")
    if text == "latest":
        return None
    return int(text) if text.isascii() and text.isdigit() else check_alias(text)


def parse_ref(ref: str) -> tuple[str, str | int | None]:
    """Split ``name``, ``name@3``, ``name@latest`` or ``name:champion``."""
    if "@" in ref:
        name, _, version = ref.rpartition("@")
        if version != "latest" and not (version.isascii() and version.isdigit()):
            raise InvalidName(f"version must be a number, got {version!r}")
        return check_name(name), version_ref(version)
    if ":" in ref:
        name, _, alias = ref.rpartition(":")
        return check_name(name), check_alias(alias)
    return check_name(ref), None


def domain_of(name: str, depth: int) -> str:
    """The dedup domain of an artifact: the first ``depth`` segments of its name (all
    artifacts share the domain "" at depth 0). Chunks are deduplicated within a domain,
    never across two (FORMAT.md, "Dedup domains")."""
    return "/".join(name.split("/")[:depth]) if depth > 0 else ""


def check_path(path: object, *, nfc: bool = False) -> str:
    """A relative POSIX path of a file inside a tree version (the rules above);
    ``nfc``: in Unicode normal form NFC as well, as a new version's paths must be."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH:
        raise InvalidName(f"file path must be a string of 1 to {MAX_PATH} bytes")
    between = f"/{path}/"  # each segment between slashes: no "//", "/./" or "/../"
    if (
        "//" in between
        or "/./" in between
        or "/../" in between
        or "\\" in path
        or _UNSAFE.search(path)
        or _DRIVE.match(path)
    ):
        raise InvalidName(f"invalid file path {path[:200]!r}", path=path[:200])
    try:
        raw = path.encode()
    except UnicodeEncodeError:  # a lone surrogate
        raise InvalidName(f"file path {path[:200]!r} is not valid Unicode") from None
    if len(raw) > MAX_PATH:
        raise InvalidName(
            f"file path {path[:200]!r}... is {len(raw)} bytes long in UTF-8; at most {MAX_PATH}",
            path=path[:200],
        )
    if len(raw) > MAX_SEGMENT and any(len(p) > MAX_SEGMENT for p in raw.split(b"/")):
        raise InvalidName(
            f"file path {path[:200]!r} has a segment (a file or directory name) longer than "
            f"{MAX_SEGMENT} bytes in UTF-8, which file systems cannot hold",
            path=path[:200],
        )
    if nfc and not is_nfc(path):
        raise InvalidName(
            f"file path {path[:200]!r} is not in Unicode normal form NFC",
            path=path[:200],
            nfc=unicodedata.normalize("NFC", path)[:200],
        )
    return path


def check_tree_paths(paths: Iterable[str], *, nfc: bool = True) -> list[str]:
    """The file paths of one version, together: each a valid path (:func:`check_path`,
    and in NFC if ``nfc``), none twice, and none the directory of another (``x`` and
    ``x/y``, or ``a/b`` and ``a/b/c``: a file system cannot hold both), so the version
    can be written out as a directory. Linear in the number of paths and directories."""
    out = list(paths)
    files: set[str] = set()
    dirs: set[str] = set()
    for p in out:
        check_path(p, nfc=nfc)
        if p in files:
            raise InvalidName(f"file path {p[:200]!r} appears twice", path=p[:200])
        files.add(p)
        cut = p.rfind("/")
        while cut > 0 and p[:cut] not in dirs:  # its directories, until one already seen
            dirs.add(p[:cut])
            cut = p.rfind("/", 0, cut)
    both = files & dirs
    if both:
        d = min(both)
        inside = next(p for p in out if p.startswith(d + "/"))
        raise InvalidName(
            f"{d[:200]!r} is a file and also the directory of {inside[:200]!r}: a file "
            "system cannot hold both",
            path=d[:200],
            inside=inside[:200],
        )
    return out


def _parents(path: str) -> Iterable[str]:
    """The directories of a path, innermost first (``a/b/c``: ``a/b``, ``a``)."""
    cut = path.rfind("/")
    while cut > 0:
        yield path[:cut]
        cut = path.rfind("/", 0, cut)


def check_tree_dirs(dirs: Iterable[str], files: Iterable[str], *, nfc: bool = True) -> list[str]:
    """The empty directories of a tree version, against its file paths: each a valid
    path (:func:`check_path`), none twice, none a file, none a directory of a file (it
    would not be empty) and none a directory of another one listed (that one implies
    it): so a tree has one list of empty directories, the deepest ones only, and one
    digest."""
    out = list(dirs)
    files = set(files)
    full: set[str] = set()  # the directories the files and the listed ones imply
    for p in files:
        for d in _parents(p):
            if d in full:
                break
            full.add(d)
    seen: set[str] = set()
    for d in out:
        check_path(d, nfc=nfc)
        if d in seen:
            raise InvalidName(f"directory {d[:200]!r} appears twice", path=d[:200])
        seen.add(d)
        if d in files:
            raise InvalidName(f"{d[:200]!r} is both a file and an empty directory", path=d[:200])
    for d in out:
        for parent in _parents(d):
            full.add(parent)
    inner = sorted(seen & full)
    if inner:
        raise InvalidName(
            f"directory {inner[0][:200]!r} is not empty: it holds a file or another "
            "directory listed (list only the deepest empty directories)",
            path=inner[0][:200],
        )
    return out
