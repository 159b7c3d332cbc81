"""Reference versions on real stores: SeaweedFS (S3, plain and versioned buckets),
Azurite and the GCS emulator. Each case registers, pulls, hashes, indexes, then
overwrites or deletes the source and shows that verify and pull report the drift."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.digest import tree_digest
from chunkyard.errors import ReferenceDrifted
from chunkyard.stores import open_store
from conftest import RunningGateway, file_id, random_bytes, start_gateway
from stores.conftest import AZURE_ENV, GCS_ENV, S3_ENV, fresh_url, require_env
from stores.contract import write_object

pytestmark = pytest.mark.usefixtures("loopback_only")
STORES = {
    "s3": ("CHUNKYARD_TEST_S3_URL", S3_ENV),
    "azure": ("CHUNKYARD_TEST_AZURE_URL", AZURE_ENV),
    "gcs": ("CHUNKYARD_TEST_GCS_URL", GCS_ENV),
}


class Bucket:
    """Objects under a fresh prefix of a test bucket, written with chunkyard's stores."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def _run(self, op: str, *args: object) -> object:
        async def go() -> object:
            store = open_store(self.base)
            try:
                if op == "put_many":  # whole small objects: a multipart upload each
                    sem = asyncio.Semaphore(32)  # took SeaweedFS 100 s for 2,000

                    async def one(key: str, data: bytes) -> None:
                        async with sem:
                            await store.put(key, data)

                    items: dict = args[0]  # type: ignore[assignment]
                    await asyncio.gather(*(one(k, v) for k, v in items.items()))
                    return None
                if op == "clear":
                    keys = [i.key async for i in store.list("")]
                    sem = asyncio.Semaphore(32)

                    async def drop(key: str) -> None:
                        async with sem:
                            await store.delete(key)

                    await asyncio.gather(*(drop(k) for k in keys))
                    return None
                if op == "put":
                    return await write_object(store, *args)  # type: ignore[arg-type]
                return await getattr(store, op)(*args)
            finally:
                await store.close()

        return asyncio.run(go())

    def put(self, key: str, data: bytes) -> None:
        self._run("put", key, data)

    def put_many(self, items: dict[str, bytes]) -> None:
        self._run("put_many", items)

    def delete(self, key: str) -> None:
        self._run("delete", key)

    def clear(self) -> None:
        self._run("clear")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("refstores"), CHUNKYARD_REF_ALLOW="s3://,az://,gs://"
    )
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(params=list(STORES))
def bucket(request) -> Iterator[tuple[str, Bucket]]:
    url_var, needed = STORES[request.param]
    require_env(request.param, *needed)
    b = Bucket(fresh_url(os.environ[url_var]))
    yield request.param, b
    b.clear()


def test_prefix_reference_on_every_store(bucket, gateway, tmp_path: Path):
    kind, b = bucket
    files = {
        "config.json": b'{"layers": 2}',
        "shards/model-00001.safetensors": random_bytes(600_000, seed=21),
        "shards/model-00002.safetensors": random_bytes(300_001, seed=22),
    }
    for key, data in files.items():
        b.put(f"llm/{key}", data)
    name = f"stores/{kind}/llm"
    with Client(gateway.url) as c:
        r = c.ref(name, f"{b.base}/llm/")
        assert r["layout"] == "tree" and r["files"] == 3 and r["bytes_read"] == 0
        c.pull(name, tmp_path / "v1")
        for key, data in files.items():
            assert (tmp_path / "v1" / key).read_bytes() == data
        one = c.ref(f"{name}-config", f"{b.base}/llm/config.json", hash=True)
        assert one["layout"] == "file"
        assert one["digest"] == file_id(files["config.json"])
        hashed = c.ref(name, f"{b.base}/llm/", hash=True, index=True)
        assert hashed["version"] == 2 and hashed["digest"] == tree_digest(
            (k, len(v), file_id(v)) for k, v in files.items()
        )
        shard = tmp_path / "shard.bin"
        shard.write_bytes(files["shards/model-00002.safetensors"])
        pushed = c.push(shard, f"{name}-copy")  # dedups against the indexed source
        assert pushed["chunks_new"] == 0 and pushed["bytes_uploaded"] == 0
        c.pull(f"{name}-copy", tmp_path / "copy.bin")  # ranged, pinned reads
        assert (tmp_path / "copy.bin").read_bytes() == shard.read_bytes()
        assert c.verify(name)["ok"] and c.verify(f"{name}-copy")["ok"]

        # drift: overwrite one shard (same size), delete another object
        b.put("llm/shards/model-00002.safetensors", random_bytes(300_001, seed=23))
        b.delete("llm/config.json")
        report = c.verify(f"{name}@1")
        states = {o["path"]: o["state"] for o in report["objects"]}
        assert not report["ok"] and states == {
            "config.json": "missing",
            "shards/model-00001.safetensors": "ok",
            "shards/model-00002.safetensors": "changed",
        }
        assert c.verify(f"{name}-config")["objects"][0]["state"] == "missing"
        for ref in (f"{name}@1", f"{name}@2", f"{name}-config", f"{name}-copy"):
            with pytest.raises(ReferenceDrifted):
                c.pull(ref, tmp_path / "never")
            assert not (tmp_path / "never").exists()


