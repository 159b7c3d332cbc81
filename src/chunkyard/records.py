"""Metadata records: the store's own description of the catalog (FORMAT.md, "Metadata
objects"), so that a lost catalog can be rebuilt from the store alone.

Format only: records in, bytes and keys out, and back; no I/O. Every record is a zstd
frame of one JSON object whose first fields are ``record`` and ``record_format``, under
a key that holds the BLAKE3 of that JSON (a key names its content, so it is only ever
written with the same bytes).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import blake3
import msgspec
import zstandard

from .errors import InvalidName, RecordInvalid
from .names import check_name

#: the record layout this code writes and reads
RECORD_FORMAT = 1
PREFIX = "meta/"
SUFFIX = ".json.zst"
KINDS = ("version", "tags", "alias", "removed")
#: zstd level of records: manifests compress well at any level, and records are written
#: once per commit, so the cheap end
LEVEL = 3

_KEY = re.compile(
    r"^meta/(?P<name>.+)/-/(?P<folder>versions|tags|aliases|removed)/"
    r"(?:(?P<number>[0-9]{1,18})\.)?(?P<hash>[0-9a-f]{64})\.json\.zst$"
)
_FOLDER = {"version": "versions", "tags": "tags", "alias": "aliases", "removed": "removed"}
_KIND = {v: k for k, v in _FOLDER.items()}
_NUMBERED = ("version", "tags")


@dataclass(frozen=True)
class Encoded:
    key: str
    data: bytes  # the zstd frame to store


@dataclass(frozen=True)
class KeyInfo:
    """What a record's key says about it."""

    kind: str
    name: str
    number: int | None  # version and tags records
    hash: str


def artifact_folder(name: str) -> str:
    """Where an artifact's records live (``meta/<name>/-/``)."""
    return f"{PREFIX}{name}/-/"


def folder(name: str, kind: str) -> str:
    return f"{artifact_folder(name)}{_FOLDER[kind]}/"


def encode(record: dict[str, Any]) -> Encoded:
    """A record (its fields in the order FORMAT.md gives, ``record`` and
    ``record_format`` first) as its key and stored bytes."""
    kind = record["record"]
    if kind not in KINDS or record.get("record_format") != RECORD_FORMAT:
        raise ValueError(f"not a record of format {RECORD_FORMAT}: {kind!r}")
    text = msgspec.json.encode(record)
    digest = blake3.blake3(text).hexdigest()
    number = f"{record['number']}." if kind in _NUMBERED else ""
    key = f"{folder(record['name'], kind)}{number}{digest}{SUFFIX}"
    return Encoded(key, _compressor().compress(text))


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    """One per thread (a compressor is not safe to share; making one per record cost
    more than compressing a small one)."""
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return c


def parse_key(key: str) -> KeyInfo | None:
    """What a key under ``meta/`` says, or None for a key that is no record's."""
    m = _KEY.match(key)
    if m is None:
        return None
    kind = _KIND[m["folder"]]
    if (m["number"] is None) == (kind in _NUMBERED):
        return None
    try:
        check_name(m["name"])
    except InvalidName:
        return None
    number = int(m["number"]) if m["number"] is not None else None
    return KeyInfo(kind, m["name"], number, m["hash"])


#: a record is at most this large once decompressed (a tree of a million files)
MAX_RECORD = 1 << 30


