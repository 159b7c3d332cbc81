"""Gateway settings from command-line options and ``CHUNKYARD_*`` environment."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    data_dir: Path
    db_url: str
    store_url: str
    public_url: str
    secret: bytes
    #: lifetime of presigned URLs, seconds (CHUNKYARD_URL_EXPIRY)
    url_expiry: int = 900
    #: lifetime of an upload session, seconds
    session_ttl: int = 7 * 24 * 3600
    #: pack verification: inline | background | external ("" = by store kind)
    verify: str = ""
    #: URI prefixes references may be registered under (CHUNKYARD_REF_ALLOW); none by
    #: default, so a gateway never reads from a source its operator did not name
    ref_allow: tuple[str, ...] = ()
    #: let http(s) references reach private networks (CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS)
    ref_allow_private: bool = False
    #: every request must carry a bearer token the catalog knows (CHUNKYARD_AUTH, or
    #: ``serve --auth``)
    auth: bool = False
    #: the largest JSON request body, bytes (CHUNKYARD_MAX_BODY): the limit of every
    #: endpoint without a smaller one of its own, in practice a commit's file list
    #: (about 110 bytes a file without terms, so 64 MiB is some 500,000 files)
    max_body: int = 64 * 1024 * 1024
    #: request bodies (JSON and uploaded parts) must not pause longer than this, in
    #: seconds, and after this long must have come at ``body_min_rate`` on average
    #: (CHUNKYARD_BODY_TIMEOUT); a body that falls behind is answered 408
    body_timeout: float = 60.0
    #: bytes per second (CHUNKYARD_BODY_MIN_RATE): a 64 MiB part may take 60 s +
    #: 64 MiB / rate, about 18 minutes at the default 64 KiB/s
    body_min_rate: int = 64 * 1024
    #: PostgreSQL connections each of a gateway's two pools (reads, writes) keeps open
    #: (CHUNKYARD_DB_POOL); as many more are opened for a burst and closed after it.
    #: Opening one costs more than most requests: 32 pushers with the default of 5
    #: opened some 25 a second and doubled commit latency
    db_pool: int = 16
    #: the size clients close their packs at, bytes (CHUNKYARD_PACK_TARGET, 1 MiB to
    #: 64 MiB): smaller packs resume and deduplicate in smaller steps, at more requests
    pack_target: int = 32 * 1024 * 1024
    #: name pack files to clients on this machine that ask, so they read them
    #: themselves (CHUNKYARD_LOCAL_READS=0: never; the local store only)
    local_reads: bool = True

    @classmethod
    def load(
        cls, data_dir: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8080
    ) -> Settings:
        env = os.environ
        data = Path(data_dir or env.get("CHUNKYARD_DATA", "./chunkyard-data")).resolve()
        # owner-only: the catalog and the signing secret live here
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        db_url = env.get("CHUNKYARD_DB")
        if not db_url:
            db_url = f"sqlite:///{data / 'catalog.db'}"
            create_private(data / "catalog.db")
        store_url = env.get("CHUNKYARD_STORE") or (data / "store").as_uri()
        public_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        public_url = env.get("CHUNKYARD_PUBLIC_URL") or f"http://{public_host}:{port}"
        return cls(
            data_dir=data,
            db_url=db_url,
            store_url=store_url,
            public_url=public_url.rstrip("/"),
            secret=_load_secret(data),
            url_expiry=int(env.get("CHUNKYARD_URL_EXPIRY", "900")),
            verify=env.get("CHUNKYARD_VERIFY", ""),
            ref_allow=parse_ref_allow(env.get("CHUNKYARD_REF_ALLOW", "")),
            ref_allow_private=_flag(env.get("CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS")),
            auth=_flag(env.get("CHUNKYARD_AUTH")),
            max_body=_positive(env, "CHUNKYARD_MAX_BODY", int, cls.max_body),
            body_timeout=_positive(env, "CHUNKYARD_BODY_TIMEOUT", float, cls.body_timeout),
            body_min_rate=_positive(env, "CHUNKYARD_BODY_MIN_RATE", int, cls.body_min_rate),
            db_pool=_positive(env, "CHUNKYARD_DB_POOL", int, cls.db_pool),
            pack_target=_pack_target(env),
            local_reads=not _off(env.get("CHUNKYARD_LOCAL_READS")),
        )


def _positive(env: Mapping[str, str], key: str, kind: type, default: float) -> Any:
    """A positive number from the environment, or a clear error naming the variable."""
    text = env.get(key, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):  # also refuses nan
        raise ValueError(f"{key} must be a positive {kind.__name__}, got {text!r}")
    return value


def _pack_target(env: Mapping[str, str]) -> int:
    target = _positive(env, "CHUNKYARD_PACK_TARGET", int, Settings.pack_target)
    if not 1024 * 1024 <= target <= 64 * 1024 * 1024:
        raise ValueError(f"CHUNKYARD_PACK_TARGET must be 1 MiB to 64 MiB, got {target}")
    return target


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _off(value: str | None) -> bool:
    """A setting that is on unless turned off (0, false, no, off)."""
    return (value or "").strip().lower() in ("0", "false", "no", "off")


def env_flag(name: str) -> bool:
    """A yes/no environment variable (1, true, yes, on), as Settings reads its own: for
    command-line defaults such as ``serve --auth`` from CHUNKYARD_AUTH."""
    return _flag(os.environ.get(name))


def create_private(path: Path) -> None:
    """Create ``path`` empty and owner-only (0600) unless it exists. SQLite opens an
    empty file as an empty database and gives its -wal and -shm files the database
    file's mode, so the catalog stays private whatever the process umask is."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def parse_ref_allow(text: str) -> tuple[str, ...]:
    """Comma-separated URI prefixes, normalised (lower-case scheme and host)."""
    from .pins import normalize_prefix

    return tuple(normalize_prefix(p) for p in text.split(",") if p.strip())


def _load_secret(data: Path) -> bytes:
    """The signing secret: CHUNKYARD_SECRET, or one kept in the data dir so that URLs
    stay valid across restarts and across gateway workers sharing the data dir."""
    if os.environ.get("CHUNKYARD_SECRET"):
        return os.environ["CHUNKYARD_SECRET"].encode()
    path = data / "secret.key"
    if not path.exists():
        tmp = data / f".secret.{os.getpid()}.tmp"
        # created 0600, not chmod-ed after the write: never readable by others
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale temporary file keeps its mode otherwise
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # first writer wins when several workers start at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip().encode()
