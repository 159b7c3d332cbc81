"""The spool: pushes handed to a local directory and made later, so training code never
waits on the network (``Client.push(..., wait=False)``, ``chunkyard push --background``).

A job is a snapshot of the content (``snapshot``: a reflink where the file system can,
else a copy) with what to push it as. It is staged under ``tmp/``, fsynced, and renamed
into ``jobs/``: a crash leaves either a whole job or a staging directory that is thrown
away, never half a job taken as whole. A worker (a thread of the pushing process, or a
detached ``chunkyard queue drain``) holds the gateway's lock file, so no two workers
push one job, and pushes the jobs in the order they were spooled: a job waits while an
earlier one of the same name is pending, so version numbers follow spool order.

An attempt is one push under the transport's retry policy. If it fails because the
gateway or store is out of reach, the job stays pending and is tried again with backoff
(doubling up to ``CHUNKYARD_SPOOL_BACKOFF`` seconds) for as long as it takes; a refusal
that no retry changes (bad name, no permission, 401/403/404/409/422) moves it to
``failed/`` with the error, as does any other error five attempts in a row. Before a
push commits, the session and the commit are written into the job, so an attempt
after a crash sends that same commit again, which the gateway answers with the version
it made the first time: a job is never committed twice. A committed job's snapshot is
deleted at once; its record stays in ``done/`` for a day.

Layout (FORMAT.md, "Client spool")::

    <spool>/tmp/<id>/            a job being written (tmp/<id>.lock held by the writer)
    <spool>/jobs/<id>/job.json   pending: what to push (written once)
                     /state.json attempts, last error, the recorded commit
                     /data/…     the snapshot: one file, or a tree
    <spool>/failed/<id>/         the same, refused for good (retry or drop it)
    <spool>/done/<id>/           job.json and state.json with the version, no data
    <spool>/trash/<id>/          a dropped job being deleted
    <spool>/locks/<gateway>.lock held by the worker of that gateway; holds its pid
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    CatalogError,
    ChunkyardError,
    Conflict,
    Forbidden,
    GatewayUnavailable,
    IntegrityFailure,
    InvalidRequest,
    NotFound,
    PackCorrupt,
    RequestTimeout,
    SessionNotFound,
    StoreError,
    Unauthorized,
    from_json,
)
from ..names import check_name, check_tags
from . import upload
from .snapshot import fsync_dir, snapshot_file
from .transport import RETRY_STATUS, RetryPolicy, Transport

log = logging.getLogger("chunkyard.spool")

#: the version of the spool's layout and job files
SPOOL_FORMAT = 1
#: an error that is neither an outage nor a refusal fails the job after this many tries
OTHER_ERRORS_MAX = 5
#: seconds a finished job's record stays in done/ (for handles and ``queue``)
DONE_KEEP = 24 * 3600
#: default ceiling of the wait between two attempts of a job, seconds
BACKOFF_MAX = 60.0
BACKOFF_BASE = 1.0


def default_dir() -> Path:
    """``CHUNKYARD_SPOOL_DIR``, else the user's cache directory: ``$XDG_CACHE_HOME`` or
    ``~/.cache`` (Linux), ``~/Library/Caches`` (macOS), ``%LOCALAPPDATA%`` (Windows)."""
    given = os.environ.get("CHUNKYARD_SPOOL_DIR")
    if given:
        return Path(given).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "chunkyard" / "spool"


def backoff_max() -> float:
    raw = os.environ.get("CHUNKYARD_SPOOL_BACKOFF", "").strip()
    try:
        value = float(raw) if raw else BACKOFF_MAX
    except ValueError:
        raise InvalidRequest(f"CHUNKYARD_SPOOL_BACKOFF={raw!r} is not a number") from None
    if not value > 0:
        raise InvalidRequest("CHUNKYARD_SPOOL_BACKOFF must be positive")
    return value


_last_id = 0
_id_lock = threading.Lock()


def new_job_id() -> str:
    """``YYYYmmddTHHMMSS.uuuuuu-xxxxxx`` (UTC): sorts in the order jobs are spooled
    (strictly, within one process), readable, unique."""
    global _last_id
    with _id_lock:
        us = max(time.time_ns() // 1000, _last_id + 1)
        _last_id = us
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(us // 1_000_000))
    return f"{stamp}.{us % 1_000_000:06d}-{secrets.token_hex(3)}"


def _write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically and durably: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _error_json(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ChunkyardError):
        return {**exc.to_json()["error"], "status": exc.status}
    return {"code": "error", "message": f"{type(exc).__name__}: {exc}", "status": 500}


def error_of(record: dict[str, Any]) -> ChunkyardError:
    """The typed error a job's state recorded."""
    body = {k: v for k, v in record.items() if k != "status"}
    return from_json(int(record.get("status", 500)), {"error": body})


