"""Fixtures binding the store contract to the servers ``scripts/services`` starts.

Each test gets a fresh prefix inside the shared test bucket, so tests never see each
other's objects, and the prefix is emptied afterwards. A server that is not configured
skips its tests on a laptop but fails them in CI (``CI=true``): there a missing server
is a broken pipeline, not an optional extra.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from chunkyard.stores.base import Store

HINT = 'run scripts/services start {svc} && eval "$(scripts/services env)"'


def require_env(service: str, *names: str) -> dict[str, str]:
    """The named variables, or skip (fail under CI=true) when any is unset."""
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        msg = f"{service} test server not configured ({', '.join(missing)} unset): " + HINT.format(
            svc=service
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return {n: os.environ[n] for n in names}


def fresh_url(base: str) -> str:
    return f"{base.rstrip('/')}/t-{uuid.uuid4().hex[:12]}"


async def _fresh(make: Callable[[str], Store], base: str) -> AsyncIterator[Store]:
    store = make(fresh_url(base))
    try:
        yield store
    finally:
        try:
            keys = [info.key async for info in store.list("")]
            for key in keys:
                await store.delete(key)
        finally:
            await store.close()


# -- S3 (SeaweedFS) ---------------------------------------------------------------
S3_ENV = ("CHUNKYARD_TEST_S3_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_TEST_PART = 5 * 1024 * 1024  # S3's minimum, so multipart tests need only ~5 MiB


@pytest.fixture
def s3_env() -> dict[str, str]:
    return require_env("s3", *S3_ENV)


@pytest.fixture
async def s3_store(s3_env: dict[str, str]) -> AsyncIterator[Store]:
    from chunkyard.stores.s3 import S3Store

    async for store in _fresh(
        lambda url: S3Store(url, part_size=S3_TEST_PART), s3_env["CHUNKYARD_TEST_S3_URL"]
    ):
        yield store


# -- Azure (Azurite) --------------------------------------------------------------
AZURE_ENV = ("CHUNKYARD_TEST_AZURE_URL", "AZURE_STORAGE_CONNECTION_STRING")
AZURE_TEST_PART = 256 * 1024


@pytest.fixture
def azure_env() -> dict[str, str]:
    return require_env("azure", *AZURE_ENV)


@pytest.fixture
async def azure_store(azure_env: dict[str, str]) -> AsyncIterator[Store]:
    from chunkyard.stores.azure import AzureStore

    async for store in _fresh(
        lambda url: AzureStore(url, part_size=AZURE_TEST_PART),
        azure_env["CHUNKYARD_TEST_AZURE_URL"],
    ):
        yield store


# -- GCS (gcp-storage-emulator) ---------------------------------------------------
GCS_ENV = ("CHUNKYARD_TEST_GCS_URL", "STORAGE_EMULATOR_HOST")
GCS_TEST_PART = 256 * 1024  # the smallest chunk a resumable session takes


@pytest.fixture
def gcs_env() -> dict[str, str]:
    return require_env("gcs", *GCS_ENV)


@pytest.fixture
async def gcs_store(gcs_env: dict[str, str]) -> AsyncIterator[Store]:
    from chunkyard.stores.gcs import GCSStore

    async for store in _fresh(
        lambda url: GCSStore(url, part_size=GCS_TEST_PART), gcs_env["CHUNKYARD_TEST_GCS_URL"]
    ):
        yield store
