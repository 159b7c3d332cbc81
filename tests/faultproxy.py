"""A fault-injecting HTTP/1.1 proxy on 127.0.0.1, for the tests and the benchmarks.

It sits in front of one server (the gateway, or the store: point the gateway's store
endpoint at it and the presigned URLs point at it too) and forwards each request's bytes
unchanged, the ``Host`` header included, so SigV4 and SAS signatures still match. It
knows just enough HTTP/1.1 (request and response heads, ``Content-Length``, chunked and
read-until-close bodies, ``Expect: 100-continue``) to fail whole requests. Each request
meets at most one fault, drawn from a seeded random generator:

- ``error``: answered 500 or 503 with a plain-text body, never forwarded;
- ``reset``: the connection is reset as the request arrives, nothing forwarded;
- ``lost``: forwarded and carried out, then the connection is reset before any byte of
  the answer (a completed upload whose answer was lost);
- ``cut``: forwarded, the answer's head and part of its body sent, then a reset;
- ``dropped``: forwarded and answered whole, then a reset: the client finds the
  connection it keeps for its next request gone;
- ``delay``: the answer is held back for up to ``max_delay`` seconds.

:attr:`FaultProxy.injected` counts the faults of each kind, so a test can assert that
they really happened. :meth:`FaultProxy.outage` takes the proxy dark for a while
(connections refused, open ones dropped). Each upstream connection carries one request,
so a server closing an idle keep-alive connection never costs a request a fault that
was not drawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

KINDS = ("error", "reset", "lost", "cut", "dropped", "delay")
#: bytes relayed per read
PIECE = 1 << 20
#: the limit of a request or response head
HEAD_LIMIT = 1 << 20


@dataclass(frozen=True)
class Faults:
    """The chance of each fault per request (at most one per request: they add up to
    at most 1), and the longest delay in seconds."""

    error: float = 0.0
    reset: float = 0.0
    lost: float = 0.0
    cut: float = 0.0
    dropped: float = 0.0
    delay: float = 0.0
    max_delay: float = 0.5

    def __post_init__(self) -> None:
        if min(self.chances()) < 0 or sum(self.chances()) > 1:
            raise ValueError("fault chances are in [0, 1] and add up to at most 1")

    def chances(self) -> list[float]:
        return [getattr(self, k) for k in KINDS]

    def draw(self, rng: random.Random) -> tuple[str | None, float]:
        """A request's fault, if any, and its parameter (the status of an ``error``,
        the seconds of a ``delay``), drawn at once: the n-th request meets the n-th
        draw of a seed, however the requests interleave."""
        x, acc = rng.random(), 0.0
        arg = rng.random()
        for kind, chance in zip(KINDS, self.chances(), strict=True):
            acc += chance
            if x < acc:
                if kind == "error":
                    return kind, 500 if arg < 0.5 else 503
                return kind, arg * self.max_delay
        return None, 0.0


NONE = Faults()
#: issue 13's mix: 10 % of requests fail with 500/503, 2 % each are reset before being
#: forwarded, lose or cut their answer or drop the connection after it, 5 % are delayed
MIXED = Faults(error=0.10, reset=0.02, lost=0.02, cut=0.02, dropped=0.02, delay=0.05, max_delay=0.3)


def first(n: int, method: str, pattern: str) -> Callable[[str, str], bool]:
    """An ``only`` for :class:`FaultProxy`: the first ``n`` requests with this method
    whose target matches the regular expression ``pattern`` (searched)."""
    rx = re.compile(pattern)
    left = [n]
    lock = threading.Lock()

    def only(m: str, target: str) -> bool:
        with lock:
            if left[0] and m == method and rx.search(target):
                left[0] -= 1
                return True
        return False

    return only


class Head:
    """A request or response head: its first line and headers, as received."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        lines = raw[:-4].split(b"\r\n")
        self.line = lines[0].decode("latin-1")
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            value = value.strip()
            self.headers[key] = f"{self.headers[key]}, {value}" if key in self.headers else value

    def has(self, name: str, token: str) -> bool:
        return token in self.headers.get(name, "").lower()

    def framing(self, request: bool = False) -> str | int:
        """``"chunked"``, a byte count, or ``"close"`` (a response read until the
        connection ends; a request without either header has no body)."""
        if self.has("transfer-encoding", "chunked"):
            return "chunked"
        if "content-length" in self.headers:
            return int(self.headers["content-length"])
        return 0 if request else "close"


async def _read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None if the peer closed the connection between messages."""
    try:
        return Head(await reader.readuntil(b"\r\n\r\n"))
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ConnectionResetError("the connection ended inside a head") from exc


async def _body(reader: asyncio.StreamReader, framing: str | int) -> AsyncIterator[bytes]:
    """A body's raw bytes (chunked framing included), piece by piece."""
    if framing == "close":
        while piece := await reader.read(PIECE):
            yield piece
        return
    if framing == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            yield line
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    yield trailer
                yield b"\r\n"
                return
            async for piece in _exactly(reader, size + 2):
                yield piece
        return
    async for piece in _exactly(reader, framing):
        yield piece


async def _exactly(reader: asyncio.StreamReader, n: int) -> AsyncIterator[bytes]:
    while n:
        piece = await reader.read(min(n, PIECE))
        if not piece:
            raise ConnectionResetError("the connection ended inside a body")
        n -= len(piece)
        yield piece


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def azure_endpoint(conn: str) -> str:
    """``scheme://host:port`` of an Azure connection string's BlobEndpoint."""
    blob = next(p for p in conn.split(";") if p.startswith("BlobEndpoint="))
    return blob.split("=", 1)[1].rstrip("/").rsplit("/", 1)[0]


