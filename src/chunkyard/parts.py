"""How an object is cut into the parts of a multipart upload, and the checksum each
part carries (pure: both the gateway, which presigns the parts, and the client, which
checksums them up front, compute them)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import blake3
import google_crc32c
import numpy as np

from .errors import InvalidRequest

#: the part checksums a store may want (``Store.part_checksum``), each with the size
#: of its digest: BLAKE3-256 (the local store signs it), MD5 (``Content-MD5``: Azure,
#: GCS's XML API), SHA-256 and CRC32C (S3's ``x-amz-checksum-*``). CRC32C is S3's
#: default because it costs the client a fifth of SHA-256 (0.13 vs 0.6 core-seconds
#: per GiB here) and guards against what a part checksum is for, damage in transit;
#: what a part holds is verified against its pack id all the same.
CHECKSUM_SIZES = {"blake3": 32, "md5": 16, "sha256": 32, "crc32c": 4}


@dataclass(frozen=True)
class PartPlan:
    number: int  # 1-based, as S3 numbers parts
    offset: int
    size: int


def plan_even_parts(size: int, part_size: int) -> list[PartPlan]:
    """Cut ``size`` bytes into parts of ``part_size`` (the last one shorter)."""
    if size <= 0:
        return [PartPlan(1, 0, 0)]
    parts, offset, number = [], 0, 1
    while offset < size:
        n = min(part_size, size - offset)
        parts.append(PartPlan(number, offset, n))
        offset += n
        number += 1
    return parts


def _crc32c(data: bytes | memoryview) -> bytes:
    # google_crc32c takes only buffers without a release hook: bytes and numpy arrays.
    # A numpy view of a part costs nothing; copying it into bytes faulted in 8 MiB of
    # fresh pages each time with the GIL held (0.18-0.26 against 0.12 core-s per GiB
    # here), which is longer than the checksum of a view holds the GIL
    if not isinstance(data, bytes):
        try:
            return google_crc32c.value(np.frombuffer(data, np.uint8)).to_bytes(4, "big")
        except TypeError:  # a numpy that exports a release hook: copy
            data = bytes(data)
    return google_crc32c.value(data).to_bytes(4, "big")


_DIGESTS = {
    "blake3": lambda data: blake3.blake3(data).digest(),
    "md5": lambda data: hashlib.md5(data, usedforsecurity=False).digest(),
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "crc32c": _crc32c,  # big-endian, as S3 wants it
}


def part_checksum(kind: str, data: bytes | memoryview) -> str:
    """The base64 checksum of one part, of the ``kind`` the store wants."""
    digest = _DIGESTS.get(kind)
    if digest is None:
        raise InvalidRequest(
            f"the gateway wants {kind!r} part checksums, which this chunkyard does not "
            "know: upgrade it"
        )
    return base64.b64encode(digest(data)).decode()


def checksum_fits(kind: str, checksum: str | None) -> bool:
    """Whether ``checksum`` is base64 of a digest of ``kind``'s size."""
    try:
        return checksum is not None and len(
            base64.b64decode(checksum, validate=True)
        ) == CHECKSUM_SIZES.get(kind)
    except (ValueError, binascii.Error):
        return False


__all__ = [
    "CHECKSUM_SIZES",
    "PartPlan",
    "checksum_fits",
    "part_checksum",
    "plan_even_parts",
]
