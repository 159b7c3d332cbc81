"""Packs in an S3 bucket (AWS, SeaweedFS, MinIO, ...).

Server-side calls go through aiobotocore so the gateway never blocks its event loop;
presigning uses a plain botocore client because it is pure local computation.
Every part URL signs the part's checksum, by default ``x-amz-checksum-crc32c`` (the
multipart upload is created with the CRC32C checksum algorithm): the store itself
rejects a part whose bytes were corrupted on the way (S3 and SeaweedFS answer
``BadDigest``), and a client cannot send other bytes under that URL than bytes with
this checksum. CRC32C rather than SHA-256 or Content-MD5 because the client's CPU is
what a direct upload competes for: 0.13 core-seconds per GiB here against 0.6 for
SHA-256 and 1.4 for MD5. That a CRC can be forged matters not: the gateway verifies
every pack against its id before anything may name it. ``sha256`` and ``md5`` stay
selectable (``s3://bucket/prefix?checksum=sha256``; GCS's XML API takes only MD5).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import http.client
import os
import urllib.request
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlparse

try:
    import aiohttp
    import anyio
    import botocore.httpsession
    import botocore.session
    import urllib3
    from aiobotocore.session import get_session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the S3 store needs boto3 and aiobotocore: pip install 'chunkyard[s3]'"
    ) from exc

from ..bodies import body_ended, body_reader
from ..errors import InvalidRequest, StoreError, StoreObjectMissing
from ..parts import checksum_fits
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

MIN_PART = 5 * 1024 * 1024  # S3 rejects smaller non-final parts (EntityTooSmall)
MAX_PARTS = 10_000
#: 8 MiB, as boto3's TransferConfig: a 32 MiB pack becomes 4 parts, so the two packs in
#: flight keep 8 connections busy (on SeaweedFS here that upload ran ~10% faster than
#: with 16 MiB parts), and a failed part costs at most 8 MiB to resend. Far inside
#: S3's 5 MiB-5 GiB / 10,000-part limits.
PART_SIZE = 8 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}
#: each part checksum: CreateMultipartUpload's ChecksumAlgorithm (None: Content-MD5
#: needs none) and the UploadPart parameter, header and ListParts field that carry it
_CHECKSUMS: dict[str, tuple[str | None, str, str]] = {
    "crc32c": ("CRC32C", "ChecksumCRC32C", "x-amz-checksum-crc32c"),
    "sha256": ("SHA256", "ChecksumSHA256", "x-amz-checksum-sha256"),
    "md5": (None, "ContentMD5", "Content-MD5"),
}
#: the flexible checksums a completion names its parts with, by digest size: a part
#: keeps the kind its upload was created with (an upload begun before the store's kind
#: changed completes with the checksums it was sent with)
_COMPLETE_FIELDS = {4: "ChecksumCRC32C", 32: "ChecksumSHA256"}
#: what reading an object's body can raise besides ClientError: aiobotocore turns a
#: dropped connection into a BotoCoreError, but lets aiohttp's payload errors through
#: (a body cut short by a reset: ClientPayloadError)
_BODY_FAILURES = (BotoCoreError, aiohttp.ClientError)


def _xml_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 error document, or "" (a body that is not one)."""
    start, end = body.find(b"<Code>"), body.find(b"</Code>")
    return body[start + 6 : end].decode(errors="replace") if 0 <= start < end else ""


