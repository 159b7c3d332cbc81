"""What an interrupted push or pull leaves on disk, so that running it again resumes.

Neither is part of the repository format: both are the client's own, and losing them
costs only bytes sent or fetched again.

- **Push.** A record naming the upload session a push opened, kept in the state
  directory (``CHUNKYARD_STATE_DIR``, else ``$XDG_CACHE_HOME/chunkyard``, else
  ``~/.cache/chunkyard``) under a key made of the gateway's URL, the artifact's name
  and every file's path, size and modification time. A push of the same files to the
  same name asks the gateway for that session again and goes on in it: packing is
  deterministic, so it rebuilds the same packs, and the gateway answers which of them
  (and which parts of them) the store holds already. Files that changed since make
  another key; a session that expired or was committed is replaced by a new one. The
  record goes once the commit answered, or once the gateway refused the push outright.
- **Pull.** A file is written under a hidden name beside its destination, named after
  the file id it must end with, and beside it a record of how many bytes from the start
  were written and verified. A pull of the same version to the same destination keeps
  those bytes, re-checks every chunk of them against its id (no ``fsync`` is needed:
  a torn write is caught there) and fetches only the rest; the final checks of the
  file id and the uploader's BLAKE3 cover the whole file as always.

Two processes never share one: each takes an exclusive ``flock`` on what it resumes,
and a second process that cannot get it works without resuming.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import blake3

from ..names import MAX_SEGMENT

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no resuming, no locking
    fcntl = None  # type: ignore[assignment]

#: format of the records this module writes (a record of another is ignored)
RECORD_VERSION = 1
#: a pull records how much of a file it verified at most this often (seconds): each
#: record is a small file written and renamed, 128 a GiB cost more than they saved
RECORD_EVERY = 0.5


def state_dir() -> Path:
    """Where push records live."""
    given = os.environ.get("CHUNKYARD_STATE_DIR", "").strip()
    if given:
        return Path(given).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache) if cache else Path.home() / ".cache") / "chunkyard"


def _lock(fd: int) -> bool:
    """An exclusive lock on ``fd`` without waiting; False if another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` whole (a reader never sees half a record), owner-only."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _parse(text: bytes) -> dict[str, Any]:
    """A record of this module's, or nothing (absent, torn, or another's)."""
    try:
        data = json.loads(text or b"null")
    except ValueError:
        return {}
    ok = isinstance(data, dict) and data.get("record") == RECORD_VERSION
    return data if ok else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return _parse(path.read_bytes())
    except OSError:
        return {}


# -- push ------------------------------------------------------------------------------
def push_key(url: str, name: str, files: list[tuple[Path, str]]) -> str:
    """What makes two pushes the same push: gateway, name, and each file's path in the
    version, size and modification time (content that changed is another push)."""
    h = blake3.blake3()
    h.update(json.dumps([url, name]).encode())
    for path, rel in files:
        st = path.stat()
        h.update(json.dumps([rel, st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:32]


class PushRecord:
    """The session of a push that has not committed yet, in one small file the push
    holds locked. :meth:`open` never fails: a state directory it cannot use, or a record
    another process holds, gives a record that remembers nothing (the push starts a
    session of its own, as before)."""

    def __init__(self, path: Path | None = None, fd: int = -1) -> None:
        self.path, self._fd = path, fd
        self.data: dict[str, Any] = {}
        if fd >= 0:
            self.data = _parse(os.pread(fd, 1 << 16, 0))

    @classmethod
    def open(cls, key: str, directory: Path | None = None) -> PushRecord:
        d = (directory or state_dir()) / "push"
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            _prune(d)
            fd = _open_locked(d / f"{key}.json")
        except OSError:
            return cls()
        return cls(d / f"{key}.json", fd) if fd >= 0 else cls()

    @property
    def session(self) -> str | None:
        """The session an earlier run of this push opened, if it may still be open."""
        sid = self.data.get("session")
        live = isinstance(sid, str) and self.data.get("expires_at", 0) > time.time()
        return sid if live else None

    def save(self, session: dict[str, Any]) -> None:
        """Remember a session just opened (before anything is sent in it). Written in
        place: a record torn by a crash reads as none, and costs a new session."""
        if self._fd < 0:
            return
        self.data = {
            "record": RECORD_VERSION,
            "session": session["session"],
            "name": session["name"],
            "expires_at": session["expires_at"],
        }
        with contextlib.suppress(OSError):  # no record: the push goes on, unresumable
            text = json.dumps(self.data).encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text, 0)

    def clear(self) -> None:
        """The push is over (committed, or refused for good): nothing to resume."""
        if self.path is not None and self._fd >= 0:
            self.path.unlink(missing_ok=True)  # still locked: nobody takes it meanwhile
        self.data = {}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _open_locked(path: Path) -> int:
    """``path`` opened (created if need be) and locked, or -1 when another process
    holds it. A file removed by its holder between our open and our lock is not the
    one at ``path`` any more: open again."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _lock(fd):
            os.close(fd)
            return -1
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return -1


def _prune(d: Path) -> None:
    """Forget records of sessions that have expired (pushes given up on)."""
    now = time.time()
    for path in d.glob("*.json"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime > now - 24 * 3600:
                continue  # young: its session lives for days (and it may be in use)
            fd = _open_locked(path)
            if fd < 0:
                continue
            try:
                if _parse(os.pread(fd, 1 << 16, 0)).get("expires_at", 0) < now:
                    path.unlink(missing_ok=True)
            finally:
                os.close(fd)


# -- pull ------------------------------------------------------------------------------
def partial_paths(dest: Path, file_id: str) -> tuple[Path, Path]:
    """Where a pull writes ``dest`` (a file of this id) and the record of how much of it
    is verified: beside it, hidden, short enough for a file system whatever ``dest``'s
    own name is."""
    suffix = f".{file_id[:16]}.partial"
    name = dest.name.encode()[: MAX_SEGMENT - 6 - len(suffix)].decode(errors="ignore")
    data = dest.with_name(f".{name}{suffix}")
    return data, data.with_name(data.name + ".json")


class PartialFile:
    """Where a pulled file is written before it is renamed into place, and how much of
    it from the start is verified (:attr:`kept`, bytes); see the module docstring."""

    def __init__(self, dest: Path, file_id: str, size: int, mode: int | None = None) -> None:
        """``mode``: the permission bits ``dest`` takes (None: as the umask gives); the
        file is its owner's alone until then."""
        self.dest, self.file_id, self.size, self.mode = dest, file_id, size, mode
        self.path, record = partial_paths(dest, file_id)
        self.record: Path | None = record
        self.kept = 0
        self._next_record = 0.0  # monotonic time of the next record written
        made = 0o644 if mode is None else 0o600
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, made)
        if not _lock(self.fd):  # another process pulls the same file here: no resuming
            os.close(self.fd)
            self.path, self.record = partial_paths(dest, uuid.uuid4().hex)[0], None
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, made)
            return
        r = _read_json(self.record)
        if (r.get("file_id"), r.get("size")) == (file_id, size):
            on_disk = os.fstat(self.fd).st_size
            self.kept = min(int(r.get("verified", 0)), on_disk, size)
        os.ftruncate(self.fd, size)  # keeps what was written, sizes the rest

    def verified(self, offset: int) -> None:
        """Bytes ``[0, offset)`` are written and verified: a later pull may keep them.
        Recorded at most every :data:`RECORD_EVERY` seconds (a pull interrupted then
        fetches the rest of that time's bytes again)."""
        now = time.monotonic()
        if self.record is not None and offset > self.kept and now >= self._next_record:
            self._next_record = now + RECORD_EVERY
            data = {"record": RECORD_VERSION, "file_id": self.file_id, "size": self.size}
            with contextlib.suppress(OSError):
                _write_json(self.record, {**data, "verified": offset})

    def finish(self) -> None:
        """Every check passed: the file takes its mode and its name, and nothing is left
        to resume."""
        if self.mode is not None:
            os.fchmod(self.fd, self.mode)
        self._close()
        os.replace(self.path, self.dest)
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def abandon(self, keep: bool) -> None:
        """The pull stopped short: ``keep`` what was verified for the next pull (it was
        interrupted), or remove it all (it failed a check, or cannot be resumed)."""
        self._close()
        if keep and self.record is not None:
            return
        self.path.unlink(missing_ok=True)
        if self.record is not None:
            self.record.unlink(missing_ok=True)

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
