"""The MLflow artifact repository, with the real ``mlflow`` package: a file-based
tracking store in tmp_path, artifacts in a real gateway; and a real ``mlflow server``
whose ``--artifacts-destination`` is chunkyard, loading the plugin by its entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkyard import Client
from conftest import RunningGateway, free_port, random_bytes
from test_fsspec import entry_point_site, subprocess_env

mlflow = pytest.importorskip("mlflow")

from chunkyard.integrations import mlflow as plugin  # noqa: E402

MiB = 1024 * 1024


class Weights(mlflow.pyfunc.PythonModel):
    """A model that answers the size of its weights file: loads nothing heavy."""

    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.size = os.path.getsize(context.artifacts["weights"])

    def predict(self, context, model_input: list[int], params=None) -> list[int]:  # type: ignore[no-untyped-def]
        return [self.size] * len(model_input)


@pytest.fixture
def experiment(
    gateway: RunningGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, str]]:
    """(experiment id, its name prefix in chunkyard), on a fresh file store."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    plugin.register()
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())
    prefix = f"ml/{uuid.uuid4().hex[:8]}"
    location = gateway.url.replace("http://", "chunkyard://") + "/" + prefix
    yield mlflow.create_experiment(f"e-{prefix}", artifact_location=location), prefix
    mlflow.set_tracking_uri(None)


def test_log_list_download_round_trip(
    experiment: tuple[str, str], gateway: RunningGateway, tmp_path: Path
) -> None:
    eid, prefix = experiment
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.bin").write_bytes(random_bytes(3 * MiB, seed=1))
    (src / "sub" / "b.txt").write_text("b")
    (src / "sub" / "deeper" / "c.txt").write_text("c")
    (tmp_path / "notes.txt").write_text("notes")
    with mlflow.start_run(experiment_id=eid) as run:
        mlflow.log_artifact(str(tmp_path / "notes.txt"))
        mlflow.log_artifacts(str(src), "data")
        mlflow.log_text("text", "logs/run.txt")
        mlflow.log_dict({"lr": 0.1}, "config.json")
    rid = run.info.run_id
    assert run.info.artifact_uri.endswith(f"/{prefix}/{rid}/artifacts")

    client = mlflow.MlflowClient()
    top = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(rid)]
    assert top == [
        ("config.json", False, len('{\n  "lr": 0.1\n}')),
        ("data", True, None),
        ("logs", True, None),
        ("notes.txt", False, 5),
    ]
    data = [(f.path, f.is_dir, f.file_size) for f in client.list_artifacts(rid, "data")]
    assert data == [("data/a.bin", False, 3 * MiB), ("data/sub", True, None)]
    assert [f.path for f in client.list_artifacts(rid, "data/sub/deeper")] == [
        "data/sub/deeper/c.txt"
    ]
    assert client.list_artifacts(rid, "notes.txt") == []  # a file: nothing under it
    assert client.list_artifacts(rid, "nothing/here") == []

    out = Path(mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp_path / "all")))
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == [
        "config.json",
        "data/a.bin",
        "data/sub/b.txt",
        "data/sub/deeper/c.txt",
        "logs/run.txt",
        "notes.txt",
    ]
    assert (out / "data" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    one = mlflow.artifacts.download_artifacts(
        run_id=rid, artifact_path="data/sub", dst_path=str(tmp_path / "sub")
    )
    assert sorted(str(p.relative_to(one)) for p in Path(one).rglob("*") if p.is_file()) == [
        "b.txt",
        "deeper/c.txt",
    ]
    assert mlflow.artifacts.load_text(f"runs:/{rid}/logs/run.txt") == "text"

    # in chunkyard: one artifact per run, a version per log call, each holding them all
    cy = Client(gateway.url)
    name = f"{prefix}/{rid}/artifacts"
    versions = cy.versions(name)
    assert [v["version"] for v in versions] == [1, 2, 3, 4]
    latest = cy.show(name)
    assert latest["files"] == 6 and latest["tags"]["mlflow.run_id"] == rid
    assert cy.show(f"{name}@2")["tags"]["mlflow.artifact_path"] == "data"
    assert [f["path"] for f in cy.show(f"{name}@1")["file_list"]] == ["notes.txt"]


def test_log_model_and_load_model(experiment: tuple[str, str], tmp_path: Path) -> None:
    eid, prefix = experiment
    weights = tmp_path / "weights.bin"
    weights.write_bytes(random_bytes(200_000, seed=2))
    with mlflow.start_run(experiment_id=eid):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=Weights(), artifacts={"weights": str(weights)}
        )
    assert info.artifact_path.endswith(f"/{prefix}/models/{info.model_id}/artifacts")
    model = mlflow.pyfunc.load_model(info.model_uri)
    assert list(model.predict([1, 2])) == [200_000, 200_000]
    files = {f.path for f in mlflow.MlflowClient().list_logged_model_artifacts(info.model_id)}
    assert "MLmodel" in files and "artifacts" in files


