"""HTTP for the client: the gateway's JSON API, and presigned requests to the store.

One urllib3 pool serves every request the client makes, gateway calls, part uploads,
pack reads, the NDJSON progress of a registration and reference downloads alike
(urllib3 rather than httpx: the CLI starts 0.1 s faster, a part body goes out in one
``sendall`` without a copy, and reads land in our buffers).

Every retrying path goes through one :class:`RetryPolicy`: connection failures, 408,
429 and 5xx answers are tried again with exponential backoff and jitter (``Retry-After``
honoured), bounded by a number of tries and a total deadline, so a push or pull rides
out a gateway restart or a store outage of a minute or two. Every other answer fails at
once, as the typed error the gateway named. While it waits, the transport tells an
optional ``on_wait`` callback, so a user is not left staring at a frozen progress bar.
"""

from __future__ import annotations

import email.utils
import http.client
import io
import json as jsonlib
import math
import os
import random
import stat
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import msgspec
import urllib3

from ..bodies import body_ended, body_reader
from ..errors import (
    ChunkyardError,
    GatewayUnavailable,
    InvalidRequest,
    StoreError,
    StoreObjectMissing,
    from_json,
)
from ..hosts import is_loopback
from . import profiles

T = TypeVar("T")

#: answers worth another try: timeouts, throttling, overload, a gateway restarting
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: a presigned URL the store refuses because it expired (or its signature went stale)
EXPIRED = frozenset({401, 403})
#: fresh presigned URLs asked for, at most, per request
RENEWALS = 2


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a request that failed for a reason that may pass.

    ``attempts`` tries in all (the first included) and no try started more than
    ``deadline`` seconds after the first; between tries ``base · 2^(n-1)`` seconds,
    at most ``cap``, times a random factor in [0.5, 1) so that many clients (or the
    part threads of one) do not return in lockstep. The defaults ride out an outage of
    about two minutes: long enough for a gateway restart or a store failover, short
    enough that a gateway that stays down is reported while someone still watches."""

    attempts: int = 30
    deadline: float = 120.0
    base: float = 0.5
    cap: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy makes at least one attempt")
        if not (self.deadline >= 0 and self.base >= 0 and self.cap >= self.base):
            raise ValueError("retry deadline, base and cap are seconds, with base <= cap")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetryPolicy:
        """The defaults, with ``CHUNKYARD_RETRY_ATTEMPTS`` and ``CHUNKYARD_RETRY_DEADLINE``
        (seconds) where set: a batch job can wait longer, an interactive one less."""
        env = os.environ if env is None else env
        given: dict[str, Any] = {}
        for var, field, kind in (
            ("CHUNKYARD_RETRY_ATTEMPTS", "attempts", int),
            ("CHUNKYARD_RETRY_DEADLINE", "deadline", float),
        ):
            text = env.get(var, "").strip()
            if text:
                try:
                    given[field] = kind(text)
                except ValueError:
                    raise InvalidRequest(f"{var} must be a number, not {text!r}") from None
        try:
            return cls(**given)
        except ValueError as exc:
            raise InvalidRequest(f"CHUNKYARD_RETRY_*: {exc}") from None

    def delay(self, attempt: int, elapsed: float, retry_after: float | None = None) -> float | None:
        """Seconds to wait after try number ``attempt`` (from 1) failed, ``elapsed``
        seconds after the first began; None when it is time to give up. A server's
        ``Retry-After`` replaces the backoff, but never reaches past the deadline."""
        remaining = self.deadline - elapsed
        if attempt >= self.attempts or remaining <= 0:
            return None
        if retry_after is not None:
            wait = retry_after
        else:
            wait = min(self.cap, self.base * 2.0 ** min(attempt - 1, 60))
            wait *= 0.5 + random.random() / 2
        return min(max(wait, 0.0), remaining)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (it may be a number or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class Wait:
    """What :class:`Transport` tells ``on_wait`` before it sleeps between tries.

    ``what`` is the party that failed (``gateway at http://…``, ``store at https://host``;
    never a presigned URL, which is a credential), ``attempt`` the number of the try
    that follows the wait, ``reason`` what went wrong in a few words, ``error`` what
    will be raised if the tries run out."""

    what: str
    attempt: int
    delay: float
    reason: str
    error: BaseException
    gives_up_in: float

    def __str__(self) -> str:
        return (
            f"{self.what} {self.reason}; retrying in {self.delay:.1f} s "
            f"(attempt {self.attempt}, gives up in {self.gives_up_in:.0f} s)"
        )


OnWait = Callable[[Wait], None]


def print_waits(stream: Any = None, every: float = 1.0) -> OnWait:
    """An ``on_wait`` that prints one line per wait to stderr, at most one per party
    every ``every`` seconds: eight part threads waiting on the same store say so once."""
    last: dict[str, float] = {}
    lock = threading.Lock()

    def on_wait(wait: Wait) -> None:
        now = time.monotonic()
        with lock:
            if now - last.get(wait.what, -math.inf) < every:
                return
            last[wait.what] = now
        print(f"chunkyard: {wait}", file=stream or sys.stderr, flush=True)

    return on_wait


class Transient(Exception):
    """Raised by one try of a request that may succeed if tried again. ``error`` is
    what the caller gets if no try is left; ``retry_after`` a server's own estimate."""

    def __init__(
        self, error: ChunkyardError, reason: str, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.error, self.reason, self.retry_after = error, reason, retry_after


def retry_call(
    policy: RetryPolicy,
    what: str,
    attempt: Callable[[], T],
    on_wait: OnWait | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``attempt`` until it returns or raises anything but :class:`Transient`, or
    the policy says stop (then the transient's ``error`` is raised). The one retry loop
    of the client; ``clock`` and ``sleep`` are there for tests."""
    start = clock()
    tries = 0
    while True:
        tries += 1
        try:
            return attempt()
        except Transient as t:
            elapsed = clock() - start
            delay = policy.delay(tries, elapsed, t.retry_after)
            if delay is None:
                if tries > 1:
                    t.error.detail.setdefault("tries", tries)
                raise t.error from t.__cause__
            if on_wait is not None:
                on_wait(Wait(what, tries + 1, delay, t.reason, t.error, policy.deadline - elapsed))
            sleep(delay)


def with_fresh_url(
    send: Callable[[dict], T],
    req: dict,
    renew: Callable[[StoreError], dict],
    refused: Collection[int] = EXPIRED,
    times: int = RENEWALS,
) -> T:
    """``send(req)``; when the store refuses it with a status in ``refused``, ask
    ``renew`` for a fresh presigned request and send that, up to ``times`` more times.

    Presigned URLs expire (CHUNKYARD_URL_EXPIRY) while a long transfer waits its turn,
    and a store refuses a part whose checksum did not match; both mean: ask the gateway
    again. ``renew`` may raise to stop early (an upload another push completed)."""
    for renewal in range(times + 1):
        try:
            return send(req)
        except StoreError as exc:
            if renewal == times or exc.detail.get("status") not in refused:
                raise
            req = renew(exc)
    raise AssertionError("unreachable")


def _origin(url: str) -> str:
    """Scheme and host of a URL: what may be shown of a presigned one."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """A few words on a connection failure, named after its root cause:
    ``unreachable (ConnectionRefused)``, ``connection lost (RemoteDisconnected)``."""
    chain, seen = [exc], {id(exc)}
    for e in chain:  # grows as we go: causes, contexts and wrapped exceptions
        for nxt in (e.__cause__, e.__context__, *e.args):
            if isinstance(nxt, BaseException) and id(nxt) not in seen:
                seen.add(id(nxt))
                chain.append(nxt)
    name = type(chain[-1]).__name__.removesuffix("Error") or type(exc).__name__
    how = (
        "unreachable"
        if isinstance(exc, urllib3.exceptions.ConnectTimeoutError)  # NewConnectionError too
        else "connection lost"
    )
    return f"{how} ({name})"


def _json(data: bytes) -> Any:
    """A gateway's JSON answer (msgspec: a reconstruction page lists thousands of
    chunks, and the standard library took ~0.1 s of a 1 GiB pull to parse them)."""
    try:
        return msgspec.json.decode(data or b"null")
    except msgspec.DecodeError:
        return {}


class Transport:
    """One gateway and the stores it presigns for; thread-safe."""

    def __init__(
        self,
        url: str | None = None,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        on_wait: OnWait | None = None,
        token: str | None = None,
    ) -> None:
        #: the gateway, and the bearer token its calls carry (never sent to stores): the
        #: arguments, else the environment, else the config file (:mod:`.profiles`)
        self.url, self.token = profiles.resolve(url, token)
        self.retry = retry or RetryPolicy.from_env()
        self.on_wait = on_wait
        self.raw = urllib3.PoolManager(maxsize=32, block=False)
        self.raw_timeout = urllib3.Timeout(connect=10.0, read=timeout)
        #: the gateway runs on this machine: its local store's packs are read from their
        #: files (``CHUNKYARD_LOCAL_READS=0``: always through its blob endpoint)
        self.local_reads = is_loopback(urlsplit(self.url).hostname or "") and os.environ.get(
            "CHUNKYARD_LOCAL_READS", "1"
        ).strip().lower() not in ("0", "false", "no", "off")
        #: pack bytes read from files rather than over HTTP
        self.bytes_read_locally = 0
        self._counting = threading.Lock()

    def close(self) -> None:
        self.raw.clear()

    def retrying(self, what: str, attempt: Callable[[], T]) -> T:
        """:func:`retry_call` with this transport's policy and ``on_wait``."""
        return retry_call(self.retry, what, attempt, self.on_wait)

    def _request(self, method: str, url: str, **kw: Any) -> urllib3.BaseHTTPResponse:
        return self.raw.request(
            method, url, retries=False, redirect=False, timeout=self.raw_timeout, **kw
        )

    def _consume(
        self,
        resp: urllib3.BaseHTTPResponse,
        read: Callable[[urllib3.BaseHTTPResponse], T],
        lost: Callable[[Exception], ChunkyardError],
    ) -> T:
        """``read`` an unbuffered answer; a connection that breaks meanwhile is
        transient. A half-read answer's connection is closed, not reused."""
        try:
            out = read(resp)
            resp.drain_conn()
            return out
        except urllib3.exceptions.HTTPError as exc:
            resp.close()
            raise Transient(lost(exc), _reason(exc)) from exc
        except BaseException:
            resp.close()
            raise
        finally:
            resp.release_conn()

    @staticmethod
    def _error_body(resp: urllib3.BaseHTTPResponse, buffered: bool) -> bytes:
        """The body of an error answer, or its first 64 KiB if it was not buffered (that
        answer's connection is then closed, not reused: the rest may be large)."""
        if buffered:
            return resp.data
        try:
            return resp.read(65536)
        except urllib3.exceptions.HTTPError:
            return b""
        finally:
            resp.close()
            resp.release_conn()

    def _attempt(
        self,
        method: str,
        url: str,
        *,
        body: bytes | memoryview | None,
        headers: dict,
        read: Callable[[urllib3.BaseHTTPResponse], Any] | None,
        ok: Callable[[int], bool],
        lost: Callable[[Exception], ChunkyardError],
        refused: Callable[[int, bytes], ChunkyardError],
    ) -> Any:
        """One try of a request: the answer (buffered), or ``read``'s result on an
        unbuffered one. A failed connection and a :data:`RETRY_STATUS` answer raise
        :class:`Transient`; any other answer that is not ``ok`` raises ``refused``'s
        error at once."""
        try:
            resp = self._request(
                method, url, body=body, headers=headers, preload_content=read is None
            )
        except urllib3.exceptions.HTTPError as exc:
            raise Transient(lost(exc), _reason(exc)) from exc
        if ok(resp.status):
            return resp if read is None else self._consume(resp, read, lost)
        err = refused(resp.status, self._error_body(resp, read is None))
        if resp.status in RETRY_STATUS and not isinstance(err, StoreObjectMissing):
            after = parse_retry_after(resp.headers.get("retry-after"))
            raise Transient(err, f"answered HTTP {resp.status}", after)
        raise err

    # -- the gateway API ----------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        params: dict | None = None,
        headers: dict | None = None,
        read: Callable[[urllib3.BaseHTTPResponse], T] | None = None,
    ) -> Any:
        """One gateway request; its JSON answer, or the typed error the gateway named.
        ``params`` go in the query, a list value as its parameter repeated (``tag=a&tag=b``).
        With ``read``, a successful answer is handed over unbuffered (a stream of
        progress lines) and ``read``'s result returned; a connection lost while it
        reads is retried like any other (the gateway's streaming calls are idempotent)."""
        url = self.url + path + (f"?{urlencode(params, doseq=True)}" if params else "")
        if json is not None:
            body, sent = jsonlib.dumps(json).encode(), {"content-type": "application/json"}
        elif content is not None:
            body, sent = content, {"content-type": "application/octet-stream"}
        else:
            body, sent = None, {}
        if self.token:
            sent["authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})

        def lost(exc: Exception) -> ChunkyardError:
            return GatewayUnavailable(
                f"cannot reach the gateway at {self.url}: {exc}", url=self.url
            )

        out = self.retrying(
            f"gateway at {self.url}",
            lambda: self._attempt(
                method,
                url,
                body=body,
                headers=sent,
                read=read,
                ok=lambda status: 200 <= status < 300,
                lost=lost,
                refused=lambda status, text: from_json(status, _json(text)),
            ),
        )
        return _json(out.data) if read is None else out

    # -- presigned requests to the store ------------------------------------
    def _store(
        self,
        req: dict,
        what: str,
        *,
        body: memoryview | None = None,
        headers: dict | Callable[[], dict] | None = None,
        read: Callable[[urllib3.BaseHTTPResponse], T] | None = None,
        ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
        party: str = "store",
    ) -> Any:
        """One presigned request, retried while it fails transiently. Refusals raise
        StoreError with ``status``, so callers can ask for a fresh URL. ``headers`` may
        be a function, asked again on every try (a Range that resumes)."""

        def lost(exc: Exception) -> ChunkyardError:
            return StoreError(f"{what} failed: {exc}")

        def refused(status: int, text: bytes) -> ChunkyardError:
            reason = text[:300].decode(errors="replace")
            return StoreError(f"{what} was refused: HTTP {status} {reason}", status=status)

        def once() -> Any:
            extra = headers() if callable(headers) else headers
            sent = urllib3.HTTPHeaderDict(req.get("headers", {}))
            for name, value in (extra or {}).items():  # replaces, whatever the case
                sent[name] = value
            return self._attempt(
                req["method"],
                req["url"],
                body=body,
                headers=sent,
                read=read,
                ok=ok,
                lost=lost,
                refused=refused,
            )

        return self.retrying(f"{party} at {_origin(req['url'])}", once)

    def send(
        self,
        req: dict,
        content: bytes | memoryview | None = None,
        headers: dict | None = None,
        what: str = "store request",
    ) -> urllib3.BaseHTTPResponse:
        """Send one presigned request (a part upload), its body as is, without a copy."""
        body = None if content is None else memoryview(content)
        return self._store(  # 308: a GCS resumable upload going on
            req, what, body=body, headers=headers, ok=lambda s: 200 <= s < 300 or s == 308
        )

    def read(
        self,
        req: dict,
        read: Callable[[urllib3.BaseHTTPResponse], T],
        headers: dict | Callable[[], dict] | None = None,
        what: str = "store read",
        ok: Collection[int] = (200, 206),
        party: str = "store",
    ) -> T:
        """GET a presigned object and hand the unbuffered answer to ``read``, whose
        result is returned; tried again if the connection breaks (``headers``, when a
        function, can resume with a Range). ``party`` names the server in waits."""
        return self._store(req, what, headers=headers, read=read, ok=ok.__contains__, party=party)

    def fetch_into(
        self, req: dict, start: int, end: int, buf: bytearray, what: str = "store read"
    ) -> memoryview:
        """GET bytes ``[start, end)`` of a presigned object into ``buf``, a recycled
        buffer: ``readinto`` in large reads rather than httpx's 64 KiB pieces through
        Python (half the client CPU per pulled byte)."""
        want = end - start
        view = memoryview(buf)
        if self.local_reads and req.get("file") and 0 < want <= len(view):
            local = self._read_file(req["file"], start, view[:want])
            if local is not None:
                return local

        def into(resp: urllib3.BaseHTTPResponse) -> memoryview:
            src = body_reader(resp)
            pos = 0
            try:
                while pos < want:
                    n = src.readinto(view[pos:want])
                    if not n:
                        if src is not resp and src.length:  # ended before Content-Length
                            raise http.client.IncompleteRead(b"", src.length)
                        break
                    pos += n
                extra = src.read(1)
            except (OSError, http.client.HTTPException) as exc:  # as urllib3 would say it
                raise urllib3.exceptions.ProtocolError(f"connection broken: {exc!r}") from exc
            if pos != want or extra:
                raise StoreError(f"{what}: store did not send exactly {want} bytes")
            body_ended(resp, src)
            return view[:want]

        return self._store(req, what, headers={"range": f"bytes={start}-{end - 1}"}, read=into)

    def _read_file(self, path: str, start: int, view: memoryview) -> memoryview | None:
        """Bytes ``start ..`` of a local pack file into ``view``; None when the file
        cannot be read whole here (another user's store, a gateway in a container, a
        file cut short): the caller sends the GET instead. Chunk ids are checked after
        either way. Only a regular file is opened, not through a symlink, and the one
        looked at (a gateway that lies must not get a device opened, or a FIFO waited
        on); the downloader passes only names of the pack being read."""
        flags = os.O_RDONLY
        for name in ("O_NONBLOCK", "O_NOFOLLOW", "O_NOCTTY"):
            flags |= getattr(os, name, 0)
        try:
            seen = os.lstat(path)
            if not stat.S_ISREG(seen.st_mode):
                return None
            fd = os.open(path, flags)
        except (OSError, ValueError, TypeError):
            return None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                return None
            f = io.FileIO(fd, "rb", closefd=False)
            f.seek(start)
            got = 0
            while got < len(view):
                n = f.readinto(view[got:])
                if not n:
                    return None
                got += n
        except (OSError, ValueError, OverflowError):
            return None
        finally:
            os.close(fd)
        with self._counting:
            self.bytes_read_locally += got
        return view