def _as_client_error(code: str, status: int, operation: str) -> ClientError:
    """An error answer read outside botocore, as botocore would have raised it."""
    error = {"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(error, operation)  # type: ignore[arg-type]


def _split_url(url: str, scheme: str) -> tuple[str, str]:
    """``scheme://bucket/some/prefix`` → (bucket, ``some/prefix/``)."""
    parsed = urlparse(url)
    if parsed.scheme != scheme or not parsed.netloc:
        raise InvalidRequest(f"expected {scheme}://bucket/prefix, got {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


class S3Store(Store):
    part_checksum = "crc32c"
    lists_uploads = True  # ListMultipartUploads (GCS's XML API has it too)

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        part_size: int = PART_SIZE,
        checksum: str = "crc32c",
    ) -> None:
        self.url = url
        self.bucket, self.prefix = _split_url(url, "s3")
        if checksum not in _CHECKSUMS:
            raise InvalidRequest(
                f"S3 part checksum must be one of {', '.join(_CHECKSUMS)}, not {checksum!r}"
            )
        # md5 for S3-compatible APIs without flexible checksums (GCS's XML API)
        self.part_checksum = checksum
        if part_size < MIN_PART:
            raise InvalidRequest(f"S3 part size must be at least {MIN_PART} bytes")
        self.part_size = part_size
        endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        self._kwargs: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            # one explicit half falls back to the environment for the other
            "aws_access_key_id": access_key or (secret_key and os.environ.get("AWS_ACCESS_KEY_ID")),
            "aws_secret_access_key": secret_key
            or (access_key and os.environ.get("AWS_SECRET_ACCESS_KEY")),
            "config": Config(
                signature_version="s3v4",
                # custom endpoints (SeaweedFS, MinIO) rarely have wildcard DNS
                s3={"addressing_style": "path" if endpoint_url else "auto"},
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        }
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    # -- helpers ---------------------------------------------------------
    @functools.cached_property
    def _signer(self) -> Any:
        """A synchronous client, for presigning only (URLs for clients, and the GETs of
        :meth:`read_into`): loading its service model costs 0.15-0.3 s, so it is built
        on first use, or ahead of it by :meth:`prepare`."""
        return botocore.session.Session().create_client("s3", **self._kwargs)

    def prepare(self) -> None:
        """The presigning client: its service model took the first push after a
        gateway start 0.15-0.3 s (of one core) in its first ``begin_pack``."""
        self._signer  # noqa: B018

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise InvalidRequest(f"invalid store key {key!r}")
        return self.prefix + key

    async def _s3(self) -> Any:
        """The aiobotocore client, created on first use inside the running loop."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    self._client = await stack.enter_async_context(
                        get_session().create_client("s3", **self._kwargs)
                    )
                    self._stack = stack
        return self._client

    def _error(self, op: str, exc: Exception, key: str | None = None) -> StoreError:
        where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if key is not None and code in _MISSING:
                return StoreObjectMissing(
                    f"object {key} is missing from {self.url}",
                    store=self.url,
                    operation=op,
                    key=key,
                )
            msg = {
                "NoSuchBucket": f"bucket {self.bucket} does not exist",
                "InvalidAccessKeyId": "the access key is not known (check AWS_ACCESS_KEY_ID)",
                "SignatureDoesNotMatch": "bad credentials (check AWS_SECRET_ACCESS_KEY)",
                "403": "access denied (check the credentials and bucket policy)",
                "AccessDenied": "access denied (check the credentials and bucket policy)",
            }.get(code, f"{code}: {exc}")
            if op == "check" and code in _MISSING:
                msg = f"bucket {self.bucket} does not exist"
        else:
            msg = f"{type(exc).__name__}: {exc}"
        return StoreError(
            f"S3 store {self.url}: {op} failed on {where}: {msg}",
            store=self.url,
            operation=op,
            **({"key": key} if key else {}),
        )

    def _code(self, exc: Exception) -> str:
        return (
            str(exc.response.get("Error", {}).get("Code", ""))
            if isinstance(exc, ClientError)
            else ""
        )

    # -- Store interface ------------------------------------------------
    def plan_parts(self, size: int) -> list[PartPlan]:
        part_size = max(self.part_size, -(-size // MAX_PARTS))
        return plan_even_parts(size, part_size)

    async def check(self) -> None:
        try:
            await (await self._s3()).head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("check", exc) from exc

    async def put(self, key: str, data: bytes) -> None:
        try:
            await (await self._s3()).put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("put", exc, key) from exc

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
        args = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            resp = await (await self._s3()).get_object(**args)
            async with resp["Body"] as body:
                return await body.read()
        except ClientError as exc:
            if self._code(exc) == "InvalidRange":  # start at or past the end
                return b""
            raise self._error("get", exc, key) from exc
        except _BODY_FAILURES as exc:
            raise self._error("get", exc, key) from exc

    async def read_into(self, key: str, buf: bytearray) -> int:
        """A whole object into ``buf``. Verification reads every pack this way, so not
        through aiobotocore, which hands a body over in pieces through the event loop
        (a third of a verifier's CPU here, ~0.5 core-s per GiB): a GET presigned for
        this read goes out on a worker thread and is read straight into the buffer.
        Where the environment routes the endpoint through a proxy, aiobotocore reads it
        as before."""
        if self._direct_reads is None:
            return await self._read_into_aiobotocore(key, buf)
        url = self._signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=300
        )
        return await anyio.to_thread.run_sync(self._fetch_into, url, key, buf)

    @functools.cached_property
    def _direct_reads(self) -> urllib3.PoolManager | None:
        """Connections for :meth:`read_into`, verifying TLS as botocore does
        (``AWS_CA_BUNDLE``, else its CA bundle); None when a proxy applies."""
        endpoint = self._kwargs["endpoint_url"] or f"https://s3.{self._kwargs['region_name']}"
        host = urlparse(endpoint).hostname or ""
        if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
            return None
        ca = os.environ.get("AWS_CA_BUNDLE") or botocore.httpsession.get_cert_path(True)
        return urllib3.PoolManager(maxsize=4, cert_reqs="CERT_REQUIRED", ca_certs=ca)

    def _fetch_into(self, url: str, key: str, buf: bytearray) -> int:
        """On a worker thread: the presigned GET ``url`` into ``buf``."""
        pool = self._direct_reads
        assert pool is not None
        view, n = memoryview(buf), 0
        try:
            resp = pool.request(
                "GET",
                url,
                headers={"Range": f"bytes=0-{len(buf) - 1}"},
                preload_content=False,
                decode_content=False,
                retries=urllib3.Retry(total=2, read=0, backoff_factor=0.2),
                timeout=urllib3.Timeout(connect=5, read=60),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise self._error("get", exc, key) from exc
        whole = False  # only a connection read to its body's end goes back to the pool
        try:
            if resp.status == 416:  # an empty object
                return 0
            if resp.status not in (200, 206):
                code = _xml_code(resp.read(64 * 1024)) or str(resp.status)
                raise self._error("get", _as_client_error(code, resp.status, "GetObject"), key)
            src = body_reader(resp)
            while n < len(buf) and (got := src.readinto(view[n:])):
                n += got
            # a store that ignored the range may have sent more than the buffer holds
            whole = resp.headers.get("content-length") == str(n)
            if whole:
                body_ended(resp, src)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            raise self._error("get", exc, key) from exc
        finally:
            if not whole:
                resp.close()
            resp.release_conn()
        return n

    async def _read_into_aiobotocore(self, key: str, buf: bytearray) -> int:
        args = {"Bucket": self.bucket, "Key": self._key(key), "Range": f"bytes=0-{len(buf) - 1}"}
        view, n = memoryview(buf), 0
        try:
            resp = await (await self._s3()).get_object(**args)
            async with resp["Body"] as body:
                while n < len(buf) and (got := await body.readinto(view[n:])):
                    n += got
        except ClientError as exc:
            if self._code(exc) == "InvalidRange":  # an empty object
                return 0
            raise self._error("get", exc, key) from exc
        except _BODY_FAILURES as exc:
            raise self._error("get", exc, key) from exc
        return n

    async def stat(self, key: str, version_id: str | None = None) -> ObjectInfo | None:
        args = {"Bucket": self.bucket, "Key": self._key(key)}
        if version_id:
            args["VersionId"] = version_id
        try:
            h = await (await self._s3()).head_object(**args)
        except ClientError as exc:
            if self._code(exc) in _MISSING:
                return None
            raise self._error("stat", exc, key) from exc
        except BotoCoreError as exc:
            raise self._error("stat", exc, key) from exc
        return ObjectInfo(
            key=key,
            size=h["ContentLength"],
            etag=h.get("ETag", "").strip('"'),
            version_id=h.get("VersionId"),
            last_modified=h["LastModified"].isoformat() if h.get("LastModified") else None,
        )

    async def delete(self, key: str) -> None:
        try:
            await (await self._s3()).delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            if self._code(exc) not in _MISSING:
                raise self._error("delete", exc, key) from exc

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        try:
            pages = (
                (await self._s3())
                .get_paginator("list_objects_v2")
                .paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            )
            async for page in pages:
                for obj in page.get("Contents", []):
                    yield ObjectInfo(
                        key=obj["Key"][len(self.prefix) :],
                        size=obj["Size"],
                        etag=obj.get("ETag", "").strip('"'),
                        last_modified=obj["LastModified"].isoformat(),
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", exc) from exc

    async def list_uploads(self, prefix: str = "") -> AsyncIterator[PendingUpload]:
        try:
            pages = (
                (await self._s3())
                .get_paginator("list_multipart_uploads")
                .paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
            )
            async for page in pages:
                for u in page.get("Uploads", []):
                    started = u.get("Initiated")
                    yield PendingUpload(
                        u["Key"][len(self.prefix) :],
                        u["UploadId"],
                        started.timestamp() if started is not None else None,
                    )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list_uploads", exc) from exc

    async def create_upload(self, key: str, size: int) -> str:
        try:
            algorithm = _CHECKSUMS[self.part_checksum][0]
            extra = {"ChecksumAlgorithm": algorithm} if algorithm else {}
            resp = await (await self._s3()).create_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), **extra
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("create_upload", exc, key) from exc
        return resp["UploadId"]

    async def presign_part(
        self,
        key: str,
        upload_id: str,
        part: PartPlan,
        total_size: int,
        checksum: str | None,
        expires: int,
    ) -> PresignedRequest:
        if not checksum_fits(self.part_checksum, checksum):
            raise InvalidRequest(f"S3 parts need the base64 {self.part_checksum} of the part")
        _, param, header = _CHECKSUMS[self.part_checksum]
        params = {
            "Bucket": self.bucket,
            "Key": self._key(key),
            "UploadId": upload_id,
            "PartNumber": part.number,
            param: checksum,
        }
        url = self._signer.generate_presigned_url("upload_part", ExpiresIn=expires, Params=params)
        # the checksum header is signed: the client must send exactly this value, and
        # the store refuses a body that does not hash to it
        return PresignedRequest("PUT", url, {header: checksum})

    async def _parts(self, key: str, upload_id: str) -> list[HeldPart]:
        """ListParts, every page of it."""
        s3, held, marker = await self._s3(), [], 0
        # the checksum S3 recorded for each part, of the kind this store signs (an
        # upload of another kind is begun again before its parts are compared);
        # SeaweedFS records none
        field = _CHECKSUMS[self.part_checksum][1]
        while True:
            resp = await s3.list_parts(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id, PartNumberMarker=marker
            )
            held += [
                HeldPart(p["PartNumber"], p["Size"], p["ETag"], p.get(field, ""))
                for p in resp.get("Parts", [])
            ]
            if not resp.get("IsTruncated"):
                return held
            marker = resp["NextPartNumberMarker"]

    async def _etags(self, key: str, upload_id: str) -> dict[int, str]:
        """ETags of the uploaded parts, for clients that could not read them (CORS)."""
        return {p.number: p.etag for p in await self._parts(key, upload_id)}

    async def list_parts(self, key: str, upload_id: str, size: int) -> list[HeldPart]:
        try:
            return sorted(await self._parts(key, upload_id), key=lambda p: p.number)
        except (ClientError, BotoCoreError) as exc:
            if self._code(exc) in ("NoSuchUpload", *_MISSING):  # completed or aborted
                return []
            raise self._error("list_parts", exc, key) from exc

    async def complete_upload(self, key: str, upload_id: str, parts: list[CompletedPart]) -> None:
        try:
            parts = sorted(parts, key=lambda p: p.number)
            known = await self._etags(key, upload_id) if any(not p.etag for p in parts) else {}
            listed = []
            for p in parts:
                etag = p.etag or known.get(p.number)
                if not etag:
                    raise InvalidRequest(
                        f"part {p.number} was not uploaded", missing_parts=[p.number]
                    )
                entry = {"PartNumber": p.number, "ETag": etag}
                if self.part_checksum != "md5":  # S3 wants flexible checksums named again
                    entry[self._complete_field(p)] = p.checksum
                listed.append(entry)
            await (await self._s3()).complete_multipart_upload(
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": listed},
            )
        except (ClientError, BotoCoreError) as exc:
            # a retried completion (say the gateway died after S3 answered) finds no upload
            if self._code(exc) == "NoSuchUpload" and await self.stat(key) is not None:
                return
            raise self._error("complete_upload", exc, key) from exc

    def _complete_field(self, part: CompletedPart) -> str:
        try:
            field = _COMPLETE_FIELDS.get(len(base64.b64decode(part.checksum, validate=True)))
        except (ValueError, binascii.Error):
            field = None
        if not part.checksum or field is None:
            raise InvalidRequest(
                f"part {part.number} needs the {self.part_checksum} checksum it was sent "
                "with to complete"
            )
        return field

    async def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            await (await self._s3()).abort_multipart_upload(
                Bucket=self.bucket, Key=self._key(key), UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            if self._code(exc) != "NoSuchUpload":  # already aborted or completed
                raise self._error("abort_upload", exc, key) from exc

    async def presign_get(
        self,
        key: str,
        expires: int,
        version_id: str | None = None,
        if_match: str | None = None,
        byte_range: tuple[int, int] | None = None,
    ) -> PresignedRequest:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        headers = {}
        if version_id:
            params["VersionId"] = version_id
        if if_match:  # signed: the client cannot drop the condition
            params["IfMatch"] = headers["If-Match"] = f'"{if_match}"'
        if byte_range:  # signed too: the URL reads these bytes and no others
            params["Range"] = headers["Range"] = range_header(byte_range)
        url = self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)
        return PresignedRequest("GET", url, headers)

    async def list_pinned(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """On a versioned bucket, the current version of each object with its VersionId
        (ListObjectVersions); otherwise the plain listing."""
        try:
            s3 = await self._s3()
            status = (await s3.get_bucket_versioning(Bucket=self.bucket)).get("Status")
            if status not in ("Enabled", "Suspended"):
                async for info in self.list(prefix):
                    yield info
                return
            pages = s3.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            async for page in pages:
                for obj in page.get("Versions", []):
                    if obj.get("IsLatest"):  # a delete marker on top hides the key
                        yield ObjectInfo(
                            key=obj["Key"][len(self.prefix) :],
                            size=obj["Size"],
                            etag=obj.get("ETag", "").strip('"'),
                            version_id=obj.get("VersionId"),
                            last_modified=obj["LastModified"].isoformat(),
                        )
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", exc) from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
        if "_signer" in self.__dict__:
            self._signer.close()
