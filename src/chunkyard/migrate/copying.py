"""``chunkyard copy NAME[@VERSION] --to URL``: versions from one gateway to another,
sending only what the target lacks.

Per version, in order: every file whose file id and size a version of the name on the
target already holds (the target's latest, and each version copied so far) is named
by id, not fetched at all; the other files are fetched from the source a batch at a
time (verified as a pull verifies them), cut and hashed, and only the chunks the
target's dedup domain lacks are packed and sent (the push protocol's missing-chunk
query). Chunk ids alone cannot stand in for the bytes: the target asks for proof of
possession, which only the bytes give.

The copy keeps the source version's tags and adds ``copy.source`` =
``SOURCE_URL/NAME@N``; copying a name again skips the versions whose ``copy.source``
the target already has, so an interrupted copy resumes. Each copied version must have
the source version's digest (both gateways compute it from the chunk ids), or the copy
stops with an integrity error. A reference version is registered on the target with the
same URI (the target must allow it) and must pin the same objects.
"""

from __future__ import annotations

from typing import Any

from ..client.api import Client
from ..errors import DigestMismatch, NotFound
from ..names import check_name, parse_ref
from .staging import Staging, VersionFiles, ahead, drop
from .writer import Progress, VersionWriter, batches, no_progress

TAG = "copy.source"


def copy(
    source: Client,
    target: Client,
    ref: str,
    to_name: str | None = None,
    staging: str | None = None,
    progress: Progress = no_progress,
    aliases: bool = False,
) -> dict[str, Any]:
    """Copy ``ref`` (``NAME``: every version, in order; ``NAME@N`` or ``NAME:ALIAS``:
    that one) from ``source`` to ``target`` (as ``to_name``, default the same name).
    Returns ``copied`` (per version: ``source_version``, ``version``, ``files``,
    ``files_reused``, ``bytes_fetched``, ``bytes_uploaded``), ``skipped`` and totals.
    With ``aliases``, the target's aliases of the name then point where the source's
    do, at the copies (``aliases`` in the answer: those moved)."""
    name, wanted = parse_ref(ref)
    dest = check_name(to_name or name)
    if wanted is None and "@" not in ref and ":" not in ref:
        versions = source.versions(name)
    else:
        versions = [source.show(ref)]
    with Copier(source, target, name, dest, staging, progress) as cp:
        for v in versions:
            cp.one(v)
        moved = cp.aliases() if aliases else []
        return {**cp.summary(), "aliases": moved}


class Copier:
    def __init__(
        self,
        source: Client,
        target: Client,
        name: str,
        dest: str,
        staging: str | None,
        progress: Progress,
    ) -> None:
        self.src, self.dst = source, target
        self.name, self.dest = name, dest
        self.progress = progress
        self.staging = Staging(staging)
        self.copied: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        #: (file id, size) -> a version of ``dest`` on the target that holds such a file
        self.held: dict[tuple[str, int], int] = {}
        self.done: dict[str, int] = {}  # copy.source -> target version
        try:
            on_target = target.versions(dest)
        except NotFound:
            on_target = []
        for v in on_target:
            if TAG in v["tags"]:
                self.done[v["tags"][TAG]] = v["version"]
        if on_target:
            self._hold(on_target[-1]["version"])

    def __enter__(self) -> Copier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.staging.close()

    def _hold(self, version: int, files: list[dict] | None = None) -> None:
        """Remember the files of a stored target version, to name rather than send."""
        if files is None:
            v = self.dst.show(f"{self.dest}@{version}")
            if v["kind"] != "stored" or v.get("format", 2) < 3:
                return  # before format 3 a file's digest was not its id
            files = v["file_list"]
        for f in files:
            self.held[(f["digest"], f["size"])] = version

    def summary(self) -> dict[str, Any]:
        return {
            "source": f"{self.src.url}/{self.name}",
            "target": f"{self.dst.url}/{self.dest}",
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes_fetched": sum(v["bytes_fetched"] for v in self.copied),
            "bytes_uploaded": sum(v["bytes_uploaded"] for v in self.copied),
        }

    def aliases(self) -> list[dict[str, Any]]:
        """Point the target's aliases at the copies of the versions the source's
        aliases point at (those whose version was copied, now or before)."""
        moved = []
        have = {a["alias"]: a["version"] for a in self.dst.aliases(self.dest)} if self.done else {}
        for a in self.src.aliases(self.name):
            copied = self.done.get(f"{self.src.url}/{self.name}@{a['version']}")
            if copied is not None and have.get(a["alias"]) != copied:
                self.dst.set_alias(self.dest, a["alias"], copied)
                moved.append({"alias": a["alias"], "version": copied})
        return moved

    def one(self, summary: dict[str, Any]) -> None:
        number = summary["version"]
        origin = f"{self.src.url}/{self.name}@{number}"
        if origin in self.done:
            self.skipped.append({"source_version": number, "version": self.done[origin]})
            return
        v = self.src.show(f"{self.name}@{number}")
        tags = {**v["tags"], TAG: origin}
        made = self._reference(v, tags) if v["kind"] == "reference" else self._stored(v, tags)
        self.done[origin] = made["version"]
        self.copied.append({**made, "source_version": number})

    def _stored(self, v: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
        by_id = v.get("format", 2) >= 3  # else the digests are the uploaders' BLAKE3
        files = v["file_list"]
        fetch = [f for f in files if not (by_id and (f["digest"], f["size"]) in self.held)]
        advance = self.progress(f"copy {self.name}@{v['version']}", v["size"])
        reader = VersionFiles(self.src.transport, v)
        try:
            with VersionWriter(self.dst.transport, self.dest, advance) as w:
                for f in files:
                    held = self.held.get((f["digest"], f["size"])) if by_id else None
                    if held is not None:
                        w.reuse(f["path"], f, held)
                groups = batches(fetch, lambda f: f["size"])
                for got in ahead(lambda g: reader.fetch(g, self.staging), groups):
                    try:
                        w.add(
                            [(p, e["path"]) for e, p in got],
                            {e["path"]: e.get("mode") for e, _ in got},
                        )
                    finally:
                        drop(p for _, p in got)
                made = w.commit(v["layout"], tags, always_new=True, dirs=v.get("dirs") or ())
        finally:
            reader.close()
        if by_id and made["digest"] != v["digest"]:
            raise DigestMismatch(
                f"{self.dest}@{made['version']} on {self.dst.url} does not have the digest "
                f"of {self.name}@{v['version']} on {self.src.url}",
                expected=v["digest"],
                got=made["digest"],
            )
        if by_id:
            self._hold(made["version"], files)
        else:
            self._hold(made["version"])
        return {**made, "bytes_fetched": sum(f["size"] for f in fetch)}

    def _reference(self, v: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
        made = self.dst.ref(self.dest, v["source"], hash=v["digest_of"] == "content", tags=tags)
        if made["digest"] != v["digest"]:
            raise DigestMismatch(
                f"{v['source']} changed since {self.src.url} registered it: "
                f"{self.dest}@{made['version']} on {self.dst.url} pins other objects",
                expected=v["digest"],
                got=made["digest"],
            )
        return {**made, "files_reused": 0, "bytes_fetched": 0, "bytes_uploaded": 0}