def test_a_second_run_logging_the_same_model_stores_almost_nothing(
    experiment: tuple[str, str], gateway: RunningGateway, tmp_path: Path
) -> None:
    eid, prefix = experiment
    weights = tmp_path / "weights.bin"
    weights.write_bytes(random_bytes(100 * MiB, seed=3))
    cy = Client(gateway.url)
    stored = [cy.stats()["stored_bytes"]]
    infos = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=eid):
            infos.append(
                mlflow.pyfunc.log_model(
                    name="model", python_model=Weights(), artifacts={"weights": str(weights)}
                )
            )
        stored.append(cy.stats()["stored_bytes"])
    first, second = stored[1] - stored[0], stored[2] - stored[1]
    assert first > 100 * MiB  # random bytes: stored once, whole
    assert second < 256 * 1024, second  # the model's small files at most
    assert list(mlflow.pyfunc.load_model(infos[1].model_uri).predict([0])) == [100 * MiB]
    names = {a["name"] for a in cy.ls(f"{prefix}/models/")}
    assert names == {f"{prefix}/models/{i.model_id}/artifacts" for i in infos}


def test_a_tracking_server_with_chunkyard_as_artifacts_destination(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    """``mlflow server --artifacts-destination chunkyard://...`` (the plugin found by
    its entry point): clients log through the server, runs land as
    ``PREFIX/<experiment id>/<run id>/artifacts``."""
    port = free_port()
    dest = gateway.url.replace("http://", "chunkyard://") + "/srv/mlflow"
    env = subprocess_env(entry_point_site(tmp_path))
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    with open(tmp_path / "server.log", "wb") as log:
        server = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1",
                "--backend-store-uri", (tmp_path / "mlruns").as_uri(),
                "--artifacts-destination", dest,
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        wait_for(f"http://127.0.0.1:{port}/health", server, tmp_path / "server.log")
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        eid = mlflow.create_experiment("served")
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x.txt").write_text("x")
        (tmp_path / "d" / "y.bin").write_bytes(random_bytes(100_000, seed=4))
        with mlflow.start_run(experiment_id=eid) as run:
            mlflow.log_artifacts(str(tmp_path / "d"), "out")
        rid = run.info.run_id
        listed = mlflow.MlflowClient().list_artifacts(rid, "out")
        assert [(f.path, f.file_size) for f in listed] == [("out/x.txt", 1), ("out/y.bin", 100_000)]
        got = mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp_path / "got"))
        assert (Path(got) / "out" / "y.bin").read_bytes() == (tmp_path / "d" / "y.bin").read_bytes()
        v = Client(gateway.url).show(f"srv/mlflow/{eid}/{rid}/artifacts")
        assert sorted(f["path"] for f in v["file_list"]) == ["out/x.txt", "out/y.bin"]
    finally:
        mlflow.set_tracking_uri(None)
        server.terminate()
        server.wait(timeout=30)


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"mlflow server did not answer: {log.read_text()[-3000:]}")


def test_a_tracking_server_reaches_only_its_own_gateway(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a tracking server (MLflow marks its processes), a location naming another
    gateway is refused, as MLflow refuses other schemes that name hosts."""
    own = gateway.url.replace("http://", "chunkyard://")
    monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", "mlflow-artifacts:/")
    monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_DESTINATION", own + "/srv")
    plugin.ChunkyardArtifactRepository(own + "/srv/1/abc/artifacts")  # its own gateway
    with pytest.raises(mlflow.exceptions.MlflowException, match="does not connect"):
        plugin.ChunkyardArtifactRepository("chunkyard://169.254.169.254:80/x/artifacts")
    monkeypatch.setenv("MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES", "chunkyard")
    plugin.ChunkyardArtifactRepository("chunkyard://169.254.169.254:80/x/artifacts")
    monkeypatch.delenv("_MLFLOW_SERVER_ARTIFACT_ROOT")  # a client process: anything goes
    monkeypatch.delenv("MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES")
    plugin.ChunkyardArtifactRepository("chunkyard://169.254.169.254:80/x/artifacts")
