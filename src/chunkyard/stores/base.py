"""The narrow interface every store (local, S3, GCS, Azure) implements.

Rules every implementation keeps (the shared contract suite in
``tests/stores/contract.py`` checks them against each store):

- Objects are write-once: a key is written by a completed multipart upload (or, for
  small objects the gateway writes itself, by ``put``), never modified afterwards.
- ``get`` with ``start``/``end`` returns exactly bytes ``[start, end)``; reading a
  missing key raises :class:`~chunkyard.errors.StoreObjectMissing`.
- ``stat`` returns ``None`` for a missing key; ``delete`` of a missing key is fine.
- Multipart uploads: ``create_upload`` → ``presign_part`` for each part of
  ``plan_parts(size)`` (clients PUT those URLs directly, in parallel unless
  ``sequential_parts``) → ``complete_upload`` makes the object appear whole, atomically.
  ``abort_upload`` discards the parts. ``list_parts`` says which parts of an
  unfinished upload the store holds, so an upload that was interrupted (the client or
  the gateway died) resumes without sending them again. ``list_uploads`` finds
  unfinished ones where the store can list them (``lists_uploads``): garbage
  collection aborts those no catalog row knows.
- Presigned requests are short-lived and name exactly one part of one object
  (uploads) or one object (reads; the client adds a ``Range`` header).
- Pins (reference versions): ``stat`` and ``presign_get`` take the version id a
  reference recorded; ``presign_get`` also takes the ETag, and the request it returns
  fails (404/412) rather than serve other bytes wherever the store can enforce that.
  ``stat`` reports the version id the store answered for, so a store that ignores the
  one asked for is caught by the caller's comparison.
- Every foreign error is translated into :class:`~chunkyard.errors.StoreError`
  naming the store and the operation, with the original chained.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..parts import PartPlan, plan_even_parts

__all__ = [
    "CompletedPart",
    "HeldPart",
    "ObjectInfo",
    "PartPlan",
    "PendingUpload",
    "PresignedRequest",
    "Store",
    "plan_even_parts",
]


def range_header(byte_range: tuple[int, int]) -> str:
    """The HTTP ``Range`` value of bytes ``[start, end)``."""
    return f"bytes={byte_range[0]}-{byte_range[1] - 1}"


@dataclass(frozen=True)
class PresignedRequest:
    """An HTTP request a client sends straight to the store."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"method": self.method, "url": self.url, "headers": self.headers}


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str = ""
    checksum: str = ""  # the part checksum sent with it, for stores that want it back


