"""``chunkyard fsck`` against real stores: a clean repository exits 0; a pack whose bytes
were flipped on the local disk, a pack deleted from SeaweedFS, and a manifest whose term
reaches past its pack are each named with the versions they affect, and exit 5;
``--sample`` reads about that fraction of the packs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from chunkyard import packs as packfmt
from chunkyard.catalog import packs as packs_q
from chunkyard.catalog.schema import version_files
from chunkyard.repository import Repository, fsck, small
from chunkyard.repository.access import ANYONE
from conftest import RunningGateway, random_bytes, start_gateway
from stores.conftest import S3_ENV, fresh_url, require_env

MB = 1_000_000


def _gateway(tmp: Path, **env: str) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(tmp, **env)
    try:
        yield gw
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def local_gw(tmp_path_factory) -> Iterator[RunningGateway]:
    yield from _gateway(tmp_path_factory.mktemp("fsck"))


@pytest.fixture
def s3_gw(tmp_path_factory) -> Iterator[RunningGateway]:
    env = require_env("s3", *S3_ENV)
    url = fresh_url(env["CHUNKYARD_TEST_S3_URL"])
    yield from _gateway(tmp_path_factory.mktemp("fsck-s3"), CHUNKYARD_STORE=url)


def run_fsck(gw: RunningGateway, *args: str) -> tuple[int, dict]:
    """``chunkyard fsck --json`` in a process of its own, on the gateway's settings."""
    env = {**os.environ, "CHUNKYARD_STORE": gw.settings.store_url}
    out = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "fsck", "--data", str(gw.data), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def push(gw: RunningGateway, tmp: Path, data: bytes, name: str) -> dict:
    src = tmp / f"{name.replace('/', '_')}.bin"
    src.write_bytes(data)
    with Client(gw.url) as c:
        return c.push(src, name)


def packs_of(gw: RunningGateway, name: str, number: int) -> list[str]:
    with httpx.Client(base_url=gw.url) as h:
        r = h.get(f"/v1/artifacts/{name}/-/versions/{number}/files/0/reconstruction")
        return sorted({t["pack"] for t in r.json()["terms"]})


async def _key(gw: RunningGateway, pack: str) -> str:
    repo = await Repository.open(gw.settings)
    try:
        return (await repo.db.read(packs_q.pack_row, pack)).key
    finally:
        await repo.close()


