"""import, export and copy against real gateways (two of them for copy, the target with
auth) and real buckets (SeaweedFS, Azurite, the GCS emulator): a directory, an
``mlruns`` tree made by the real ``mlflow`` package, and a bucket prefix in; a version
out to a directory and to a bucket prefix, byte for byte; versions from one gateway to
the other, sending only what the target lacks."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkyard import Client
from chunkyard.errors import Conflict, Unauthorized
from chunkyard.migrate import buckets, copy, export, import_source
from chunkyard.stores import open_store
from conftest import RunningGateway, cli, random_bytes, start_gateway
from stores.conftest import AZURE_ENV, GCS_ENV, S3_ENV, fresh_url, require_env
from stores.contract import write_object

STORES = {
    "s3": ("CHUNKYARD_TEST_S3_URL", S3_ENV),
    "azure": ("CHUNKYARD_TEST_AZURE_URL", AZURE_ENV),
    "gcs": ("CHUNKYARD_TEST_GCS_URL", GCS_ENV),
}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Iterator[RunningGateway]:
    gw, server, thread = start_gateway(tmp_path_factory.mktemp("src"), CHUNKYARD_REF_ALLOW="s3://")
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def dst(tmp_path_factory) -> Iterator[RunningGateway]:
    """The second gateway, with auth: an admin token in ``dst.admin``."""
    from chunkyard.repository.tokens import offline

    gw, server, thread = start_gateway(
        tmp_path_factory.mktemp("dst"), CHUNKYARD_AUTH="1", CHUNKYARD_REF_ALLOW="s3://"
    )
    gw.admin = asyncio.run(offline(gw.settings.db_url, "create", scopes=["admin"]))["token"]  # type: ignore[attr-defined]
    yield gw
    server.should_exit = True
    thread.join(timeout=10)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# -- a directory ------------------------------------------------------------------
def test_import_a_directory_then_again(src, tmp_path: Path):
    files = {
        "config.json": b'{"layers": 2}',
        "weights/shard-1.bin": random_bytes(1_500_000, seed=1),
        "weights/nested/shard-2.bin": random_bytes(200_000, seed=2),
        "empty.txt": b"",
    }
    root = tree(tmp_path / "ckpt", files)
    with Client(src.url) as c:
        r = import_source(c, str(root), "mig/dir")
        (v,) = r["versions"]
        assert r["kind"] == "directory" and v["created"] and v["version"] == 1
        assert v["files"] == 4 and r["bytes_read"] == sum(map(len, files.values()))
        assert c.show("mig/dir")["tags"] == {"import.source": str(root.resolve())}
        c.pull("mig/dir", tmp_path / "out")
        assert read_tree(tmp_path / "out") == files

        again = import_source(c, str(root), "mig/dir")["versions"][0]
        assert not again["created"] and again["version"] == 1 and again["bytes_uploaded"] == 0

        # the same bytes from elsewhere are a version of their own, with their own tag
        other = tree(tmp_path / "copy-of-ckpt", files)
        third = import_source(c, str(other), "mig/dir", tags={"team": "a"})["versions"][0]
        assert third["created"] and third["version"] == 2 and third["bytes_uploaded"] == 0
        assert c.show("mig/dir@2")["tags"] == {
            "import.source": str(other.resolve()),
            "team": "a",
        }


# -- an mlruns tree ---------------------------------------------------------------
MLFLOW_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import mlflow, mlflow.pyfunc

    root, art = sys.argv[1], sys.argv[2]
    mlflow.set_tracking_uri("file:" + root)

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    def run(experiment, name, artifacts=None, model=False, delete=False):
        mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name=name) as r:
            if artifacts:
                mlflow.log_artifacts(artifacts)
                mlflow.log_artifact(os.path.join(artifacts, "config.json"), "extra/copies")
            mlflow.log_param("lr", 0.1)
            if model:
                mlflow.pyfunc.log_model(name="model", python_model=Echo())
        if delete:
            mlflow.delete_run(r.info.run_id)
        time.sleep(0.02)  # distinct start times

    run("exp-a", "alpha", art)
    run("exp-b", "beta", art + "-b", model=True)
    run("exp-a", "gone", art, delete=True)
    run("exp-a", "gamma", art)  # the same files as alpha: still a version of its own
    """
)


