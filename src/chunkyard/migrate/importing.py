"""``chunkyard import SOURCE NAME``: a local directory (or file), an ``mlruns`` tree of
MLflow's file store, or a bucket prefix, into versions of NAME.

- A directory, file or bucket prefix becomes one version tagged ``import.source``. Run
  again, it makes no new version when the latest version came from the same source with
  the same content (the re-run sends no chunk either way).
- An ``mlruns`` tree: each live run, in start order, becomes one version (always a
  version of its own, even when its files equal the previous run's), tagged
  ``mlflow.run_id``, ``mlflow.experiment_id``, ``mlflow.experiment_name``,
  ``mlflow.run_name``, ``mlflow.status``, ``mlflow.start_time`` and ``import.source``
  (where its artifacts were). Runs whose id a version of NAME already carries are
  skipped: an interrupted import resumes where it stopped.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from unicodedata import normalize

from ..client.api import Client
from ..client.upload import file_mode, list_tree, version_dirs, version_paths, walk_tree
from ..errors import InvalidRequest, NotFound, SourceNotFound
from ..names import check_name, check_tags, check_tree_paths
from . import mlruns
from .buckets import Bucket, bucket_uri
from .staging import Staging, ahead, drop
from .writer import Progress, VersionWriter, batches, no_progress

#: objects of a bucket fetched at once within a batch of small ones
FETCHES = 8


def nfc(path: str) -> str:
    """A path as a version holds it: in Unicode NFC (keys written on macOS may not be)."""
    return normalize("NFC", path)


def import_source(
    client: Client,
    source: str,
    name: str,
    tags: dict[str, str] | None = None,
    experiments: list[str] | None = None,
    staging: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Import ``source`` into ``name``; returns what was made: ``kind``, ``versions``
    (each version's summary), ``skipped`` and the totals ``bytes_read`` (content read
    from the source) and ``bytes_uploaded`` (pack bytes sent to the gateway's store).
    ``progress(label, total)`` may return a callback that takes byte counts."""
    check_name(name)
    tags = check_tags(tags)
    if bucket_uri(source):
        kind = "bucket"
    else:
        root = Path(source)
        if not root.exists():
            raise InvalidRequest(f"{source} does not exist")
        kind = "mlruns" if mlruns.is_mlruns(root) else "directory"
    if experiments and kind != "mlruns":
        raise InvalidRequest("--experiment applies to mlruns trees only")
    with Importer(client, name, staging, progress) as imp:
        if kind == "mlruns":
            imp.runs(Path(source), tags, experiments)
        else:
            imp.one(source, kind, tags)
        return imp.summary(source, kind)