def classify(exc: BaseException) -> str:
    """``outage`` (tried again for as long as it takes), ``refused`` (the job fails
    now: trying again changes nothing) or ``other`` (tried a few times)."""
    if isinstance(exc, GatewayUnavailable | StoreError | CatalogError | RequestTimeout):
        return "outage"
    if isinstance(exc, SessionNotFound | PackCorrupt):  # expired; damaged on the way
        return "other"
    if isinstance(exc, InvalidRequest | Unauthorized | Forbidden | NotFound | Conflict):
        return "refused"
    if isinstance(exc, IntegrityFailure):
        return "refused"
    if isinstance(exc, ChunkyardError) and exc.status in RETRY_STATUS:
        return "outage"
    return "other"


@dataclass
class Job:
    """One spooled push: ``meta`` (job.json, written once) and ``state`` (state.json)."""

    dir: Path
    meta: dict[str, Any]
    state: dict[str, Any]

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def url(self) -> str:
        return self.meta["url"]

    @property
    def data(self) -> Path:
        """What to push: the snapshot file (layout ``file``) or directory (``tree``)."""
        data = self.dir / "data"
        return data / self.meta["entry"] if self.meta["layout"] == "file" else data

    def save(self) -> None:
        _write_json(self.dir / "state.json", self.state)

    def describe(self, where: str) -> dict[str, Any]:
        """What ``chunkyard queue`` shows of it."""
        m, s = self.meta, self.state
        out = {
            "id": m["id"],
            "state": where,
            "name": m["name"],
            "gateway": m["url"],
            "source": m["source"],
            "files": m["files"],
            "size": m["size"],
            "snapshot": m["snapshot"],
            "tags": m["tags"],
            "created_at": m["created_at"],
            "attempts": s.get("attempts", 0),
            "last_try": s.get("last_try"),
            "next_try": s.get("next_try"),
            "last_error": s.get("last_error"),
        }
        if "result" in s:
            out["version"] = s["result"].get("version")
        return out