@pytest.fixture
def versioned(gateway) -> Iterator[tuple[object, str]]:
    require_env("s3", *S3_ENV)
    import boto3

    s3 = boto3.client("s3")
    name = f"cy-ref-versioned-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    yield s3, name
    listing = s3.list_object_versions(Bucket=name)
    for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []):
        s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
    s3.delete_bucket(Bucket=name)


def test_versioned_bucket_pins_version_ids(versioned, gateway, tmp_path: Path):
    """Pinned to a version id, an overwrite is no drift: pull serves the registered
    version. Deleting that version is."""
    s3, name = versioned
    first = random_bytes(200_000, seed=31)
    v1 = s3.put_object(Bucket=name, Key="w/model.bin", Body=first)["VersionId"]
    s3.put_object(Bucket=name, Key="w/tokenizer.json", Body=b"{}")
    with Client(gateway.url) as c:
        c.ref("stores/versioned", f"s3://{name}/w/")
        pins = {f["path"]: f["pin"] for f in c.show("stores/versioned")["file_list"]}
        assert pins["model.bin"]["version_id"] == v1
        s3.put_object(Bucket=name, Key="w/model.bin", Body=random_bytes(200_000, seed=32))
        report = c.verify("stores/versioned")
        assert report["ok"]
        (obj,) = [o for o in report["objects"] if o["path"] == "model.bin"]
        assert obj["superseded"]
        c.pull("stores/versioned", tmp_path / "v")
        assert (tmp_path / "v" / "model.bin").read_bytes() == first
        s3.delete_object(Bucket=name, Key="w/model.bin", VersionId=v1)
        report = c.verify("stores/versioned")
        assert [o["state"] for o in report["objects"] if o["path"] == "model.bin"] == ["missing"]
        with pytest.raises(ReferenceDrifted):
            c.pull("stores/versioned", tmp_path / "gone")


def test_registering_many_objects_takes_seconds(gateway, monkeypatch):
    """2,000 objects under a prefix: one paged listing, no HEAD per object, no bytes
    (counted at the store: a time limit here would only measure the machine)."""
    require_env("s3", *S3_ENV)
    from chunkyard.stores.s3 import S3Store

    calls: Counter[str] = Counter()
    for op in ("stat", "get", "read_into"):

        def counted(*args: object, _op: str = op, _f: object = getattr(S3Store, op)) -> object:
            calls[_op] += 1
            return _f(*args)  # type: ignore[operator]

        monkeypatch.setattr(S3Store, op, counted)
    b = Bucket(fresh_url(os.environ["CHUNKYARD_TEST_S3_URL"]))
    n = 2000
    b.put_many({f"many/shard-{i:05d}.bin": i.to_bytes(4, "big") for i in range(n)})
    try:
        with Client(gateway.url) as c:
            t0 = time.monotonic()
            r = c.ref("stores/many", f"{b.base}/many/")
            print(f"\nregistered {n} objects: {time.monotonic() - t0:.2f} s, {dict(calls)}")
            assert r["files"] == n and r["bytes_read"] == 0
            assert sum(calls.values()) <= 2, calls
            t0 = time.monotonic()
            report = c.verify("stores/many")
            print(f"verified {n} objects: {time.monotonic() - t0:.2f} s, {dict(calls)}")
            assert report["ok"] and report["checked"] == n
            assert sum(calls.values()) <= 4, calls
            assert len(c.show("stores/many")["file_list"]) == n
    finally:
        b.clear()
