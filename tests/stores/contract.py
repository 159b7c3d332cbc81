"""The contract every store keeps (see ``chunkyard/stores/base.py``), as reusable tests.

Subclass :class:`StoreContract` in a ``test_*.py`` module (as fsspec's abstract tests
are used) and provide three fixtures:

- ``store``: a working store on a fresh, empty prefix;
- ``missing_bucket_store``: the same backend pointed at a bucket that does not exist;
- ``unreachable_store``: the same backend pointed at a port nobody listens on.

Uploads are driven with httpx exactly as a client does: PUT each presigned part with
the returned headers, collect the ETag response headers, ask the store to complete.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from chunkyard import parts
from chunkyard.errors import ChunkyardError, StoreError, StoreObjectMissing
from chunkyard.stores.base import CompletedPart, PartPlan, Store

#: GCS answers 308 Resume Incomplete to every accepted chunk but the last
PART_OK = {200, 201, 204, 308}


def part_checksum(store: Store, body: bytes) -> str | None:
    """What a client computes for one part, per the store's ``part_checksum``."""
    return parts.part_checksum(store.part_checksum, body) if store.part_checksum else None


async def write_object(
    store: Store, key: str, data: bytes, http: httpx.AsyncClient | None = None
) -> None:
    """Write a whole object the way packs are written: one multipart upload through
    presigned part URLs (stores have no other way to write)."""
    if http is None:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            return await write_object(store, key, data, client)
    upload_id = await store.create_upload(key, len(data))
    parts = await StoreContract().upload_parts(http, store, key, upload_id, data)
    await store.complete_upload(key, upload_id, parts)


