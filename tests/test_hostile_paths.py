"""File paths: a commit whose paths cannot be written out is refused and changes
nothing; a pull writes only inside its destination, whatever the gateway sends, and
refuses (one clear error, nothing written) a version its destination cannot hold."""

from __future__ import annotations

import json
import os
import re
import unicodedata
from pathlib import Path

import httpx
import pytest

from chunkyard import cli, names
from chunkyard.client.transport import Transport
from chunkyard.errors import ChunkyardError, InvalidName, InvalidRequest

LONG = "s" * 256  # one byte over a segment's limit
EMPTY = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"  # BLAKE3 of b""


def error_code(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return body["error"]["code"]


@pytest.fixture
def api(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def commit(api, name: str, paths: list[str], layout: str = "tree", tags=None) -> httpx.Response:
    sid = api.post("/v1/sessions", json={"name": name}).json()["session"]
    files = [{"path": p, "size": 0, "b3sum": EMPTY, "terms": []} for p in paths]
    body = json.dumps({"layout": layout, "files": files, "tags": tags or {}})  # \ud800 escaped
    return api.post(
        f"/v1/sessions/{sid}/commit", content=body, headers={"content-type": "application/json"}
    )


# -- 1. at commit -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "paths",
    [
        ["x", "x/y"],
        ["x/y", "x"],
        ["a/b", "a/b/c"],
        ["a/b/c/d", "q", "a/b"],
        [LONG],
        ["dir/" + LONG + "/f"],
        ["é" * 128],  # 128 characters, 256 bytes
        ["s" * 4096],  # one 4,096-character segment (it used to crash the pull)
        ["/".join(["é" * 120] * 18)],  # short segments, 4,337 bytes in all
        ["e\u0301.txt"],  # NFD: "é" as "e" and a combining accent
        ["ok", "dir/Cafe\u0301"],
        ["C:/x"],
        ["c:x"],
        ["a\\b"],
        ["a\x00b"],
        ["a\x1fb"],
        ["a\u202eb"],
        ["../x"],
        ["a//b"],
        ["a/"],
    ],
)
def test_unwritable_trees_are_refused_and_change_nothing(gateway, api, paths):
    before = gateway.snapshot()
    r = commit(api, "paths/refused", paths)
    assert r.status_code == 400 and error_code(r) == "invalid_name", r.text
    assert gateway.snapshot() == before


def test_a_lone_surrogate_is_not_json(gateway, api):
    before = gateway.snapshot()
    r = commit(api, "paths/refused", ["a/\ud800"])
    assert r.status_code == 400 and error_code(r) == "bad_request", r.text
    assert gateway.snapshot() == before
    with pytest.raises(InvalidName, match="not valid Unicode"):
        names.check_path("a/\udcff")  # a name os.listdir gives for bytes not UTF-8


def test_a_single_file_version_in_nfd_or_too_long_is_refused(gateway, api):
    before = gateway.snapshot()
    for path in ["Cafe\u0301.bin", LONG]:
        r = commit(api, "paths/single", [path], layout="file")
        assert r.status_code == 400 and error_code(r) == "invalid_name", r.text
    assert gateway.snapshot() == before


def test_tag_values_must_be_nfc(gateway, api):
    before = gateway.snapshot()
    r = commit(api, "paths/tags", ["f"], tags={"note": "cafe\u0301"})
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    assert "NFC" in r.json()["error"]["message"]
    assert gateway.snapshot() == before
    r = commit(api, "paths/tags", ["f"], tags={"note": "caf\u00e9"})
    assert r.status_code == 201, r.text
    before = gateway.snapshot()
    r = api.post("/v1/artifacts/paths/tags/-/versions/1/tags", json={"tags": {"b": "e\u0301"}})
    assert r.status_code == 400 and error_code(r) == "invalid_name"
    assert gateway.snapshot() == before


def test_writable_trees_are_taken(api):
    """Case only (two files on Linux and in S3), NFC, long but within the limits."""
    seg = "é" * 127  # 254 bytes
    for paths in (
        ["README", "readme", "ReadMe/x"],
        ["caf\u00e9/\u00e9t\u00e9.txt", "x-y", "x.y/z", "xy"],
        [seg, "d/" + seg, "/".join(["a" * 250] * 16)],  # 4,015 bytes
        ["a/b", "a/bc", "a/b.c/d", "ab/c"],  # prefixes of names, not of directories
    ):
        r = commit(api, "paths/ok", paths)
        assert r.status_code in (200, 201), (paths, r.text)


def test_check_tree_paths_rules():
    assert names.check_tree_paths(["a/b", "a/c", "b"]) == ["a/b", "a/c", "b"]
    with pytest.raises(InvalidName, match="appears twice"):
        names.check_tree_paths(["a", "b", "a"])
    with pytest.raises(InvalidName, match="also the directory"):
        names.check_tree_paths(["a/b/c", "a/b"])
    with pytest.raises(InvalidName, match="NFC"):
        names.check_tree_paths(["e\u0301"])
    assert names.check_tree_paths(["e\u0301"], nfc=False) == ["e\u0301"]
    with pytest.raises(InvalidName, match="255 bytes"):
        names.check_path("é" * 128)
    with pytest.raises(InvalidName, match="4096"):
        names.check_path("/".join(["é" * 120] * 18))


# -- 2. at pull ---------------------------------------------------------------------------
HOSTILE = [
    "../../x",
    "../x",
    "/abs",
    "/etc/passwd",
    "a/../../b",
    "a/./b",
    "a\\..\\..\\b",
    "..\\x",
    "C:\\x",
    "C:/x",
    "c:x",
    "a//b",
    "a/",
    "",
    ".",
    "..",
    "a\x00b",
    "\u202e",
    None,
    7,
]


def lying(monkeypatch, paths: list, layout: str | None = None) -> None:
    """The gateway's version answer, with its files' paths replaced by ``paths``;
    everything else goes to the real gateway, so the client's own pull code runs."""
    real = Transport.call

    def call(self, method, path, **kw):  # type: ignore[no-untyped-def]
        out = real(self, method, path, **kw)
        if method == "GET" and re.fullmatch(r"/v1/artifacts/.+/-/versions/[^/]+", path):
            for f, p in zip(out["file_list"], paths, strict=False):
                f["path"] = p
            if layout:
                out["layout"] = layout
        return out

    monkeypatch.setattr(Transport, "call", call)


def tree_of(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def pushed(gateway, tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "tree" / "sub").mkdir(parents=True)
    (src / "tree" / "a.txt").write_bytes(b"a" * 100)
    (src / "tree" / "sub" / "b.txt").write_bytes(b"b" * 200)
    (src / "tree" / "big.bin").write_bytes(os.urandom(1_500_000))  # pulled alone, not batched
    (src / "one.bin").write_bytes(b"single file")
    with gateway.client() as c:
        c.push(src / "tree", "hostile/tree")
        c.push(src / "one.bin", "hostile/one")
    return src


@pytest.mark.parametrize("bad", HOSTILE)
def test_a_tree_pull_refuses_a_hostile_path_before_writing_anything(
    client, pushed, tmp_path, monkeypatch, bad
):
    work = tmp_path / "work"
    dest = work / "dest"
    work.mkdir()
    lying(monkeypatch, ["a.txt", "big.bin", bad])  # the last file in the list
    with pytest.raises(InvalidName, match="will not write"):
        client.pull("hostile/tree", dest)
    assert tree_of(tmp_path) == ["work"]  # no dest, no partial file, nothing outside


@pytest.mark.parametrize("bad", HOSTILE)
def test_a_single_file_pull_refuses_a_hostile_path(client, pushed, tmp_path, monkeypatch, bad):
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    lying(monkeypatch, [bad])
    with pytest.raises(InvalidName):
        client.pull("hostile/one", dest)
    assert tree_of(tmp_path) == ["a", "a/b"]


def test_a_single_file_pull_into_a_directory_takes_the_last_segment(
    client, pushed, tmp_path, monkeypatch
):
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    lying(monkeypatch, ["deep/er/name.bin"])
    r = client.pull("hostile/one", dest)
    assert r["path"] == str(dest / "name.bin")
    assert tree_of(tmp_path) == ["a", "a/b", "a/b/name.bin"]
    assert (dest / "name.bin").read_bytes() == b"single file"


def test_a_pull_whose_files_a_file_system_cannot_hold_is_refused(
    client, pushed, tmp_path, monkeypatch
):
    dest = tmp_path / "dest"
    for paths in (["x", "x/y", "z"], ["a.txt", "big.bin", LONG], ["q", "q", "r"]):
        lying(monkeypatch, paths)
        with pytest.raises(InvalidName):
            client.pull("hostile/tree", dest)
        assert not dest.exists()
    lying(monkeypatch, ["x", "y", "z"], layout="file")  # a "file" version of three files
    with pytest.raises(InvalidName):
        client.pull("hostile/tree", dest)
    assert tree_of(tmp_path) == []


def test_a_pull_refuses_a_destination_in_the_way(client, pushed, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").write_bytes(b"a file where the version has a directory")
    with pytest.raises(InvalidRequest, match="in the way"):
        client.pull("hostile/tree", dest)
    assert tree_of(tmp_path) == ["dest", "dest/sub"]
    (dest / "sub").unlink()
    (dest / "a.txt").mkdir()
    with pytest.raises(InvalidRequest, match="is a directory"):
        client.pull("hostile/tree", dest)
    assert tree_of(tmp_path) == ["dest", "dest/a.txt"]
    (dest / "a.txt").rmdir()
    client.pull("hostile/tree", dest)  # the same version, nothing in the way
    assert tree_of(dest) == ["a.txt", "big.bin", "sub", "sub/b.txt"]


def test_a_write_that_fails_is_one_clear_error(client, pushed, tmp_path):
    """A single-file pull to a path below a file: the file system refuses."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidRequest, match="cannot write"):
        client.pull("hostile/one", tmp_path / "file" / "below")


def test_a_long_name_near_the_limit_is_written(client, gateway, tmp_path):
    """A name of 255 bytes leaves no room for a temporary name built from it."""
    name = "n" * 251 + ".bin"
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(b"long name")
    (src / "x").write_bytes(b"y" * 2_000_000)
    client.push(src, "hostile/long")
    client.pull("hostile/long", tmp_path / "out")
    assert (tmp_path / "out" / name).read_bytes() == b"long name"


def test_the_cli_exits_2_without_a_traceback(gateway, pushed, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHUNKYARD_URL", gateway.url)
    lying(monkeypatch, ["a.txt", "../../escape", "sub/b.txt"])
    assert cli.main(["pull", "hostile/tree", str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "[invalid_name]" in err, err
    assert tree_of(tmp_path) == []


def test_push_sends_nfc_and_refuses_what_cannot_be_pulled(client, gateway, tmp_path):
    src = tmp_path / "src"
    (src / "Cafe\u0301").mkdir(parents=True)  # decomposed, as macOS lists names
    (src / "Cafe\u0301" / "menu").write_bytes(b"x")
    client.push(src, "hostile/nfc")
    v = client.show("hostile/nfc")
    assert [f["path"] for f in v["file_list"]] == ["Caf\u00e9/menu"]
    (src / "Caf\u00e9").mkdir()  # the same name, composed: two files, one path
    (src / "Caf\u00e9" / "menu").write_bytes(b"y")
    before = gateway.snapshot()
    with pytest.raises(InvalidName, match="same name in Unicode NFC"):
        client.push(src, "hostile/nfc")
    assert gateway.snapshot() == before
    assert unicodedata.is_normalized("NFC", v["file_list"][0]["path"])


def test_errors_are_chunkyard_errors():
    assert issubclass(InvalidName, ChunkyardError)


def test_a_reference_prefix_whose_keys_cannot_be_one_directory_is_refused(monkeypatch, tmp_path):
    """Keys ``x`` and ``x/y`` both exist in a bucket; as a version they cannot. Paths
    become NFC (the key stays in the pin), so two spellings of one name are refused too."""
    import asyncio

    from chunkyard.config import Settings
    from chunkyard.errors import InvalidReference
    from chunkyard.pins import parse_uri
    from chunkyard.repository.sources import Sources
    from chunkyard.stores.base import ObjectInfo

    class Bucket:
        def __init__(self, keys: list[str]) -> None:
            self.keys = keys

        async def list_pinned(self, prefix: str):  # type: ignore[no-untyped-def]
            for k in self.keys:
                yield ObjectInfo(key=prefix + k, size=1, etag=f'"{k}"')

    settings = Settings(tmp_path, "sqlite://", "", "", b"k")
    uri = parse_uri("s3://bucket/models/")

    def pin(keys: list[str]) -> list[str]:
        sources = Sources(settings)
        monkeypatch.setattr(sources, "store", lambda u: Bucket(keys))
        return [path for path, _ in asyncio.run(sources.pin_objects(uri))]

    assert pin(["a/b", "Cafe\u0301.txt"]) == ["a/b", "Caf\u00e9.txt"]
    for keys in (["x", "x/y"], ["Cafe\u0301", "Caf\u00e9"], ["s" * 256]):
        with pytest.raises(InvalidReference, match="cannot be"):
            pin(keys)
