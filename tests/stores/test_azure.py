"""The store contract against Azurite, which verifies SAS signatures, expiry and the
Content-MD5 of each block."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chunkyard.errors import InvalidRequest, StoreError
from chunkyard.stores.base import PartPlan, Store

from .conftest import AZURE_TEST_PART
from .contract import StoreContract


def _with(conn: str, **changes: str) -> str:
    parts = dict(p.split("=", 1) for p in conn.strip(";").split(";"))
    parts.update(changes)
    return ";".join(f"{k}={v}" for k, v in parts.items()) + ";"


class TestAzureStore(StoreContract):
    multipart_size = 2 * AZURE_TEST_PART + 100 * 1024

    @pytest.fixture
    def store(self, azure_store: Store) -> Store:
        return azure_store

    @pytest.fixture
    async def missing_bucket_store(self, azure_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.azure import AzureStore

        store = AzureStore("az://chunkyard-no-such-container/x")
        yield store
        await store.close()

    @pytest.fixture
    async def unreachable_store(self, azure_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.azure import AzureStore

        conn = _with(
            azure_env["AZURE_STORAGE_CONNECTION_STRING"],
            BlobEndpoint="http://127.0.0.1:1/devstoreaccount1",
        )
        store = AzureStore(azure_env["CHUNKYARD_TEST_AZURE_URL"], connection_string=conn)
        yield store
        await store.close()

    async def test_bad_key_fails_check(self, azure_env: dict[str, str]) -> None:
        from chunkyard.stores.azure import AzureStore

        conn = _with(
            azure_env["AZURE_STORAGE_CONNECTION_STRING"],
            AccountKey="d3JvbmcgYWNjb3VudCBrZXkgd3Jvbmcga2V5IHdyb25nIGtleSE=",
        )
        store = AzureStore(azure_env["CHUNKYARD_TEST_AZURE_URL"], connection_string=conn)
        try:
            with pytest.raises(StoreError, match="authentication"):
                await store.check()
        finally:
            await store.close()

    async def test_part_needs_checksum(self, store: Store) -> None:
        upload_id = await store.create_upload("k", 10)
        with pytest.raises(InvalidRequest):
            await store.presign_part("k", upload_id, PartPlan(1, 0, 10), 10, None, 60)

    async def test_block_ids_have_one_length(self, store: Store) -> None:
        upload_id = await store.create_upload("k", 10)
        md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="
        urls = [
            (await store.presign_part("k", upload_id, PartPlan(n, 0, 1), 10, md5, 60)).url
            for n in (1, 99, 12345)
        ]
        ids = [u.split("blockid=")[1] for u in urls]
        assert len({len(i) for i in ids}) == 1 and len(set(ids)) == 3
