"""A bucket prefix (``s3://``, ``gs://``, ``az://``) read and written with the caller's
own credentials, for imports from and exports to buckets.

Why the caller's credentials and not the gateway's: a gateway reads only what its
operator allowed (``CHUNKYARD_REF_ALLOW``) and writes nowhere but its own store, while
whoever migrates artifacts holds credentials for the buckets involved (the usual
``AWS_*``, ``AZURE_STORAGE_CONNECTION_STRING``, ``GOOGLE_APPLICATION_CREDENTIALS``,
as for ``aws s3 sync``). So this module opens chunkyard's own store backends
(:mod:`chunkyard.stores`) in the client's process; that is why the migration tool is a
layer of its own above the client (``tests/test_layers.py``).

The bytes themselves move through presigned requests sent by the client's transport
(its retries, its waits): a GET pinned to the listed version and ETag, resumed with a
Range if the connection breaks; an upload in parts (multipart, block list or resumable
session, each part with the checksum the store checks), in parallel where the store
allows. The store SDK does only the listing, the signing and the completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..client.transport import Transport
from ..errors import Conflict, InvalidRequest, StoreError
from ..parts import PartPlan, part_checksum
from ..pins import drift, make_pin, parse_uri, response_confirms, response_drift
from ..stores import CompletedPart, ObjectInfo, Store, open_store

T = TypeVar("T")
#: presigned requests live this long: one object's transfer, with room for retries
EXPIRES = 3600
#: files up to this size are written with one request (the store SDK's own PUT)
PUT_MAX = 8 * 1024 * 1024
#: parts of one upload in flight at once
PARTS = 8
PIECE = 1024 * 1024


def bucket_uri(text: str) -> bool:
    """Whether ``text`` names a bucket prefix this module handles."""
    return text.split("://", 1)[0].lower() in ("s3", "gs", "az") and "://" in text


def _when(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Bucket:
    """Objects under one prefix. Thread-safe: the store's async calls run on a private
    event loop; transfers run on the calling threads."""

    def __init__(self, uri: str, transport: Transport) -> None:
        text = uri if uri.endswith("/") else uri + "/"
        self.uri = parse_uri(text)  # refuses ``..``, empty segments, user info, http
        if self.uri.is_http:
            raise InvalidRequest(f"{uri!r} is not a bucket prefix (s3://, gs://, az://)")
        self.t = transport
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.store: Store = open_store(self.uri.store_url)

    def __str__(self) -> str:
        return str(self.uri)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        try:
            self._run(self.store.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> Bucket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------
    def objects(self) -> list[tuple[str, ObjectInfo]]:
        """``(path under the prefix, object)`` of every object, by path; "directory
        markers" (keys ending in ``/``) are not files and are left out. A plain listing
        (GCS and Azure list generations and version ids; S3 objects are pinned by ETag),
        so reading needs no permission beyond listing and getting objects."""

        async def listing() -> list[ObjectInfo]:
            return [i async for i in self.store.list(self.uri.key)]

        out = [
            (info.key[len(self.uri.key) :], info)
            for info in self._run(listing())
            if not info.key.endswith("/")
        ]
        return sorted(out, key=lambda item: item[0].encode())

    def fetch(
        self, info: ObjectInfo, dest: Path, progress: Callable[[int], None] | None = None
    ) -> None:
        """Download one listed object to ``dest`` through a GET pinned to the listed
        version (and ETag where the store checks it); a broken connection resumes with
        a Range. An object that changed or vanished since the listing is a conflict."""
        uri = self.uri.object_uri(info.key)
        pin = make_pin(uri, info.size, info.etag, info.version_id, info.last_modified)
        req = self._run(
            self.store.presign_get(
                info.key, EXPIRES, version_id=info.version_id, if_match=info.etag or None
            )
        ).to_json()
        pos, confirmed = 0, False
        with open(dest, "wb") as out:

            def headers() -> dict[str, str]:  # asked on every try: resume where it broke
                return {"accept-encoding": "identity"} | ({"range": f"bytes={pos}-"} if pos else {})

            def write(resp: Any) -> None:
                nonlocal pos, confirmed
                if response_drift(pin, resp.status, resp.headers):
                    raise self._changed(uri)
                confirmed = response_confirms(pin, resp.headers)
                if pos and resp.status == 200:  # the Range was ignored: start over
                    out.seek(0)
                    out.truncate()
                    pos = 0
                for piece in resp.stream(PIECE, decode_content=False):
                    pos += len(piece)
                    if pos > info.size:
                        raise self._changed(uri)
                    out.write(piece)
                    if progress is not None:
                        progress(len(piece))

            try:
                self.t.read(req, write, headers=headers, what=f"reading {uri}", party="source")
            except StoreError as exc:
                if exc.detail.get("status") in (404, 410, 412):
                    raise self._changed(uri) from exc
                raise
        if pos != info.size:
            raise self._changed(uri)
        if not confirmed:  # the answer did not say which bytes it served: look again
            now = self._run(self.store.stat(info.key))
            if now is None or drift(pin, now.size, now.etag, now.version_id) != "ok":
                raise self._changed(uri)

    @staticmethod
    def _changed(uri: str) -> Conflict:
        return Conflict(f"{uri} changed or vanished while it was read: run again", uri=uri)

    # -- writing -------------------------------------------------------------------
    def existing(self) -> dict[str, tuple[int, float | None]]:
        """``path -> (size, last modified)`` of the objects under the prefix now."""
        return {path: (i.size, _when(i.last_modified)) for path, i in self.objects()}

    def write(self, path: str, src: Path, progress: Callable[[int], None] | None = None) -> None:
        """Write the local file ``src`` as the object at ``path`` under the prefix (an
        object there is replaced)."""
        key = self.uri.key + path
        size = src.stat().st_size
        if size <= PUT_MAX:
            self._run(self.store.put(key, src.read_bytes()))
            if progress is not None:
                progress(size)
            return
        upload_id = self._run(self.store.create_upload(key, size))
        try:
            plan = self.store.plan_parts(size)
            if self.store.sequential_parts:
                parts = [self._part(key, upload_id, p, size, src, progress) for p in plan]
            else:
                with ThreadPoolExecutor(PARTS, thread_name_prefix="cy-bucket") as pool:
                    parts = list(
                        pool.map(lambda p: self._part(key, upload_id, p, size, src, progress), plan)
                    )
            self._run(self.store.complete_upload(key, upload_id, parts))
        except BaseException:
            with contextlib.suppress(StoreError):  # else the store expires it itself
                self._run(self.store.abort_upload(key, upload_id))
            raise

    def _part(
        self,
        key: str,
        upload_id: str,
        part: PartPlan,
        size: int,
        src: Path,
        progress: Callable[[int], None] | None,
    ) -> CompletedPart:
        with open(src, "rb") as f:
            f.seek(part.offset)
            data = f.read(part.size)
        if len(data) != part.size:
            raise InvalidRequest(f"{src} changed while it was being written to {self}")
        kind = self.store.part_checksum
        checksum = part_checksum(kind, data) if kind else None
        req = self._run(
            self.store.presign_part(key, upload_id, part, size, checksum, EXPIRES)
        ).to_json()
        resp = self.t.send(req, content=data, what=f"upload of {key} part {part.number}")
        if progress is not None:
            progress(len(data))
        return CompletedPart(part.number, resp.headers.get("etag", ""), checksum or "")
