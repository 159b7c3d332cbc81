"""``chunkyard export NAME[@VERSION|:ALIAS] DEST``: a version out of chunkyard, to a
local directory (a pull) or to a bucket prefix (``s3://``, ``gs://``, ``az://``),
written with the caller's own credentials (:mod:`.buckets`).

To a bucket, files are fetched a batch ahead into staging (verified as a pull verifies
them), each written to ``DEST/<its path>`` and dropped. An object already there with the
file's size, written after the version was made, is taken for an earlier export's and
left alone (the size-and-time check of rsync), so an interrupted export resumes;
``overwrite`` writes every file again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..client import download
from ..client.api import Client
from ..names import parse_ref
from .buckets import Bucket, bucket_uri
from .staging import Staging, VersionFiles, ahead, drop
from .writer import Progress, batches, no_progress

#: seconds: stores keep last-modified times to the second (Azure, S3 listings)
CLOCK_SLACK = 1.0


def export(
    client: Client,
    ref: str,
    dest: str,
    staging: str | None = None,
    overwrite: bool = False,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Write version ``ref`` to ``dest``; returns the version's summary with
    ``destination``, ``files_written``, ``files_skipped`` and ``bytes_written``."""
    if not bucket_uri(dest):
        name, version = parse_ref(ref)

        def bars(total: int) -> Callable[[int], None] | None:
            return progress(f"export {ref}", total)

        r = download.pull(client.transport, name, version, dest, bars)
        r.pop("file_list", None)
        return {
            **r,
            "destination": r["path"],
            "files_written": r["files"],
            "files_skipped": 0,
            "bytes_written": r["size"],
        }
    v = client.show(ref)
    with Bucket(dest, client.transport) as bucket, Staging(staging) as stage:
        files = v["file_list"]
        if v["layout"] == "file":  # one file: under the prefix by its own name
            files = [{**files[0], "path": files[0]["path"].rsplit("/", 1)[-1]}]
        there = {} if overwrite else bucket.existing()
        todo = [
            f
            for f in files
            if not (
                f["path"] in there
                and there[f["path"]][0] == f["size"]
                and (there[f["path"]][1] or 0) >= v["created_at"] - CLOCK_SLACK
            )
        ]
        advance = progress(f"export {v['name']}@{v['version']}", sum(f["size"] for f in todo))
        reader = VersionFiles(client.transport, v)
        try:
            groups = batches(todo, lambda f: f["size"])
            for got in ahead(lambda g: reader.fetch(g, stage), groups):
                try:
                    for entry, path in got:
                        bucket.write(entry["path"], path, advance)
                finally:
                    drop(p for _, p in got)
        finally:
            reader.close()
        v.pop("file_list", None)
        return {
            **v,
            "destination": str(bucket),
            "files_written": len(todo),
            "files_skipped": len(files) - len(todo),
            "bytes_written": sum(f["size"] for f in todo),
        }
