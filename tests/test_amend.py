"""``Client.add``/``remove``/``read``: versions made from the latest plus or minus some
files, writers that amend one name at once, ranged reads of one file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.client import amend
from chunkyard.errors import InvalidRequest, NotFound
from conftest import random_bytes, start_gateway
from http_source import Source


def paths(client: Client, ref: str) -> list[str]:
    return [f["path"] for f in client.show(ref)["file_list"]]


def test_add_carries_the_tree_forward_and_sends_only_new_bytes(
    client: Client, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(4 * 1024 * 1024, seed=11))
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "x.txt").write_text("x")
    (tmp_path / "d" / "e" / "y.txt").write_text("y")
    v1 = client.add("amend/run", {"weights/big.bin": big}, tags={"step": "1"})
    assert (v1["version"], v1["created"]) == (1, True)
    assert v1["bytes_uploaded"] > 4 * 1024 * 1024
    v2 = client.add("amend/run", {"logs": tmp_path / "d"})
    assert v2["bytes_uploaded"] < 4096  # the big file is named by id, not sent
    assert paths(client, "amend/run") == ["logs/e/y.txt", "logs/x.txt", "weights/big.bin"]
    again = client.add("amend/run", {"weights/big.bin": big})
    assert (again["version"], again["created"], again["bytes_uploaded"]) == (2, False, 0)

    (tmp_path / "logs").write_text("a file where a directory was")
    client.add("amend/run", {"logs": tmp_path / "logs"})  # replaces the directory
    assert paths(client, "amend/run") == ["logs", "weights/big.bin"]
    v4 = client.remove("amend/run", ["logs"])
    assert v4["version"] == 4 and paths(client, "amend/run") == ["weights/big.bin"]
    assert paths(client, "amend/run@2") == ["logs/e/y.txt", "logs/x.txt", "weights/big.bin"]
    with pytest.raises(InvalidRequest):
        client.remove("amend/run", ["weights"])  # would leave nothing
    with pytest.raises(InvalidRequest):
        client.add("amend/run", {"": big})  # a file needs its path


def test_read_returns_a_range_of_one_file(client: Client, tmp_path: Path) -> None:
    data = random_bytes(3 * 1024 * 1024 + 17, seed=12)
    (tmp_path / "w.bin").write_bytes(data)
    client.add("amend/read", {"w.bin": tmp_path / "w.bin", "s.txt": tmp_path / "w.bin"})
    assert client.read("amend/read", "w.bin", 1_000_000, 70_000) == data[1_000_000:1_070_000]
    assert client.read("amend/read@1", "w.bin", len(data) - 5) == data[-5:]
    assert client.read("amend/read", "w.bin", len(data) + 3, 10) == b""
    assert client.read("amend/read", "w.bin") == data
    with pytest.raises(NotFound):
        client.read("amend/read", "nope.bin", 0, 1)
    with pytest.raises(InvalidRequest):
        client.read("amend/read")  # two files: name one


def test_a_writer_that_raced_brings_the_others_files_forward(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose latest version is stale (another committed meanwhile) commits,
    then a merge that holds both writers' files."""
    for name in "abc":
        (tmp_path / name).write_text(name)
    client.add("amend/race", {"a": tmp_path / "a"})
    stale = client.show("amend/race")
    client.add("amend/race", {"b": tmp_path / "b"})  # the other writer, version 2
    monkeypatch.setattr(amend, "_base", lambda transport, name: stale)
    out = client.add("amend/race", {"c": tmp_path / "c"})  # built on version 1: 3, then 4
    monkeypatch.undo()
    assert out["version"] == 4 and out["tags"]["merged"] == "2-2"
    assert paths(client, "amend/race@3") == ["a", "c"]
    assert paths(client, "amend/race") == ["a", "b", "c"]


def test_concurrent_writers_keep_every_file(client: Client, tmp_path: Path) -> None:
    files = []
    for i in range(12):
        p = tmp_path / f"f{i}.txt"
        p.write_text(str(i))
        files.append(p)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            start.wait()
            with Client(client.url) as c:
                for p in files[k::4]:
                    c.add("amend/many", {f"w{k}/{p.name}": p})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(paths(client, "amend/many")) == sorted(
        f"w{k}/{p.name}" for k in range(4) for p in files[k::4]
    )


def test_read_of_a_reference_range_reads_only_that_range_of_the_source(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    source = Source()
    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("refs"),
        CHUNKYARD_REF_ALLOW=f"{source.url}/files/",
        CHUNKYARD_REF_ALLOW_PRIVATE_NETWORKS="1",
    )
    try:
        data = random_bytes(5 * 1024 * 1024, seed=13)
        with Client(gw.url) as c:
            c.ref("amend/ref", source.put("/files/w.bin", data))
            before = source.body_bytes
            assert c.read("amend/ref", None, 4_000_000, 1000) == data[4_000_000:4_001_000]
            assert source.body_bytes - before < 64 * 1024
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        source.close()
