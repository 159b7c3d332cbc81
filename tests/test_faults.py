"""Pushes and pulls come through faults between client, gateway and store.

Two :mod:`faultproxy` proxies: one in front of the gateway (the client's API calls), one
in front of the store (SeaweedFS or Azurite): the gateway's store endpoint is the
proxy's address, so the presigned URLs it hands out point at the proxy too, and the
client's part uploads and pack reads, as well as the gateway's own store calls, meet
the faults. Each injects the issue's mix: 500/503 answers, resets before a request is
forwarded, answers lost after the request was carried out, answers cut mid-body,
connections reset after a whole answer, and delays. The version must come back byte
for byte, made once.

The suite pushes 64 MiB with small packs and parts (many requests, so every kind of
fault fires several times); ``benchmarks/faults.py`` pushes and pulls ~300 MiB the
same way at the real sizes, checks the bytes, and reports the throughput.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.client.transport import RetryPolicy
from conftest import RunningGateway, random_bytes, start_gateway
from faultproxy import KINDS, FaultProxy, Faults, azure_endpoint, first, with_azure_endpoint
from stores.conftest import AZURE_ENV, S3_ENV, fresh_url, require_env

MiB = 1024 * 1024
#: the issue's 10 % of 500/503, and resets, lost and cut answers often enough that a
#: few hundred requests meet each several times
FAULTS = Faults(
    error=0.10, reset=0.04, lost=0.04, cut=0.04, dropped=0.04, delay=0.05, max_delay=0.2
)
#: packs of 6 MiB in parts of 5 MiB (S3's minimum) or 2 MiB (Azure blocks): two or
#: three parts per pack, eleven packs per push
PACK = 6 * MiB
PARTS = {"s3": 5 * MiB, "azure": 2 * MiB}
#: client retries: patient, quick to come back (the proxy's faults pass at once)
POLICY = RetryPolicy(attempts=60, deadline=120.0, base=0.02, cap=0.5)


@dataclass
class Faulty:
    gateway: FaultProxy  # in front of the gateway: the client's URL
    store: FaultProxy  # in front of the store: the gateway's store endpoint
    running: RunningGateway

    def on(self, faults: Faults) -> None:
        self.gateway.faults = self.store.faults = faults

    def injected(self) -> Counter[str]:
        return self.gateway.injected + self.store.injected


def _delete_all(store_url: str, kind: str) -> None:
    """Empty the test prefix, straight at the store (not through the proxy)."""

    async def run() -> None:
        if kind == "s3":
            from chunkyard.stores.s3 import S3Store

            store = S3Store(store_url, endpoint_url=os.environ["AWS_ENDPOINT_URL"])
        else:
            from chunkyard.stores.azure import AzureStore

            store = AzureStore(
                store_url, connection_string=os.environ["AZURE_STORAGE_CONNECTION_STRING"]
            )
        try:
            for key in [info.key async for info in store.list("")]:
                await store.delete(key)
        finally:
            await store.close()

    asyncio.run(run())


@pytest.fixture(params=["s3", "azure"])
def faulty(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faulty]:
    kind = request.param
    if kind == "s3":
        require_env(kind, *S3_ENV)
        real = os.environ["AWS_ENDPOINT_URL"]
        base = os.environ["CHUNKYARD_TEST_S3_URL"]
    else:
        require_env(kind, *AZURE_ENV)
        conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
        real = azure_endpoint(conn)
        base = os.environ["CHUNKYARD_TEST_AZURE_URL"]
    from chunkyard import packs
    from chunkyard.stores.azure import AzureStore
    from chunkyard.stores.s3 import S3Store

    monkeypatch.setattr(packs, "TARGET_SIZE", PACK)  # and CHUNKYARD_PACK_TARGET below
    store_class = S3Store if kind == "s3" else AzureStore
    defaults = dict(store_class.__init__.__kwdefaults__, part_size=PARTS[kind])
    monkeypatch.setattr(store_class.__init__, "__kwdefaults__", defaults)
    # the n-th request through a proxy meets the n-th draw of its seed: with these, the
    # first 45 requests to the gateway and 65 to the store (a push and pull make ~55
    # and ~80) hold every kind of fault at least 7 times between them
    store_proxy = FaultProxy(real, seed=149)
    gw_proxy = FaultProxy(seed=36)
    store_url = fresh_url(base)
    try:
        # the gateway's store endpoint is the proxy, set while it starts (the store
        # reads it then), so that other tests and the cleanup below use the real one
        var, value = (
            ("AWS_ENDPOINT_URL", store_proxy.url)
            if kind == "s3"
            else ("AZURE_STORAGE_CONNECTION_STRING", with_azure_endpoint(conn, store_proxy.url))
        )
        real_value, os.environ[var] = os.environ[var], value
        try:
            gw, server, thread = start_gateway(
                tmp_path / "gw", CHUNKYARD_STORE=store_url, CHUNKYARD_PACK_TARGET=str(PACK)
            )
        finally:
            os.environ[var] = real_value
        gw_proxy.target = gw.url
        try:
            yield Faulty(gw_proxy, store_proxy, gw)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        gw_proxy.close()
        store_proxy.close()
        _delete_all(store_url, kind)


def test_push_and_pull_come_through_faults(faulty: Faulty, tmp_path: Path) -> None:
    data = random_bytes(64 * MiB, seed=13)
    src = tmp_path / "w.bin"
    src.write_bytes(data)
    faulty.on(FAULTS)
    with Client(faulty.gateway.url, retry=POLICY) as c:
        pushed = c.push(src, "faults/w")
        c.pull("faults/w", tmp_path / "back.bin")
        faulty.on(Faults())
        versions = [v["version"] for v in c.versions("faults/w")]
    assert (tmp_path / "back.bin").read_bytes() == data
    assert pushed["created"] and pushed["version"] == 1 and versions == [1]
    assert pushed["bytes_uploaded"] >= len(data)
    injected = faulty.injected()
    assert all(injected[k] >= 3 for k in KINDS), injected
    # both sides met faults: the client's API calls, and the store's requests
    assert faulty.gateway.injected_total >= 5 and faulty.store.injected_total >= 5, injected


# -- the bugs the proxy found, one fault each -------------------------------------


@pytest.fixture
def local_behind_proxy(tmp_path: Path) -> Iterator[FaultProxy]:
    """A gateway on a local store, every request (its blob URLs too) through a proxy."""
    proxy = FaultProxy()
    gw, server, thread = start_gateway(tmp_path / "gw", CHUNKYARD_PUBLIC_URL=proxy.url)
    proxy.target = gw.url
    try:
        yield proxy
    finally:
        proxy.close()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_commit_whose_answer_was_lost_answers_as_the_first(
    local_behind_proxy: FaultProxy, tmp_path: Path
) -> None:
    """The commit is carried out, its answer lost: the retry answers the version made,
    ``created`` (it said "unchanged" before, as if the push had made nothing)."""
    proxy = local_behind_proxy
    proxy.faults, proxy.only = Faults(lost=1.0), first(1, "POST", r"/commit$")
    src = tmp_path / "w.bin"
    src.write_bytes(random_bytes(3 * MiB, seed=14))  # above the small-push limit
    with Client(proxy.url, retry=POLICY) as c:
        pushed = c.push(src, "faults/commit")
        assert proxy.injected["lost"] == 1
        assert pushed["created"] and pushed["version"] == 1
        assert [v["version"] for v in c.versions("faults/commit")] == [1]
        again = c.push(src, "faults/commit")  # the same content: a commit that makes none
    assert not again["created"] and again["version"] == 1


async def test_an_s3_body_cut_short_is_a_store_error() -> None:
    """A pack read whose connection is reset mid-body (the verifier's, say) fails as a
    StoreError (502, retried by the client), not as aiohttp's ClientPayloadError, which
    the gateway answered as an internal error."""
    env = require_env("s3", *S3_ENV)
    from chunkyard.errors import StoreError
    from chunkyard.stores.s3 import S3Store

    proxy = FaultProxy(env["AWS_ENDPOINT_URL"])
    store = S3Store(fresh_url(env["CHUNKYARD_TEST_S3_URL"]), endpoint_url=proxy.url)
    try:
        await store.put("packs/cut", random_bytes(2 * MiB, seed=15))
        proxy.faults = Faults(cut=1.0)
        with pytest.raises(StoreError, match="get failed"):
            await store.read_into("packs/cut", bytearray(3 * MiB))
        with pytest.raises(StoreError, match="get failed"):
            await store.get("packs/cut")
        assert proxy.injected["cut"] == 2
        proxy.faults = Faults()
        await store.delete("packs/cut")
    finally:
        await store.close()
        proxy.close()
