"""Trees like rsync, through a real gateway: pulls into an existing directory write only
what differs, ``--delete`` mirrors, ``--include``/``--exclude`` select part of a tree."""

import json
import os
import stat
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


# -- file modes and empty directories ------------------------------------------------
def modes_of(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


def dirs_of(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()}


def make_modal_tree(root: Path, large: bool = False) -> dict[str, int]:
    """Files of four modes, an empty directory and nested empty ones (and, ``large``,
    files above the small-push size); their modes by path."""
    n = 2 * MiB if large else 100
    files = {
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o755),
        "secret.key": (b"k" * 32, 0o600),
        "README": (b"read me", 0o644),
        "bin/tool": (random_bytes(n, seed=31), 0o750),
        "frozen.bin": (random_bytes(n, seed=32), 0o444),
    }
    for rel, (data, mode) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.chmod(root / rel, mode)
    (root / "empty").mkdir()
    (root / "nest/a/b").mkdir(parents=True)
    (root / "nest/a/c").mkdir()
    return {rel: mode for rel, (_, mode) in files.items()}


@pytest.fixture
def umask_077():
    """Pulls apply recorded modes exactly, whatever the umask."""
    old = os.umask(0o077)
    yield
    os.umask(old)


@pytest.mark.parametrize("large", [False, True], ids=["small-push", "session"])
def test_modes_and_empty_dirs_round_trip(
    client: Client, tmp_path: Path, monkeypatch, umask_077, large
):
    src = tmp_path / "src"
    modes = make_modal_tree(src, large)
    name = f"trees/modal-{large}"
    r = client.push(src, name)
    assert r["created"]
    if large:  # through an upload session (the files are above the small-push size)
        assert r["parts_sent"] >= 1
    v = client.show(name)
    assert {f["path"]: f["mode"] for f in v["file_list"]} == modes
    assert v["dirs"] == ["empty", "nest/a/b", "nest/a/c"]  # the deepest empty ones only

    dest = tmp_path / "dest"
    client.pull(name, dest)
    assert modes_of(dest) == modes
    assert {"empty", "nest/a/b", "nest/a/c"} <= dirs_of(dest)
    assert tree_of(dest) == tree_of(src)

    # a local chmod is mended by the next pull, though the file is not written again
    os.chmod(dest / "run.sh", 0o644)
    os.chmod(dest / "secret.key", 0o666)
    r = client.pull(name, dest)
    assert r["files_written"] == 0 and modes_of(dest) == modes

    # a chmod is a change of the tree: a new version; the same tree again is not
    os.chmod(src / "README", 0o755)
    again = client.push(src, name)
    assert again["created"] and again["version"] == v["version"] + 1
    assert again["digest"] != v["digest"]
    assert not client.push(src, name)["created"]
    (src / "nest/a/c").rmdir()  # an empty directory less: another tree
    assert client.push(src, name)["created"]
    client.pull(name, dest)
    assert modes_of(dest)["README"] == 0o755


def test_parallel_lanes_keep_modes_and_content(client: Client, tmp_path: Path, monkeypatch):
    """Large files two at a time, each lane filling packs of its own (forced here: the
    development machine has two cores, where lanes are off)."""
    from chunkyard.client import packer

    monkeypatch.setattr(packer, "lane_count", lambda: 2)
    monkeypatch.setattr(packer, "PARALLEL_MIN", MiB)
    monkeypatch.setenv("CHUNKYARD_SMALL_PUSH_BYTES", "0")
    src = tmp_path / "src"
    files = {f"shard-{i}.bin": random_bytes(MiB + i * 300_000, seed=40 + i) for i in range(5)}
    files["conf/medium.bin"] = random_bytes(MiB + 5, seed=50)
    files["small.json"] = b"{}"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    os.chmod(src / "shard-3.bin", 0o700)
    (src / "logs").mkdir()
    r = client.push(src, "trees/lanes")
    assert r["files"] == 7 and r["chunks_new"] == r["chunks_total"]
    client.pull("trees/lanes", tmp_path / "dest")
    assert tree_of(tmp_path / "dest") == files
    assert modes_of(tmp_path / "dest")["shard-3.bin"] == 0o700
    assert (tmp_path / "dest/logs").is_dir()


def _packs_of(files: list[Path], done: dict[bytes, tuple[str, int]]) -> list[str]:
    """Ids of the packs a packer ships for ``files`` when the gateway holds the chunks
    ``done`` (chunk id -> pack, index) already."""
    from chunkyard.client.packer import Packer
    from test_resume import holding

    shipped: list = []

    def ship(pack) -> None:
        shipped.append((pack.id, [e.chunk_id for e in pack.entries]))

    with Packer(holding(done), ship, MiB) as p:
        p.add_files([(f, f.name, None) for f in files])
        p.finish()
    return shipped


