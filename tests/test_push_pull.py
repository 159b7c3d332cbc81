"""End to end through a real gateway: push, pull, dedup, versions, aliases, tags."""

import json
import os
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from chunkyard import Client
from chunkyard.digest import tree_digest
from chunkyard.errors import AliasConflict, TagConflict, VersionNotFound
from conftest import cli, file_id, random_bytes

MiB = 1024 * 1024


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_push_pull_file_round_trip(client: Client, tmp_path: Path):
    data = random_bytes(3 * MiB + 17, seed=10)
    src = write(tmp_path / "model.bin", data)
    r = client.push(src, "team/proj/model", tags={"stage": "dev"})
    assert r["version"] == 1 and r["created"]
    assert r["digest"] == file_id(data)
    assert r["size"] == len(data) and r["files"] == 1
    assert r["chunks_new"] == r["chunks_total"] > 10
    assert 0 < r["bytes_uploaded"] <= len(data) + 4096
    out = tmp_path / "out.bin"
    pulled = client.pull("team/proj/model", out)
    assert out.read_bytes() == data and pulled["version"] == 1
    assert client.show("team/proj/model@1")["tags"] == {"stage": "dev"}


@pytest.mark.parametrize("page", [1 * MiB + 12345, 200_000])
def test_a_file_over_many_reconstruction_pages_pulls(client, tmp_path, monkeypatch, page):
    """A chunk cut by a page boundary is listed by both pages; the file id counts it
    once (a 1 GiB pull, over two 512 MiB pages, failed its digest check)."""
    from chunkyard.repository import downloads

    monkeypatch.setattr(downloads, "PAGE_BYTES", page)
    block = random_bytes(700_000, seed=11)
    data = random_bytes(2 * MiB, seed=12) + block + block + block
    src = write(tmp_path / "paged.bin", data)
    client.push(src, f"team/proj/paged-{page}")
    out = tmp_path / "out.bin"
    client.pull(f"team/proj/paged-{page}", out)
    assert out.read_bytes() == data


def test_identical_push_returns_the_same_version_and_sends_nothing(client, tmp_path):
    src = write(tmp_path / "w.bin", random_bytes(2 * MiB, seed=11))
    first = client.push(src, "team/same")
    again = client.push(src, "team/same")
    assert again["version"] == first["version"] == 1
    assert not again["created"] and again["bytes_uploaded"] == 0
    assert len(client.versions("team/same")) == 1


def test_small_edit_uploads_little_and_both_versions_pull(client, tmp_path):
    data = bytearray(random_bytes(8 * MiB, seed=12))
    src = write(tmp_path / "ckpt.bin", bytes(data))
    client.push(src, "team/edit")
    for i in range(4):
        pos = (i + 1) * 1_500_000
        data[pos : pos + 1000] = random_bytes(1000, seed=100 + i)
    write(src, bytes(data))
    r = client.push(src, "team/edit")
    assert r["version"] == 2
    assert r["bytes_uploaded"] < 0.15 * len(data), r
    assert r["chunks_new"] <= 8
    client.pull("team/edit@2", tmp_path / "v2")
    client.pull("team/edit@1", tmp_path / "v1")
    assert (tmp_path / "v2").read_bytes() == bytes(data)
    assert (tmp_path / "v1").read_bytes() != bytes(data)


def test_directory_push_and_pull(client, tmp_path):
    root = tmp_path / "model"
    files = {
        "config.json": b'{"layers": 2}',
        "shards/model-00001.safetensors": random_bytes(2 * MiB, seed=13),
        "shards/model-00002.safetensors": random_bytes(MiB + 5, seed=14),
        "empty.txt": b"",
    }
    for rel, data in files.items():
        write(root / rel, data)
    r = client.push(root, "team/folder")
    expect = tree_digest((p, len(d), file_id(d)) for p, d in files.items())
    assert r["digest"] == expect and r["files"] == 4 and r["size"] == sum(map(len, files.values()))
    out = tmp_path / "pulled"
    client.pull("team/folder", out)
    for rel, data in files.items():
        assert (out / rel).read_bytes() == data
    # change one shard: the other files are reused without re-chunking
    write(root / "shards/model-00002.safetensors", random_bytes(MiB + 5, seed=15))
    r2 = client.push(root, "team/folder")
    assert r2["version"] == 2
    assert r2["chunks_total"] < 30  # only the changed shard was chunked
    client.pull("team/folder@2", tmp_path / "p2")
    assert (tmp_path / "p2/shards/model-00002.safetensors").read_bytes() == random_bytes(
        MiB + 5, seed=15
    )


def test_many_small_files_go_in_batches_and_dedup_like_large_ones(client, tmp_path):
    """Small files take the batched path (one query per batch): the same chunks, the
    same dedup, byte-identical pulls; sizes around the threshold and empty files."""
    from chunkyard.client.packer import SMALL_MAX

    root = tmp_path / "data"
    files = {f"part-{i:04d}.json": random_bytes(3000 + i, seed=1000 + i) for i in range(600)}
    files["empty"] = b""
    files["at-limit.bin"] = random_bytes(SMALL_MAX, seed=31)
    files["above-limit.bin"] = random_bytes(SMALL_MAX + 1, seed=32)
    files["copy-of-part-0.json"] = files["part-0000.json"]  # a repeat within the push
    for rel, data in files.items():
        write(root / rel, data)
    r = client.push(root, "team/small")
    assert r["files"] == len(files)
    expect = tree_digest((p, len(d), file_id(d)) for p, d in files.items())
    assert r["digest"] == expect
    client.pull("team/small", tmp_path / "back")
    for rel, data in files.items():
        assert (tmp_path / "back" / rel).read_bytes() == data
    # the large file above the limit went through the streaming path: same chunks, so
    # the same content under another name in a small-file push dedups against it
    (tmp_path / "single").mkdir()
    write(tmp_path / "single/x.bin", files["at-limit.bin"])
    again = client.push(tmp_path / "single/x.bin", "team/small-single")
    assert again["chunks_new"] == 0 and again["bytes_uploaded"] == 0
    # one small file changed: only it is sent
    write(root / "part-0100.json", random_bytes(3100, seed=5))
    r2 = client.push(root, "team/small")
    assert r2["version"] == 2 and r2["chunks_new"] == 1 and r2["bytes_uploaded"] < 8000
    client.pull("team/small@2", tmp_path / "v2")
    assert (tmp_path / "v2/part-0100.json").read_bytes() == random_bytes(3100, seed=5)


def test_batch_reconstruction_refuses_bad_requests(client, gateway, tmp_path):
    root = tmp_path / "few"
    write(root / "a", b"alpha")
    write(root / "big", random_bytes(9 * MiB, seed=33))
    client.push(root, "team/batch")
    url = f"{gateway.url}/v1/artifacts/team/batch/-/versions/1/reconstructions"
    ok = httpx.post(url, json={"files": [0]})
    assert ok.status_code == 200 and ok.json()["files"][0]["path"] == "a"
    for body, status, code in (
        ({"files": []}, 400, "bad_request"),
        ({"files": "0"}, 400, "bad_request"),
        ({"files": [True]}, 400, "bad_request"),
        ({"files": list(range(1025))}, 400, "bad_request"),
        ({"files": [1]}, 400, "bad_request"),  # 9 MiB: too large for a batch
        ({"files": [7]}, 404, "not_found"),
    ):
        r = httpx.post(url, json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (body, r.text)


def test_aliases_tags_listing_and_stats(client, tmp_path):
    for i in range(3):
        client.push(write(tmp_path / f"f{i}", random_bytes(100_000, seed=20 + i)), "org/a/m")
    client.push(write(tmp_path / "other", b"hello"), "org/b/m")
    assert client.set_alias("org/a/m", "champion", 2)["previous"] is None
    assert client.show("org/a/m:champion")["version"] == 2
    with pytest.raises(AliasConflict):
        client.set_alias("org/a/m", "champion", 3, expect=1)
    assert client.set_alias("org/a/m", "champion", 3, expect=2)["previous"] == 2
    client.pull("org/a/m:champion", tmp_path / "champ")
    assert (tmp_path / "champ").read_bytes() == random_bytes(100_000, seed=22)
    client.tag("org/a/m@1", {"acc": "0.9"})
    client.tag("org/a/m@1", {"acc": "0.9"})  # same value: no-op
    with pytest.raises(TagConflict):
        client.tag("org/a/m@1", {"acc": "0.8"})
    names = [a["name"] for a in client.ls("org/")]
    assert names == ["org/a/m", "org/b/m"]
    assert [a["name"] for a in client.ls("org/a")] == ["org/a/m"]
    assert client.ls("org/a")[0]["latest"] == 3
    with pytest.raises(VersionNotFound):
        client.show("org/a/m@9")
    s = client.stats()
    assert s["logical_bytes"] >= 300_005 and s["stored_bytes"] > 0 and s["packs"] >= 1
    assert s["chunks"] > 0 and s["dedup_ratio"] > 0


def test_content_endpoint_streams_with_ranges(gateway, client, tmp_path):
    data = random_bytes(MiB + 333, seed=30)
    client.push(write(tmp_path / "c.bin", data), "team/stream")
    url = f"{gateway.url}/v1/artifacts/team/stream/-/versions/latest/content"
    full = httpx.get(url)
    assert full.status_code == 200 and full.content == data
    part = httpx.get(url, headers={"range": "bytes=1000-200999"})
    assert part.status_code == 206 and part.content == data[1000:201000]
    assert part.headers["content-range"] == f"bytes 1000-200999/{len(data)}"
    bad = httpx.get(url, headers={"range": f"bytes={len(data) + 10}-"})
    assert bad.status_code == 416 and bad.json()["error"]["code"] == "range_not_satisfiable"


def test_concurrent_writers_overlapping_content(gateway, tmp_path):
    """8 clients push overlapping content to the same and different names at once."""
    base = random_bytes(3 * MiB, seed=40)
    srcs = []
    for i in range(8):
        data = base[: MiB * (1 + i % 3)] + random_bytes(300_000, seed=50 + i)
        srcs.append((write(tmp_path / f"c{i}.bin", data), f"team/conc/{'shared' if i % 2 else i}"))
    results: list = [None] * 8
    errors: list = []

    def run(i: int) -> None:
        try:
            with Client(gateway.url) as c:
                results[i] = c.push(srcs[i][0], srcs[i][1])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Client(gateway.url) as c:
        for i, r in enumerate(results):
            out = tmp_path / f"o{i}"
            c.pull(f"{r['name']}@{r['version']}", out)
            assert out.read_bytes() == srcs[i][0].read_bytes()
        assert len(c.versions("team/conc/shared")) == 4


def test_cli_json_and_exit_codes(gateway, tmp_path):
    env = {**os.environ, "CHUNKYARD_URL": gateway.url}
    src = write(tmp_path / "cli.bin", random_bytes(500_000, seed=60))

    def cy(*args: str) -> subprocess.CompletedProcess:
        return cli(env, *args)

    p = cy("push", str(src), "cli/model", "--tag", "k=v", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    for key in (
        "name",
        "version",
        "digest",
        "size",
        "files",
        "chunks_total",
        "chunks_new",
        "bytes_uploaded",
    ):
        assert key in r
    assert p.stderr == ""  # no progress bar when not on a terminal
    p = cy("pull", "cli/model@1", str(tmp_path / "back.bin"), "--json")
    assert p.returncode == 0 and (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    for args in (
        ["ls", "--json"],
        ["show", "cli/model", "--json"],
        ["stats", "--json"],
        ["alias", "set", "cli/model", "prod", "1", "--json"],
    ):
        p = cy(*args)
        assert p.returncode == 0, (args, p.stderr)
        json.loads(p.stdout)
    p = cy("show", "cli/missing", "--json")
    assert p.returncode == 3 and json.loads(p.stdout)["error"]["code"] == "artifact_not_found"
    p = cy("push", str(src), "bad//name")
    assert p.returncode == 2 and "invalid_name" in p.stderr


def test_openapi_and_health(gateway):
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/sessions" in doc["paths"]
    assert httpx.get(f"{gateway.url}/v1/health").json()["status"] == "ok"


@pytest.mark.parametrize("grow", [0, 123_457])
def test_similar_large_file_sends_only_new_chunks(client, tmp_path, monkeypatch, grow):
    """A file resembling the latest version's (a new checkpoint) is hashed whole first,
    then only the runs holding new chunks are read and sent."""
    from chunkyard import hashing
    from chunkyard.client import packer

    monkeypatch.setattr(packer, "SIMILAR_MIN", 1)  # the path large files take
    monkeypatch.setattr(hashing, "PARALLEL_MIN", 1)  # with the helper process
    data = bytearray(random_bytes(6 * MiB, seed=110 + grow))
    src = write(tmp_path / "ckpt.bin", bytes(data))
    client.push(src, f"team/similar/{grow}")
    for i in range(3):
        pos = (i + 1) * 1_700_000
        data[pos : pos + 500] = random_bytes(500, seed=120 + i)
    data += random_bytes(grow, seed=130)
    write(src, bytes(data))
    r = client.push(src, f"team/similar/{grow}")
    assert r["version"] == 2 and r["size"] == len(data)
    assert r["bytes_uploaded"] < 0.2 * len(data), r
    assert r["digest"] == file_id(bytes(data))
    client.pull(f"team/similar/{grow}@2", tmp_path / "v2")
    assert (tmp_path / "v2").read_bytes() == bytes(data)
    write(src, bytes(data))
    again = client.push(src, f"team/similar/{grow}")
    assert not again["created"] and again["bytes_uploaded"] == 0


def test_a_version_in_a_newer_format_is_refused_clearly(gateway, client, tmp_path):
    """Each version records the repository format it was written in; a reader that does
    not know that format says so instead of misreading it."""
    import sqlite3

    from chunkyard.errors import InvalidRequest
    from chunkyard.version import FORMAT_VERSION

    src = tmp_path / "f.bin"
    src.write_bytes(random_bytes(100_000, seed=77))
    v = client.push(src, "fmt/future")
    conn = sqlite3.connect(gateway.data / "catalog.db")
    try:
        assert conn.execute("select format from versions order by id desc").fetchone() == (
            FORMAT_VERSION,
        )
        conn.execute("update versions set format = 99 where id = (select max(id) from versions)")
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(InvalidRequest, match="repository format 99"):
        client.pull(f"fmt/future@{v['version']}", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def weights_bf16(n: int, seed: int) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    f32 = rng.standard_normal(n // 2, dtype=np.float32) * np.float32(0.02)
    return (f32.view(np.uint32) >> 16).astype("<u2").tobytes()


def test_weights_are_stored_byte_grouped_and_pull_back(client, tmp_path):
    """bf16 weights take the byte-grouped schemes of pack layout 3: less is sent than
    zstd alone would make of them, and every byte comes back."""
    data = weights_bf16(6 * MiB, seed=21)
    src = write(tmp_path / "w.bin", data)
    r = client.push(src, "layout3/weights")
    assert r["bytes_uploaded"] < 0.72 * len(data)  # zstd level 1 alone: 78 %
    out = tmp_path / "out.bin"
    client.pull("layout3/weights", out)
    assert out.read_bytes() == data


def test_packs_an_older_client_wrote_are_verified_and_read(client, tmp_path, monkeypatch):
    """A client of format 3 wrote pack layout 2 (zstd or raw records, the pack id over
    every byte): the gateway still verifies such packs and readers still decode them."""
    from chunkyard import packs

    monkeypatch.setattr(packs, "FORMAT_VERSION", 2)
    monkeypatch.setattr(packs, "GROUP_WIDTHS", ())
    data = weights_bf16(3 * MiB, seed=22) + random_bytes(MiB, seed=23)
    src = write(tmp_path / "old.bin", data)
    r = client.push(src, "layout2/old")
    assert 0.72 * len(data) < r["bytes_uploaded"] < len(data)
    monkeypatch.undo()
    out = tmp_path / "out.bin"
    client.pull("layout2/old", out)
    assert out.read_bytes() == data
    # and a new push of the same bytes dedups against the old packs
    again = client.push(write(tmp_path / "again.bin", data), "layout2/again")
    assert again["bytes_uploaded"] == 0
