"""The store contract against SeaweedFS, which verifies signatures, expiry and
a signed SHA-256 checksum as S3 does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from chunkyard.errors import InvalidRequest, StoreError
from chunkyard.stores.base import PartPlan, Store

from .conftest import S3_TEST_PART
from .contract import StoreContract, part_checksum


class TestS3Store(StoreContract):
    multipart_size = S3_TEST_PART + 200 * 1024
    min_part_size = 5 * 1024 * 1024

    @pytest.fixture
    def store(self, s3_store: Store) -> Store:
        return s3_store

    @pytest.fixture
    async def missing_bucket_store(self, s3_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.s3 import S3Store

        store = S3Store("s3://chunkyard-no-such-bucket/x")
        yield store
        await store.close()

    @pytest.fixture
    async def unreachable_store(self, s3_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.s3 import S3Store

        store = S3Store(s3_env["CHUNKYARD_TEST_S3_URL"], endpoint_url="http://127.0.0.1:1")
        yield store
        await store.close()

    async def test_bad_credentials_fail_check(self, s3_env: dict[str, str]) -> None:
        from chunkyard.stores.s3 import S3Store

        store = S3Store(s3_env["CHUNKYARD_TEST_S3_URL"], secret_key="wrong-secret")
        try:
            with pytest.raises(StoreError, match="credentials"):
                await store.check()
        finally:
            await store.close()

    async def test_default_plan(self, store: Store) -> None:
        from chunkyard.stores.s3 import S3Store

        default = S3Store("s3://bucket/prefix")
        assert [p.size for p in default.plan_parts(64 << 20)] == [8 << 20] * 8
        assert len(default.plan_parts(8 << 20)) == 1
        await default.close()

    async def test_part_needs_checksum(self, store: Store) -> None:
        upload_id = await store.create_upload("k", 10)
        with pytest.raises(InvalidRequest):
            await store.presign_part("k", upload_id, PartPlan(1, 0, 10), 10, None, 60)
        await store.abort_upload("k", upload_id)

    async def test_url_names_one_part(self, store: Store, http: httpx.AsyncClient) -> None:
        """The signature covers the part number: a URL for part 1 cannot write part 2."""
        data = b"q" * 1000
        upload_id = await store.create_upload("one", len(data))
        req = await store.presign_part(
            "one", upload_id, PartPlan(1, 0, len(data)), len(data), part_checksum(store, data), 60
        )
        assert "partNumber=1" in req.url
        resp = await http.put(
            req.url.replace("partNumber=1", "partNumber=2"), headers=req.headers, content=data
        )
        assert resp.status_code == 403, resp.text[:300]
        resp = await http.put(req.url, content=data)  # without the signed checksum header
        assert resp.status_code == 403, resp.text[:300]
        await store.abort_upload("one", upload_id)
