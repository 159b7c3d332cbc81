"""Direct pushes and pulls on object stores, side by side with each store's own SDK.

Per store (SeaweedFS for S3; Azurite and the GCS emulator, labelled as emulators) in
one run, on the same incompressible file:
- first push vs the SDK's upload (boto3 ``upload_file`` with the default TransferConfig;
  azure-storage-blob ``upload_blob``; google-cloud-storage ``upload_from_filename``);
- pull vs the SDK's download;
- push of a copy with 1% of its bytes changed in 10 places vs the SDK's upload;
- the gateway's CPU seconds while serving the push, against the client's;
- pack verification, run separately (``CHUNKYARD_VERIFY=external`` + ``chunkyard
  verifier --once``) so that its cost is reported on its own.
Goals (issue 3) apply to SeaweedFS only; the emulators are too slow to compare.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BIN,
    Context,
    Gateway,
    Report,
    Step,
    at_most,
    changed_copy,
    clean_env,
    delete_s3_prefix,
    random_file,
    run_measured,
    settle,
    warm,
)

SERVICES: tuple[str, ...] = ("s3", "azure", "gcs")
GOAL_PUSH, GOAL_PULL, GOAL_CHANGED, GOAL_GATEWAY_CPU = 1.15, 1.15, 0.10, 0.10
PY = str(BIN / "python")

STORES = [  # key, label, env var with the test bucket URL, has goals
    ("s3", "SeaweedFS (S3)", "CHUNKYARD_TEST_S3_URL", True),
    ("azure", "Azurite (emulator)", "CHUNKYARD_TEST_AZURE_URL", False),
    ("gcs", "GCS emulator", "CHUNKYARD_TEST_GCS_URL", False),
]

# The SDK baselines, each as a fresh process like the chunkyard CLI (argv: file, bucket,
# key). Default settings throughout: what a user of the SDK gets.
UPLOAD = {
    "s3": "import sys, boto3; boto3.client('s3').upload_file(*sys.argv[1:4])",
    "azure": (
        "import os, sys\nfrom azure.storage.blob import BlobServiceClient\n"
        "c = BlobServiceClient.from_connection_string(os.environ["
        "'AZURE_STORAGE_CONNECTION_STRING']).get_blob_client(sys.argv[2], sys.argv[3])\n"
        "with open(sys.argv[1], 'rb') as f: c.upload_blob(f, overwrite=True)"
    ),
    "gcs": (
        "import sys\nfrom google.auth.credentials import AnonymousCredentials\n"
        "from google.cloud import storage\n"
        "b = storage.Client(project='bench', credentials=AnonymousCredentials())"
        ".bucket(sys.argv[2])\nb.blob(sys.argv[3]).upload_from_filename(sys.argv[1])"
    ),
}
DOWNLOAD = {
    "s3": "import sys, boto3; boto3.client('s3').download_file(sys.argv[2], sys.argv[3], "
    "sys.argv[1])",
    "azure": (
        "import os, sys\nfrom azure.storage.blob import BlobServiceClient\n"
        "c = BlobServiceClient.from_connection_string(os.environ["
        "'AZURE_STORAGE_CONNECTION_STRING']).get_blob_client(sys.argv[2], sys.argv[3])\n"
        "with open(sys.argv[1], 'wb') as f: c.download_blob().readinto(f)"
    ),
    "gcs": (
        "import sys\nfrom google.auth.credentials import AnonymousCredentials\n"
        "from google.cloud import storage\n"
        "b = storage.Client(project='bench', credentials=AnonymousCredentials())"
        ".bucket(sys.argv[2])\nb.blob(sys.argv[3]).download_to_filename(sys.argv[1])"
    ),
}


def run(ctx: Context) -> Report:
    r = Report("direct", params={"size": ctx.size, "quick": ctx.quick, "file": "random bytes"})
    data = random_file(ctx.workdir, ctx.size)
    changed = changed_copy(data)
    for key, label, var, goals in STORES:
        base = os.environ.get(var)
        if not base:
            r.errors.append(f"{label}: {var} is not set (scripts/services start {key})")
            continue
        with r.section(label, ctx.console):
            one_store(ctx, r, key, label, base, data, changed, goals)
    return r


def _sdk(kind: dict[str, str], key: str, path: Path, bucket: str, obj: str) -> Any:
    settle()
    return run_measured([PY, "-c", kind[key], str(path), bucket, obj], clean_env()).check()


def _cli(gw: Gateway, *args: str, env: dict[str, str] | None = None) -> tuple[Any, float]:
    settle()
    cpu = gw.cpu_seconds()
    m = run_measured([str(BIN / "chunkyard"), *args], env or gw.client_env()).check()
    return m, gw.cpu_seconds() - cpu


def one_store(
    ctx: Context,
    r: Report,
    key: str,
    label: str,
    base: str,
    data: Path,
    changed: Path,
    goals: bool,
) -> None:
    size = data.stat().st_size
    bucket = base.split("://", 1)[1].split("/")[0]
    run_id = uuid.uuid4().hex[:8]
    store_url = f"{base.rstrip('/')}/bench-{run_id}"
    env = {"CHUNKYARD_STORE": store_url, "CHUNKYARD_VERIFY": "external"}
    warm(data)
    warm(changed)
    with Gateway(ctx.rundir / f"gw-{key}", env=env) as gw:
        sdk_up = _sdk(UPLOAD, key, data, bucket, f"bench-{run_id}-sdk/file")
        push, push_gw_cpu = _cli(gw, "push", str(data), f"bench/{key}", "--json")
        out = push.json()
        r.steps.append(
            Step(
                f"{key}: push",
                size,
                push.wall_s,
                push.cpu_s,
                push.peak_rss,
                push_gw_cpu,
                gw.peak_rss(),
                {"bytes_uploaded": out["bytes_uploaded"]},
            )
        )
        verify_env = clean_env(CHUNKYARD_DATA=str(gw.data_dir), **env)
        ver, _ = _cli(gw, "verifier", "--once", env=verify_env)
        dest = ctx.rundir / f"pulled-{key}"
        sdk_down = _sdk(DOWNLOAD, key, dest, bucket, f"bench-{run_id}-sdk/file")
        dest.unlink(missing_ok=True)
        pull, pull_gw_cpu = _cli(gw, "pull", f"bench/{key}", str(dest), "--json")
        dest.unlink(missing_ok=True)
        r.steps.append(
            Step(
                f"{key}: pull",
                size,
                pull.wall_s,
                pull.cpu_s,
                pull.peak_rss,
                pull_gw_cpu,
                gw.peak_rss(),
                {},
            )
        )
        again, again_gw_cpu = _cli(gw, "push", str(changed), f"bench/{key}", "--json")
        out2 = again.json()
        r.steps.append(
            Step(
                f"{key}: push 1% changed",
                size,
                again.wall_s,
                again.cpu_s,
                again.peak_rss,
                again_gw_cpu,
                gw.peak_rss(),
                {"bytes_uploaded": out2["bytes_uploaded"]},
            )
        )
    if key == "s3":  # leave the shared test bucket as it was
        for prefix in (f"bench-{run_id}/", f"bench-{run_id}-sdk/"):
            delete_s3_prefix(bucket, prefix)

    def goal(v: float) -> Any:
        return at_most(v) if goals else None

    where = f"{label}, {size >> 20} MiB random"
    r.add(
        f"{key}_push_ratio",
        f"{label}: push time / SDK upload",
        push.wall_s / sdk_up.wall_s,
        "×",
        goal(GOAL_PUSH),
        f"{push.wall_s:.2f} s vs {sdk_up.wall_s:.2f} s ({where})",
    )
    r.add(
        f"{key}_pull_ratio",
        f"{label}: pull time / SDK download",
        pull.wall_s / sdk_down.wall_s,
        "×",
        goal(GOAL_PULL),
        f"{pull.wall_s:.2f} s vs {sdk_down.wall_s:.2f} s",
    )
    r.add(
        f"{key}_changed_ratio",
        f"{label}: 1%-changed push time / SDK upload",
        again.wall_s / sdk_up.wall_s,
        "×",
        goal(GOAL_CHANGED),
        f"{again.wall_s:.2f} s, {out2['bytes_uploaded'] >> 20} MiB sent",
    )
    r.add(
        f"{key}_gateway_cpu",
        f"{label}: gateway CPU / client CPU during the push",
        push_gw_cpu / push.cpu_s,
        "×",
        goal(GOAL_GATEWAY_CPU),
        f"{push_gw_cpu:.2f} s vs {push.cpu_s:.2f} s; verification not included",
    )
    r.add(
        f"{key}_verify_s",
        f"{label}: verifying the pushed packs (separate process)",
        ver.wall_s,
        "s",
        None,
        f"CPU {ver.cpu_s:.2f} s for {size >> 20} MiB",
    )