class Spool:
    """A spool directory (default :func:`default_dir`); safe to share between
    processes and threads."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if os.name != "posix":
            raise InvalidRequest("the spool needs POSIX file locks (Linux, macOS)")
        self.root = Path(root).expanduser() if root is not None else default_dir()
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(mode=0o700, exist_ok=True)  # snapshots of private checkpoints
        for sub in ("tmp", "jobs", "failed", "done", "locks", "trash"):
            (self.root / sub).mkdir(exist_ok=True)

    # -- spooling -------------------------------------------------------------------
    def add(
        self, path: str | os.PathLike, name: str, url: str, tags: dict[str, str] | None = None
    ) -> Job:
        """Snapshot ``path`` (a file or a directory) and spool its push as ``name`` to
        the gateway at ``url``; returns the pending job. Everything a push would refuse
        about the content itself (a name, symlinks, paths) is refused here, at once."""
        check_name(name)
        tags = check_tags(tags)
        root = Path(path)
        if not root.exists():
            raise InvalidRequest(f"{root} does not exist")
        layout = "tree" if root.is_dir() else "file"
        entries, dirs = upload.walk_tree(root) if layout == "tree" else ([(root, root.name)], [])
        upload.version_dirs(dirs, upload.version_paths(entries))
        job_id = new_job_id()
        stage = self.root / "tmp" / job_id
        # held before the staging directory exists and until it is renamed away: while
        # it is held, cleanup leaves the directory alone
        lock = _Flock(self.root / "tmp" / f"{job_id}.lock", block=True)
        lock.acquire()
        try:
            stage.mkdir()
            try:
                meta = self._stage(stage, job_id, root, layout, entries, name, url, tags, dirs)
                os.rename(stage, self.root / "jobs" / job_id)
                fsync_dir(self.root / "jobs")
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock.path)
            lock.release()
        return Job(self.root / "jobs" / job_id, meta, {})

    def _stage(
        self,
        stage: Path,
        job_id: str,
        root: Path,
        layout: str,
        entries: list[tuple[Path, str]],
        name: str,
        url: str,
        tags: dict[str, str],
        empty: list[str] | None = None,
    ) -> dict[str, Any]:
        """``empty``: the tree's directories, made in the snapshot too (the push finds
        the empty ones there)."""
        data = stage / "data"
        data.mkdir()
        how, size, dirs = set(), 0, {data}
        for rel in empty or ():
            (data / rel).mkdir(parents=True, exist_ok=True)
            dirs.update([data / rel, *(data / rel).parents])
        for src, rel in entries:
            dst = data / rel
            if dst.parent not in dirs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dirs.update([dst.parent, *dst.parent.parents])
            method, n = snapshot_file(src, dst)
            how.add(method)
            size += n
        for d in sorted(d for d in dirs if d.is_relative_to(data)):
            fsync_dir(d)
        meta = {
            "format": SPOOL_FORMAT,
            "id": job_id,
            "url": url,
            "name": name,
            "tags": tags,
            "layout": layout,
            "entry": root.name if layout == "file" else "",
            "source": str(root.resolve()),
            "files": len(entries),
            "size": size,
            "snapshot": "+".join(sorted(how)) or "none",
            "created_at": time.time(),
            "pid": os.getpid(),
        }
        _write_json(stage / "job.json", meta)
        fsync_dir(stage)
        return meta

    # -- reading --------------------------------------------------------------------
    def _load(self, where: str, job_id: str) -> Job | None:
        d = self.root / where / job_id
        meta = _read_json(d / "job.json")
        if meta is None or meta.get("format") != SPOOL_FORMAT:
            return None
        return Job(d, meta, _read_json(d / "state.json") or {})

    def _list(self, where: str, url: str | None = None) -> list[Job]:
        out = []
        for job_id in sorted(os.listdir(self.root / where)):
            job = self._load(where, job_id)
            if job is not None and (url is None or job.url == url):
                out.append(job)
        return out

    def pending(self, url: str | None = None) -> list[Job]:
        """Jobs waiting to be pushed (of the gateway at ``url``), in spool order."""
        return self._list("jobs", url)

    def failed(self, url: str | None = None) -> list[Job]:
        return self._list("failed", url)

    def find(self, job_id: str) -> tuple[str, Job | None]:
        """Where job ``job_id`` is: ``pending``, ``failed``, ``done`` or ``unknown``
        (never spooled, or done more than a day ago)."""
        for where, state in (("jobs", "pending"), ("done", "done"), ("failed", "failed")):
            job = self._load(where, job_id)
            if job is not None:
                return state, job
        return "unknown", None

    # -- moving jobs ----------------------------------------------------------------
    def finish(self, job: Job, result: dict[str, Any]) -> None:
        """The job's version exists: record it, free the snapshot, file it as done."""
        job.state["result"] = result
        job.state["done_at"] = time.time()
        job.state.pop("commit", None)
        job.save()
        shutil.rmtree(job.dir / "data", ignore_errors=True)
        os.rename(job.dir, self.root / "done" / job.id)
        job.dir = self.root / "done" / job.id

    def fail(self, job: Job) -> None:
        job.state["failed_at"] = time.time()
        job.save()
        os.rename(job.dir, self.root / "failed" / job.id)
        job.dir = self.root / "failed" / job.id

    def retry(self, ids: list[str]) -> list[str]:
        """Put failed jobs back in line (their spool order is kept); returns their ids."""
        out = []
        for job in self._pick_failed(ids):
            job.state.update(next_try=None, errors=0, retried_at=time.time())
            job.save()
            os.rename(job.dir, self.root / "jobs" / job.id)
            out.append(job.id)
        return out

    def drop(self, ids: list[str]) -> list[str]:
        """Delete failed jobs and their snapshots; returns their ids."""
        out = []
        for job in self._pick_failed(ids):
            gone = self.root / "trash" / job.id
            os.rename(job.dir, gone)
            shutil.rmtree(gone, ignore_errors=True)
            out.append(job.id)
        return out

    def _pick_failed(self, ids: list[str]) -> list[Job]:
        """The failed jobs named (all of them for an empty list); a name that is no
        failed job is refused before anything moves."""
        failed = {j.id: j for j in self.failed()}
        if not ids:
            return list(failed.values())
        unknown = [i for i in ids if i not in failed]
        if unknown:
            raise InvalidRequest(f"no failed job {', '.join(unknown)} in {self.root}")
        return [failed[i] for i in ids]

    def clean(self) -> None:
        """Throw away what crashes left: staging directories whose writer is gone,
        half-deleted jobs, and done records older than a day."""
        now = time.time()
        tmp = self.root / "tmp"
        for job_id in {e.name.removesuffix(".lock") for e in tmp.iterdir()}:
            lock = _Flock(tmp / f"{job_id}.lock", block=False, create=False)
            try:
                if not lock.acquire():
                    continue  # its writer is at work
            except FileNotFoundError:  # renamed into jobs/ and unlocked meanwhile
                shutil.rmtree(tmp / job_id, ignore_errors=True)
                continue
            try:
                shutil.rmtree(tmp / job_id, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock.path)
            finally:
                lock.release()
        for d in (self.root / "trash").iterdir():
            shutil.rmtree(d, ignore_errors=True)
        for d in (self.root / "done").iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - d.stat().st_mtime > DONE_KEEP:
                    shutil.rmtree(d, ignore_errors=True)

    # -- workers --------------------------------------------------------------------
    def lock_path(self, url: str) -> Path:
        return self.root / "locks" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.lock"

    def worker_pid(self, url: str) -> int | None:
        """The pid of the process draining ``url``'s jobs now, if one is."""
        try:
            pid = int(self.lock_path(url).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return None
        if pid <= 0:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid


#: lock files this process holds: a forked child closes its copies, so that the lock
#: goes when this process lets go of it (a DataLoader's workers may outlive that)
_held: set[int] = set()
if hasattr(os, "register_at_fork"):

    def _close_held() -> None:
        for fd in list(_held):
            with contextlib.suppress(OSError):
                os.close(fd)
        _held.clear()

    os.register_at_fork(after_in_child=_close_held)


class _Flock:
    """``fcntl.flock`` on a file, exclusive; ``with`` yields whether it was taken (with
    ``block``, always). Closing the file releases it, as the end of the process does."""

    def __init__(
        self, path: Path, block: bool, note_pid: bool = False, create: bool = True
    ) -> None:
        self.path, self.block, self.note_pid, self.create = path, block, note_pid, create
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock (FileNotFoundError if the file is missing and not ``create``)."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if self.create else 0), 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.block else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            try:  # still the file at that path, not one a cleanup unlinked meanwhile?
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
            if not self.create:
                raise FileNotFoundError(self.path)
        if self.note_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        _held.add(fd)
        return True

    def release(self) -> None:
        if self.fd is not None:
            if self.note_pid:
                os.ftruncate(self.fd, 0)
            _held.discard(self.fd)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


Report = Callable[[str, Job, str], None]


def log_report(event: str, job: Job, text: str) -> None:
    """The in-process worker's default report: the ``chunkyard.spool`` logger."""
    level = logging.WARNING if event in ("waiting", "failed") else logging.INFO
    log.log(level, "%s %s (job %s): %s", event, job.name, job.id, text)


class Worker:
    """Pushes a spool's jobs for one gateway (``transport``), in spool order."""

    def __init__(self, spool: Spool, transport: Transport, report: Report = log_report) -> None:
        self.spool, self.t, self.report = spool, transport, report
        self.url = transport.url
        self.backoff = backoff_max()

    def drain(
        self,
        stop: threading.Event | None = None,
        wake: threading.Event | None = None,
        block: bool = False,
        once: bool = False,
    ) -> bool:
        """Push pending jobs until none is left (``once``: try each once). Without the
        lock (another worker holds it; with ``block``, after waiting for it) returns
        False at once: that worker looks for new jobs after it lets go of the lock, so
        none is left behind. ``stop`` ends it between steps; ``wake`` cuts a wait
        short (a new job)."""
        stop = stop or threading.Event()
        while True:
            lock = _Flock(self.spool.lock_path(self.url), block=block, note_pid=True)
            if not lock.acquire():
                return False
            try:
                self.spool.clean()
                self._drain_locked(stop, wake, once)
            finally:
                lock.release()
            # a job spooled while a worker that could not take the lock gave up: ours
            if once or stop.is_set() or not self.spool.pending(self.url):
                return True
            block = False

    def _drain_locked(
        self, stop: threading.Event, wake: threading.Event | None, once: bool
    ) -> None:
        while not stop.is_set():
            found, next_at = self._pass(stop)
            if not found or once:
                return
            if next_at is None:  # every job was tried: look again at once
                continue
            delay = max(0.0, next_at - time.time())
            if wake is not None:
                if wake.wait(delay):
                    wake.clear()
            else:
                stop.wait(delay)

    def _pass(self, stop: threading.Event) -> tuple[bool, float | None]:
        """Try each pending job that is due and has no earlier job of its name still
        pending. Returns whether any job was pending, and when the next is due (None:
        one may be due now)."""
        jobs = self.spool.pending(self.url)
        waiting: set[str] = set()
        next_at: float | None = None
        for job in jobs:
            if stop.is_set():
                break
            if job.name in waiting:
                continue
            due = job.state.get("next_try") or 0.0
            if due <= time.time() and self._attempt(job):
                continue
            waiting.add(job.name)  # later jobs of this name wait for this one
            due = job.state.get("next_try") or 0.0
            next_at = due if next_at is None else min(next_at, due)
        return bool(jobs), next_at

    def _attempt(self, job: Job) -> bool:
        """One try of a job; True when it is done with (committed or failed)."""
        if "result" in job.state:  # committed; the worker died before filing it
            self.spool.finish(job, job.state["result"])
            return True
        job.state["attempts"] = job.state.get("attempts", 0) + 1
        job.state["last_try"] = time.time()
        job.save()
        try:
            result = self._push(job)
        except Exception as exc:
            return self._failed(job, exc)
        self.spool.finish(job, result)
        self.report("committed", job, f"{result['name']}@{result['version']}")
        return True

    def _push(self, job: Job) -> dict[str, Any]:
        meta, state = job.meta, job.state
        facts = {"size": meta["size"], "files": meta["files"], "job": job.id}
        recorded = state.get("commit")
        if recorded:  # an earlier attempt may have committed: the same commit again
            try:
                version = self.t.call(
                    "POST", f"/v1/sessions/{recorded['session']}/commit", json=recorded["body"]
                )
                return {**version, **facts}
            except SessionNotFound:  # expired before it was committed: push afresh
                state.pop("commit")
                job.save()

        def record(session: str, body: dict[str, Any]) -> None:
            state["commit"] = {"session": session, "body": body}
            job.save()

        summary = upload.push(self.t, job.data, job.name, meta["tags"], before_commit=record)
        return {**summary, **facts}

    def _failed(self, job: Job, exc: Exception) -> bool:
        kind = classify(exc)
        state = job.state
        state["last_error"] = _error_json(exc)
        state["errors"] = 0 if kind == "outage" else state.get("errors", 0) + 1
        if kind == "refused" or state["errors"] >= OTHER_ERRORS_MAX:
            self.spool.fail(job)
            self.report("failed", job, f"{state['last_error']['message']}")
            return True
        attempts = state.get("attempts", 1)
        delay = min(self.backoff, BACKOFF_BASE * 2.0 ** min(attempts - 1, 30))
        state["next_try"] = time.time() + delay * (0.5 + random.random() / 2)
        job.save()
        self.report(
            "waiting",
            job,
            f"{state['last_error']['message']}; attempt {attempts} failed, "
            f"next in {state['next_try'] - time.time():.0f} s",
        )
        return False


class PushHandle:
    """A push spooled by ``Client.push(..., wait=False)``: its job ``id``, where it
    stands (``state()``), and :meth:`wait` for its version."""

    def __init__(self, spool: Spool, job: Job) -> None:
        self.spool = spool
        self.id = job.id
        self.name = job.name

    def __repr__(self) -> str:
        return f"<PushHandle {self.name} job {self.id}: {self.state()}>"

    def state(self) -> str:
        """``pending``, ``done``, ``failed`` or ``unknown`` (its record expired)."""
        return self.spool.find(self.id)[0]

    def done(self) -> bool:
        return self.state() in ("done", "failed")

    def wait(self, timeout: float | None = None, poll: float = 0.05) -> dict[str, Any]:
        """The version's summary once it is committed; raises the job's error if it
        failed for good, TimeoutError if it is still pending after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            where, job = self.spool.find(self.id)
            if where == "done" and job is not None:
                return job.state["result"]
            if where == "failed" and job is not None:
                raise error_of(job.state.get("last_error") or {"message": "failed"})
            if where == "unknown":
                raise InvalidRequest(f"spool job {self.id} is unknown in {self.spool.root}")
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"spool job {self.id} ({self.name}) is still pending")
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)


class Background:
    """The worker thread of one ``Client``: spools pushes and drains the spool for
    that client's gateway. When the client closes with jobs pending, a detached
    ``chunkyard queue drain`` takes over once this process has exited."""

    #: seconds between looks while another process holds the gateway's lock
    POLL = 2.0

    def __init__(
        self, url: str, token: str | None, retry: RetryPolicy, root: str | os.PathLike | None
    ) -> None:
        self.spool = Spool(root)
        self.transport = Transport(url, retry=retry, token=token)
        self.url = self.transport.url
        self.worker = Worker(self.spool, self.transport)
        self.stop, self.wake = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._run, name="cy-spool", daemon=True)
        self.thread.start()
        self._closed = False
        ref = weakref.ref(self)
        self._atexit = lambda: (b := ref()) is not None and b.close()
        import atexit

        atexit.register(self._atexit)

    def push(self, path: str | os.PathLike, name: str, tags: dict[str, str] | None) -> PushHandle:
        job = self.spool.add(path, name, self.url, tags)
        self.wake.set()
        return PushHandle(self.spool, job)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.worker.drain(self.stop, self.wake)
            except Exception:  # a bug or a broken spool: say so, keep the thread alive
                log.exception("spool worker for %s", self.url)
            if self.stop.is_set():
                return
            # nothing left, or another process drains: look again when woken or soon
            pending = bool(self.spool.pending(self.url))
            if self.wake.wait(self.POLL if pending else None):
                self.wake.clear()

    def close(self) -> None:
        """Stop the thread (between steps; not waited for) and hand pending jobs to a
        detached worker, which starts pushing them when this process has let go."""
        if self._closed:
            return
        self._closed = True
        import atexit

        atexit.unregister(self._atexit)
        self.stop.set()
        self.wake.set()
        if self.spool.pending(self.url):
            spawn_worker(self.spool, self.url, self.transport.token, wait_for_lock=True)
        self.transport.close()


def spawn_worker(
    spool: Spool, url: str, token: str | None = None, wait_for_lock: bool = False
) -> int:
    """Start a detached ``chunkyard queue drain`` for ``url``'s jobs (output appended
    to ``<spool>/worker.log``); returns its pid. It outlives this process."""
    env = dict(os.environ)
    env.update(CHUNKYARD_SPOOL_DIR=str(spool.root), CHUNKYARD_URL=url)
    if token:
        env["CHUNKYARD_TOKEN"] = token
    argv = [sys.executable, "-m", "chunkyard.cli", "queue", "drain", "--detached"]
    if wait_for_lock:
        argv.append("--wait-for-lock")
    logfile = spool.root / "worker.log"
    with contextlib.suppress(FileNotFoundError):
        if logfile.stat().st_size > 1 << 20:
            os.replace(logfile, logfile.with_suffix(".log.1"))
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid
