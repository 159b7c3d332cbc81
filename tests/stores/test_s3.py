"""The store contract against SeaweedFS, which verifies signatures, expiry and a signed
part checksum (CRC32C by default, SHA-256 or Content-MD5 when chosen) as S3 does."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from chunkyard.errors import ChunkyardError, InvalidRequest, StoreError
from chunkyard.parts import part_checksum as checksum_of
from chunkyard.stores import open_store
from chunkyard.stores.base import CompletedPart, PartPlan, Store

from .conftest import S3_TEST_PART, _fresh
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

    async def test_a_part_with_a_wrong_crc32c_is_refused(
        self, store: Store, http: httpx.AsyncClient
    ) -> None:
        """An attacker's way: hand-built PUTs to presigned part URLs. A URL signed for a
        CRC32C that is not the body's is refused (BadDigest); another CRC32C in the
        header than the one signed, or none, breaks the signature; other bytes under
        the signed one are refused. Nothing of it is held: the upload lists no part,
        cannot complete, and no object appears."""
        assert store.part_checksum == "crc32c"
        data = os.urandom(1000)
        upload_id = await store.create_upload("tampered", len(data))
        part = PartPlan(1, 0, len(data))
        wrong = checksum_of("crc32c", data[:-1] + bytes([data[-1] ^ 1]))
        req = await store.presign_part("tampered", upload_id, part, len(data), wrong, 60)
        assert req.headers == {"x-amz-checksum-crc32c": wrong}
        resp = await http.put(req.url, headers=req.headers, content=data)
        assert resp.status_code == 400 and "BadDigest" in resp.text, resp.text[:300]

        right = checksum_of("crc32c", data)
        req = await store.presign_part("tampered", upload_id, part, len(data), right, 60)
        other = os.urandom(len(data))
        for headers, body, status in [
            ({"x-amz-checksum-crc32c": checksum_of("crc32c", other)}, other, 403),
            ({}, other, 403),
            (req.headers, other, 400),
        ]:
            resp = await http.put(req.url, headers=headers, content=body)
            assert resp.status_code == status, (headers, resp.status_code, resp.text[:300])
        assert await store.list_parts("tampered", upload_id, len(data)) == []
        with pytest.raises(ChunkyardError):
            await store.complete_upload(
                "tampered", upload_id, [CompletedPart(1, '"0"', checksum=right)]
            )
        assert await store.stat("tampered") is None
        await store.abort_upload("tampered", upload_id)

    @pytest.mark.parametrize("kind", ["crc32c", "sha256", "md5"])
    async def test_each_part_checksum_guards_and_completes(
        self, s3_env: dict[str, str], http: httpx.AsyncClient, kind: str
    ) -> None:
        """Every kind ``?checksum=`` picks: the upload is created for it, the store
        refuses a part whose bytes do not match, and the good parts complete."""
        make = lambda url: open_store(f"{url}?checksum={kind}")  # noqa: E731
        async for store in _fresh(make, s3_env["CHUNKYARD_TEST_S3_URL"]):
            store.part_size = S3_TEST_PART  # type: ignore[attr-defined]
            assert store.part_checksum == kind
            data = os.urandom(S3_TEST_PART + 1000)
            plan = store.plan_parts(len(data))
            assert len(plan) == 2
            upload_id = await store.create_upload("k", len(data))
            bad = bytes([data[0] ^ 1]) + data[1 : plan[0].size]
            resp = await self.send_part(http, store, "k", upload_id, plan[0], data, body=bad)
            assert resp.status_code == 400, resp.text[:300]
            parts = await self.upload_parts(http, store, "k", upload_id, data, plan)
            await store.complete_upload("k", upload_id, parts)
            assert await store.get("k") == data

    async def test_an_upload_completes_with_the_checksums_it_was_sent_with(
        self, s3_env: dict[str, str], http: httpx.AsyncClient
    ) -> None:
        """An upload created while the store signed SHA-256 completes after it signs
        CRC32C (a gateway restarted on the new default while a client sent parts)."""
        base = s3_env["CHUNKYARD_TEST_S3_URL"]
        async for old in _fresh(lambda url: open_store(f"{url}?checksum=sha256"), base):
            data = os.urandom(1000)
            upload_id = await old.create_upload("k", len(data))
            parts = await self.upload_parts(http, old, "k", upload_id, data)
            assert len(base64.b64decode(parts[0].checksum)) == 32
            new = open_store(old.url.removesuffix("?checksum=sha256"))
            try:
                assert new.part_checksum == "crc32c"
                await new.complete_upload("k", upload_id, parts)
                assert await new.get("k") == data
            finally:
                await new.close()


@pytest.mark.parametrize(
    "url",
    [
        "s3://b/p?checksum=crc64",
        "s3://b/p?checksum=",
        "s3://b/p?checksum=md5&checksum=sha256",
        "s3://b/p?chcksum=md5",
    ],
)
def test_a_bad_checksum_option_is_refused(url: str) -> None:
    with pytest.raises(InvalidRequest):
        open_store(url)


def test_crc32c_is_the_default_part_checksum() -> None:
    assert open_store("s3://b/p").part_checksum == "crc32c"
    store = open_store("s3://b/p?checksum=sha256")
    assert (store.part_checksum, store.url) == ("sha256", "s3://b/p?checksum=sha256")
    assert store.prefix == "p/"  # type: ignore[attr-defined]


def test_packs_are_read_back_past_aiobotocore_unless_a_proxy_applies(monkeypatch) -> None:
    """Verification reads packs with a presigned GET on a thread (the contract tests
    run it against SeaweedFS); an endpoint the environment proxies keeps botocore's own
    path, which honours the proxy."""
    from chunkyard.stores.s3 import S3Store

    for var in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert S3Store("s3://b/p", endpoint_url="http://10.1.2.3:9000")._direct_reads is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert S3Store("s3://b/p", endpoint_url="http://10.1.2.3:9000")._direct_reads is None
    monkeypatch.setenv("NO_PROXY", "10.1.2.3")
    assert S3Store("s3://b/p", endpoint_url="http://10.1.2.3:9000")._direct_reads is not None


def test_the_presigning_client_is_loaded_before_a_request_needs_it() -> None:
    """``prepare`` (run by the gateway at start, on a worker) builds it: the first push
    after a start waited ~80 ms for it in ``begin_pack``, on the event loop."""
    store = open_store("s3://b/p")
    assert "_signer" not in store.__dict__
    store.prepare()
    assert "_signer" in store.__dict__