def decode(key: str, data: bytes) -> dict[str, Any]:
    """The record stored under ``key``, checked against its key: the hash, the kind,
    the name and number, and the record format."""
    info = parse_key(key)
    if info is None:
        raise RecordInvalid(f"{key} is not the key of a record", key=key)
    try:
        text = zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_RECORD)
    except zstandard.ZstdError as exc:
        raise RecordInvalid(f"record {key} is not a zstd frame: {exc}", key=key) from exc
    if blake3.blake3(text).hexdigest() != info.hash:
        raise RecordInvalid(f"record {key} does not hash to its name", key=key)
    try:
        record = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise RecordInvalid(f"record {key} is not JSON: {exc}", key=key) from exc
    if not isinstance(record, dict) or record.get("record") != info.kind:
        raise RecordInvalid(f"record {key} is not a {info.kind} record", key=key)
    if record.get("record_format") != RECORD_FORMAT:
        raise RecordInvalid(
            f"record {key} has record format {record.get('record_format')!r}, which this "
            f"chunkyard does not know (it reads {RECORD_FORMAT}): upgrade chunkyard",
            key=key,
        )
    if record.get("name") != info.name or (
        info.number is not None and record.get("number") != info.number
    ):
        raise RecordInvalid(f"record {key} names another version than its key", key=key)
    return record


# -- the records ----------------------------------------------------------------------
def version_record(
    name: str,
    number: int,
    kind: str,
    layout: str,
    digest: str,
    digest_of: str,
    size: int,
    created_at: float,
    format: int,
    source: str | None,
    dedup_domain_depth: int,
    files: list[dict[str, Any]],
    dirs: list[str] | None = None,
) -> dict[str, Any]:
    """``files``: from :func:`stored_file` or :func:`reference_file`, in file order;
    ``dirs``: a tree's empty directories, a field only when there are any (a version
    without them has the record it always had)."""
    out = {
        "record": "version",
        "record_format": RECORD_FORMAT,
        "name": name,
        "number": number,
        "kind": kind,
        "layout": layout,
        "digest": digest,
        "digest_of": digest_of,
        "size": size,
        "created_at": created_at,
        "format": format,
        "source": source,
        "dedup_domain_depth": dedup_domain_depth,
        "files": files,
    }
    if dirs:
        out["dirs"] = dirs
    return out


def stored_file(
    path: str, size: int, digest: str, b3sum: str, manifest: str, mode: int | None = None
) -> dict[str, Any]:
    """A stored file; ``manifest`` the catalog's JSON text of its terms, kept as it is
    (compact JSON, FORMAT.md "Manifests"): the same text always gives the same record.
    ``mode``: a tree file's permission bits, a field only where the version recorded
    them (older versions keep the records they had)."""
    out: dict[str, Any] = {"path": path, "size": size, "digest": digest, "b3sum": b3sum}
    if mode is not None:
        out["mode"] = mode
    out["manifest"] = msgspec.Raw(manifest.encode())
    return out


def reference_file(
    path: str,
    size: int,
    digest: str,
    b3sum: str,
    uri: str,
    pin_size: int,
    etag: str,
    version_id: str | None,
    last_modified: str | None,
    weak_etag: bool,
) -> dict[str, Any]:
    return {
        "path": path,
        "size": size,
        "digest": digest,
        "b3sum": b3sum,
        "pin": {
            "uri": uri,
            "size": pin_size,
            "etag": etag,
            "version_id": version_id,
            "last_modified": last_modified,
            "weak_etag": weak_etag,
        },
    }


def tags_record(name: str, number: int, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "record": "tags",
        "record_format": RECORD_FORMAT,
        "name": name,
        "number": number,
        "tags": dict(sorted(tags.items())),
    }


def alias_record(
    name: str,
    alias: str,
    seq: int,
    version: int | None,
    previous: int | None,
    moved_at: float,
    moved_by: str | None,
) -> dict[str, Any]:
    return {
        "record": "alias",
        "record_format": RECORD_FORMAT,
        "name": name,
        "alias": alias,
        "seq": seq,
        "version": version,
        "previous": previous,
        "moved_at": moved_at,
        "moved_by": moved_by,
    }


def removed_record(
    name: str, first: int, last: int, removed_at: float, removed_by: str | None
) -> dict[str, Any]:
    return {
        "record": "removed",
        "record_format": RECORD_FORMAT,
        "name": name,
        "first": first,
        "last": last,
        "removed_at": removed_at,
        "removed_by": removed_by,
    }