class Importer:
    def __init__(self, client: Client, name: str, staging: str | None, progress: Progress) -> None:
        self.c = client
        self.name = name
        self.progress = progress
        self.stack = ExitStack()
        self.staging = self.stack.enter_context(Staging(staging))
        self.buckets: dict[str, Bucket] = {}
        self.made: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def bucket(self, uri: str) -> Bucket:
        if uri not in self.buckets:
            self.buckets[uri] = self.stack.enter_context(Bucket(uri, self.c.transport))
        return self.buckets[uri]

    def summary(self, source: str, kind: str) -> dict[str, Any]:
        return {
            "source": source,
            "kind": kind,
            "name": self.name,
            "versions": self.made,
            "skipped": self.skipped,
            "bytes_read": sum(v["size"] for v in self.made),
            "bytes_uploaded": sum(v["bytes_uploaded"] for v in self.made),
        }

    # -- what a source holds -------------------------------------------------------
    def _files(self, location: str, under: str = "") -> list[tuple[str, int, Any]]:
        """``(path in the version, size, where)`` of every file at a location: a local
        directory (``where``: its path), a file, or a bucket prefix (``where``: the
        listed object)."""
        if bucket_uri(location):
            b = self.bucket(location)
            return [(under + nfc(path), info.size, (b, info)) for path, info in b.objects()]
        root = Path(location)
        if not root.exists():
            return []
        listed = list_tree(root) if root.is_dir() else [(root, root.name)]
        return [(under + rel, p.stat().st_size, p) for p, rel in version_paths(listed)]

    def _write(
        self,
        files: list[tuple[str, int, Any]],
        layout: str,
        tags: dict[str, str],
        new: bool,
        dirs: list[str] | None = None,
    ) -> dict[str, Any]:
        """One version of ``files`` (and the empty directories ``dirs``): local ones
        read in place, with their modes, bucket objects staged a batch ahead and
        dropped once packed (an object has no mode)."""
        check_tree_paths(path for path, _, _ in files)
        total = sum(n for _, n, _ in files)
        run = tags.get("mlflow.run_name") or tags.get("mlflow.run_id")
        advance = self.progress(f"import {self.name}" + (f" ({run})" if run else ""), total)

        def stage(batch: list[int]) -> list[tuple[Path, str, bool]]:
            """``(local file, path in the version, staged)`` of a batch."""
            remote = {i: self.staging.path() for i in batch if not isinstance(files[i][2], Path)}

            def get(i: int) -> None:
                bucket, info = files[i][2]
                bucket.fetch(info, remote[i])

            try:
                with ThreadPoolExecutor(FETCHES, thread_name_prefix="cy-import") as pool:
                    list(pool.map(get, remote))
            except BaseException:
                drop(remote.values())
                raise
            return [(remote.get(i, files[i][2]), files[i][0], i in remote) for i in batch]

        with VersionWriter(self.c.transport, self.name, advance) as w:
            for staged in ahead(stage, batches(list(range(len(files))), lambda i: files[i][1])):
                modes = {rel: file_mode(p) for p, rel, temp in staged if not temp}
                try:
                    w.add([(p, rel) for p, rel, _ in staged], modes)
                finally:
                    drop(p for p, _, temp in staged if temp)
            return w.commit(layout, tags, always_new=new, dirs=dirs or ())

    # -- the kinds of source ---------------------------------------------------------
    def one(self, source: str, kind: str, tags: dict[str, str]) -> None:
        """A directory, file or bucket prefix as one version."""
        where = source.rstrip("/") + "/" if kind == "bucket" else str(Path(source).resolve())
        files = self._files(where)
        if not files:
            raise SourceNotFound(f"nothing to import at {source}", uri=source)
        layout = "file" if kind == "directory" and Path(source).is_file() else "tree"
        dirs: list[str] = []
        if kind == "directory" and layout == "tree":  # a bucket has no directories
            found = walk_tree(Path(where))[1]
            dirs = version_dirs(found, [(p, rel) for rel, _, p in files])
        tags = {**tags, "import.source": where}
        try:
            latest = self.c.show(self.name)
        except NotFound:
            latest = None
        # identical content answers the latest version, but only if it came from here:
        # another source's version keeps its own import.source tag
        new = latest is None or latest["tags"].get("import.source") != where
        self.made.append(self._write(files, layout, tags, new, dirs))

    def runs(self, root: Path, tags: dict[str, str], experiments: list[str] | None) -> None:
        """Every live run of an mlruns tree not imported yet, in start order."""
        found = mlruns.find_runs(root, experiments)
        try:
            have = {
                v["tags"]["mlflow.run_id"]: v["version"]
                for v in self.c.versions(self.name)
                if "mlflow.run_id" in v["tags"]
            }
        except NotFound:
            have = {}
        for run in found:
            if run.run_id in have:
                self.skipped.append(
                    {"run_id": run.run_id, "version": have[run.run_id], "reason": "imported"}
                )
                continue
            files = [f for s in run.sources for f in self._files(s.location, s.under)]
            if not files:
                self.skipped.append({"run_id": run.run_id, "reason": "no artifacts"})
                continue
            run_tags = {
                **tags,
                "mlflow.run_id": run.run_id,
                "mlflow.experiment_id": run.experiment_id,
                "mlflow.experiment_name": run.experiment_name,
                "mlflow.run_name": run.run_name,
                "mlflow.status": run.status,
                "mlflow.start_time": str(run.start_time),
                "import.source": run.artifact_location,
            }
            v = self._write(files, "tree", run_tags, new=True)
            self.made.append({**v, "run_id": run.run_id})
            have[run.run_id] = v["version"]
