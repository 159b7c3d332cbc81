"""Trees like rsync, through a real gateway: pulls into an existing directory write only
what differs, ``--delete`` mirrors, ``--include``/``--exclude`` select part of a tree."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.errors import InvalidRequest
from conftest import cli, random_bytes

MiB = 1024 * 1024


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"layers": 2}',
        "shard-00000-of-00002.bin": random_bytes(MiB + 100, seed=1),
        "shard-00001-of-00002.bin": random_bytes(MiB + 200, seed=2),
        "logs/train.log": b"step 1\n" * 50,
        "logs/deep/eval.log": b"eval\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


@pytest.fixture
def pushed(client: Client, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, dict]:
    src = tmp_path / "src"
    files = make_tree(src)
    name = f"trees/{request.node.name.replace('_', '-')[:40]}"
    client.push(src, name)
    return name, files


def test_pull_again_writes_nothing(client: Client, tmp_path: Path, pushed):
    name, files = pushed
    dest = tmp_path / "dest"
    r = client.pull(name, dest)
    assert (r["files_written"], r["files_skipped"]) == (5, 0)
    assert tree_of(dest) == files
    mtimes = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert len(set(mtimes.values())) == 1  # every file stamped with the version's time

    r = client.pull(name, dest)  # fast path: size and mtime
    assert (r["files_written"], r["files_skipped"]) == (0, 5)
    assert r.get("bytes_downloaded", 0) == 0

    # same size, other bytes (mtime moved): written; same bytes, mtime moved: skipped
    # after hashing, and stamped again; another size: written
    shard0 = dest / "shard-00000-of-00002.bin"
    shard0.write_bytes(random_bytes(MiB + 100, seed=99))
    os.utime(dest / "config.json", ns=(1, 1))
    (dest / "logs/train.log").write_bytes(b"short")
    r = client.pull(name, dest)
    assert (r["files_written"], r["files_skipped"]) == (2, 3)
    assert tree_of(dest) == files
    assert (dest / "config.json").stat().st_mtime_ns == shard0.stat().st_mtime_ns
    assert client.pull(name, dest)["files_skipped"] == 5


def test_pull_delete_mirrors_and_stays_inside(client: Client, tmp_path: Path, pushed):
    name, files = pushed
    dest = tmp_path / "dest"
    client.pull(name, dest)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    (dest / "stale.bin").write_bytes(b"old")
    (dest / "old/run/x.txt").parent.mkdir(parents=True)
    (dest / "old/run/x.txt").write_text("x")
    (dest / "logs/old.log").write_text("o")
    (dest / "link-out").symlink_to(outside)
    (dest / "logs/file-link").symlink_to(outside / "precious.txt")

    r = client.pull(name, dest)  # without --delete nothing is removed
    assert "files_deleted" not in r and (dest / "stale.bin").exists()

    r = client.pull(name, dest, exclude=["old/*"], delete=True)
    assert r["files_deleted"] == 4  # stale.bin, logs/old.log and the two symlinks
    assert (dest / "old/run/x.txt").exists()  # excluded: left alone, as rsync
    assert (outside / "precious.txt").read_text() == "keep me"  # links not followed
    r = client.pull(name, dest, delete=True)
    assert r["files_deleted"] == 1 and not (dest / "old").exists()
    assert tree_of(dest) == files and r["files_skipped"] == 5
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["config.json", "logs", "shard-00000-of-00002.bin", "shard-00001-of-00002.bin"]
    )


def test_include_exclude_select_a_shard(client: Client, tmp_path: Path, pushed):
    name, files = pushed
    dest = tmp_path / "one-shard"
    r = client.pull(name, dest, include=["shard-00001-*", "config.json"])
    assert r["files_written"] == 2
    assert tree_of(dest) == {k: files[k] for k in ("shard-00001-of-00002.bin", "config.json")}
    r = client.pull(name, tmp_path / "nologs", exclude=["logs"])  # a directory excludes all
    assert sorted(tree_of(tmp_path / "nologs")) == [
        "config.json",
        "shard-00000-of-00002.bin",
        "shard-00001-of-00002.bin",
    ]
    r = client.pull(name, tmp_path / "both", include=["logs/*"], exclude=["*/deep/*"])
    assert tree_of(tmp_path / "both") == {"logs/train.log": files["logs/train.log"]}

    src = tmp_path / "src"
    r = client.push(src, f"{name}-part", include=["*.bin"], exclude=["*00000*"])
    assert r["files"] == 1
    assert [f["path"] for f in client.show(f"{name}-part")["file_list"]] == [
        "shard-00001-of-00002.bin"
    ]
    with pytest.raises(InvalidRequest):
        client.push(src, f"{name}-none", include=["nothing-*"])


def test_cli_pull_delete_json(gateway, tmp_path: Path, pushed):
    name, files = pushed
    env = {**os.environ, "CHUNKYARD_URL": gateway.url}
    dest = tmp_path / "dest"

    def cy(*args: str) -> subprocess.CompletedProcess:
        return cli(env, *args)

    p = cy("pull", name, str(dest), "--include", "shard-*", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["files_written"] == 2
    (dest / "extra.txt").write_text("e")
    p = cy("pull", name, str(dest), "--delete", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert (r["files_written"], r["files_skipped"], r["files_deleted"]) == (3, 2, 1)
    assert tree_of(dest) == files
    p = cy("pull", name, str(dest))
    assert p.returncode == 0 and "0 written, 5 unchanged" in p.stdout, p.stdout + p.stderr
    one = tmp_path / "one.bin"
    one.write_bytes(b"one file")
    assert cy("push", str(one), f"{name}-file").returncode == 0
    p = cy("pull", f"{name}-file", str(tmp_path / "f.bin"), "--delete")
    assert p.returncode != 0 and "single file" in p.stderr and not (tmp_path / "f.bin").exists()