def test_lanes_pack_deterministically(tmp_path: Path, monkeypatch):
    """Files dealt to two lanes by size pack the same way on every run, and a run after
    an interruption (some packs finished, in any order) rebuilds exactly the others."""
    from chunkyard.client import packer

    monkeypatch.setattr(packer, "lane_count", lambda: 2)
    monkeypatch.setattr(packer, "PARALLEL_MIN", MiB)
    files = []
    for i, n in enumerate((3 * MiB, 2 * MiB + 7, 4 * MiB, 1500 * 1024)):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(random_bytes(n, seed=60 + i))
    first = _packs_of(files, {})
    assert len(first) >= 8
    assert sorted(first) == sorted(_packs_of(files, {}))
    ids = [p for p, _ in first]
    for finished in ({0}, {1, 4}, set(range(0, len(first), 2)), {len(first) - 1}):
        done = {cid: (first[i][0], n) for i in finished for n, cid in enumerate(first[i][1])}
        again = [p for p, _ in _packs_of(files, done)]
        assert sorted(again) == sorted(x for i, x in enumerate(ids) if i not in finished)


def test_pull_delete_keeps_recorded_empty_dirs(client: Client, tmp_path: Path):
    src = tmp_path / "src"
    (src / "keep/me").mkdir(parents=True)
    (src / "data").mkdir()
    (src / "data/x.txt").write_text("x")
    client.push(src, "trees/empty-dirs")
    dest = tmp_path / "dest"
    (dest / "stray/deeper").mkdir(parents=True)  # not in the version: rsync removes it
    (dest / "keep/me/old.txt").parent.mkdir(parents=True)
    (dest / "keep/me/old.txt").write_text("o")
    (dest / "skipme").mkdir()
    r = client.pull("trees/empty-dirs", dest, exclude=["skipme"], delete=True)
    assert r["files_deleted"] == 1
    assert dirs_of(dest) == {"keep", "keep/me", "data", "skipme"}  # excluded: left alone
    assert tree_of(dest) == {"data/x.txt": b"x"}
    # an empty directory outside the selection is not made
    r = client.pull("trees/empty-dirs", tmp_path / "part", include=["data"])
    assert dirs_of(tmp_path / "part") == {"data"}


def test_versions_without_modes_pull_as_before(gateway, client: Client, tmp_path: Path):
    """A version made before modes were recorded (its rows hold none): no mode in its
    file list, files written as the umask says, existing ones left as they are; its
    digest is the tree digest as it always was."""
    import sqlite3

    import blake3

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/run.sh").write_bytes(b"#!/bin/sh\n")
    (src / "b.txt").write_bytes(b"b")
    r = client.push(src, "trees/old-version")
    conn = sqlite3.connect(gateway.data / "catalog.db")
    try:
        with conn:
            conn.execute(
                "update version_files set mode = null where version_id = (select v.id from"
                " versions v join artifacts a on a.id = v.artifact_id where a.name = ?"
                " and v.number = ?)",
                ("trees/old-version", r["version"]),
            )
    finally:
        conn.close()
    v = client.show("trees/old-version")
    assert all("mode" not in f for f in v["file_list"]) and v["dirs"] == []
    old = blake3.blake3()  # the rule before modes: path \0 size \0 id \n, by path
    for f in sorted(v["file_list"], key=lambda f: f["path"].encode()):
        old.update(f"{f['path']}\0{f['size']}\0{f['digest']}\n".encode())
    assert v["digest"] == old.hexdigest()
    dest = tmp_path / "dest"
    client.pull("trees/old-version", dest)
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes_of(dest).values()) == {0o644 & ~umask}
    os.chmod(dest / "a/run.sh", 0o755)
    client.pull("trees/old-version", dest)
    assert modes_of(dest)["a/run.sh"] == 0o755


