"""Artifact names (``team/project/model``), version references and aliases.

Names are hierarchical, ``/``-separated; each segment starts with a letter or digit and
holds only ``A-Z a-z 0-9 . _ -``. So no ``..``, no empty segment, no absolute path, no
control characters, no ``-`` segment (the URL separator), and names are safe as URL
paths and as directory names.
"""

from __future__ import annotations

import re

from .errors import InvalidName

MAX_NAME = 256
MAX_SEGMENTS = 16
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
_TAG_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
MAX_TAG_VALUE = 4096
RESERVED_ALIASES = {"latest"}


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidName("artifact name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise InvalidName(f"artifact name is longer than {MAX_NAME} characters")
    segments = name.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidName(f"artifact name has more than {MAX_SEGMENTS} segments")
    for seg in segments:
        if not _SEGMENT.fullmatch(seg) or seg in (".", ".."):
            raise InvalidName(
                f"invalid segment {seg!r} in artifact name: segments start with a letter or "
                "digit and hold only A-Z a-z 0-9 . _ -",
                name=name[:MAX_NAME],
            )
    return name


def check_alias(alias: object) -> str:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias) or alias in RESERVED_ALIASES:
        raise InvalidName(
            "alias must start with a letter, hold only A-Z a-z 0-9 . _ -, at most 64 "
            "characters, and not be 'latest'",
            alias=str(alias)[:80],
        )
    return alias


def check_tags(tags: object) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict):
        raise InvalidName("tags must be an object of string keys and values")
    for k, v in tags.items():
        if not isinstance(k, str) or not _TAG_KEY.fullmatch(k):
            raise InvalidName(f"invalid tag key {str(k)[:80]!r}")
        if not isinstance(v, str) or len(v) > MAX_TAG_VALUE or any(ord(c) < 32 for c in v):
            raise InvalidName(f"invalid value for tag {k!r}")
    return dict(tags)


def parse_ref(ref: str) -> tuple[str, str | int | None]:
    """Split ``name``, ``name@3``, ``name@latest`` or ``name:champion``."""
    if "@" in ref:
        name, _, version = ref.rpartition("@")
        if version == "latest":
            return check_name(name), None
        if not version.isdigit():
            raise InvalidName(f"version must be a number, got {version!r}")
        return check_name(name), int(version)
    if ":" in ref:
        name, _, alias = ref.rpartition(":")
        return check_name(name), check_alias(alias)
    return check_name(ref), None


def check_path(path: object) -> str:
    """A relative POSIX path of a file inside a tree version."""
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise InvalidName("file path must be a non-empty string")
    if path.startswith("/") or "\\" in path or any(ord(c) < 32 for c in path):
        raise InvalidName(f"invalid file path {path[:200]!r}")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise InvalidName(f"invalid file path {path[:200]!r}")
    return path
