"""Reference sources: the objects a reference names, read with the gateway's own
credentials (the usual ``AWS_*``, ``AZURE_STORAGE_CONNECTION_STRING``,
``GOOGLE_APPLICATION_CREDENTIALS``/``STORAGE_EMULATOR_HOST``), and checked against pins.

Bucket sources go through the ordinary :class:`~chunkyard.stores.base.Store` of their
bucket (opened once, kept); http(s) sources through :mod:`chunkyard.netguard`, following
redirects by hand so that every hop is guarded: each hop's target is normalised as a
reference URI is and must be under the allow-list (CHUNKYARD_REF_ALLOW) itself, and its
host's addresses pass the address guard. Nothing here knows the catalog.

A redirected http(s) reference pins the URI that was registered, not where its
redirects ended (they often end at short-lived signed URLs). Every later HEAD or GET
follows the redirects again, under the same rules as at registration, so a redirect
changed to point outside the allow-list fails (``reference_not_allowed``) rather than
being followed, and what it points at within the allow-list must still match the pin.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urljoin

import httpx

from .. import netguard
from ..config import Settings
from ..errors import (
    InvalidName,
    InvalidReference,
    SourceNotFound,
    StoreError,
)
from ..fingerprint import ChunkEntry, Fingerprint, fingerprint
from ..names import check_path, check_tree_paths
from ..pins import (
    Pin,
    RefURI,
    check_allowed,
    drift,
    drifted,
    make_pin,
    parse_uri,
    response_drift,
)
from ..stores import open_store
from ..stores.base import ObjectInfo, PresignedRequest, Store

#: objects in one reference version (as many files as a pushed tree may hold)
MAX_OBJECTS = 1_000_000
MAX_REDIRECTS = 5
#: HEADs in flight when checking many single objects
CHECK_CONCURRENCY = 16
_REDIRECTS = {301, 302, 303, 307, 308}
_IDENTITY = {"accept-encoding": "identity"}  # the bytes as stored, never re-encoded


@dataclass(frozen=True)
class Observed:
    """What a source reports about an object now (None size: nothing there)."""

    size: int | None
    etag: str = ""
    version_id: str | None = None
    last_modified: str | None = None
    url: str = ""  # http: where the redirects ended now (a hop under the allow-list)
    ranges: bool = False  # http: the server honours Range

    def state(self, pin: Pin) -> str:
        return drift(pin, self.size, self.etag, self.version_id, self.last_modified)

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "last_modified": self.last_modified,
        }


def _observed(info: ObjectInfo | None) -> Observed:
    if info is None:
        return Observed(None)
    return Observed(info.size, info.etag, info.version_id, info.last_modified)


def _name(rel: str, uri: str) -> str:
    """The path of an object in a version: its key below the prefix, in NFC (the key
    itself stays in the pin)."""
    try:
        return check_path(unicodedata.normalize("NFC", rel))
    except InvalidName as exc:
        raise InvalidReference(
            f"{uri[:300]} cannot be a file of a version: {exc.message}", uri=uri[:300]
        ) from None


def _tree(files: list[tuple[str, Pin]], uri: str) -> list[tuple[str, Pin]]:
    """Objects whose paths a directory cannot hold together (``x`` and ``x/y``, or two
    keys that differ only in their Unicode form) are refused."""
    try:
        check_tree_paths(path for path, _ in files)
    except InvalidName as exc:
        raise InvalidReference(
            f"{uri[:300]} cannot be one version: {exc.message}", uri=uri[:300]
        ) from None
    return files


class Sources:
    def __init__(self, settings: Settings) -> None:
        self.allow_private = settings.ref_allow_private
        self.allow = settings.ref_allow
        self.expiry = settings.url_expiry
        self._stores: dict[str, Store] = {}
        self._guarded: httpx.AsyncClient | None = None
        self._plain: httpx.AsyncClient | None = None
        self._sync: dict[bool, httpx.Client] = {}
        self._lock = threading.Lock()

    # -- clients -----------------------------------------------------------------
    def store(self, uri: RefURI) -> Store:
        """The store of the URI's bucket, with the gateway's credentials."""
        s = self._stores.get(uri.store_url)
        if s is None:
            s = self._stores[uri.store_url] = open_store(uri.store_url)
        return s

    def _async_client(self, guarded: bool) -> httpx.AsyncClient:
        if guarded:
            if self._guarded is None:
                self._guarded = netguard.async_guarded_client(self.allow_private)
            return self._guarded
        if self._plain is None:  # presigned URLs of the gateway's configured stores
            self._plain = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))
        return self._plain

    def _sync_client(self, guarded: bool) -> httpx.Client:
        with self._lock:
            if guarded not in self._sync:
                self._sync[guarded] = (
                    netguard.guarded_client(self.allow_private)
                    if guarded
                    else httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
                )
            return self._sync[guarded]

    async def close(self) -> None:
        for s in self._stores.values():
            await s.close()
        for c in (self._guarded, self._plain):
            if c is not None:
                await c.aclose()
        for sc in self._sync.values():
            sc.close()

    # -- http(s) -------------------------------------------------------------------
    async def _follow(
        self, method: str, start: RefURI, headers: dict[str, str]
    ) -> tuple[RefURI, httpx.Response]:
        """Send, following redirects by hand: each hop is checked by :meth:`_hop` and
        connected to through the address guard. The caller closes the (streamed)
        response."""
        client = self._async_client(guarded=True)
        url = start
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = await client.send(
                    client.build_request(method, str(url), headers=headers), stream=True
                )
            except httpx.HTTPError as exc:
                where = str(url)[:300]
                raise StoreError(f"cannot reach {where}: {exc}", uri=where) from exc
            except httpx.InvalidURL as exc:  # pragma: no cover - parse_uri rules these out
                where = str(url)[:300]
                raise InvalidReference(f"{where}: {exc}", uri=where) from exc
            location = resp.extensions.get(netguard.LOCATION)
            if resp.status_code not in _REDIRECTS or location is None:
                return url, resp
            await resp.aclose()
            url = self._hop(start, url, location)
        where = str(start)[:300]
        raise InvalidReference(f"{where}: more than {MAX_REDIRECTS} redirects", uri=where)

    def _hop(self, start: RefURI, at: RefURI, location: str) -> RefURI:
        """Where a redirect from ``at`` leads: an http(s) URL, normalised as a reference
        URI is (so the allow-list, the address guard and the request read its host
        alike), under the allow-list."""
        where, target = str(start)[:300], location.partition("#")[0]
        try:
            target = urljoin(str(at), target)
            hop = parse_uri(target, redirect=True)
        except (InvalidReference, ValueError) as exc:
            why = exc.message if isinstance(exc, InvalidReference) else str(exc)
            raise InvalidReference(
                f"{where} redirects to {target[:300]!r}, not a usable URL: {why}",
                uri=where,
                location=target[:300],
            ) from None
        if not hop.is_http:
            raise InvalidReference(
                f"{where} redirects to {target[:300]!r}: not an http(s) URL",
                uri=where,
                location=target[:300],
            )
        check_allowed(hop, self.allow, redirected_from=str(start))
        return hop

    async def _http_observe(self, uri: RefURI) -> Observed:
        url, resp = await self._follow("HEAD", uri, dict(_IDENTITY))
        await resp.aclose()
        if resp.status_code in (403, 405, 501):  # no HEAD (a presigned GET URL): one byte
            url, resp = await self._follow("GET", uri, {**_IDENTITY, "range": "bytes=0-0"})
            await resp.aclose()
        if resp.status_code in (404, 410):
            return Observed(None, url=str(url))
        if not resp.is_success:
            raise StoreError(
                f"{str(uri)[:300]}: the server answered HTTP {resp.status_code}",
                uri=str(uri)[:300],
                status=resp.status_code,
            )
        h = resp.headers
        if resp.status_code == 206:
            total = h.get("content-range", "").rpartition("/")[2]
        else:
            total = h.get("content-length", "")
        if not total.isdigit():
            raise InvalidReference(f"{str(uri)[:300]}: the server does not report the size")
        return Observed(
            int(total),
            h.get("etag", ""),
            None,
            h.get("last-modified"),
            url=str(url),
            ranges=resp.status_code == 206 or h.get("accept-ranges", "").lower() == "bytes",
        )

    # -- registration ----------------------------------------------------------------
    async def pin_objects(self, uri: RefURI, need_ranges: bool = False) -> list[tuple[str, Pin]]:
        """``(path, pin)`` of every object the URI names: a listing for a prefix (no
        per-object HEAD), one HEAD for a single object. Reads no object bytes."""
        if uri.is_http:
            o = await self._http_observe(uri)
            if o.size is None:
                raise SourceNotFound(f"nothing at {uri} (HTTP 404)", uri=str(uri))
            if need_ranges and not o.ranges:
                raise InvalidReference(
                    f"{uri}: the server does not serve byte ranges, which --index needs"
                )
            etag = o.etag
            pin = make_pin(
                str(uri), o.size, etag, None, o.last_modified, weak_etag=etag.startswith("W/")
            )
            name = unquote(uri.key.partition("?")[0].rsplit("/", 1)[-1])
            return [(_name(name, str(uri)), pin)]
        store = self.store(uri)
        if not uri.is_prefix:
            info = await store.stat(uri.key)
            if info is None:
                raise SourceNotFound(
                    f"no object at {uri} (to register every object under a prefix, end "
                    "the URI with /)",
                    uri=str(uri),
                )
            return [(_name(posixpath.basename(uri.key), str(uri)), self._pin(uri, info))]
        out: list[tuple[str, Pin]] = []
        async for info in store.list_pinned(uri.key):
            if info.key.endswith("/"):  # a "directory marker", not a file
                continue
            out.append(
                (_name(info.key[len(uri.key) :], uri.object_uri(info.key)), self._pin(uri, info))
            )
            if len(out) > MAX_OBJECTS:
                raise InvalidReference(f"{uri} holds more than {MAX_OBJECTS} objects")
        if not out:
            raise SourceNotFound(f"no objects under {uri}", uri=str(uri))
        return _tree(out, str(uri))

    @staticmethod
    def _pin(uri: RefURI, info: ObjectInfo) -> Pin:
        return make_pin(
            uri.object_uri(info.key), info.size, info.etag, info.version_id, info.last_modified
        )

    # -- checking --------------------------------------------------------------------
    async def observe(self, pin: Pin) -> Observed:
        """What the source says now about the pinned object (its pinned version, where
        there is one)."""
        uri = parse_uri(pin.uri)
        if uri.is_http:
            return await self._http_observe(uri)
        return _observed(await self.store(uri).stat(uri.key, version_id=pin.version_id))

    async def check_all(
        self, pins: list[Pin], prefix: RefURI | None = None
    ) -> list[tuple[str, Observed, bool]]:
        """``(state, observed, superseded)`` per pin. Under a bucket prefix one listing
        answers for every object still current; only the others get a HEAD. A
        version-pinned object that was overwritten is still intact: ``ok``, superseded."""
        listed: dict[str, Observed] = {}
        by_listing = prefix is not None and prefix.is_prefix
        if by_listing:
            assert prefix is not None
            async for info in self.store(prefix).list_pinned(prefix.key):
                listed[prefix.object_uri(info.key)] = _observed(info)
        sem = asyncio.Semaphore(CHECK_CONCURRENCY)

        async def one(pin: Pin) -> tuple[str, Observed, bool]:
            current = listed.get(pin.uri)
            if current is not None and current.state(pin) == "ok":
                return "ok", current, False
            if by_listing and current is None and not pin.version_id:
                return "missing", Observed(None), False
            async with sem:
                o = await self.observe(pin)
            state = o.state(pin)
            return state, o, state == "ok" and current is not None

        return list(await asyncio.gather(*(one(p) for p in pins)))

    # -- reading -----------------------------------------------------------------------
    async def pinned_request(self, pin: Pin, check: bool = True) -> PresignedRequest:
        """A GET that serves the pinned bytes or fails (404/412) where the source can
        enforce that. With ``check``, a HEAD first: drift fails here, by name."""
        uri = parse_uri(pin.uri)
        if uri.is_http:
            o = await self._http_observe(uri)  # also where the redirects lead now (checked)
            state = o.state(pin)
            if state != "ok":
                raise drifted(pin, state, found=o.to_json())
            headers = dict(_IDENTITY)
            if pin.etag and not pin.weak_etag:
                headers["if-match"] = f'"{pin.etag}"'
            elif pin.last_modified:
                headers["if-unmodified-since"] = pin.last_modified
            return PresignedRequest("GET", o.url, headers)
        if check:
            o = await self.observe(pin)
            state = o.state(pin)
            if state != "ok":
                raise drifted(pin, state, found=o.to_json())
        return await self.store(uri).presign_get(
            uri.key, self.expiry, version_id=pin.version_id, if_match=pin.etag or None
        )

    async def read(
        self, pin: Pin, start: int, end: int, check: bool = True
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the pinned object, through the gateway."""
        if end <= start:
            return
        req = await self.pinned_request(pin, check)
        headers = {**req.headers, **_IDENTITY, "range": f"bytes={start}-{end - 1}"}
        client = self._async_client(guarded=pin.uri.startswith("http"))
        want = end - start
        try:
            async with client.stream(req.method, req.url, headers=headers) as resp:
                self._check_response(pin, resp)
                got = 0
                async for piece in resp.aiter_raw():
                    got += len(piece)
                    if got > want:
                        raise StoreError(f"{pin.uri}: the source sent more than asked for")
                    yield piece
        except httpx.HTTPError as exc:
            raise StoreError(f"reading {pin.uri} failed: {exc}", uri=pin.uri) from exc
        if got != want:
            raise StoreError(f"{pin.uri}: the source sent {got} of {want} bytes", uri=pin.uri)

    @staticmethod
    def _check_response(pin: Pin, resp: httpx.Response) -> None:
        state = response_drift(pin, resp.status_code, resp.headers)
        if state:
            raise drifted(pin, state, status=resp.status_code)
        if resp.status_code not in (200, 206):
            raise StoreError(
                f"reading {pin.uri} failed: HTTP {resp.status_code}",
                uri=pin.uri,
                status=resp.status_code,
            )

    def fingerprint(
        self,
        pin: Pin,
        req: PresignedRequest,
        on_chunks: Callable[[list[ChunkEntry]], None] | None,
        progress: Callable[[int], None],
    ) -> Fingerprint:
        """Stream the pinned object once (blocking: run it on a worker thread) and
        return its digest, handing chunk entries to ``on_chunks`` and the size of every
        piece read to ``progress`` (which may raise to stop)."""
        client = self._sync_client(guarded=pin.uri.startswith("http"))
        try:
            with client.stream(req.method, req.url, headers={**req.headers, **_IDENTITY}) as r:
                self._check_response(pin, r)
                fp = fingerprint(_Reader(r.iter_raw(1 << 20), progress), pin.size, on_chunks)
        except httpx.HTTPError as exc:
            raise StoreError(f"reading {pin.uri} failed: {exc}", uri=pin.uri) from exc
        if fp.size != pin.size:
            raise drifted(pin, "changed", size=fp.size)
        return fp


class _Reader(io.RawIOBase):
    """A file-like view of a response body, for the chunker. ``progress`` hears of every
    piece as it arrives (and may raise to stop reading)."""

    def __init__(self, pieces: Iterator[bytes], progress: Callable[[int], None]) -> None:
        self._pieces = pieces
        self._progress = progress
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        while not len(self._buf):
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._progress(len(piece))
            self._buf = memoryview(piece)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