def test_tree_digest_rule():
    """Default modes and no empty directory: the digest as before modes (old versions
    keep verifying); any other mode, or an empty directory, makes another tree."""
    import blake3

    from chunkyard.digest import tree_digest

    files = [("b/x", 5, "ab" * 32), ("a", 0, "cd" * 32)]
    old = blake3.blake3(b"a\x000\x00" + b"cd" * 32 + b"\nb/x\x005\x00" + b"ab" * 32 + b"\n")
    assert tree_digest(files) == old.hexdigest()
    assert tree_digest([(*f, None) for f in files]) == old.hexdigest()
    assert tree_digest([(*f, 0o644) for f in files]) == old.hexdigest()
    exe = tree_digest([(*files[0], 0o755), files[1]])
    assert exe != old.hexdigest()
    assert (
        exe
        == blake3.blake3(
            b"a\x000\x00" + b"cd" * 32 + b"\nb/x\x005\x00" + b"ab" * 32 + b"\x00755\n"
        ).hexdigest()
    )
    with_dir = tree_digest(files, ["a0"])
    assert (
        with_dir
        == blake3.blake3(
            b"a\x000\x00" + b"cd" * 32 + b"\na0\x00dir\nb/x\x005\x00" + b"ab" * 32 + b"\n"
        ).hexdigest()
    )


@pytest.mark.parametrize(
    "dirs",
    [["../up"], ["/abs"], ["e", "e"], ["a.txt"], ["d"], ["n"], ["x//y"]],
    ids=["dotdot", "absolute", "twice", "a-file", "holds-a-file", "parent-of-another", "empty-seg"],
)
def test_bad_empty_dirs_are_refused_and_change_nothing(gateway, client: Client, dirs):
    from chunkyard.errors import ChunkyardError

    files = [{"path": "a.txt", "data": "YQ=="}, {"path": "d/f", "data": ""}]
    dirs = [*dirs, "n/m"] if dirs == ["n"] else dirs
    before = gateway.snapshot()
    body = {"layout": "tree", "files": files, "dirs": dirs}
    with pytest.raises(ChunkyardError) as exc:
        client.transport.call("POST", "/v1/artifacts/trees/bad-dirs/-/versions", json=body)
    assert exc.value.code in ("invalid_name", "invalid_manifest"), exc.value
    with pytest.raises(ChunkyardError) as exc:  # a single file has no mode, no directory
        client.transport.call(
            "POST",
            "/v1/artifacts/trees/bad-dirs/-/versions",
            json={"layout": "file", "files": [{"path": "a", "data": "", "mode": 0o755}]},
        )
    assert exc.value.code == "invalid_manifest"
    with pytest.raises(ChunkyardError) as exc:
        client.transport.call(
            "POST",
            "/v1/artifacts/trees/bad-dirs/-/versions",
            json={"layout": "tree", "files": [{"path": "a", "data": "", "mode": 0o1755}]},
        )
    assert exc.value.code == "invalid_manifest"
    assert gateway.snapshot() == before


def test_amend_carries_modes_and_empty_dirs_forward(client: Client, tmp_path: Path):
    """Adding files (MLflow's log_artifact, an fsspec write) keeps the modes of the
    files carried forward and the empty directories no new file fills."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "out").mkdir()
    (src / "cache").mkdir()
    client.push(src, "trees/amend")
    new = tmp_path / "metrics.json"
    new.write_bytes(b"{}")
    os.chmod(new, 0o600)
    v = client.add("trees/amend", {"out/metrics.json": new})
    assert v["version"] == 2
    shown = client.show("trees/amend")
    assert {f["path"]: f["mode"] for f in shown["file_list"]} == {
        "out/metrics.json": 0o600,
        "run.sh": 0o755,
    }
    assert shown["dirs"] == ["cache"]  # "out" holds a file now
    client.pull("trees/amend", tmp_path / "dest")
    assert modes_of(tmp_path / "dest") == {"out/metrics.json": 0o600, "run.sh": 0o755}
    assert (tmp_path / "dest/cache").is_dir()


def test_a_pull_takes_only_sane_modes_and_dirs_from_a_gateway(tmp_path: Path):
    """Whatever a gateway answers: no setuid/setgid/sticky bit, no directory outside the
    destination, checked before anything is written."""
    from chunkyard.client.download import targets
    from chunkyard.errors import InvalidName

    def version(mode: object, dirs: list) -> dict:
        files = [{"path": "a/x", "size": 0, "digest": "", "mode": mode}]
        return {"name": "n", "version": 1, "layout": "tree", "file_list": files, "dirs": dirs}

    assert targets(version(0o755, ["b"]), tmp_path / "ok")
    for mode, dirs in ((0o4755, []), (-1, []), ("755", []), (True, []), (0o755, ["../up"])):
        with pytest.raises(InvalidName):
            targets(version(mode, dirs), tmp_path / "d")
    for dirs in (["a"], ["a/x"], ["/abs"], "b"):
        with pytest.raises(InvalidName):
            targets(version(0o644, dirs), tmp_path / "d")  # type: ignore[arg-type]
    assert not (tmp_path / "d").exists()