def with_azure_endpoint(conn: str, endpoint: str) -> str:
    """An Azure connection string whose BlobEndpoint is at ``endpoint`` (a proxy's URL),
    the account path kept: SAS URLs the gateway signs then point at the proxy."""
    parts = dict(p.split("=", 1) for p in conn.strip(";").split(";"))
    account = parts["BlobEndpoint"].rstrip("/").rsplit("/", 1)[1]
    parts["BlobEndpoint"] = f"{endpoint}/{account}"
    return ";".join(f"{k}={v}" for k, v in parts.items()) + ";"


def _target(target: str | int) -> tuple[str, int]:
    if isinstance(target, int):
        return "127.0.0.1", target
    parts = urlsplit(target if "//" in target else f"//{target}")
    return parts.hostname or "127.0.0.1", parts.port or 80


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``target`` (a port, ``host:port`` or a URL; it may
    be set after start, before the first request), injecting ``faults``. Runs its own
    event loop on a daemon thread; thread-safe to read counters and change ``faults``.

    ``only``, when given, picks the requests that may meet a fault (``method``,
    ``target`` of the request line); the others pass untouched."""

    def __init__(
        self,
        target: str | int = 0,
        faults: Faults = NONE,
        seed: int = 0,
        only: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.target = target
        self.faults = faults
        self.only = only
        self.rng = random.Random(seed)
        self.injected: Counter[str] = Counter()
        #: requests seen, and those that reached the target
        self.requests = 0
        self.forwarded = 0
        self._conns: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._dark = 0  # outages in progress
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._call(self._listen())

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    # -- listening, outages ----------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None and not self._closed and not self._dark:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, limit=HEAD_LIMIT, reuse_address=True
            )

    async def _go_dark(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._conns):
            _reset(w)
        self._conns.clear()

    def outage(self, seconds: float) -> None:
        """Go dark now for ``seconds``: connecting is refused, open connections reset."""

        async def dark() -> None:
            self._dark += 1
            await self._go_dark()

        async def back() -> None:
            self._dark -= 1
            await self._listen()

        self._call(dark())
        self._loop.call_soon_threadsafe(
            lambda: self._loop.call_later(seconds, lambda: self._loop.create_task(back()))
        )

    def close(self) -> None:
        if self._closed:
            return

        async def stop() -> None:
            self._closed = True
            await self._go_dark()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # -- one client connection -----------------------------------------------------
    def _draw(self, head: Head) -> tuple[str | None, float]:
        method, _, rest = head.line.partition(" ")
        if not any(self.faults.chances()):  # no draw: the seed's sequence starts later
            return None, 0.0
        if self.only is not None and not self.only(method, rest.rpartition(" ")[0]):
            return None, 0.0
        return self.faults.draw(self.rng)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            _reset(writer)
        except asyncio.CancelledError:  # closing: ends quietly
            _reset(writer)
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is over."""
        head = await _read_head(reader)
        if head is None:
            return False
        self.requests += 1
        kind, arg = self._draw(head)
        if kind == "reset":
            self.injected[kind] += 1
            _reset(writer)
            return False
        if head.has("expect", "100-continue"):  # as a server would, so the body comes
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if kind == "error":
            async for _ in _body(reader, head.framing(request=True)):
                pass
            self.injected[kind] += 1
            status = int(arg)
            text = f"fault injected by the test proxy: {status}\n".encode()
            writer.write(
                f"HTTP/1.1 {status} {'Internal Server Error' if status == 500 else 'Busy'}\r\n"
                f"content-type: text/plain\r\ncontent-length: {len(text)}\r\n\r\n".encode()
                + text
            )
            await writer.drain()
            return not head.has("connection", "close")
        return await self._forward(head, reader, writer, kind, arg)

    async def _forward(
        self,
        head: Head,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kind: str | None,
        delay: float,
    ) -> bool:
        host, port = _target(self.target)
        try:
            up_reader, up = await asyncio.open_connection(host, port, limit=HEAD_LIMIT)
        except OSError:  # the target is down: so is the proxy, as far as clients can tell
            _reset(writer)
            return False
        try:
            up.write(head.raw)
            async for piece in _body(reader, head.framing(request=True)):
                up.write(piece)
                await up.drain()
            await up.drain()
            method = head.line.split(" ", 1)[0]
            answer = await _read_head(up_reader)
            while answer is not None and answer.line.split(" ")[1].startswith("1"):
                answer = await _read_head(up_reader)  # interim answers: 100 was sent
            if answer is None:
                raise ConnectionResetError("the target closed without an answer")
            self.forwarded += 1
            status = int(answer.line.split(" ")[1])
            body = 0 if method == "HEAD" or status in (204, 304) else answer.framing()
            if kind == "lost":  # carried out; the answer goes nowhere
                async for _ in _body(up_reader, body):
                    pass
                self.injected[kind] += 1
                _reset(writer)
                return False
            if kind == "delay":
                self.injected[kind] += 1
                await asyncio.sleep(delay)
            writer.write(answer.raw)
            sent, half = 0, body // 2 if isinstance(body, int) else None
            async for piece in _body(up_reader, body):
                if kind == "cut" and (half is None or sent + len(piece) >= half):
                    writer.write(piece[: len(piece) // 2 if half is None else half - sent])
                    break
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
            if kind in ("cut", "dropped"):  # what was written reaches the client, then
                writer.transport.set_write_buffer_limits(0)  # the reset
                await writer.drain()
                self.injected[kind] += 1
                _reset(writer)
                return False
            await writer.drain()
            return not (
                body == "close"
                or head.has("connection", "close")
                or answer.has("connection", "close")
            )
        finally:
            up.close()
