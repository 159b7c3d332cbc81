"""The store contract against gcp-storage-emulator: resumable sessions work as on GCS,
but the emulator checks no signature, expiry or checksum, so those cases are skipped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from chunkyard.stores.base import Store

from .conftest import GCS_TEST_PART, fresh_url
from .contract import StoreContract, write_object


class TestGCSStore(StoreContract):
    multipart_size = 2 * GCS_TEST_PART + 100 * 1024
    part_multiple = 256 * 1024
    atomic_complete = False  # a resumable upload finishes with its last chunk
    verifies_part_checksum = False
    verifies_part_checksum_reason = (
        "GCS has no per-chunk checksum on resumable uploads, and the emulator verifies none"
    )
    enforces_expiry = False
    enforces_expiry_reason = "gcp-storage-emulator checks no signature or expiry"
    enforces_pins = False
    enforces_pins_reason = "gcp-storage-emulator ignores ?generation= on downloads"

    @pytest.fixture
    def store(self, gcs_store: Store) -> Store:
        return gcs_store

    @pytest.fixture
    async def missing_bucket_store(self, gcs_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.gcs import GCSStore

        store = GCSStore("gs://chunkyard-no-such-bucket/x")
        yield store
        await store.close()

    @pytest.fixture
    async def unreachable_store(self, gcs_env: dict[str, str]) -> AsyncIterator[Store]:
        from chunkyard.stores.gcs import GCSStore

        store = GCSStore(gcs_env["CHUNKYARD_TEST_GCS_URL"], endpoint="http://127.0.0.1:1")
        yield store
        await store.close()

    async def test_v4_signed_url(
        self, gcs_env: dict[str, str], http: httpx.AsyncClient, tmp_path
    ) -> None:
        """With service-account credentials presign_get signs a V4 URL (locally, no
        network); the emulator ignores the signature but serves the path."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from google.oauth2 import service_account

        from chunkyard.stores.gcs import GCSStore

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": "test",
            "private_key_id": "k1",
            "private_key": pem,
            "client_email": "tester@test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
        (tmp_path / "sa.json").write_text(json.dumps(info))
        creds = service_account.Credentials.from_service_account_file(str(tmp_path / "sa.json"))
        store = GCSStore(fresh_url(gcs_env["CHUNKYARD_TEST_GCS_URL"]), credentials=creds)
        try:
            await write_object(store, "signed", b"0123456789", http)
            req = await store.presign_get("signed", 300)
            query = parse_qs(urlparse(req.url).query)
            assert query["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"]
            assert query["X-Goog-Expires"] == ["300"]
            assert query["X-Goog-Credential"][0].startswith("tester@test.iam")
            resp = await http.get(req.url, headers={"Range": "bytes=2-4"})
            assert resp.status_code == 206 and resp.content == b"234"
        finally:
            await store.delete("signed")
            await store.close()

    async def test_incomplete_upload_is_reported(
        self, store: Store, http: httpx.AsyncClient
    ) -> None:
        from chunkyard.errors import StoreError

        data = b"x" * self.multipart_size
        upload_id = await store.create_upload("partial", len(data))
        plan = store.plan_parts(len(data))
        await self.upload_parts(http, store, "partial", upload_id, data, plan[:2])
        with pytest.raises(StoreError, match="incomplete"):
            await store.complete_upload("partial", upload_id, [])
