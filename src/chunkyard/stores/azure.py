"""Packs in an Azure Blob Storage container (or Azurite).

A multipart upload is a block blob built from staged blocks: each part is a Put Block
the client sends straight to Azure with a short-lived, write-only blob SAS, and
completion is one Put Block List, so the blob appears whole or not at all. Azure has
no upload object, so the upload id is a random token folded into every block id;
blocks of an abandoned upload are never committed and Azure drops them after a week.

Limits of account-key SAS, accepted here: the SAS covers the one blob, not one block
id, and it cannot sign headers, so ``Content-MD5`` protects a part against corruption
in transit (Azure and Azurite verify it) but not against a client that lies; the
gateway verifies every pack it trusts anyway. A user-delegation SAS (Entra ID) could
pin the block id and checksum (``srq``/``srh``), not done yet.

MD5 is the client's dearest part checksum (1.4 core-seconds per GiB here). Azure also
takes ``x-ms-content-crc64`` on Put Block, but Azurite 3.35 (the test server) does
not check it: with ``--loose`` it accepts a wrong one, without it refuses the header
as unsupported. An unchecked checksum protects nothing, so MD5 stays until Azurite
checks CRC64 (azure-storage-blob computes it only through the optional
``azure-storage-extensions`` package).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlparse

try:
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
    from azure.storage.blob import BlobBlock, BlobSasPermissions, generate_blob_sas
    from azure.storage.blob.aio import BlobServiceClient, ExponentialRetry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the Azure store needs azure-storage-blob: pip install 'chunkyard[azure]'"
    ) from exc

from ..errors import InvalidRequest, StoreError, StoreObjectMissing
from ..parts import checksum_fits
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

MAX_BLOCKS = 50_000
#: 16 MiB blocks: a 64 MiB pack is 4 parallel Put Blocks and a retry resends at most
#: 16 MiB; Azure allows up to 4000 MiB per block and 50,000 blocks per blob.
PART_SIZE = 16 * 1024 * 1024
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class AzureStore(Store):
    part_checksum = "md5"
    #: a blob SAS grants the whole blob: a reader of one range could read the rest
    signs_ranges = False

    def __init__(
        self, url: str, *, connection_string: str | None = None, part_size: int = PART_SIZE
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "az" or not parsed.netloc:
            raise InvalidRequest(f"expected az://container/prefix, got {url!r}")
        self.url = url
        self.container = parsed.netloc
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.part_size = part_size
        conn = connection_string or os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
        if not conn:
            raise StoreError(
                f"Azure store {url}: AZURE_STORAGE_CONNECTION_STRING is not set",
                store=url,
                operation="configure",
            )
        try:
            # two quick retries (0.5 s, 2.5 s) instead of the SDK's 15 s+ backoff, so that
            # check() fails fast when the account is unreachable
            retry = ExponentialRetry(initial_backoff=0.5, increment_base=2, retry_total=2)
            self._service = BlobServiceClient.from_connection_string(
                conn, retry_policy=retry, connection_timeout=5
            )
        except ValueError as exc:
            raise StoreError(
                f"Azure store {url}: bad connection string: {exc}", store=url, operation="configure"
            ) from exc
        self._containers = self._service.get_container_client(self.container)
        cred = self._service.credential
        self._account = self._service.account_name
        self._account_key = getattr(cred, "account_key", None)

    # -- helpers ---------------------------------------------------------
    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidRequest(f"invalid store key {key!r}")
        return self.prefix + key

    def _blob(self, key: str):
        return self._containers.get_blob_client(self._key(key))

    def _error(self, op: str, exc: Exception, key: str | None = None) -> StoreError:
        code = getattr(exc, "error_code", None) or ""
        if (
            isinstance(exc, ResourceNotFoundError)
            and key is not None
            and code != "ContainerNotFound"
        ):
            return StoreObjectMissing(
                f"object {key} is missing from {self.url}", store=self.url, operation=op, key=key
            )
        if code == "ContainerNotFound" or (
            op == "check" and isinstance(exc, ResourceNotFoundError)
        ):
            msg = f"container {self.container} does not exist"
        elif (
            code in ("AuthenticationFailed", "AuthorizationFailure")
            or getattr(exc, "status_code", None) == 403
        ):
            msg = "authentication failed (check the account key in the connection string)"
        else:
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return StoreError(
            f"Azure store {self.url}: {op} failed: {msg}",
            store=self.url,
            operation=op,
            **({"key": key} if key else {}),
        )

    def _sas(
        self,
        key: str,
        permission: BlobSasPermissions,
        expires: int,
        version_id: str | None = None,
    ) -> str:
        if not self._account_key:
            raise StoreError(
                f"Azure store {self.url}: presigning needs an account key in the connection string",
                store=self.url,
                operation="presign",
            )
        now = datetime.now(UTC)
        sas = generate_blob_sas(
            self._account,
            self.container,
            self._key(key),
            account_key=self._account_key,
            permission=permission,
            expiry=now + timedelta(seconds=expires),
            start=now - timedelta(minutes=5),  # tolerate clock skew between hosts
            version_id=version_id,
        )
        pin = f"&versionid={quote(version_id, safe='')}" if version_id else ""
        return f"{self._blob(key).url}?{sas}{pin}"

    @staticmethod
    def _block_id(upload_id: str, number: int) -> str:
        """Equal-length block ids, unique per upload (Azure requires one length per blob)."""
        if not _UPLOAD_ID.match(upload_id):
            raise InvalidRequest("invalid upload id")
        return f"{upload_id}-{number:05d}"

    # -- Store interface ------------------------------------------------
    def plan_parts(self, size: int) -> list[PartPlan]:
        return plan_even_parts(size, max(self.part_size, -(-size // MAX_BLOCKS)))

    async def check(self) -> None:
        try:
            await self._containers.get_container_properties()
        except AzureError as exc:
            raise self._error("check", exc) from exc
        if not self._account_key:
            raise StoreError(
                f"Azure store {self.url}: check failed: presigning needs an "
                "account key in the connection string",
                store=self.url,
                operation="check",
            )

    async def put(self, key: str, data: bytes) -> None:
        try:
            await self._blob(key).upload_blob(data, overwrite=True)
        except AzureError as exc:
            raise self._error("put", exc, key) from exc

    async def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        length = None if end is None else end - start
        try:
            if length is not None and length <= 0:
                await self._blob(key).get_blob_properties()
                return b""
            stream = await self._blob(key).download_blob(offset=start, length=length)
            return await stream.readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:  # start at or past the end
                return b""
            raise self._error("get", exc, key) from exc
        except AzureError as exc:
            raise self._error("get", exc, key) from exc

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        try:
            p = await self._blob(key).get_blob_properties(version_id=version_id)
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", "") == "ContainerNotFound":
                raise self._error("stat", exc) from exc
            return None
        except AzureError as exc:
            raise self._error("stat", exc, key) from exc
        return ObjectInfo(
            key=key,
            size=p.size,
            etag=(p.etag or "").strip('"'),
            version_id=p.version_id,
            last_modified=p.last_modified.isoformat() if p.last_modified else None,
        )

    async def delete(self, key: str) -> None:
        try:
            await self._blob(key).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError:
            pass
        except AzureError as exc:
            raise self._error("delete", exc, key) from exc

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        try:
            async for b in self._containers.list_blobs(name_starts_with=self.prefix + prefix):
                yield ObjectInfo(
                    key=b.name[len(self.prefix) :],
                    size=b.size,
                    etag=(b.etag or "").strip('"'),
                    version_id=b.version_id,
                    last_modified=b.last_modified.isoformat() if b.last_modified else None,
                )
        except AzureError as exc:
            raise self._error("list", exc) from exc

    async def create_upload(self, key: str, size: int) -> str:
        self._key(key)
        return os.urandom(16).hex()

    async def presign_part(
        self,
        key: str,
        upload_id: str,
        part: PartPlan,
        total_size: int,
        checksum: str | None,
        expires: int,
    ) -> PresignedRequest:
        if not checksum_fits("md5", checksum):
            raise InvalidRequest("Azure blocks need the base64 Content-MD5 of the part")
        block = base64.b64encode(self._block_id(upload_id, part.number).encode()).decode()
        url = self._sas(key, BlobSasPermissions(write=True), expires)
        url += f"&comp=block&blockid={quote(block, safe='')}"
        return PresignedRequest("PUT", url, {"Content-MD5": checksum})

    async def complete_upload(self, key: str, upload_id: str, parts: list[CompletedPart]) -> None:
        numbers = sorted(p.number for p in parts)
        # the SDK base64-encodes the ids itself
        blocks = [BlobBlock(block_id=self._block_id(upload_id, n)) for n in numbers]
        try:
            await self._blob(key).commit_block_list(blocks)
        except AzureError as exc:
            raise self._error("complete_upload", exc, key) from exc

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """Nothing to do: Azure has no call to drop staged blocks; it expires them."""

    async def list_parts(self, key: str, upload_id: str, size: int) -> list[HeldPart]:
        """The blob's uncommitted blocks of this upload (Get Block List): a block is
        staged whole or not at all. Azure reports no checksum of a staged block."""
        prefix = self._block_id(upload_id, 0)[:-5]
        try:
            _, staged = await self._blob(key).get_block_list("uncommitted")
        except ResourceNotFoundError:  # no block staged, or the blob was committed
            return []
        except AzureError as exc:
            raise self._error("list_parts", exc, key) from exc
        held = [
            HeldPart(int(b.id[len(prefix) :]), b.size)
            for b in staged
            if b.id.startswith(prefix) and b.id[len(prefix) :].isdigit()
        ]
        return sorted(held, key=lambda p: p.number)

    async def presign_get(
        self,
        key: str,
        expires: int,
        version_id: str | None = None,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> PresignedRequest:
        # a SAS cannot sign headers: If-Match and Range are the client's own (Azure
        # answers 412 ConditionNotMet); a version id is part of the signed URL
        perms = BlobSasPermissions(read=True)
        url = self._sas(key, perms, expires, version_id)
        headers = {"If-Match": f'"{if_match}"'} if if_match else {}
        if byte_range:
            headers["Range"] = range_header(byte_range)
        return PresignedRequest("GET", url, headers)

    async def close(self) -> None:
        await self._service.close()