@dataclass(frozen=True)
class HeldPart:
    """A part the store holds of an unfinished upload: its size, the ETag a completion
    names it by (empty where the store needs none) and the checksum the store
    recorded for it (base64, the kind of ``part_checksum``; empty where it keeps none)."""

    number: int
    size: int
    etag: str = ""
    checksum: str = ""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""
    version_id: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload the store holds."""

    key: str
    upload_id: str
    started: float | None = None  # Unix time it began, where the store says


async def _none() -> AsyncIterator[PendingUpload]:
    return
    yield  # an async generator that yields nothing


class Store(abc.ABC):
    """Where packs live. Keys are relative ``/``-separated paths under the store's
    prefix (``packs/ab/abcd…``); the store adds its own prefix."""

    #: URL the store was configured from (``file:///…``, ``s3://bucket/prefix``)
    url: str
    #: checksum the client must compute per part and send in the presign request:
    #: ``"crc32c"`` or ``"sha256"`` (base64 x-amz-checksum-*), ``"md5"`` (base64
    #: Content-MD5), ``"blake3"`` (base64, local store) or None; one of
    #: :data:`chunkyard.parts.CHECKSUM_SIZES`, computed by :func:`chunkyard.parts.part_checksum`
    part_checksum: str | None = None
    #: True where parts must be sent in order (GCS resumable sessions)
    sequential_parts: bool = False
    #: True where a presigned GET can be limited to a byte range (Azure SAS cannot)
    signs_ranges: bool = True
    #: True where :meth:`list_uploads` sees unfinished multipart uploads
    lists_uploads: bool = False

    @abc.abstractmethod
    def plan_parts(self, size: int) -> list[PartPlan]:
        """Split an object of ``size`` bytes into parts within the store's limits."""

    @abc.abstractmethod
    async def check(self) -> None:
        """Fail fast at gateway start with a clear error if the store is unusable."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Write a small object whole, from the gateway itself (packs it builds from
        small pushes, metadata records). A key is fresh, or (a metadata record, named by
        its content) written again with the same bytes."""

    @abc.abstractmethod
    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Read bytes ``[start, end)`` of an object (server side)."""

    async def read_into(self, key: str, buf: bytearray) -> int:
        """Read a whole object into ``buf`` (at most ``len(buf)`` bytes); the number of
        bytes read. Verification reads every pack this way into recycled buffers: a
        fresh 32 MiB object per pack cost page faults, and glibc kept freed ones.
        Stores that can stream into the buffer override this copy."""
        data = await self.get(key, 0, len(buf))
        buf[: len(data)] = data
        return len(data)

    @abc.abstractmethod
    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """Size and identity (ETag, version id, last-modified) of an object, or of one
        version of it; None if it does not exist."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""

    def list_pinned(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Like :meth:`list`, with each current object's version id where the store
        keeps versions, so a prefix can be pinned without one HEAD per object."""
        return self.list(prefix)

    @abc.abstractmethod
    async def create_upload(self, key: str, size: int) -> str:
        """Start a multipart upload; returns the store's upload id."""

    @abc.abstractmethod
    async def presign_part(
        self,
        key: str,
        upload_id: str,
        part: PartPlan,
        total_size: int,
        checksum: str | None,
        expires: int,
    ) -> PresignedRequest:
        """A request that uploads one part, valid for ``expires`` seconds."""

    @abc.abstractmethod
    async def complete_upload(self, key: str, upload_id: str, parts: list[CompletedPart]) -> None:
        """Make the uploaded parts appear as one object."""

    @abc.abstractmethod
    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Discard an unfinished upload and its parts."""

    def list_uploads(self, prefix: str = "") -> AsyncIterator[PendingUpload]:
        """Unfinished multipart uploads of keys under ``prefix``, where the store can
        list them (``lists_uploads``). Those that cannot yield nothing: GCS forgets a
        resumable session after a week, Azure discards uncommitted blocks after a
        week, and neither can list them."""
        return _none()

    @abc.abstractmethod
    async def list_parts(self, key: str, upload_id: str, size: int) -> list[HeldPart]:
        """The parts of the unfinished upload of ``size`` bytes that the store holds
        whole now, by number: what a resumed upload need not send again. A part still
        arriving, or cut short, is not listed. An upload that was completed, aborted
        or never existed holds none (an empty list, not an error)."""

    @abc.abstractmethod
    async def presign_get(
        self,
        key: str,
        expires: int,
        version_id: str | None = None,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> PresignedRequest:
        """A GET for one object, valid for ``expires`` seconds. ``version_id`` and
        ``if_match`` (a bare ETag) pin it to the bytes a reference recorded. With
        ``byte_range`` (``[start, end)``) the request carries that ``Range`` header and,
        where the store can sign it (``signs_ranges``), serves no other bytes; without
        it, clients add a Range of their own."""

    def prepare(self) -> None:
        """Load, at start and on a worker thread, what the first request would
        otherwise wait for (blocking; errors are the first request's to meet)."""

    def local_path(self, key: str) -> str | None:
        """Where a client on the gateway's own machine may read an object itself,
        bypassing the HTTP hop (None: the store is not a directory here)."""
        return None

    async def close(self) -> None:
        """Release connections."""
