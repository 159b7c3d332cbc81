"""The ``chunkyard://`` fsspec filesystem, through fsspec itself, pandas and pyarrow,
against a real gateway behind a proxy that counts the bytes each way (the gateway's
public URL is the proxy's, so the pack reads of the local store go through it too)."""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from chunkyard import Client
from chunkyard.integrations.fsspec import ChunkyardFileSystem
from conftest import RunningGateway, random_bytes, start_gateway

MiB = 1024 * 1024


class CountingProxy:
    """Forwards 127.0.0.1:``port`` to the gateway and counts bytes: ``down`` to the
    client, ``up`` from it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = 0
        self.up = self.down = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()

    def _pipe(self, client: socket.socket, gateway: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, (gateway, "up"))
        sel.register(gateway, selectors.EVENT_READ, (client, "down"))
        try:
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    other, way = key.data
                    with self.lock:
                        setattr(self, way, getattr(self, way) + len(data))
                    other.sendall(data)
        except OSError:
            return
        finally:
            sel.close()
            client.close()
            gateway.close()

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.up, self.down


@pytest.fixture(scope="module")
def proxied(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningGateway, CountingProxy]]:
    proxy = CountingProxy()
    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("gw"), CHUNKYARD_PUBLIC_URL=proxy.url
    )
    proxy.target = int(gw.url.rsplit(":", 1)[1])
    yield gw, proxy
    server.should_exit = True
    thread.join(timeout=10)
    proxy.listener.close()


@pytest.fixture
def fs(proxied: tuple[RunningGateway, CountingProxy]) -> ChunkyardFileSystem:
    fsspec.register_implementation("chunkyard", ChunkyardFileSystem, clobber=True)
    return ChunkyardFileSystem(proxied[1].url)


def url(proxy: CountingProxy, path: str) -> str:
    return f"chunkyard://127.0.0.1:{proxy.port}/{path}"


def test_paths_name_versions_and_files(fs: ChunkyardFileSystem, tmp_path: Path) -> None:
    """Where a name ends: at ``@``/``:``, else at the longest existing name; a path no
    artifact holds is a directory of names, or, written, a one-file artifact."""
    fs.pipe_file("paths/data/train.csv", b"a,b\n1,2\n")  # no artifact: a one-file artifact
    assert fs.info("paths/data/train.csv")["artifact"] == "paths/data/train.csv"
    assert fs.cat_file("paths/data/train.csv") == b"a,b\n1,2\n"
    assert fs.ls("paths", detail=False) == ["paths/data"]
    [entry] = fs.ls("paths/data")
    assert (entry["name"], entry["type"], entry["size"]) == ("paths/data/train.csv", "file", 8)

    fs.pipe_file("paths/run@latest/model/w.bin", b"w1")  # explicit: a tree, new
    fs.pipe_file("paths/run/config.json", b"{}")  # the longest existing name: paths/run
    fs.pipe_file("paths/run/model/w.bin", b"w2")  # replaces, as a new version
    assert fs.ls("paths/run", detail=False) == ["paths/run/config.json", "paths/run/model"]
    assert fs.ls("paths/run/model", detail=False) == ["paths/run/model/w.bin"]
    assert fs.cat("paths/run/model/w.bin") == b"w2"
    assert fs.cat("paths/run@1/model/w.bin") == b"w1"  # versions never change
    assert fs.cat("paths/run@latest/config.json") == b"{}"
    info = fs.info("paths/run/model/w.bin")
    assert (info["artifact"], info["version"], info["path"]) == ("paths/run", 3, "model/w.bin")
    assert fs.isdir("paths/run/model") and fs.isfile("paths/run/config.json")
    assert not fs.exists("paths/run/nope") and not fs.exists("nowhere/at/all")

    client = Client(fs.gateway)
    client.set_alias("paths/run", "champion", 1)
    assert fs.ls("paths/run:champion", detail=False) == ["paths/run:champion/model"]
    with pytest.raises(PermissionError):
        fs.pipe_file("paths/run@1/model/w.bin", b"x")
    with pytest.raises(PermissionError):
        fs.pipe_file("paths/run:champion/x", b"x")

    fs.rm("paths/run/config.json")  # a version without it
    assert fs.ls("paths/run", detail=False) == ["paths/run/model"]
    assert fs.cat("paths/run@3/config.json") == b"{}"
    assert [v["version"] for v in client.versions("paths/run")] == [1, 2, 3, 4]

    local = tmp_path / "got.bin"
    fs.get("paths/run/model/w.bin", str(local))
    assert local.read_bytes() == b"w2"
    with fs.open("paths/run/notes.txt", "w") as f:  # text mode, through open
        f.write("hé")
    with fsspec.open(url_of(fs, "paths/run/notes.txt"), "r", encoding="utf-8") as f:
        assert f.read() == "hé"


def url_of(fs: ChunkyardFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path)


def test_ranged_reads_fetch_only_what_is_read(
    proxied: tuple[RunningGateway, CountingProxy], fs: ChunkyardFileSystem, tmp_path: Path
) -> None:
    """1 KiB of a 100 MiB file moves one block, not the file; a second write of the
    same bytes under another name sends almost nothing."""
    _, proxy = proxied
    data = random_bytes(100 * MiB, seed=7)
    local = tmp_path / "weights.bin"
    local.write_bytes(data)
    up0, _ = proxy.counts()
    fs.put(str(local), "big/model@latest/weights.bin")
    up1, _ = proxy.counts()
    assert up1 - up0 > 100 * MiB
    fs.put(str(local), "big/copy@latest/weights.bin")  # the same bytes, another name
    up2, _ = proxy.counts()
    assert up2 - up1 < 2 * MiB, up2 - up1

    where = 50 * MiB + 12345
    _, down0 = proxy.counts()
    assert fs.cat_file("big/model/weights.bin", where, where + 1024) == data[where : where + 1024]
    _, down1 = proxy.counts()
    assert down1 - down0 < 1 * MiB, down1 - down0  # the chunks holding the KiB
    with fsspec.open(url(proxy, "big/model/weights.bin"), "rb") as f:
        assert f.size == len(data)
        f.seek(where)
        assert f.read(1024) == data[where : where + 1024]
        f.seek(-100, 2)
        assert f.read() == data[-100:]
    _, down2 = proxy.counts()
    assert down2 - down1 < 16 * MiB, down2 - down1  # two 5 MiB read-ahead blocks at most

    out = tmp_path / "whole.bin"
    fs.get_file("big/copy/weights.bin", str(out))  # a whole pull, verified
    assert out.read_bytes() == data


def test_pandas_and_pyarrow_read_and_write_through_urls(
    proxied: tuple[RunningGateway, CountingProxy], fs: ChunkyardFileSystem
) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    _, proxy = proxied
    df = pd.DataFrame({"step": range(1000), "loss": [1 / (i + 1) for i in range(1000)]})
    df.to_csv(url(proxy, "tables/run@latest/metrics.csv"), index=False)
    df.to_parquet(url(proxy, "tables/run/metrics.parquet"))  # the same artifact, version 2
    pd.testing.assert_frame_equal(pd.read_csv(url(proxy, "tables/run/metrics.csv")), df)
    back = pd.read_parquet(url(proxy, "tables/run/metrics.parquet"))
    pd.testing.assert_frame_equal(back, df)
    assert fs.ls("tables/run", detail=False) == [
        "tables/run/metrics.csv",
        "tables/run/metrics.parquet",
    ]
    assert Client(fs.gateway).show("tables/run")["version"] == 2


def test_the_entry_point_registers_the_scheme(
    proxied: tuple[RunningGateway, CountingProxy], fs: ChunkyardFileSystem, tmp_path: Path
) -> None:
    """A process that only imports fsspec opens chunkyard:// URLs, through the entry
    point pyproject.toml declares (installed here as a bare dist-info)."""
    _, proxy = proxied
    fs.pipe_file("entry/point/x.txt", b"found")
    site = entry_point_site(tmp_path)
    code = (
        "import fsspec; "
        f"print(fsspec.open({url(proxy, 'entry/point/x.txt')!r}, 'rb').open().read().decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(site),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "found"


def entry_point_site(tmp_path: Path) -> Path:
    """A directory holding a dist-info with pyproject.toml's entry points, so that a
    process with it on its path sees them as an installed chunkyard's."""
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    site = tmp_path / "site"
    info = site / "chunkyard_entry_points-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chunkyard-entry-points\n")
    lines = []
    for group, points in project["project"]["entry-points"].items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def subprocess_env(site: Path) -> dict[str, str]:
    import os

    src = Path(__file__).parents[1] / "src"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(site)])
    return env


def test_writes_record_modes_only_of_the_callers_files(
    fs: ChunkyardFileSystem, tmp_path: Path
) -> None:
    """A file written through ``open`` or ``pipe`` spools to a private temporary file
    whose mode says nothing: it takes the default; ``put`` of a file of the caller's
    keeps its mode, as ``rsync -p`` would."""
    fs.pipe_file("modes/run@latest/a.txt", b"a")
    with fs.open("modes/run/b.txt", "wb") as f:
        f.write(b"b")
    tool = tmp_path / "tool.sh"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o750)
    fs.put_file(str(tool), "modes/run/bin/tool.sh")
    files = Client(fs.gateway).show("modes/run")["file_list"]
    assert {f["path"]: f["mode"] for f in files} == {
        "a.txt": 0o644,
        "b.txt": 0o644,
        "bin/tool.sh": 0o750,
    }
