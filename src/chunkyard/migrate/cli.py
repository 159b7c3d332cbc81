"""The migration commands of the ``chunkyard`` program: ``import``, ``export``, ``copy``
(``chunkyard.cli`` adds them and the global options, ``--json`` among them)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..client.cli import _human_size, _print, _tags
from ..errors import InvalidRequest

if TYPE_CHECKING:
    from .writer import Progress


def _shown(args: argparse.Namespace) -> bool:
    return not (args.json or args.quiet) and sys.stderr.isatty()


@contextmanager
def _progress(args: argparse.Namespace, label: str) -> Iterator[Progress]:
    """``progress(label, total)`` for the migration functions: a bar per version on a
    terminal, nothing elsewhere."""
    from ..client.progress import bar

    with bar(label, enabled=_shown(args)) as factory:
        if factory is None:
            yield lambda name, total: None
        else:
            yield lambda name, total: factory(total, name)


def _client(args: argparse.Namespace, url: str | None = None, token: str | None = None) -> Any:
    """A client whose waits (the gateway or a store unreachable for a while) are
    printed on a terminal; its bars are this module's, one display for the command."""
    from ..client.api import Client
    from ..client.transport import print_waits

    return Client(url, token=token, on_wait=print_waits() if _shown(args) else None)


def cmd_import(args: argparse.Namespace) -> int:
    from .importing import import_source

    with _client(args) as c, _progress(args, f"import {args.name}") as progress:
        r = import_source(
            c, args.source, args.name, _tags(args.tag), args.experiment, args.staging, progress
        )
    lines = []
    for v in r["versions"]:
        what = "new version" if v.get("created") else "unchanged, latest version"
        run = f"  run {v['run_id']}" if v.get("run_id") else ""
        lines.append(
            f"{v['name']}@{v['version']}  ({what}){run}  {_human_size(v['size'])} in "
            f"{v['files']} file(s), {_human_size(v['bytes_uploaded'])} uploaded"
        )
    for s in r["skipped"]:
        where = f" (version {s['version']})" if s.get("version") else ""
        lines.append(f"skipped run {s['run_id']}: {s['reason']}{where}")
    lines.append(
        f"{r['kind']} {r['source']}: {len(r['versions'])} version(s), "
        f"{len(r['skipped'])} skipped, {_human_size(r['bytes_read'])} read, "
        f"{_human_size(r['bytes_uploaded'])} uploaded"
    )
    _print(args, r, "\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .exporting import export

    with _client(args) as c, _progress(args, f"export {args.ref}") as progress:
        r = export(c, args.ref, args.dest, args.staging, args.overwrite, progress)
    _print(
        args,
        r,
        f"{r['name']}@{r['version']} → {r['destination']}  ({r['files_written']} file(s), "
        f"{_human_size(r['bytes_written'])} written, {r['files_skipped']} already there)",
    )
    return 0


def _target(args: argparse.Namespace) -> Any:
    """The gateway to copy to, and only its own token: ``--to-token``, else
    ``CHUNKYARD_TO_TOKEN``, else the token of ``--to-profile``; never the source's."""
    from ..client.profiles import load_profile

    url, token = args.to, args.to_token or os.environ.get("CHUNKYARD_TO_TOKEN") or None
    if args.to_profile:
        profile = load_profile(args.to_profile)
        url = url or profile.url
        if token is None and profile.url and profile.url.rstrip("/") == (url or "").rstrip("/"):
            token = profile.token
    if not url:
        raise InvalidRequest("copy needs --to URL (or --to-profile NAME with a url)")
    target = _client(args, url, token)
    target.transport.token = token  # not CHUNKYARD_TOKEN, which is the source's
    return target


def cmd_copy(args: argparse.Namespace) -> int:
    from .copying import copy

    with (
        _client(args) as source,
        _target(args) as target,
        _progress(args, f"copy {args.ref}") as progress,
    ):
        r = copy(source, target, args.ref, args.as_name, args.staging, progress, args.aliases)
    lines = [
        f"{r['source']}@{v['source_version']} → {v['name']}@{v['version']}  "
        f"{v['files'] - v['files_reused']}/{v['files']} file(s) fetched, "
        f"{_human_size(v['bytes_uploaded'])} sent"
        for v in r["copied"]
    ]
    lines += [
        f"{r['source']}@{s['source_version']}: copied before, as version {s['version']}"
        for s in r["skipped"]
    ]
    lines += [f"{r['target']}:{a['alias']} → {a['version']}" for a in r["aliases"]]
    lines.append(
        f"{len(r['copied'])} version(s) copied, {len(r['skipped'])} skipped: "
        f"{_human_size(r['bytes_fetched'])} fetched, {_human_size(r['bytes_uploaded'])} sent"
    )
    _print(args, r, "\n".join(lines))
    return 0


def add_commands(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``import``, ``export`` and ``copy`` (``cmd(name, fn, help)`` makes one)."""
    staging = {
        "metavar": "DIR",
        "help": "where files in transit are staged, a batch or two at a time "
        "(default: the system's temporary directory)",
    }
    s = cmd("import", cmd_import, "import a directory, an mlruns tree or a bucket prefix")
    s.add_argument(
        "source", help="a directory or file, an MLflow mlruns directory, or s3://, gs://, az://…"
    )
    s.add_argument("name")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE", help="tag every version made")
    s.add_argument(
        "--experiment",
        action="append",
        metavar="ID|NAME",
        help="mlruns: only this experiment's runs (repeatable)",
    )
    s.add_argument("--staging", **staging)
    s = cmd("export", cmd_export, "write NAME[@VERSION|:ALIAS] to a directory or a bucket prefix")
    s.add_argument("ref")
    s.add_argument("dest", help="a directory, or s3://bucket/prefix/, gs://…, az://…")
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="bucket: write every file, also those an earlier export wrote",
    )
    s.add_argument("--staging", **staging)
    s = cmd("copy", cmd_copy, "copy NAME (every version) or NAME@VERSION to another gateway")
    s.add_argument("ref")
    s.add_argument("--to", metavar="URL", help="the target gateway")
    s.add_argument("--to-token", help="the target's token (else CHUNKYARD_TO_TOKEN)")
    s.add_argument("--to-profile", metavar="PROFILE", help="the target's url and token")
    s.add_argument("--as", dest="as_name", metavar="NAME", help="the name on the target")
    s.add_argument(
        "--aliases",
        action="store_true",
        help="then point the target's aliases where the source's point (at the copies)",
    )
    s.add_argument("--staging", **staging)
