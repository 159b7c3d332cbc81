"""A store in a local directory, served through the gateway's blob endpoint.

It speaks the same multipart protocol as S3 so that clients have one code path:
"presigned" URLs point at the gateway's blob endpoint (``blob_url``), HMAC-signed and
expiring (see :mod:`chunkyard.signing`); that endpoint only adapts HTTP and hands the
request to :meth:`LocalStore.receive_part` and :meth:`LocalStore.open_signed`. Parts
land in ``.uploads/<id>/``; completion concatenates them into a temporary file and
renames it into place, so an object appears whole or not at all.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import mmap
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlencode

import anyio
import blake3

from .. import signing
from ..errors import (
    BodyTooLarge,
    IntegrityFailure,
    InvalidRequest,
    NotFound,
    PreconditionFailed,
    StoreError,
    StoreObjectMissing,
)
from .base import (
    CompletedPart,
    HeldPart,
    ObjectInfo,
    PartPlan,
    PendingUpload,
    PresignedRequest,
    Store,
    plan_even_parts,
    range_header,
)

T = TypeVar("T")

UPLOADS = ".uploads"
#: one part per pack: on local disk there is nothing to gain from splitting
PART_SIZE = 64 * 1024 * 1024
#: reads a mapped range in as it is mapped (Linux); elsewhere it is paged in as sent
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def local_etag(st: os.stat_result) -> str:
    """Modification time and size: changes whenever a write replaces the file."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}"


def _part_etag(number: int, size: int) -> str:
    return f'"{number}-{size}"'