class StoreContract:
    #: an object size that the store's ``plan_parts`` cuts into at least two parts
    multipart_size: int = 600 * 1024
    #: smallest size of a part that is not the last one (S3: 5 MiB)
    min_part_size: int = 1
    #: every part but the last is a multiple of this (GCS: 256 KiB)
    part_multiple: int = 1
    #: the store rejects a part whose body does not match its checksum
    verifies_part_checksum: bool = True
    #: the store rejects a presigned URL after it expired
    enforces_expiry: bool = True
    #: the object appears only at complete_upload (GCS: when the last part lands)
    atomic_complete: bool = True
    #: a repeated complete_upload succeeds (the gateway died after the first one)
    idempotent_complete: bool = True

    # -- helpers ------------------------------------------------------------------
    @pytest.fixture
    async def http(self) -> AsyncIterator[httpx.AsyncClient]:
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            yield client

    @staticmethod
    async def send_part(
        http: httpx.AsyncClient,
        store: Store,
        key: str,
        upload_id: str,
        part: PartPlan,
        data: bytes,
        body: bytes | None = None,
        expires: int = 60,
    ) -> httpx.Response:
        """Presign and PUT one part; ``body`` replaces the real bytes after signing."""
        real = data[part.offset : part.offset + part.size]
        req = await store.presign_part(
            key, upload_id, part, len(data), part_checksum(store, real), expires
        )
        return await http.request(
            req.method, req.url, headers=req.headers, content=real if body is None else body
        )

    async def upload_parts(
        self,
        http: httpx.AsyncClient,
        store: Store,
        key: str,
        upload_id: str,
        data: bytes,
        plan: list[PartPlan] | None = None,
    ) -> list[CompletedPart]:
        plan = store.plan_parts(len(data)) if plan is None else plan

        async def one(part: PartPlan) -> CompletedPart:
            resp = await self.send_part(http, store, key, upload_id, part, data)
            assert resp.status_code in PART_OK, (part, resp.status_code, resp.text[:300])
            body = data[part.offset : part.offset + part.size]
            return CompletedPart(
                part.number, resp.headers.get("etag", ""), part_checksum(store, body) or ""
            )

        if store.sequential_parts:
            return [await one(p) for p in plan]
        return list(await asyncio.gather(*(one(p) for p in plan)))

    async def write(self, http: httpx.AsyncClient, store: Store, key: str, data: bytes) -> None:
        """Write a whole object the way packs are written: one multipart upload."""
        upload_id = await store.create_upload(key, len(data))
        parts = await self.upload_parts(http, store, key, upload_id, data)
        await store.complete_upload(key, upload_id, parts)

    # -- plain objects ------------------------------------------------------------
    async def test_write_get_stat_delete(self, store: Store, http: httpx.AsyncClient) -> None:
        data = os.urandom(10_000)
        await self.write(http, store, "packs/ab/one", data)
        assert await store.get("packs/ab/one") == data
        info = await store.stat("packs/ab/one")
        assert info is not None and info.key == "packs/ab/one" and info.size == len(data)
        await store.delete("packs/ab/one")
        assert await store.stat("packs/ab/one") is None

    async def test_put(self, store: Store) -> None:
        data = os.urandom(70_000)
        await store.put("packs/cd/small.0123456789abcdef", data)
        assert await store.get("packs/cd/small.0123456789abcdef") == data
        assert await store.get("packs/cd/small.0123456789abcdef", 5, 10) == data[5:10]
        info = await store.stat("packs/cd/small.0123456789abcdef")
        assert info is not None and info.size == len(data)
        await store.delete("packs/cd/small.0123456789abcdef")

    async def test_ranged_get(self, store: Store, http: httpx.AsyncClient) -> None:
        data = os.urandom(10_000)
        await self.write(http, store, "r", data)
        assert await store.get("r", 100, 200) == data[100:200]
        assert await store.get("r", 9_000) == data[9_000:]
        assert await store.get("r", 0, 1) == data[:1]
        assert await store.get("r", 9_990, 20_000) == data[9_990:]  # end past the size
        assert await store.get("r", 5, 5) == b""
        assert await store.get("r", 10_000) == b""

    async def test_read_into(self, store: Store, http: httpx.AsyncClient) -> None:
        """Whole objects into a caller's buffer (verification reads packs this way)."""
        data = os.urandom(3 * 1024 * 1024 + 7)  # more than one network read
        await self.write(http, store, "whole", data)
        buf = bytearray(len(data) + 1)
        assert await store.read_into("whole", buf) == len(data)
        assert buf[: len(data)] == data
        small = bytearray(1000)  # too small: filled, and the count says so
        assert await store.read_into("whole", small) == len(small) and small == data[:1000]
        with pytest.raises(StoreObjectMissing):
            await store.read_into("nope/never", buf)

    async def test_missing_key(self, store: Store) -> None:
        with pytest.raises(StoreObjectMissing) as caught:
            await store.get("nope/never")
        assert caught.value.detail["operation"] == "get"
        assert caught.value.detail["store"] == store.url
        assert caught.value.__cause__ is not None, "the foreign error must be chained"
        with pytest.raises(StoreObjectMissing):
            await store.get("nope/never", 10, 20)
        assert await store.stat("nope/never") is None
        await store.delete("nope/never")  # deleting a missing key is fine

    async def test_list(self, store: Store, http: httpx.AsyncClient) -> None:
        for key, size in [("packs/aa/1", 1), ("packs/aa/2", 2), ("packs/bb/3", 3), ("x", 4)]:
            await self.write(http, store, key, b"z" * size)
        got = {i.key: i.size async for i in store.list("")}
        assert got == {"packs/aa/1": 1, "packs/aa/2": 2, "packs/bb/3": 3, "x": 4}
        assert sorted([i.key async for i in store.list("packs/aa/")]) == [
            "packs/aa/1",
            "packs/aa/2",
        ]
        assert [i async for i in store.list("none/")] == []

    # -- multipart ----------------------------------------------------------------
    def test_plan_parts(self, store: Store) -> None:
        for size in (1, 1000, self.multipart_size, 64 * 1024 * 1024):
            plan = store.plan_parts(size)
            assert [p.number for p in plan] == list(range(1, len(plan) + 1))
            assert sum(p.size for p in plan) == size
            offset = 0
            for p in plan:
                assert p.offset == offset and p.size > 0
                offset += p.size
            for p in plan[:-1]:
                assert p.size >= self.min_part_size and p.size % self.part_multiple == 0
        assert len(store.plan_parts(self.multipart_size)) >= 2

    async def test_multipart_roundtrip(self, store: Store, http: httpx.AsyncClient) -> None:
        data = os.urandom(self.multipart_size)
        plan = store.plan_parts(len(data))
        upload_id = await store.create_upload("packs/mp", len(data))
        parts = await self.upload_parts(http, store, "packs/mp", upload_id, data, plan[:-1])
        assert await store.stat("packs/mp") is None, "object visible before its last part"
        parts += await self.upload_parts(http, store, "packs/mp", upload_id, data, plan[-1:])
        if self.atomic_complete:
            assert await store.stat("packs/mp") is None, "object visible before complete"
            assert [i.key async for i in store.list("")] == []
        await store.complete_upload("packs/mp", upload_id, parts)
        assert (await store.stat("packs/mp")).size == len(data)
        assert await store.get("packs/mp") == data
        edge = plan[0].size  # a range across the first part boundary
        assert await store.get("packs/mp", edge - 10, edge + 10) == data[edge - 10 : edge + 10]

    async def test_complete_without_etags(self, store: Store, http: httpx.AsyncClient) -> None:
        """Browsers may not see the ETag header (CORS); the store must cope."""
        data = os.urandom(self.multipart_size)
        upload_id = await store.create_upload("noetag", len(data))
        parts = await self.upload_parts(http, store, "noetag", upload_id, data)
        await store.complete_upload(
            "noetag", upload_id, [CompletedPart(p.number, checksum=p.checksum) for p in parts]
        )
        assert await store.get("noetag") == data

    async def test_complete_with_missing_part_fails(
        self, store: Store, http: httpx.AsyncClient
    ) -> None:
        data = os.urandom(self.multipart_size)
        plan = store.plan_parts(len(data))
        upload_id = await store.create_upload("holey", len(data))
        sent = await self.upload_parts(http, store, "holey", upload_id, data, plan[:1])
        with pytest.raises(ChunkyardError):
            await store.complete_upload(
                "holey", upload_id, sent + [CompletedPart(p.number) for p in plan[1:]]
            )
        assert await store.stat("holey") is None
        await store.abort_upload("holey", upload_id)

    async def test_complete_twice(self, store: Store, http: httpx.AsyncClient) -> None:
        if not self.idempotent_complete:
            pytest.skip("the store cannot repeat a completion")
        data = os.urandom(self.multipart_size)
        upload_id = await store.create_upload("twice", len(data))
        parts = await self.upload_parts(http, store, "twice", upload_id, data)
        await store.complete_upload("twice", upload_id, parts)
        await store.complete_upload("twice", upload_id, parts)
        assert await store.get("twice") == data

    async def test_abort(self, store: Store, http: httpx.AsyncClient) -> None:
        data = os.urandom(self.multipart_size)
        plan = store.plan_parts(len(data))
        upload_id = await store.create_upload("aborted", len(data))
        await self.upload_parts(http, store, "aborted", upload_id, data, plan[:1])
        await store.abort_upload("aborted", upload_id)
        assert await store.stat("aborted") is None
        await store.abort_upload("aborted", upload_id)  # twice is fine (GC retries)

    async def test_list_parts(self, store: Store, http: httpx.AsyncClient) -> None:
        """An interrupted upload resumes from what the store holds: the parts sent,
        with the ETags they were answered and any checksum the store kept; nothing
        once the upload is complete, nor for an upload the store does not know."""
        data = os.urandom(self.multipart_size)
        plan = store.plan_parts(len(data))
        upload_id = await store.create_upload("resumed", len(data))
        assert await store.list_parts("resumed", upload_id, len(data)) == []
        first = await self.upload_parts(http, store, "resumed", upload_id, data, plan[:1])
        held = await store.list_parts("resumed", upload_id, len(data))
        assert [(p.number, p.size) for p in held] == [(1, plan[0].size)]
        if held[0].etag and first[0].etag:
            assert held[0].etag.strip('"') == first[0].etag.strip('"')
        if held[0].checksum:
            assert held[0].checksum == first[0].checksum
        rest = await self.upload_parts(http, store, "resumed", upload_id, data, plan[1:])
        held = await store.list_parts("resumed", upload_id, len(data))
        every = [(p.number, p.size) for p in plan]
        # GCS: the object appears with its last part, and a finished upload holds none
        assert [(p.number, p.size) for p in held] in (
            [every] if self.atomic_complete else [every, []]
        )
        # a completion may name the parts by the ETags listed (a resumed client's way)
        etags = {p.number: p.etag for p in held}
        parts = [
            CompletedPart(p.number, etags.get(p.number) or p.etag, p.checksum) for p in first + rest
        ]
        await store.complete_upload("resumed", upload_id, parts)
        assert await store.get("resumed") == data
        assert await store.list_parts("resumed", upload_id, len(data)) == []
        other = await store.create_upload("never-sent", 10)
        assert await store.list_parts("never-sent", other, 10) == []

    async def test_list_uploads(self, store: Store, http: httpx.AsyncClient) -> None:
        """An unfinished upload is listed (where the store can list them), under its
        key and upload id, with when it began; completed and aborted ones are not."""
        data = os.urandom(self.multipart_size)
        aborted = await store.create_upload("up/aborted", len(data))
        pending = await store.create_upload("up/pending", len(data))
        done = await store.create_upload("up/done", len(data))
        parts = await self.upload_parts(http, store, "up/done", done, data)
        await store.complete_upload("up/done", done, parts)
        await store.abort_upload("up/aborted", aborted)
        listed = [u async for u in store.list_uploads("up/")]
        await store.abort_upload("up/pending", pending)
        if not store.lists_uploads:
            assert listed == []
            return
        assert [(u.key, u.upload_id) for u in listed] == [("up/pending", pending)]
        assert listed[0].started is not None and listed[0].started <= time.time() + 60
        assert [u async for u in store.list_uploads("other/")] == []
        assert [u async for u in store.list_uploads("up/")] == []

    async def test_presigned_ranged_get(self, store: Store, http: httpx.AsyncClient) -> None:
        data = os.urandom(50_000)
        await self.write(http, store, "packs/dl", data)
        req = await store.presign_get("packs/dl", 60)
        assert req.method == "GET"
        resp = await http.get(req.url, headers={**req.headers, "Range": "bytes=1000-1999"})
        assert resp.status_code == 206 and resp.content == data[1000:2000]
        resp = await http.get(req.url, headers=req.headers)
        assert resp.status_code == 200 and resp.content == data

    async def test_pinned_presigned_get(self, store: Store, http: httpx.AsyncClient) -> None:
        """A GET pinned to an object's version id and ETag serves those bytes, and once
        the object is overwritten it fails (404/412) instead of serving others."""
        await self.write(http, store, "pinned", b"first")
        info = await store.stat("pinned")
        assert info is not None and (info.etag or info.version_id)
        req = await store.presign_get("pinned", 60, version_id=info.version_id, if_match=info.etag)
        resp = await http.get(req.url, headers=req.headers)
        assert resp.status_code == 200 and resp.content == b"first"
        await self.write(http, store, "pinned", b"second, longer")
        now = await store.stat("pinned")
        assert now is not None and (now.etag, now.version_id) != (info.etag, info.version_id)
        if not self.enforces_pins:
            pytest.skip(self.enforces_pins_reason)
        resp = await http.get(req.url, headers=req.headers)
        assert resp.status_code in (404, 412), (resp.status_code, resp.text[:300])
        ranged = await http.get(req.url, headers={**req.headers, "Range": "bytes=0-3"})
        assert ranged.status_code in (404, 412), (ranged.status_code, ranged.text[:300])

    enforces_pins = True
    enforces_pins_reason = "the store ignores pins"

    # -- integrity and expiry -----------------------------------------------------
    async def test_corrupted_part_is_rejected(self, store: Store, http: httpx.AsyncClient) -> None:
        if not self.verifies_part_checksum:
            pytest.skip(self.verifies_part_checksum_reason)
        data = os.urandom(self.multipart_size)
        plan = store.plan_parts(len(data))
        upload_id = await store.create_upload("corrupt", len(data))
        first = data[: plan[0].size]
        bad = bytes([first[0] ^ 0xFF]) + first[1:]  # one flipped byte after signing
        resp = await self.send_part(http, store, "corrupt", upload_id, plan[0], data, body=bad)
        assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
        parts = await self.upload_parts(http, store, "corrupt", upload_id, data)  # resend
        await store.complete_upload("corrupt", upload_id, parts)
        assert await store.get("corrupt") == data

    async def test_expired_urls_are_rejected(self, store: Store, http: httpx.AsyncClient) -> None:
        if not self.enforces_expiry:
            pytest.skip(self.enforces_expiry_reason)
        data = os.urandom(self.multipart_size)
        await self.write(http, store, "old", b"payload")
        get = await store.presign_get("old", 1)
        upload_id = await store.create_upload("late", len(data))
        part = store.plan_parts(len(data))[0]
        real = data[: part.size]
        put = await store.presign_part(
            "late", upload_id, part, len(data), part_checksum(store, real), 1
        )
        await asyncio.sleep(2)
        resp = await http.get(get.url, headers=get.headers)
        assert resp.status_code in (401, 403), (resp.status_code, resp.text[:300])
        resp = await http.request(put.method, put.url, headers=put.headers, content=real)
        assert resp.status_code in (401, 403), (resp.status_code, resp.text[:300])
        await store.abort_upload("late", upload_id)

    verifies_part_checksum_reason = "the store does not verify part checksums"
    enforces_expiry_reason = "the store does not enforce URL expiry"

    # -- check --------------------------------------------------------------------
    async def test_check(self, store: Store) -> None:
        """A usable store passes, and the check leaves nothing behind."""
        assert await store.check() is None
        assert [info.key async for info in store.list("")] == []
        assert await store.check() is None  # and can be run again

    async def test_check_missing_bucket(self, missing_bucket_store: Store) -> None:
        with pytest.raises(StoreError) as caught:
            await missing_bucket_store.check()
        err = caught.value
        assert err.detail["operation"] == "check"
        assert missing_bucket_store.url in str(err)
        assert "does not exist" in str(err)

    async def test_check_unreachable(self, unreachable_store: Store) -> None:
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            await unreachable_store.check()
        assert time.monotonic() - started < 15, "check() must fail fast"
        assert caught.value.detail["operation"] == "check"
        assert caught.value.__cause__ is not None