def make_mlruns(root: Path, art: Path) -> None:
    """An mlruns tree written by the real mlflow (file store): experiments exp-a (runs
    alpha, a deleted one, gamma) and exp-b (beta, with a logged model), started in the
    order alpha, beta, gone, gamma. Without mlflow installed, the same tree by hand."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return mlruns_by_hand(root, art)
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "MLFLOW_TRACKING_URI": ""}
    subprocess.run(
        [sys.executable, "-c", MLFLOW_SCRIPT, str(root), str(art)],
        check=True,
        env=env,
        cwd=root.parent,
        capture_output=True,
        timeout=300,
    )


def mlruns_by_hand(root: Path, art: Path) -> None:
    """What :func:`make_mlruns` makes, following MLflow 3's FileStore layout."""
    import shutil

    import yaml

    def meta(path: Path, doc: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.yaml").write_text(yaml.safe_dump(doc))

    meta(root / "0", {"experiment_id": "0", "name": "Default", "lifecycle_stage": "active"})
    exps = {"exp-a": "101", "exp-b": "202"}
    for name, eid in exps.items():
        meta(root / eid, {"experiment_id": eid, "name": name, "lifecycle_stage": "active"})
    runs = [("alpha", "exp-a", art), ("beta", "exp-b", Path(f"{art}-b")), ("gone", "exp-a", art)]
    runs.append(("gamma", "exp-a", art))
    for n, (name, exp, files) in enumerate(runs):
        run_id = f"{n:02d}" + uuid.uuid4().hex[2:]
        run_dir = root / exps[exp] / run_id
        meta(
            run_dir,
            {
                "run_id": run_id,
                "run_name": name,
                "experiment_id": exps[exp],
                "start_time": 1796084034330 + 20 * n,
                "status": 3,
                "lifecycle_stage": "deleted" if name == "gone" else "active",
                "artifact_uri": (run_dir / "artifacts").as_uri(),
            },
        )
        shutil.copytree(files, run_dir / "artifacts")
        copies = run_dir / "artifacts" / "extra" / "copies"
        copies.mkdir(parents=True)
        shutil.copy(files / "config.json", copies / "config.json")
        if name == "beta":
            model = root / exps[exp] / "models" / f"m-{uuid.uuid4().hex}"
            meta(model, {"model_id": model.name, "name": "model", "source_run_id": run_id})
            (model / "artifacts").mkdir()
            (model / "artifacts" / "MLmodel").write_text("flavors: {}\n")


def run_ids(root: Path) -> dict[str, str]:
    """run name -> run id, from the tree's own files."""
    out = {}
    for meta in root.glob("*/*/meta.yaml"):
        text = meta.read_text()
        if "run_id:" in text:
            fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            out[fields["run_name"].strip("'")] = fields["run_id"]
    return out


def test_import_an_mlruns_tree(src, tmp_path: Path):
    art = tree(
        tmp_path / "art",
        {
            "config.json": b'{"lr": 0.1}',
            "data/nested/deep/weights.bin": random_bytes(1_200_000, seed=3),
            "data/readme.txt": b"alpha",
        },
    )
    tree(tmp_path / "art-b", {"metrics/summary.json": b'{"acc": 0.9}', "config.json": b"{}"})
    root = tmp_path / "mlruns"
    make_mlruns(root, art)
    ids = run_ids(root)
    assert set(ids) == {"alpha", "beta", "gone", "gamma"}

    with Client(src.url) as c:
        r = import_source(c, str(root), "mig/mlflow")
        assert r["kind"] == "mlruns" and r["skipped"] == []
        made = {v["run_id"]: v["version"] for v in r["versions"]}
        assert made == {ids["alpha"]: 1, ids["beta"]: 2, ids["gamma"]: 3}  # start order
        v1, v2, v3 = (c.show(f"mig/mlflow@{n}") for n in (1, 2, 3))
        assert v1["tags"]["mlflow.run_id"] == ids["alpha"]
        assert v1["tags"]["mlflow.run_name"] == "alpha"
        assert v1["tags"]["mlflow.experiment_name"] == "exp-a"
        assert v2["tags"]["mlflow.experiment_name"] == "exp-b"
        assert v1["tags"]["mlflow.experiment_id"] == v3["tags"]["mlflow.experiment_id"]
        assert v1["tags"]["mlflow.experiment_id"] != v2["tags"]["mlflow.experiment_id"]
        assert v1["tags"]["mlflow.status"] == "FINISHED"
        assert v1["tags"]["import.source"].endswith(f"{ids['alpha']}/artifacts")
        assert {f["path"] for f in v1["file_list"]} == {
            "config.json",
            "data/nested/deep/weights.bin",
            "data/readme.txt",
            "extra/copies/config.json",
        }
        # MLflow 3 keeps a logged model outside the run's artifacts: it comes along,
        # under its name, where MLflow 2 kept it
        paths2 = {f["path"] for f in v2["file_list"]}
        assert {"metrics/summary.json", "config.json", "model/MLmodel"} <= paths2
        assert v3["digest"] == v1["digest"] and v3["version"] == 3  # same files, own version
        assert r["versions"][2]["bytes_uploaded"] == 0  # and nothing sent for them

        c.pull("mig/mlflow@1", tmp_path / "v1")
        assert read_tree(tmp_path / "v1") == {
            **read_tree(art),
            "extra/copies/config.json": b'{"lr": 0.1}',
        }

        # a re-run imports nothing: every run is found by its run-id tag
        again = import_source(c, str(root), "mig/mlflow")
        assert again["versions"] == [] and len(again["skipped"]) == 3
        assert {s["run_id"]: s["version"] for s in again["skipped"]} == made
        assert c.ls_page("mig/mlflow")["artifacts"][0]["versions"] == 3

        # one experiment only, through the CLI, with --json
        env = {**os.environ, "CHUNKYARD_URL": src.url}
        out = cli(env, "import", str(root), "mig/mlflow-b", "--experiment", "exp-b", "--json")
        assert out.returncode == 0, out.stderr
        summary = json.loads(out.stdout)
        assert [v["run_id"] for v in summary["versions"]] == [ids["beta"]]


# -- buckets ----------------------------------------------------------------------
def put_objects(base: str, objects: dict[str, bytes]) -> None:
    async def go() -> None:
        store = open_store(base)
        try:
            for key, data in objects.items():
                await write_object(store, key, data)
        finally:
            await store.close()

    asyncio.run(go())


def read_objects(base: str) -> dict[str, bytes]:
    async def go() -> dict[str, bytes]:
        store = open_store(base)
        try:
            return {i.key: await store.get(i.key) async for i in store.list("")}
        finally:
            await store.close()

    return asyncio.run(go())


def clear(base: str) -> None:
    async def go() -> None:
        store = open_store(base)
        try:
            for key in [i.key async for i in store.list("")]:
                await store.delete(key)
        finally:
            await store.close()

    asyncio.run(go())


@pytest.fixture(params=list(STORES))
def bucket(request) -> Iterator[str]:
    """A fresh prefix in the kind of bucket asked for: ``s3://chunkyard-test/t-…``."""
    url_var, needed = STORES[request.param]
    require_env(request.param, *needed)
    base = fresh_url(os.environ[url_var])
    yield base
    clear(base)


def test_an_mlruns_tree_whose_artifacts_are_in_a_bucket(src):
    """A file tracking store with an S3 artifact store (``--default-artifact-root
    s3://…``): the run's artifacts are read from the bucket."""
    import tempfile

    import yaml

    require_env("s3", *S3_ENV)
    base = fresh_url(os.environ["CHUNKYARD_TEST_S3_URL"])
    put_objects(base, {"runs/r1/artifacts/model/weights.bin": random_bytes(80_000, seed=12)})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mlruns"
        (root / "7" / "r1").mkdir(parents=True)
        (root / "7" / "meta.yaml").write_text(
            yaml.safe_dump({"experiment_id": "7", "name": "remote", "lifecycle_stage": "active"})
        )
        run = {"run_id": "r1", "run_name": "far", "experiment_id": "7", "start_time": 1}
        run["artifact_uri"] = f"{base}/runs/r1/artifacts"
        (root / "7" / "r1" / "meta.yaml").write_text(yaml.safe_dump(run))
        try:
            with Client(src.url) as c:
                (v,) = import_source(c, str(root), "mig/remote-runs")["versions"]
                shown = c.show("mig/remote-runs")
                assert [f["path"] for f in shown["file_list"]] == ["model/weights.bin"]
                assert shown["tags"]["import.source"] == f"{base}/runs/r1/artifacts/"
        finally:
            clear(base)


def test_import_a_bucket_prefix(bucket, src, tmp_path: Path):
    objects = {
        "llm/config.json": b'{"layers": 2}',
        "llm/shards/model-00001.safetensors": random_bytes(1_300_000, seed=4),
        "llm/shards/model-00002.safetensors": random_bytes(300_001, seed=5),
        "elsewhere.bin": b"not under the prefix",
    }
    put_objects(bucket, objects)
    name = f"mig/bucket-{bucket.split('://')[0]}"
    with Client(src.url) as c:
        r = import_source(c, f"{bucket}/llm/", name)
        (v,) = r["versions"]
        assert r["kind"] == "bucket" and v["created"] and v["files"] == 3
        assert c.show(name)["tags"] == {"import.source": f"{bucket}/llm/"}
        c.pull(name, tmp_path / "out")
        assert read_tree(tmp_path / "out") == {
            k.removeprefix("llm/"): d for k, d in objects.items() if k.startswith("llm/")
        }
        again = import_source(c, f"{bucket}/llm/", name)["versions"][0]
        assert not again["created"] and again["bytes_uploaded"] == 0


def test_an_object_that_changes_while_imported_stops_the_import(bucket, src, monkeypatch):
    """Each object is read pinned to what the listing said (ETag, generation, version
    id): overwritten in between, the import stops and makes no version."""
    put_objects(bucket, {"w/a.bin": random_bytes(70_000, seed=13), "w/b.bin": b"b"})
    listed = buckets.Bucket.objects

    def then_overwritten(self):  # type: ignore[no-untyped-def]
        out = listed(self)
        put_objects(bucket, {"w/a.bin": random_bytes(70_000, seed=14)})  # same size
        return out

    monkeypatch.setattr(buckets.Bucket, "objects", then_overwritten)
    name = f"mig/changing-{bucket.split('://')[0]}"
    with Client(src.url) as c:
        with pytest.raises(Conflict, match="changed or vanished"):
            import_source(c, f"{bucket}/w/", name)
        assert c.ls_page(name)["artifacts"] == []


def test_export_to_a_directory_and_to_buckets(bucket, src, tmp_path: Path, monkeypatch):
    files = {
        "tokenizer.json": b'{"vocab": 3}',
        "shards/a.bin": random_bytes(1_100_000, seed=6),
        "shards/b.bin": random_bytes(50_000, seed=7),
        "empty": b"",
    }
    name = f"mig/export-{bucket.split('://')[0]}"
    with Client(src.url) as c:
        c.push(tree(tmp_path / "v", files), name)
        r = export(c, name, str(tmp_path / "out"))
        assert r["files_written"] == 4 and read_tree(tmp_path / "out") == files

        monkeypatch.setattr(buckets, "PUT_MAX", 100_000)  # larger files: in parts
        r = export(c, f"{name}@1", f"{bucket}/exported/")
        assert r["files_written"] == 4 and r["bytes_written"] == sum(map(len, files.values()))
        assert read_objects(f"{bucket}/exported") == files

        again = export(c, f"{name}@1", f"{bucket}/exported")  # done before: left alone
        assert again["files_written"] == 0 and again["files_skipped"] == 4
        forced = export(c, f"{name}@1", f"{bucket}/exported", overwrite=True)
        assert forced["files_written"] == 4


def test_export_in_many_parts(src, tmp_path: Path):
    """A file larger than one S3 part (8 MiB) goes up in parts, several at once."""
    require_env("s3", *S3_ENV)
    base = fresh_url(os.environ["CHUNKYARD_TEST_S3_URL"])
    data = random_bytes(9 * 1024 * 1024 + 17, seed=8)
    (tmp_path / "big.bin").write_bytes(data)
    try:
        with Client(src.url) as c:
            c.push(tmp_path / "big.bin", "mig/big")
            r = export(c, "mig/big", f"{base}/out/")
            assert r["files_written"] == 1
        assert read_objects(f"{base}/out") == {"big.bin": data}
    finally:
        clear(base)


# -- copy between gateways --------------------------------------------------------
def test_copy_sends_only_what_the_target_lacks(src, dst, tmp_path: Path):
    big = random_bytes(3_000_000, seed=9)
    changed = bytearray(big)
    changed[1_000_000:1_000_100] = random_bytes(100, seed=10)  # a small edit
    v1 = {"model.bin": big, "config.json": b'{"step": 1}', "data/x.txt": b"x" * 1000}
    v2 = {**v1, "model.bin": bytes(changed), "config.json": b'{"step": 2}'}
    v3 = {**v2, "extra/notes.md": b"# notes"}
    with Client(src.url) as s, Client(dst.url, token=dst.admin) as d:
        for n, files in enumerate((v1, v2, v3), 1):
            s.push(tree(tmp_path / f"v{n}", files), "team/model", tags={"step": str(n)})
        s.set_alias("team/model", "champion", 2)

        first = copy(s, d, "team/model@1")
        (one,) = first["copied"]
        assert one["version"] == 1 and one["bytes_uploaded"] > len(big) * 0.9

        everything = copy(s, d, "team/model")
        assert [x["source_version"] for x in everything["skipped"]] == [1]
        two, three = everything["copied"]
        assert (two["version"], three["version"]) == (2, 3)
        # v2: data/x.txt is named by id (not fetched); model.bin is fetched, and only
        # the chunks around the edit are sent
        assert two["files_reused"] == 1 and two["bytes_fetched"] < sum(map(len, v2.values()))
        assert two["bytes_uploaded"] < len(big) * 0.2
        # v3: everything but the new file is held by v2 on the target
        assert three["files_reused"] == 3 and three["bytes_fetched"] == len(b"# notes")
        assert everything["bytes_uploaded"] < sum(map(len, v2.values())) * 0.2

        for n, files in enumerate((v1, v2, v3), 1):
            theirs = d.show(f"team/model@{n}")
            assert theirs["digest"] == s.show(f"team/model@{n}")["digest"]
            assert theirs["tags"] == {
                "step": str(n),
                "copy.source": f"{src.url}/team/model@{n}",
            }
            d.pull(f"team/model@{n}", tmp_path / f"pulled-{n}")
            assert read_tree(tmp_path / f"pulled-{n}") == files

        again = copy(s, d, "team/model", aliases=True)  # resumable: nothing left to do
        assert again["copied"] == [] and len(again["skipped"]) == 3
        assert again["aliases"] == [{"alias": "champion", "version": 2}]
        assert d.show("team/model:champion")["version"] == 2

        # the same bytes under another name of the dedup domain: nothing to send
        moved = copy(s, d, "team/model:champion", to_name="team/model-b")
        assert moved["copied"][0]["bytes_uploaded"] < 0.05 * len(big)


def test_copy_a_reference_version(src, dst):
    require_env("s3", *S3_ENV)
    base = fresh_url(os.environ["CHUNKYARD_TEST_S3_URL"])
    put_objects(base, {"w/a.bin": random_bytes(100_000, seed=11), "w/b.json": b"{}"})
    try:
        with Client(src.url) as s, Client(dst.url, token=dst.admin) as d:
            s.ref("refs/llm", f"{base}/w/")
            r = copy(s, d, "refs/llm")
            (made,) = r["copied"]
            theirs = d.show("refs/llm")
            assert theirs["kind"] == "reference" and theirs["source"] == f"{base}/w/"
            assert theirs["digest"] == s.show("refs/llm")["digest"]
            assert made["bytes_uploaded"] == 0
    finally:
        clear(base)


def test_copy_cli_sends_the_target_only_its_own_token(src, dst, tmp_path: Path):
    with Client(src.url) as s:
        s.push(tree(tmp_path / "t", {"a.txt": b"a", "b.txt": b"b" * 5000}), "cli/copied")
    # the source's token (CHUNKYARD_TOKEN) never goes to the target
    env = {**os.environ, "CHUNKYARD_URL": src.url, "CHUNKYARD_TOKEN": dst.admin}
    refused = cli(env, "copy", "cli/copied", "--to", dst.url)
    assert refused.returncode == 1 and "unauthorized" in refused.stderr, refused.stderr
    env = {**os.environ, "CHUNKYARD_URL": src.url}
    out = cli(env, "copy", "cli/copied", "--to", dst.url, "--to-token", dst.admin, "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert [v["version"] for v in r["copied"]] == [1] and r["bytes_uploaded"] > 0
    with Client(dst.url, token=dst.admin) as d:
        d.pull("cli/copied", tmp_path / "back")
    assert read_tree(tmp_path / "back") == {"a.txt": b"a", "b.txt": b"b" * 5000}
    with pytest.raises(Unauthorized), Client(dst.url, token="cy_wrong") as d:
        d.show("cli/copied")

    # the target's url and token from a profile
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.dr]\nurl = "{dst.url}"\ntoken = "{dst.admin}"\n')
    config.chmod(0o600)
    by_profile = cli(
        {**env, "CHUNKYARD_CONFIG": str(config)}, "copy", "cli/copied", "--to-profile", "dr"
    )
    assert by_profile.returncode == 0, by_profile.stderr
    assert "copied before, as version 1" in by_profile.stdout

    # export and import through the CLI too
    out = cli(env, "export", "cli/copied@1", str(tmp_path / "exported"), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["files_written"] == 2
    out = cli(env, "import", str(tmp_path / "exported"), "cli/imported")
    assert out.returncode == 0, out.stderr
    assert "1 version(s)" in out.stdout


def test_bad_sources_change_nothing(src, tmp_path: Path):
    env = {**os.environ, "CHUNKYARD_URL": src.url}
    missing = cli(env, "import", str(tmp_path / "nope"), "mig/bad")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad_uri = cli(env, "import", "s3://bucket/../x/", "mig/bad")
    assert bad_uri.returncode == 2, bad_uri.stderr
    no_target = cli(env, "copy", "mig/bad")
    assert no_target.returncode == 2 and "--to" in no_target.stderr
    with Client(src.url) as c:
        assert c.ls_page("mig/bad")["artifacts"] == []


def test_which_answers_confirm_a_pin():
    """A GET's answer confirms the pinned bytes by the version it names, or by ETag
    (not on GCS, whose two APIs disagree on ETags); else the object is looked at again."""
    from chunkyard.pins import make_pin, response_confirms

    s3 = make_pin("s3://b/k", 3, '"abc"', None, None)
    assert response_confirms(s3, {"etag": '"abc"'})
    assert not response_confirms(s3, {"etag": '"abd"'}) and not response_confirms(s3, {})
    versioned = make_pin("s3://b/k", 3, "abc", "v1", None)
    assert not response_confirms(versioned, {"x-amz-version-id": "v2", "etag": "abc"})
    gs = make_pin("gs://b/k", 3, "CJ+1", "17", None)
    assert response_confirms(gs, {"x-goog-generation": "17"})
    assert not response_confirms(gs, {"etag": "CJ+1"})  # the emulator names no generation


def test_modes_and_empty_dirs_travel(src, dst, tmp_path: Path):
    """A directory imported keeps its files' modes and its empty directories; a copy to
    another gateway keeps them (and so the digest); an export to a directory writes
    them back."""
    import stat

    root = tree(
        tmp_path / "ckpt",
        {"run.sh": b"#!/bin/sh\n", "w/shard.bin": random_bytes(1_200_000, seed=80)},
    )
    os.chmod(root / "run.sh", 0o755)
    os.chmod(root / "w/shard.bin", 0o640)
    (root / "logs/empty").mkdir(parents=True)
    want = {"run.sh": 0o755, "w/shard.bin": 0o640}
    with Client(src.url) as s, Client(dst.url, token=dst.admin) as d:
        (v,) = import_source(s, str(root), "mig/modes")["versions"]
        shown = s.show("mig/modes")
        assert {f["path"]: f["mode"] for f in shown["file_list"]} == want
        assert shown["dirs"] == ["logs/empty"]
        (made,) = copy(s, d, "mig/modes")["copied"]
        theirs = d.show(f"mig/modes@{made['version']}")
        assert theirs["digest"] == shown["digest"]
        assert {f["path"]: f["mode"] for f in theirs["file_list"]} == want
        assert theirs["dirs"] == ["logs/empty"]
        out = tmp_path / "out"
        export(d, "mig/modes", str(out))
        assert {
            p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode)
            for p in out.rglob("*")
            if p.is_file()
        } == want
        assert (out / "logs/empty").is_dir()