class LocalStore(Store):
    #: BLAKE3 of each part, signed into its URL: a part damaged on the way is refused
    #: and re-sent alone, at a fraction of MD5's cost.
    part_checksum = "blake3"
    lists_uploads = True

    def __init__(self, root: str | os.PathLike, blob_url: str = "", secret: bytes = b"") -> None:
        """``blob_url``: where the gateway serves this store's objects (signed URLs
        point there); ``secret``: the key that signs them."""
        self.root = Path(root)
        self.url = self.root.resolve().as_uri()
        self.blob_url = blob_url.rstrip("/")
        self.secret = secret

    # -- helpers ---------------------------------------------------------
    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/") or key.startswith(UPLOADS):
            raise InvalidRequest(f"invalid store key {key!r}")
        return self.root / key

    def _upload_dir(self, upload_id: str) -> Path:
        if not upload_id or not all(c in "0123456789abcdef" for c in upload_id):
            raise InvalidRequest("invalid upload id")
        return self.root / UPLOADS / upload_id

    def _signed_url(self, method: str, key: str, params: dict[str, str], expires: int) -> str:
        if not self.blob_url:
            raise StoreError("this local store has no blob endpoint to sign URLs for")
        signed = signing.sign(self.secret, method, key, params, expires)
        return f"{self.blob_url}/{quote(key)}?{urlencode(signed)}"

    # -- Store interface ------------------------------------------------
    def plan_parts(self, size: int) -> list[PartPlan]:
        return plan_even_parts(size, PART_SIZE)

    async def check(self) -> None:
        existed = self.root.is_dir()
        try:
            (self.root / UPLOADS).mkdir(parents=True, exist_ok=True)
            probe = self.root / UPLOADS / f"probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            what = "is not writable" if existed else "does not exist and cannot be created"
            raise StoreError(
                f"local store {self.url} {what}: {exc}", store=self.url, operation="check"
            ) from exc

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        await anyio.to_thread.run_sync(write)

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        path = self._path(key)

        def read() -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(-1 if end is None else max(0, end - start))

        return await self._reading(key, read)

    async def read_into(self, key: str, buf: bytearray) -> int:
        path = self._path(key)

        def read() -> int:
            with open(path, "rb", buffering=0) as f:
                view, n = memoryview(buf), 0
                while n < len(buf) and (got := f.readinto(view[n:])):
                    n += got
                return n

        return await self._reading(key, read)

    async def _reading(self, key: str, read: Callable[[], T]) -> T:
        """``read`` on a worker thread; a missing file is the store's missing object."""
        try:
            return await anyio.to_thread.run_sync(read)
        except FileNotFoundError as exc:
            raise StoreObjectMissing(
                f"object {key} is missing from {self.url}", store=self.url, operation="get", key=key
            ) from exc

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """A directory keeps no versions: ``version_id`` is ignored (and None answered)."""
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key=key, size=st.st_size, etag=local_etag(st))

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            if rel_dir == UPLOADS or rel_dir.startswith(UPLOADS + "/"):
                dirnames[:] = []
                continue
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".tmp"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:  # deleted while we walked
                        continue
                    yield ObjectInfo(key=key, size=st.st_size, last_modified=_iso(st.st_mtime))

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[PendingUpload]:
        """``.uploads/<id>/`` directories, each naming its key; begun when made."""
        base = self.root / UPLOADS
        for d in sorted(base.iterdir()) if base.is_dir() else ():
            try:
                key = (d / "key").read_text()
                started = d.stat().st_mtime
            except (FileNotFoundError, NotADirectoryError):  # a probe file, or just completed
                continue
            if key.startswith(prefix):
                yield PendingUpload(key, d.name, started)

    async def create_upload(self, key: str, size: int) -> str:
        self._path(key)
        upload_id = uuid.uuid4().hex
        d = self._upload_dir(upload_id)
        await anyio.to_thread.run_sync(lambda: d.mkdir(parents=True))
        (d / "key").write_text(key)
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
        params = {"upload": upload_id, "part": str(part.number), "size": str(part.size)}
        if checksum:
            params["b3"] = checksum
        return PresignedRequest("PUT", self._signed_url("PUT", key, params, expires))

    async def complete_upload(self, key: str, upload_id: str, parts: list[CompletedPart]) -> None:
        d = self._upload_dir(upload_id)
        path = self._path(key)

        def assemble() -> None:
            if not d.is_dir() and path.is_file():
                return  # completed before (a retry after a lost answer), as S3 answers
            if not d.is_dir() or (d / "key").read_text() != key:
                raise StoreError(
                    f"no upload {upload_id} for {key}", store=self.url, operation="complete_upload"
                )
            numbers = sorted(p.number for p in parts)
            if numbers != list(range(1, len(numbers) + 1)):
                raise InvalidRequest("parts must be numbered 1..N without gaps")
            missing = [n for n in numbers if not (d / f"{n:05d}").exists()]
            if missing:
                raise InvalidRequest(f"parts {missing} were not uploaded", missing_parts=missing)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{upload_id}.tmp")
            if len(numbers) == 1:
                os.replace(d / "00001", tmp)
            else:
                with open(tmp, "wb") as out:
                    for n in numbers:
                        with open(d / f"{n:05d}", "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, path)
            shutil.rmtree(d, ignore_errors=True)

        await anyio.to_thread.run_sync(assemble)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        d = self._upload_dir(upload_id)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(d, ignore_errors=True))

    async def list_parts(self, key: str, upload_id: str, size: int) -> list[HeldPart]:
        """The part files of the upload: each is renamed into place only once it arrived
        whole and matched its checksums, so every one listed is a finished part."""
        d = self._upload_dir(upload_id)
        self._path(key)

        def scan() -> list[HeldPart]:
            try:
                if (d / "key").read_text() != key:
                    return []
                names = os.listdir(d)
            except (FileNotFoundError, NotADirectoryError):
                return []
            held = []
            for name in names:
                if len(name) == 5 and name.isdigit():
                    with contextlib.suppress(FileNotFoundError):  # completed meanwhile
                        n = os.stat(d / name).st_size
                        held.append(HeldPart(int(name), n, _part_etag(int(name), n)))
            return sorted(held, key=lambda p: p.number)

        return await anyio.to_thread.run_sync(scan)

    async def presign_get(
        self,
        key: str,
        expires: int,
        version_id: str | None = None,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> PresignedRequest:
        """``if_match`` is signed into the URL; the blob endpoint answers 412 when the
        file's ETag differs. There are no versions to pin. A ``byte_range`` is signed
        too: the endpoint serves those bytes and no others."""
        params, headers = {}, {}
        if if_match:
            params["etag"] = if_match
        if byte_range:
            params["range"] = f"{byte_range[0]}-{byte_range[1] - 1}"
            headers["Range"] = range_header(byte_range)
        return PresignedRequest("GET", self._signed_url("GET", key, params, expires), headers)

    def local_path(self, key: str) -> str | None:
        """The object's absolute path: a pull on this machine reads packs from the
        files, as a pull from S3 reads them from S3, and the gateway stays out of the
        way (serving them took it ~0.4 core-s per GiB, and a pull ~20 % longer)."""
        return str(self._path(key).absolute())

    # -- the other side of its signed URLs (the gateway's blob endpoint) -------
    async def receive_part(
        self,
        key: str,
        params: dict[str, str],
        body: AsyncIterator[bytes],
        content_md5: str | None = None,
    ) -> str:
        """Write one part of a signed upload from a request body; returns its ETag.

        The part is written under a temporary name and renamed into place only once it
        has exactly the signed size and matches its checksums (the signed BLAKE3 and
        any Content-MD5), so a damaged or truncated part leaves nothing behind."""
        signing.verify(self.secret, "PUT", key, params)
        size, number = int(params["size"]), int(params["part"])
        path = self._part_path(key, params["upload"], number)
        if not path.parent.is_dir():
            raise NotFound("no such upload (completed or aborted)")
        md5 = hashlib.md5() if content_md5 else None
        b3 = blake3.blake3() if params.get("b3") else None
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        written = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # plain writes on the event loop: a 64 KiB write into the page cache takes
            # microseconds, far less than handing each piece to a thread
            async for piece in body:
                written += len(piece)
                if written > size:
                    raise BodyTooLarge(f"part {number} must be {size} bytes", limit=size)
                if md5:
                    md5.update(piece)
                if b3:
                    b3.update(piece)
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.close(fd)
            fd = -1
            if written != size:
                raise InvalidRequest(
                    f"part {number} is truncated: {written} of {size} bytes",
                    received=written,
                    expected=size,
                )
            if md5 and base64.b64encode(md5.digest()).decode() != content_md5:
                raise IntegrityFailure(f"part {number} does not match its Content-MD5")
            if b3 and base64.b64encode(b3.digest()).decode() != params["b3"]:
                raise IntegrityFailure(f"part {number} does not match its signed BLAKE3 checksum")
            os.replace(tmp, path)
        finally:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
        return _part_etag(number, size)

    def open_signed(self, key: str, params: dict[str, str]) -> tuple[Path, tuple[int, int] | None]:
        """The file a signed GET may read, and the bytes ``[start, end)`` it may read
        when the URL was signed for a range; a pinned read (``etag``) of a file that
        changed is refused."""
        signing.verify(self.secret, "GET", key, params)
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound("no such object") from None
        if "etag" in params and local_etag(st) != params["etag"]:
            raise PreconditionFailed("the object changed since its URL was signed")
        signed = None
        if "range" in params:
            first, _, last = params["range"].partition("-")
            signed = (int(first), int(last) + 1)
        return path, signed

    @staticmethod
    def read_range(path: Path, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)`` of a file that ``open_signed`` allowed, for the blob
        endpoint to send (blocking: run it on a worker thread). The file is mapped, not
        read: the answer is sent from the page cache as it is, where reading it
        cost a copy and 8 MiB of fresh pages per range, two thirds of the gateway's work
        serving a pull. The mapping lives as long as the view (until the last byte is
        sent); objects are never modified in place, and one deleted meanwhile stays
        readable through it."""
        if end <= start:
            return b""
        base = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(path, "rb") as f:
                if _POPULATE:  # paged in here, on a worker: a cold pack stalls no event loop
                    flags = mmap.MAP_SHARED | _POPULATE
                    mapped = mmap.mmap(
                        f.fileno(), end - base, flags=flags, prot=mmap.PROT_READ, offset=base
                    )
                else:
                    mapped = mmap.mmap(f.fileno(), end - base, access=mmap.ACCESS_READ, offset=base)
        except (OSError, ValueError):  # a file system that cannot map, or a short file
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        return memoryview(mapped)[start - base :]

    def _part_path(self, key: str, upload_id: str, number: int) -> Path:
        d = self._upload_dir(upload_id)
        self._path(key)
        return d / f"{number:05d}"
