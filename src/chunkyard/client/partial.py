"""Parts of a version: a byte range of one file, and some of its files.

Tools that read through a file-like object (pandas, pyarrow, a checkpoint loader) read
a few ranges of a large file, not all of it: a range is rebuilt from the pack ranges
that hold it, read straight from the store with GETs signed for exactly those bytes,
each chunk checked against its id (a part of a file cannot be checked against the
file's id; the chunks it is made of are). A reference version's range is read through
the gateway's ``/content`` with a Range header, since its bytes sit at the source.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import zstandard

from ..errors import InvalidRequest, NotFound
from ..names import check_path
from ..packs import decode_run
from .download import Downloader, _local, _pull_stored, _units, _write_error, fetch_reference
from .transport import Transport


def find_file(v: dict[str, Any], path: str | None) -> dict[str, Any]:
    """The entry of ``path`` in version summary ``v`` (None: its only file)."""
    files = v.get("file_list") or []
    if path is None or (v["layout"] == "file" and path in ("", files[0]["path"])):
        if len(files) != 1:
            raise InvalidRequest(
                f"version {v['version']} of {v['name']!r} holds {len(files)} files: name one",
                name=v["name"],
            )
        return files[0]
    for f in files:
        if f["path"] == path:
            return f
    raise NotFound(
        f"version {v['version']} of {v['name']!r} has no file {path!r}", name=v["name"], path=path
    )


def read_range(
    transport: Transport, v: dict[str, Any], entry: dict[str, Any], start: int, end: int
) -> bytes:
    """Bytes ``[start, end)`` of file ``entry`` of version ``v`` (cut at the file's
    end), every chunk they come from verified."""
    end = min(end, entry["size"])
    if start < 0 or start >= end:
        return b""
    base = f"/v1/artifacts/{v['name']}/-/versions/{v['version']}"
    if v["kind"] == "reference":
        data = transport.call(
            "GET",
            f"{base}/content",
            params={"path": entry["path"]},
            headers={"range": f"bytes={start}-{end - 1}"},
            read=lambda resp: resp.read(),
        )
    else:
        data = _stored_range(transport, f"{base}/files/{entry['index']}/reconstruction", start, end)
    if len(data) != end - start:
        raise InvalidRequest(f"asked for {end - start} bytes of {entry['path']}, got {len(data)}")
    return data


def _stored_range(transport: Transport, plan: str, start: int, end: int) -> bytes:
    d = Downloader(transport)
    local = threading.local()

    def unit_bytes(job: tuple[dict, dict, dict]) -> bytes:
        page, url, unit = job
        a, b = unit["range"]
        data = d._read(page, url, unit, bytearray(b - a))
        dctx = getattr(local, "dctx", None) or zstandard.ZstdDecompressor()
        local.dctx = dctx
        return bytes(decode_run(unit["chunks"], data, unit["skip"], unit["take"], dctx))

    out = bytearray()
    pos: int | None = start
    try:
        while pos is not None and pos < end:
            page = transport.call("GET", plan, params={"start": pos, "length": end - pos})
            page["_self"] = plan
            for piece in d.pool.map(unit_bytes, list(_units(page))):
                out += piece
            pos = page["next"]
    finally:
        d.close()
    return bytes(out)


def pull_files(
    transport: Transport, v: dict[str, Any], targets: list[tuple[dict[str, Any], Path]]
) -> None:
    """Write files of version ``v`` (entries of its ``file_list``) to local paths, each
    verified whole and renamed into place, as a pull does."""
    base = f"/v1/artifacts/{v['name']}/-/versions/{v['version']}"
    try:
        if v["kind"] == "reference":  # each object from its source, pinned
            for entry, target in targets:
                fetch_reference(transport, base, entry, target)
        else:
            _pull_stored(transport, base, targets, None, v.get("format", 2))
    except OSError as exc:
        if exc.filename is None:
            raise
        raise _write_error(exc) from exc


def under(dest: str | os.PathLike, path: str) -> Path:
    """Where a file of a version goes below ``dest``: its path, checked, as this system's
    (nothing a gateway answers can land outside ``dest``)."""
    return Path(dest) / _local(check_path(path))
