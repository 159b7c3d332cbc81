"""Part checksums: the same digest whatever buffer holds the part."""

import base64

import pytest

from chunkyard.parts import part_checksum


@pytest.mark.parametrize("kind", ["crc32c", "sha256", "md5", "blake3"])
def test_a_part_checksum_does_not_depend_on_the_buffer_type(kind: str) -> None:
    data = bytes(range(256)) * 1000
    want = part_checksum(kind, data)
    held = bytearray(b"x" + data + b"y")
    assert part_checksum(kind, memoryview(held)[1:-1]) == want
    assert part_checksum(kind, bytearray(data)) == want


def test_crc32c_matches_its_check_value() -> None:
    # RFC 3720's CRC32C of "123456789", big-endian as S3 wants it
    assert base64.b64decode(part_checksum("crc32c", b"123456789")) == bytes.fromhex("e3069283")
