"""GCS's XML multipart API (``gs://bucket/prefix?api=xml``, HMAC keys, Content-MD5 per
part) is S3-compatible; the GCS emulator lacks it, so it is tested against SeaweedFS,
which checks signatures, expiry and Content-MD5 as GCS does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chunkyard.stores import open_store
from chunkyard.stores.base import Store

from .conftest import S3_TEST_PART, _fresh
from .contract import StoreContract


@pytest.fixture
def hmac_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("GCS_HMAC_ACCESS_ID", s3_env["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("GCS_HMAC_SECRET", s3_env["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("CHUNKYARD_GCS_XML_ENDPOINT", s3_env["AWS_ENDPOINT_URL"])
    return s3_env


class TestGCSXmlStore(StoreContract):
    multipart_size = S3_TEST_PART + 200 * 1024
    min_part_size = 5 * 1024 * 1024

    @pytest.fixture
    async def store(self, hmac_env: dict[str, str]) -> AsyncIterator[Store]:
        bucket = hmac_env["CHUNKYARD_TEST_S3_URL"].removeprefix("s3://").split("/")[0]

        def make(url: str) -> Store:
            store = open_store(f"{url}?api=xml")
            store.part_size = S3_TEST_PART  # type: ignore[attr-defined]
            return store

        async for store in _fresh(make, f"gs://{bucket}"):
            assert store.part_checksum == "md5"
            yield store

    @pytest.fixture
    async def missing_bucket_store(self, hmac_env: dict[str, str]) -> AsyncIterator[Store]:
        store = open_store("gs://chunkyard-no-such-bucket/x?api=xml")
        yield store
        await store.close()

    @pytest.fixture
    async def unreachable_store(
        self, hmac_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[Store]:
        monkeypatch.setenv("CHUNKYARD_GCS_XML_ENDPOINT", "http://127.0.0.1:1")
        store = open_store("gs://chunkyard-test/x?api=xml")
        yield store
        await store.close()
