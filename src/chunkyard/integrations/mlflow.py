"""MLflow artifact repository for ``chunkyard://HOST:PORT/PREFIX`` locations.

MLflow gives every run, logged model and trace an artifact root of its own below the
experiment's location: ``<location>/<run_id>/artifacts``, ``<location>/models/<model_id>/
artifacts``, ``<location>/traces/<trace_id>/artifacts``. Each such root is one chunkyard
artifact, named by its path (``team/project/<run_id>/artifacts``), and the paths MLflow
logs below it are the paths of files in that artifact's versions. A tracking server with
``--artifacts-destination chunkyard://HOST:PORT/PREFIX`` hands its repository paths
``<experiment_id>/<run_id>/artifacts/<path>``: the name then runs up to the first
``artifacts`` segment (``PREFIX/<experiment_id>/<run_id>/artifacts``), so the two set-ups
name a run the same way but for the experiment id. A location used directly, with no
``artifacts`` segment, is itself the name.

Every ``log_artifact``/``log_artifacts`` call makes a new version holding the previous
version's files plus the logged ones (:meth:`chunkyard.Client.add`): files already there
are named by id, and chunks the dedup domain already holds are not sent, so a run that
logs the same 100 MiB model as another stores next to nothing. Each version is tagged
with the ``mlflow.artifact_path`` it logged and the run, model or trace id its name holds.
The latest version is what MLflow lists and downloads; earlier versions stay readable
with ``chunkyard pull NAME@N``.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    from mlflow.entities import FileInfo
    from mlflow.environment_variables import MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
    from mlflow.store.artifact import host_policy
    from mlflow.store.artifact.artifact_repo import ArtifactRepository
    from mlflow.utils.file_utils import create_tmp_dir
except ImportError as exc:  # pragma: no cover - the extra is missing
    raise ImportError(
        "chunkyard's MLflow plugin needs mlflow: pip install 'chunkyard[mlflow]'"
    ) from exc

from ..client import partial
from ..errors import NotFound
from .urls import SCHEME, client_for, split_url

_log = logging.getLogger(__name__)

#: the segment MLflow ends every run's, model's and trace's artifact root with
ROOT_SEGMENT = "artifacts"
#: a run's, logged model's or trace's id, which comes right before its ``artifacts``
MLFLOW_ID = re.compile(r"(m-|tr-)?[0-9a-f]{32}")
#: what the segment before an artifact root's id says it is (anything else: a run)
ID_TAGS = {"models": "mlflow.logged_model_id", "traces": "mlflow.trace_id"}


def register() -> None:
    """Register the ``chunkyard`` scheme with MLflow in this process, for a source
    checkout; an installed chunkyard registers it through its entry point."""
    from mlflow.store.artifact.artifact_repository_registry import (
        _artifact_repository_registry,
    )

    _artifact_repository_registry.register(SCHEME, ChunkyardArtifactRepository)


def _server_may_reach(artifact_uri: str) -> None:
    """In a tracking server, refuse a location naming a gateway other than that of the
    server's own ``--default-artifact-root`` or ``--artifacts-destination``: a client may
    set any experiment location, and the server would connect where it says. MLflow
    holds its own host-addressed schemes to this rule, with the same way out
    (``MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES``)."""
    if not host_policy.is_tracking_server_process():
        return
    allowed = MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES.get() or []
    if SCHEME in {s.lower() for s in allowed}:
        return
    own = (
        os.environ.get(host_policy._SERVER_ARTIFACT_ROOT_ENV_VAR),
        os.environ.get(host_policy._SERVER_ARTIFACTS_DESTINATION_ENV_VAR),
    )
    trusted = {urlsplit(u).netloc for u in own if u and u.startswith(f"{SCHEME}:")}
    if urlsplit(artifact_uri).netloc not in trusted:
        raise MlflowException(
            f"The tracking server does not connect to artifact location {artifact_uri!r}: "
            "it names a chunkyard gateway other than the server's own artifact storage. Set "
            f"{MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES.name}={SCHEME} on the server "
            "to allow it.",
            INVALID_PARAMETER_VALUE,
        )


class ChunkyardArtifactRepository(ArtifactRepository):
    """Stores MLflow artifacts in chunkyard (see the module's doc for the mapping)."""

    def __init__(self, artifact_uri: str, *args: Any, **kwargs: Any) -> None:
        _server_may_reach(artifact_uri)
        super().__init__(artifact_uri, *args, **kwargs)
        gateway, self.root = split_url(artifact_uri)
        self.client = client_for(gateway)

    # -- where a path lives ----------------------------------------------------
    def _locate(self, path: str | None) -> tuple[str, str]:
        """(artifact name, path inside its versions) of ``path``, relative to the root."""
        full = posixpath.join(self.root, (path or "").strip("/")).strip("/")
        segments = full.split("/")
        ends = [i for i, s in enumerate(segments) if s == ROOT_SEGMENT and i > 0]
        own = [i for i in ends if MLFLOW_ID.fullmatch(segments[i - 1])]
        if not (own or ends):  # a location used directly
            return self.root, full[len(self.root) :].strip("/")
        cut = (own or ends)[0] + 1
        return "/".join(segments[:cut]), "/".join(segments[cut:])

    def _relative(self, name: str, path: str) -> str:
        """The path, relative to the root, of file ``path`` of artifact ``name``."""
        full = f"{name}/{path}"
        return full[len(self.root) + 1 :] if self.root else full

    def _tags(self, name: str, artifact_path: str | None) -> dict[str, str]:
        tags = {"mlflow.artifact_path": (artifact_path or "").strip("/")}
        segments = name.split("/")
        if len(segments) >= 2 and segments[-1] == ROOT_SEGMENT:
            kind = segments[-3] if len(segments) >= 3 else ""
            tags[ID_TAGS.get(kind, "mlflow.run_id")] = segments[-2]
        return tags

    def _latest(self, name: str) -> dict[str, Any] | None:
        try:
            return self.client.show(name)
        except NotFound:
            return None

    # -- writing ---------------------------------------------------------------
    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        name, inner = self._locate(artifact_path)
        where = posixpath.join(inner, os.path.basename(local_file))
        self.client.add(name, {where: local_file}, tags=self._tags(name, artifact_path))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        if not any(files for _, _, files in os.walk(local_dir)):
            return  # nothing to log: no version
        name, inner = self._locate(artifact_path)
        self.client.add(name, {inner: local_dir}, tags=self._tags(name, artifact_path))

    def delete_artifacts(self, artifact_path: str | None = None) -> None:
        """A new version without the files at ``artifact_path``; the bytes stay in
        earlier versions. A whole artifact root stays: chunkyard deletes no versions."""
        name, inner = self._locate(artifact_path)
        if not inner:
            _log.warning("chunkyard keeps every version: %s is not deleted", name)
            return
        if self._latest(name) is not None:
            self.client.remove(name, [inner], tags=self._tags(name, artifact_path))

    # -- reading ---------------------------------------------------------------
    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        """Files and directories directly under ``path`` in the latest version, with
        sizes; empty for a file or a path that holds nothing."""
        name, inner = self._locate(path)
        v = self._latest(name)
        if v is None:
            return []
        base = (path or "").strip("/")
        prefix = f"{inner}/" if inner else ""
        out: dict[str, FileInfo] = {}
        for f in v["file_list"]:
            if not f["path"].startswith(prefix):
                continue
            head, sep, _ = f["path"][len(prefix) :].partition("/")
            where = posixpath.join(base, head) if base else head
            if where not in out:
                out[where] = FileInfo(where, bool(sep), None if sep else f["size"])
        return sorted(out.values(), key=lambda i: i.path)

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        name, inner = self._locate(remote_file_path)
        v = self._latest(name)
        try:
            if v is None:
                raise NotFound(f"no artifact {name!r}")
            entry = partial.find_file(v, inner)
        except NotFound as exc:
            raise MlflowException(str(exc), RESOURCE_DOES_NOT_EXIST) from exc
        partial.pull_files(self.client.transport, v, [(entry, Path(local_path))])

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        """The file or directory ``artifact_path`` of the latest version, in one pull
        (small files batched, every file verified), below ``dst_path``."""
        if dst_path:
            dst_path = os.path.abspath(dst_path)
            if not os.path.isdir(dst_path):
                raise MlflowException(
                    f"The destination path for downloaded artifacts must be an existing "
                    f"directory: {dst_path}",
                    INVALID_PARAMETER_VALUE,
                )
        else:
            dst_path = create_tmp_dir()
        path = (artifact_path or "").strip("/")
        name, inner = self._locate(path)
        v = self._latest(name)
        files = v["file_list"] if v else []
        chosen = [f for f in files if not inner or f["path"] == inner]
        chosen = chosen or [f for f in files if f["path"].startswith(inner + "/")]
        if not chosen:
            if not path:
                return dst_path
            raise MlflowException(
                f"no artifact at {path!r} in {self.artifact_uri}", RESOURCE_DOES_NOT_EXIST
            )
        targets = [(f, partial.under(dst_path, self._relative(name, f["path"]))) for f in chosen]
        partial.pull_files(self.client.transport, v, targets)  # type: ignore[arg-type]
        return os.path.join(dst_path, os.path.normpath(path)) if path else dst_path
