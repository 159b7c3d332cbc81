"""An ``mlruns`` tree (MLflow's file-based tracking store) read as the runs to import.

The layout, as MLflow's ``FileStore`` writes it (1.x to 3.x)::

    mlruns/<experiment id>/meta.yaml               name, lifecycle_stage, artifact_location
    mlruns/<experiment id>/<run id>/meta.yaml      run_id, run_name, start_time, status,
                                                   artifact_uri, lifecycle_stage
    mlruns/<experiment id>/<run id>/tags/mlflow.runName   the run name (older trees)
    mlruns/<experiment id>/<run id>/artifacts/...  where artifact_uri points by default
    mlruns/<experiment id>/models/<model id>/meta.yaml   MLflow 3 logged models: name,
                                                   source_run_id, artifact_location
    mlruns/.trash/                                 deleted experiments

A run's artifacts may live elsewhere: ``artifact_uri`` names a local directory (absolute,
as MLflow writes it; if the tree was moved since, the run's own ``artifacts/`` is used)
or a bucket (``s3://``, ``gs://``). Deleted runs and experiments are left out. This
module reads files only: no network, nothing written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import InvalidRequest

#: MLflow's RunStatus numbers, as meta.yaml stores them
STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
BUCKET_SCHEMES = ("s3", "gs", "az")


@dataclass(frozen=True)
class Source:
    """Where some of a run's files come from: ``location`` is a local directory or a
    bucket prefix (``s3://…/``), its files go under ``under`` in the version."""

    location: str
    under: str = ""

    @property
    def in_bucket(self) -> bool:
        return urlparse(self.location).scheme in BUCKET_SCHEMES


@dataclass
class Run:
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    start_time: int  # milliseconds since the epoch, as MLflow keeps it
    status: str
    path: Path  # the run's directory in the tree
    sources: list[Source] = field(default_factory=list)

    @property
    def artifact_location(self) -> str:
        """The run's own artifact location (what ``import.source`` records)."""
        return self.sources[0].location if self.sources else str(self.path / "artifacts")


def _yaml(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"{path}: not a readable MLflow meta.yaml ({exc})") from exc
    return doc if isinstance(doc, dict) else {}


def is_mlruns(root: Path) -> bool:
    """Whether ``root`` looks like an mlruns tree: some ``<id>/meta.yaml`` that
    describes an experiment."""
    if not root.is_dir():
        return False
    for child in root.iterdir():
        meta = child / "meta.yaml"
        if child.is_dir() and meta.is_file():
            doc = _yaml(meta)
            if "experiment_id" in doc and "name" in doc:
                return True
    return False


def _local(uri: str) -> Path | None:
    """A ``file://`` URI or plain path as a local path (None for anything else)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


def _where(uri: object, default: Path) -> str:
    """The location of artifacts that MLflow recorded as ``uri``: a bucket prefix as
    it is, a local directory if it exists, else ``default`` (the tree's own copy)."""
    if isinstance(uri, str) and uri:
        scheme = urlparse(uri).scheme
        if scheme in BUCKET_SCHEMES:
            return uri.rstrip("/") + "/"
        local = _local(uri)
        if local is not None and local.is_dir():
            return str(local)
        if local is None and not default.is_dir():
            raise InvalidRequest(
                f"artifacts at {uri!r} cannot be read from here (only local directories, "
                "s3://, gs:// and az://)"
            )
    return str(default)


def _run_name(run_dir: Path, meta: dict) -> str:
    name = meta.get("run_name")
    if isinstance(name, str) and name:
        return name
    tag = run_dir / "tags" / "mlflow.runName"
    return tag.read_text(encoding="utf-8").strip() if tag.is_file() else ""


def _models(exp_dir: Path) -> dict[str, list[tuple[str, str, str, int]]]:
    """MLflow 3's logged models of an experiment by the run that logged them:
    ``run id -> [(model name, model id, location, created ms)]``."""
    out: dict[str, list[tuple[str, str, str, int]]] = {}
    models = exp_dir / "models"
    if not models.is_dir():
        return out
    for d in sorted(models.iterdir()):
        meta_path = d / "meta.yaml"
        if not meta_path.is_file():
            continue
        meta = _yaml(meta_path)
        run_id = meta.get("source_run_id")
        if not run_id or meta.get("lifecycle_stage") == "deleted":
            continue
        where = _where(meta.get("artifact_location"), d / "artifacts")
        model_id = str(meta.get("model_id") or d.name)
        name = str(meta.get("name") or model_id)
        created = int(meta.get("creation_timestamp") or 0)
        out.setdefault(str(run_id), []).append((name, model_id, where, created))
    return out


def _model_sources(run_files: Path | None, models: list[tuple[str, str, str, int]]) -> list[Source]:
    """A run's logged models go under their name (``model/MLmodel``, where MLflow 2 put
    them among the run's artifacts), or under ``models/<model id>/`` when the run's own
    files or an earlier model took that name."""
    taken: set[str] = set()
    if run_files is not None and run_files.is_dir():
        taken = {p.name for p in run_files.iterdir()}
    out = []
    for name, model_id, where, _ in sorted(models, key=lambda m: (m[3], m[1])):
        under = name if name not in taken and "/" not in name else f"models/{model_id}"
        taken.add(under)
        out.append(Source(where, under + "/"))
    return out


def find_runs(root: str | os.PathLike, experiments: list[str] | None = None) -> list[Run]:
    """The live runs of the tree, oldest start first (then by run id), optionally only
    those of ``experiments`` (ids or names)."""
    root = Path(root)
    if not is_mlruns(root):
        raise InvalidRequest(f"{root} is not an mlruns tree (no <experiment id>/meta.yaml)")
    wanted = set(experiments or [])
    runs: list[Run] = []
    seen: set[str] = set()
    for exp_dir in sorted(root.iterdir()):
        meta_path = exp_dir / "meta.yaml"
        if exp_dir.name.startswith(".") or not meta_path.is_file():
            continue  # .trash, and anything that is not an experiment
        exp = _yaml(meta_path)
        if exp.get("lifecycle_stage") == "deleted":
            continue
        exp_id, exp_name = str(exp.get("experiment_id", exp_dir.name)), str(exp.get("name", ""))
        if wanted and exp_id not in wanted and exp_name not in wanted:
            continue
        seen |= {exp_id, exp_name}
        models = _models(exp_dir)
        for run_dir in sorted(exp_dir.iterdir()):
            run_meta = run_dir / "meta.yaml"
            if run_dir.name == "models" or not run_meta.is_file():
                continue
            meta = _yaml(run_meta)
            if meta.get("lifecycle_stage") == "deleted" or not meta.get("run_id"):
                continue
            run_id = str(meta.get("run_id") or run_dir.name)
            own = _where(meta.get("artifact_uri"), run_dir / "artifacts")
            local = None if urlparse(own).scheme in BUCKET_SCHEMES else Path(own)
            sources = [Source(own)] + _model_sources(local, models.get(run_id, []))
            runs.append(
                Run(
                    run_id=run_id,
                    run_name=_run_name(run_dir, meta),
                    experiment_id=exp_id,
                    experiment_name=exp_name,
                    start_time=int(meta.get("start_time") or 0),
                    status=STATUS.get(meta.get("status"), str(meta.get("status", ""))),
                    path=run_dir,
                    sources=sources,
                )
            )
    missing = wanted - seen
    if missing:
        raise InvalidRequest(f"no experiment {sorted(missing)[0]!r} in {root}")
    runs.sort(key=lambda r: (r.start_time, r.run_id))
    return runs
