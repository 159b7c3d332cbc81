"""Packs in a Google Cloud Storage bucket (or gcp-storage-emulator).

Why plain httpx against the JSON API rather than google-cloud-storage: that client is
sync (every call would need a thread) and has no public way to hand a resumable
session to someone else, which is all this store does. httpx is async, already a core
dependency, and the JSON API is small; google-auth supplies tokens and
google-cloud-storage only the V4 URL signing.

Uploads are resumable sessions the gateway opens: the upload id *is* the session URL
(a bearer capability for that one object, valid a week, so ``expires`` cannot shorten
it), and parts are chunks PUT in order with ``Content-Range`` (multiples of 256 KiB
except the last). GCS answers ``308 Resume Incomplete`` to every chunk but the last:
for a client that is success. The object appears when the last chunk lands;
``complete_upload`` then checks the session finished with the announced size. There is
no per-chunk checksum (``part_checksum = None``): the gateway verifies packs.

Emulator mode (``STORAGE_EMULATOR_HOST``): no auth headers are sent, and without
explicit credentials ``presign_get`` returns a plain, unsigned URL to the emulator's
``/{bucket}/{object}`` endpoint, which serves ranged GETs (the emulator checks no
signatures anyway). With credentials it returns a real V4 signed URL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlparse

import anyio
import httpx

try:
    import google.auth
    import google.auth.credentials
    import google.auth.exceptions
    import google.auth.transport.requests
    from google.cloud import storage as gcs
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the GCS store needs google-cloud-storage: pip install 'chunkyard[gcs]'"
    ) from exc

from ..errors import InvalidRequest, StoreError, StoreObjectMissing
from .base import (
    CompletedPart,
    HeldPart,
    ObjectInfo,
    PartPlan,
    PresignedRequest,
    Store,
    plan_even_parts,
    range_header,
)

CHUNK_UNIT = 256 * 1024  # GCS wants every chunk but the last in multiples of this
#: 16 MiB chunks: a 64 MiB pack is 4 sequential PUTs and a retry resends at most 16 MiB
PART_SIZE = 16 * 1024 * 1024
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
SIZE_META = "chunkyard-size"


class GCSStore(Store):
    part_checksum = None
    sequential_parts = True

    def __init__(
        self,
        url: str,
        *,
        endpoint: str | None = None,
        credentials: Any = None,
        part_size: int = PART_SIZE,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "gs" or not parsed.netloc:
            raise InvalidRequest(f"expected gs://bucket/prefix, got {url!r}")
        if part_size <= 0 or part_size % CHUNK_UNIT:
            raise InvalidRequest(f"GCS part size must be a multiple of {CHUNK_UNIT}")
        self.url, self.bucket, self.part_size = url, parsed.netloc, part_size
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        endpoint = endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or ""
        self.emulator = bool(endpoint)
        if endpoint and "://" not in endpoint:
            endpoint = "http://" + endpoint
        self.endpoint = (endpoint or "https://storage.googleapis.com").rstrip("/")
        self._creds, self._project = credentials, None
        self._http: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    # -- helpers ---------------------------------------------------------
    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidRequest(f"invalid store key {key!r}")
        return self.prefix + key

    def _obj(self, key: str) -> str:
        return f"{self.endpoint}/storage/v1/b/{self.bucket}/o/{quote(self._key(key), safe='')}"

    async def _credentials(self) -> Any:
        """Application default credentials, loaded lazily (never in emulator mode)."""
        if self._creds is None and not self.emulator:
            self._creds, self._project = await anyio.to_thread.run_sync(
                lambda: google.auth.default(scopes=[SCOPE])
            )
        return self._creds

    async def _headers(self) -> dict[str, str]:
        if self.emulator:
            return {}
        async with self._lock:
            creds = await self._credentials()
            if not creds.valid:
                req = google.auth.transport.requests.Request()
                await anyio.to_thread.run_sync(creds.refresh, req)
        return {"Authorization": f"Bearer {creds.token}"}

    async def _call(
        self,
        op: str,
        method: str,
        url: str,
        *,
        key: str | None = None,
        ok: tuple[int, ...] = (200,),
        **kw: Any,
    ) -> httpx.Response:
        """One request; a status outside ``ok`` becomes a StoreError."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(60, connect=5), transport=httpx.AsyncHTTPTransport(retries=2)
            )
        try:
            headers = {**kw.pop("headers", {}), **await self._headers()}
            resp = await self._http.request(method, url, headers=headers, **kw)
        except (httpx.HTTPError, google.auth.exceptions.GoogleAuthError) as exc:
            raise self._error(op, exc, key) from exc
        if resp.status_code not in ok:
            self._raise(op, resp, key)
        return resp

    def _raise(self, op: str, resp: httpx.Response, key: str | None = None) -> None:
        exc = httpx.HTTPStatusError(
            f"HTTP {resp.status_code}: {resp.text[:300]}", request=resp.request, response=resp
        )
        raise self._error(op, exc, key) from exc

    def _error(self, op: str, exc: Exception, key: str | None = None) -> StoreError:
        status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 0
        if status == 404 and key is not None and op in ("get", "complete_upload"):
            return StoreObjectMissing(
                f"object {key} is missing from {self.url}", store=self.url, operation=op, key=key
            )
        msg = {
            404: f"bucket {self.bucket} does not exist",
            401: "authentication failed (check GOOGLE_APPLICATION_CREDENTIALS)",
            403: "access denied (check the credentials' roles on the bucket)",
        }.get(status, f"{type(exc).__name__}: {exc}")
        return StoreError(
            f"GCS store {self.url} ({self.endpoint}): {op} failed: {msg}",
            store=self.url,
            operation=op,
            **({"key": key} if key else {}),
        )

    @staticmethod
    def _info(key: str, meta: dict) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=int(meta.get("size", 0)),
            etag=meta.get("etag", ""),
            version_id=meta.get("generation"),
            last_modified=meta.get("updated"),
        )

    # -- Store interface ------------------------------------------------
    def plan_parts(self, size: int) -> list[PartPlan]:
        return plan_even_parts(size, self.part_size)

    async def check(self) -> None:
        url = f"{self.endpoint}/storage/v1/b/{self.bucket}"
        await self._call("check", "GET", url, params={"fields": "name"})

    async def put(self, key: str, data: bytes) -> None:
        if not data:  # the emulator fails on an empty media upload; a session works
            session = await self.create_upload(key, 0)
            await self._call(
                "put",
                "PUT",
                session,
                key=key,
                ok=(200, 201),
                headers={"Content-Range": "bytes */0"},
            )
            return
        await self._call(
            "put",
            "POST",
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o",
            key=key,
            params={"uploadType": "media", "name": self._key(key)},
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        if end is not None and end <= start:
            if await self.stat(key) is None:
                raise StoreObjectMissing(
                    f"object {key} is missing from {self.url}",
                    store=self.url,
                    operation="get",
                    key=key,
                )
            return b""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        resp = await self._call(
            "get",
            "GET",
            self._obj(key),
            key=key,
            ok=(200, 206, 416),
            params={"alt": "media"},
            headers=headers,
        )
        return b"" if resp.status_code == 416 else resp.content

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        params = {"generation": version_id} if version_id else {}
        resp = await self._call(
            "stat", "GET", self._obj(key), key=key, ok=(200, 404), params=params
        )
        return None if resp.status_code == 404 else self._info(key, resp.json())

    async def delete(self, key: str) -> None:
        await self._call("delete", "DELETE", self._obj(key), key=key, ok=(200, 204, 404))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        params = {"prefix": self.prefix + prefix, "maxResults": "1000"}
        while True:
            resp = await self._call(
                "list", "GET", f"{self.endpoint}/storage/v1/b/{self.bucket}/o", params=params
            )
            body = resp.json()
            for meta in body.get("items", []):
                yield self._info(meta["name"][len(self.prefix) :], meta)
            if not body.get("nextPageToken"):
                return
            params["pageToken"] = body["nextPageToken"]

    async def create_upload(self, key: str, size: int) -> str:
        resp = await self._call(
            "create_upload",
            "POST",
            f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o",
            params={"uploadType": "resumable"},
            json={"name": self._key(key), "metadata": {SIZE_META: str(size)}},
            headers={
                "X-Upload-Content-Type": "application/octet-stream",
                "X-Upload-Content-Length": str(size),
            },
        )
        if not resp.headers.get("location"):
            self._raise("create_upload", resp)
        return resp.headers["location"]

    def _session(self, upload_id: str) -> str:
        """The upload id is the session URL; refuse one that points anywhere else."""
        if not upload_id.startswith(f"{self.endpoint}/upload/storage/v1/b/{self.bucket}/o?"):
            raise InvalidRequest("invalid GCS upload id")
        return upload_id

    async def presign_part(
        self,
        key: str,
        upload_id: str,
        part: PartPlan,
        total_size: int,
        checksum: str | None,
        expires: int,
    ) -> PresignedRequest:
        if part.size == 0:
            rng = f"bytes */{total_size}"
        else:
            rng = f"bytes {part.offset}-{part.offset + part.size - 1}/{total_size}"
        return PresignedRequest("PUT", self._session(upload_id), {"Content-Range": rng})

    async def _status(self, op: str, key: str, upload_id: str) -> httpx.Response:
        """A resumable session's status query: ``308`` while it is unfinished (with
        ``Range: bytes=0-N``, the bytes it persisted, if any), ``200``/``201`` with the
        object once finished, ``404``/``410`` once GCS (or the emulator) forgot it."""
        return await self._call(
            op,
            "PUT",
            self._session(upload_id),
            key=key,
            ok=(200, 201, 308, 404, 410),
            headers={"Content-Range": "bytes */*"},
        )

    async def complete_upload(self, key: str, upload_id: str, parts: list[CompletedPart]) -> None:
        resp = await self._status("complete_upload", key, upload_id)
        if resp.status_code == 308:
            got = resp.headers.get("range", "nothing")
            raise StoreError(
                f"GCS store {self.url}: complete_upload failed: upload of {key} "
                f"is incomplete (the store holds {got})",
                store=self.url,
                operation="complete_upload",
                key=key,
                received=got,
            )
        if resp.status_code in (200, 201):
            meta = resp.json()
        else:  # session gone (finished long ago, or the emulator forgets it): look at the object
            resp = await self._call("complete_upload", "GET", self._obj(key), key=key)
            meta = resp.json()
        want = (meta.get("metadata") or {}).get(SIZE_META)
        if want is not None and int(meta.get("size", -1)) != int(want):
            raise StoreError(
                f"GCS store {self.url}: complete_upload failed: {key} has "
                f"{meta.get('size')} bytes, expected {want}",
                store=self.url,
                operation="complete_upload",
                key=key,
            )

    async def list_parts(self, key: str, upload_id: str, size: int) -> list[HeldPart]:
        """The parts the resumable session holds whole, by its status query; a finished
        or forgotten session holds none."""
        resp = await self._status("list_parts", key, upload_id)
        got = resp.headers.get("range", "") if resp.status_code == 308 else ""
        first, _, last = got.removeprefix("bytes=").partition("-")
        persisted = int(last) + 1 if first == "0" and last.isdigit() else 0
        return [
            HeldPart(p.number, p.size)
            for p in self.plan_parts(size)
            if p.offset + p.size <= persisted
        ]

    async def abort_upload(self, key: str, upload_id: str) -> None:
        # GCS answers 499 to a cancelled session; the emulator cannot cancel (501)
        await self._call(
            "abort_upload",
            "DELETE",
            self._session(upload_id),
            key=key,
            ok=(200, 204, 404, 410, 499, 501),
        )

    async def presign_get(
        self,
        key: str,
        expires: int,
        version_id: str | None = None,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> PresignedRequest:
        """``version_id`` is the object's generation, part of the signed URL. The JSON
        API's ETag is not the XML API's, so ``if_match`` is not sent: the generation
        already names immutable bytes. A ``byte_range`` is a signed header."""
        headers = {"Range": range_header(byte_range)} if byte_range else {}
        creds = await self._credentials()
        if creds is None:  # emulator without credentials: it checks no signature anyway
            pin = f"?generation={quote(version_id, safe='')}" if version_id else ""
            return PresignedRequest(
                "GET",
                f"{self.endpoint}/{self.bucket}/{quote(self._key(key), safe='/~')}{pin}",
                headers,
            )

        def sign() -> str:
            extra: dict[str, Any] = {}
            if not isinstance(creds, google.auth.credentials.Signing):  # GCE: IAM signBlob
                if not creds.valid:
                    creds.refresh(google.auth.transport.requests.Request())
                extra = {
                    "service_account_email": creds.service_account_email,
                    "access_token": creds.token,
                }
            client = gcs.Client(project=self._project or "chunkyard", credentials=creds)
            blob = client.bucket(self.bucket).blob(self._key(key))
            return blob.generate_signed_url(
                version="v4",
                method="GET",
                expiration=timedelta(seconds=expires),
                api_access_endpoint=self.endpoint,
                credentials=creds,
                generation=int(version_id) if version_id else None,
                headers=headers or None,
                **extra,
            )

        try:
            return PresignedRequest("GET", await anyio.to_thread.run_sync(sign), headers)
        except (google.auth.exceptions.GoogleAuthError, ValueError, AttributeError) as exc:
            raise self._error("presign_get", exc, key) from exc

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