def test_a_flipped_byte_on_the_local_disk_is_named_with_its_versions(local_gw, tmp_path):
    a, b = random_bytes(3 * MB, seed=1), random_bytes(3 * MB, seed=2)
    push(local_gw, tmp_path, a, "fsck/a")
    push(local_gw, tmp_path, a[: 2 * MB] + b[:MB], "fsck/a")  # shares a's first chunks
    push(local_gw, tmp_path, b, "fsck/b")
    code, r = run_fsck(local_gw)
    assert code == 0 and r["ok"] and r["problems"] == [], r
    assert r["packs_read"] == r["packs"] == 3 and r["versions"] == 3
    assert r["chunks_checked"] > 30 and r["bytes_read"] > 6 * MB

    (pack,) = packs_of(local_gw, "fsck/a", 1)
    path = local_gw.data / "store" / asyncio.run(_key(local_gw, pack))
    blob = bytearray(path.read_bytes())
    entries = packfmt.read_index(bytes(blob))
    victim = entries[1]  # a chunk both versions of fsck/a hold
    blob[victim.offset + victim.stored_len // 2] ^= 0x40
    path.write_bytes(bytes(blob))

    code, r = run_fsck(local_gw)
    assert code == 5 and not r["ok"]
    chunks = [p for p in r["problems"] if p["kind"] == "chunk"]
    assert [(p["pack"], p["index"], p["state"]) for p in chunks] == [(pack, 1, "corrupt")]
    assert chunks[0]["chunk"] == victim.chunk_id.hex()
    assert chunks[0]["versions"] == ["fsck/a@1", "fsck/a@2"]
    # a layout-3 pack id covers the index, not the records: the chunk is what is damaged
    assert [p for p in r["problems"] if p["kind"] == "pack"] == []
    assert r["chunks_damaged"] == 1
    blob[-packfmt.FOOTER_SIZE - 20] ^= 0x01  # the index: now the pack does not match its id
    path.write_bytes(bytes(blob))
    code, r = run_fsck(local_gw)
    whole = [p for p in r["problems"] if p["kind"] == "pack"]
    assert code == 5 and [(p["pack"], p["state"]) for p in whole] == [(pack, "damaged")]
    human = subprocess.run(
        [sys.executable, "-m", "chunkyard.cli", "fsck", "--data", str(local_gw.data)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert human.returncode == 5
    assert "corrupt chunk 1" in human.stdout and "fsck/a@1, fsck/a@2" in human.stdout
    assert "DAMAGED" in human.stdout


def test_a_pack_deleted_from_s3_is_missing_for_its_versions(s3_gw, tmp_path):
    push(s3_gw, tmp_path, random_bytes(2 * MB, seed=3), "fsck/s3a")
    push(s3_gw, tmp_path, random_bytes(2 * MB, seed=4), "fsck/s3b")
    code, r = run_fsck(s3_gw)
    assert code == 0 and r["ok"], r
    (pack,) = packs_of(s3_gw, "fsck/s3a", 1)

    async def delete() -> None:
        repo = await Repository.open(s3_gw.settings)
        try:
            row = await repo.db.read(packs_q.pack_row, pack)
            await repo.store.delete(row.key)
        finally:
            await repo.close()

    asyncio.run(delete())
    code, r = run_fsck(s3_gw)
    assert code == 5 and not r["ok"]
    (missing,) = r["problems"]
    assert (missing["kind"], missing["state"], missing["pack"]) == ("pack", "missing", pack)
    assert missing["versions"] == ["fsck/s3a@1"]
    assert r["chunks_damaged"] == missing["end"] > 0


def test_a_term_past_its_pack_and_a_clean_sample(local_gw, tmp_path):
    """Twenty small pushes make twenty packs: ``--sample 0.25`` reads five of them. A
    manifest whose term reaches past its pack's end is named with its version, without
    reading any pack."""

    async def fill() -> None:
        repo = await Repository.open(local_gw.settings)
        try:
            for i in range(20):
                data = random_bytes(150_000, seed=100 + i)
                await small.push(
                    repo, ANYONE, f"fsck/many/{i}", "file", [small.SmallFile("f", data)], {}
                )
            progress, seen = fsck.Progress(), []
            progress.on_advance = seen.append
            r = await fsck.check(repo, 0.25, progress, seed=7)
            assert r["ok"] and r["packs"] == 20 and r["packs_read"] == 5
            assert sum(seen) == r["bytes_read"] == progress.bytes  # what a bar shows
        finally:
            await repo.close()

    asyncio.run(fill())
    code, r = run_fsck(local_gw, "--sample", "0.25")
    assert code == 0 and r["packs_read"] == 5 and r["sample"] == 0.25

    async def stretch() -> None:
        repo = await Repository.open(local_gw.settings)
        try:

            def tx(conn) -> None:  # type: ignore[no-untyped-def]
                row = conn.execute(version_files.select().limit(1)).first()
                terms = json.loads(row.manifest)
                terms[-1][2] += 1000
                conn.execute(
                    version_files.update()
                    .where(version_files.c.version_id == row.version_id)
                    .values(manifest=json.dumps(terms))
                )

            await repo.db.write(tx)
        finally:
            await repo.close()

    asyncio.run(stretch())
    code, r = run_fsck(local_gw, "--sample", "0.05")
    assert code == 5 and r["packs_read"] == 1
    (term,) = r["problems"]
    assert (term["kind"], term["state"]) == ("term", "out_of_range")
    assert term["versions"] == ["fsck/many/0@1"] and "chunks" in term["why"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "chunkyard.cli",
            "fsck",
            "--data",
            str(local_gw.data),
            "--sample",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "fraction" in bad.stderr
