"""The store contract against the local directory store, whose "presigned" URLs point at
a running gateway's blob endpoint (HMAC-signed, expiring, BLAKE3 per part)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chunkyard.stores.base import Store
from chunkyard.stores.local import LocalStore
from conftest import RunningGateway, start_gateway

from .contract import StoreContract


@pytest.fixture(scope="module")
def local_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(tmp_path_factory.mktemp("local-store"))
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


class TestLocalStore(StoreContract):
    multipart_size = 150 * 1024 * 1024  # one part per 64 MiB

    @pytest.fixture
    async def store(self, local_gateway: RunningGateway) -> AsyncIterator[Store]:
        """A second instance on the gateway's directory: it signs URLs with the same
        secret, and the gateway serves them."""
        settings = local_gateway.settings
        root = Path(settings.store_url.removeprefix("file://"))
        store = LocalStore(root, blob_url=local_gateway.url + "/v1/blobs", secret=settings.secret)
        yield store
        for key in [info.key async for info in store.list("")]:
            await store.delete(key)

    @pytest.fixture
    def missing_bucket_store(self, tmp_path: Path) -> Store:
        (tmp_path / "a-file").write_bytes(b"")
        return LocalStore(tmp_path / "a-file" / "store")

    @pytest.fixture
    def unreachable_store(self, tmp_path: Path) -> Store:
        """A directory has no network to be unreachable: a root that is a file."""
        (tmp_path / "not-a-dir").write_bytes(b"")
        return LocalStore(tmp_path / "not-a-dir")


def test_ranges_are_read_from_a_mapping_and_outlive_the_file(tmp_path: Path) -> None:
    """What the blob endpoint sends for a signed range: exactly those bytes, at any
    offset (a mapping starts on a page boundary), still readable once the object is
    deleted (GC may remove a pack a pull is sending); a range past the end of the
    file is answered short, not mapped."""
    data = bytes(range(256)) * 4096 * 3  # 3 MiB
    path = tmp_path / "pack"
    path.write_bytes(data)
    for start, end in [(0, len(data)), (1, 4097), (4095, 2 * 4096 + 3), (len(data) - 5, len(data))]:
        assert bytes(LocalStore.read_range(path, start, end)) == data[start:end]
    view = LocalStore.read_range(path, 70_000, 1_500_000)
    path.unlink()
    assert bytes(view) == data[70_000:1_500_000]
    path.write_bytes(data[:100])
    assert bytes(LocalStore.read_range(path, 10, 4096)) == data[10:100]
    assert LocalStore.read_range(path, 50, 50) == b""
