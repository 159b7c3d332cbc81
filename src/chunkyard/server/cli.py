"""The server's commands: ``serve`` (the gateway), ``verifier`` (pack verification
in a process of its own), ``fsck`` (read the store back and check it) and ``db
status|upgrade|copy`` (the catalog's schema, and
moving a catalog to another database). Heavy imports happen inside the commands, so
that the client commands of the same ``chunkyard`` program start fast."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..hosts import is_loopback

#: files and directories the gateway creates are its owner's alone (0600 / 0700)
PRIVATE_UMASK = 0o077

T = TypeVar("T")


def _run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``, asyncio imported only by the commands that run it (~30 ms the
    client's commands need not pay)."""
    import asyncio

    return asyncio.run(main)


def exposure_refusal(host: str, auth: bool, insecure: bool) -> str | None:
    """The one line ``serve`` refuses to start with, or None. Without authentication
    anyone who reaches the gateway can read and write every artifact, so by default it
    only listens where no one else can."""
    if auth or insecure or is_loopback(host):
        return None
    return (
        f"chunkyard: error: refusing to serve on {host} without authentication, as it is "
        "not a loopback address: pass --auth to require bearer tokens, or --insecure to "
        "serve anyone who can reach it unauthenticated"
    )


def banner(settings: Any, host: str, port: int) -> str:
    """The start-up lines, with passwords and keys in the catalog and store URLs
    masked (``CHUNKYARD_DB`` may be ``postgresql://user:password@host/db``)."""
    from .logs import redact

    return (
        f"chunkyard gateway on http://{host}:{port}  catalog={redact(settings.db_url)}  "
        f"store={redact(settings.store_url)}  auth={'on' if settings.auth else 'off'}\n"
        f"push with:  CHUNKYARD_URL=http://{host}:{port} chunkyard push FILE "
        "team/project/model"
    )


@contextlib.contextmanager
def redacted_errors() -> Iterator[None]:
    """Mask secrets in a ChunkyardError's message and detail before ``chunkyard``
    prints it (as a line or with ``--json``): start-up errors quote store and catalog
    URLs, which may carry credentials."""
    from ..errors import ChunkyardError
    from .logs import redact

    try:
        yield
    except ChunkyardError as exc:
        exc.message = redact(exc.message)
        exc.args = (exc.message,)
        exc.detail = {k: redact(v) if isinstance(v, str) else v for k, v in exc.detail.items()}
        raise


def _warn_if_open(data_dir: Any) -> None:
    """Say so when an existing data dir is open to others (created before the gateway
    made it 0700); its files are not changed behind the operator's back."""
    mode = os.stat(data_dir).st_mode & 0o777
    if mode & 0o077:
        print(
            f"chunkyard: warning: the data dir {data_dir} is accessible to other users "
            f"(mode {mode:o}); it holds the catalog and the signing secret: "
            f"chmod 700 {data_dir}",
            file=sys.stderr,
        )


async def _preflight(settings: Any) -> None:
    """Refuse to start on a store it cannot use, or a catalog at another schema
    revision than this code's (an empty database gets the schema here, once, before
    any worker starts)."""
    from ..repository import maintenance
    from .app import open_repository_store

    store = open_repository_store(settings)
    try:
        await store.check()
        await maintenance.check(settings, store)
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    refusal = exposure_refusal(args.host, args.auth, args.insecure)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    if not args.auth and not is_loopback(args.host):
        print(
            f"chunkyard: warning: serving {args.host}:{args.port} without authentication "
            "(--insecure): anyone who can reach it can read and write every artifact",
            file=sys.stderr,
        )
    os.umask(PRIVATE_UMASK)

    import uvicorn

    from ..config import Settings
    from . import logs
    from .app import create_app

    logs.remember_environment()
    with redacted_errors():
        settings = Settings.load(args.data, args.host, args.port)
        settings.auth = args.auth
        logs.remember(settings.secret)
        _warn_if_open(settings.data_dir)
        _run(_preflight(settings))  # refuse to start on a useless store or catalog
    print(banner(settings, args.host, args.port), file=sys.stderr)
    log_config = logs.log_config(args.log_format)
    json_logs = args.log_format == "json"  # chunkyard.access replaces uvicorn's access log
    if args.workers > 1:
        _metrics_dir(settings.data_dir)
        os.environ.update(
            CHUNKYARD_DATA=str(settings.data_dir),
            CHUNKYARD_HOST=args.host,
            CHUNKYARD_PORT=str(args.port),
            CHUNKYARD_AUTH="1" if settings.auth else "0",
        )
        uvicorn.run(
            "chunkyard.server.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            log_config=log_config,
            access_log=not json_logs,
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=log_config,
            access_log=not json_logs,
        )
    return 0


def _metrics_dir(data_dir: Path) -> None:
    """Give the workers' metrics a directory of their own, emptied of a previous run's
    files (``prometheus_client`` sums what it finds there), before any worker starts."""
    path = data_dir / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


def cmd_verifier(args: argparse.Namespace) -> int:
    """Verify completed packs (CHUNKYARD_VERIFY=external), from the same settings as
    the gateway: the data dir, CHUNKYARD_DB and CHUNKYARD_STORE."""
    os.umask(PRIVATE_UMASK)

    from ..config import Settings
    from ..repository import Repository, verifier
    from . import logs

    logs.configure()

    async def run() -> None:
        settings = Settings.load(args.data)
        logs.remember(settings.secret)
        settings.verify = "external"
        repo = await Repository.open(settings)
        try:
            await verifier.run(repo, once=args.once, idle=verifier.EXTERNAL_POLL)
        finally:
            await repo.close()

    with redacted_errors():
        _run(run())
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Read packs back from the store and check every chunk, and every manifest against
    the pack indexes (:mod:`chunkyard.repository.fsck`), from the same settings as the
    gateway. Exit 5 when anything is damaged."""
    from ..config import Settings
    from ..repository import Repository, fsck

    bars = _FsckBar() if not args.json and sys.stderr.isatty() else None

    async def run() -> dict[str, Any]:
        settings = Settings.load(args.data)
        repo = await Repository.open(settings)
        try:
            progress = fsck.Progress(on_advance=bars.advance if bars else None)
            if bars is not None:
                bars.start(progress)
            return await fsck.check(repo, args.sample, progress)
        finally:
            await repo.close()

    with redacted_errors():
        if bars is not None:
            with bars.bars:
                r = _run(run())
        else:
            r = _run(run())
    if args.json:
        print(json.dumps(r))
    else:
        for line in fsck_summary(r):
            print(line)
    return 0 if r["ok"] else 5


class _FsckBar:
    """Bytes read of the packs to read, on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bars = Progress(
            TextColumn("fsck"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        self.task: Any = None

    def start(self, progress: Any) -> None:
        """Called once the packs to read are known (the manifests are checked first)."""
        self.task = self.bars.add_task("read", total=None)
        self.progress = progress

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.bars.update(self.task, total=self.progress.bytes, advance=n)


def fsck_summary(r: dict[str, Any]) -> list[str]:
    """What ``fsck`` says when it is done, from its JSON report."""
    sample = "" if r["sample"] == 1 else f" (a sample of {r['sample']:g})"
    lines = [
        f"fsck: {r['files']} files of {r['versions']} versions checked ({r['terms']} terms); "
        f"read {r['packs_read']} of {r['packs']} packs{sample}, {r['bytes_read']} bytes, "
        f"{r['chunks_checked']} chunks"
    ]
    for p in r["problems"]:
        where = f"pack {p.get('pack', '')[:16]}"
        if p["kind"] == "chunk":
            what = f"{p['state']} chunk {p['index']} ({p['chunk'][:16]}) of {where}"
        elif p["kind"] == "term":
            what = f"term [{p['first']}, {p['end']}) of {where}: {p['state']}"
        elif p["kind"] == "pack":
            what = f"{p['state']} {where}"
        else:
            what = f"file: {p['state']}"
        affects = ", ".join(p["versions"][:20]) or "no version"
        more = f" and {len(p['versions']) - 20} more" if len(p["versions"]) > 20 else ""
        lines.append(f"  {what}: {p.get('why', '')}; affects {affects}{more}")
    if r["ok"]:
        lines.append("ok: nothing damaged")
    else:
        lines.append(
            f"DAMAGED: {len(r['problems'])} problems, {r['chunks_damaged']} chunks (exit 5)"
        )
    return lines


def token_offline(args: argparse.Namespace) -> Any:
    """``token create|ls|revoke`` straight against the catalog (``--data`` or
    ``CHUNKYARD_DB``): how the first admin token is made, before any exists."""
    from ..config import Settings
    from ..repository import tokens

    settings = Settings.load(args.data)
    return _run(
        tokens.offline(
            settings.db_url,
            args.token_command,
            scopes=getattr(args, "scope", None),
            ttl=getattr(args, "ttl", None),
            label=getattr(args, "label", None),
            token_id=getattr(args, "id", None),
        )
    )


def catalog_url(data: str | None, create: bool = False) -> str:
    """The catalog ``serve --data DATA`` would use: ``CHUNKYARD_DB``, else
    ``DATA/catalog.db``, made owner-only when ``create`` (as the gateway makes it)."""
    from ..config import create_private
    from ..repository import default_catalog

    url = os.environ.get("CHUNKYARD_DB")
    if url:
        return url
    data_dir = Path(data or os.environ.get("CHUNKYARD_DATA", "./chunkyard-data")).resolve()
    if create:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(data_dir / "catalog.db")
    return default_catalog(data_dir)


def _upgrade_hint(args: argparse.Namespace) -> str:
    if os.environ.get("CHUNKYARD_DB"):
        return "chunkyard db upgrade (with the same CHUNKYARD_DB)"
    data = Path(args.data or os.environ.get("CHUNKYARD_DATA", "./chunkyard-data")).resolve()
    return f"chunkyard db upgrade --data {shlex.quote(str(data))}"


def cmd_db_status(args: argparse.Namespace) -> int:
    """Where the catalog's schema stands; reads only (a missing SQLite file stays
    missing)."""
    from ..repository import maintenance

    with redacted_errors():
        r = _run(maintenance.status(catalog_url(args.data)))
    if args.json:
        print(json.dumps(r))
        return 0
    state = {
        "empty": "empty: no schema yet (`chunkyard serve` creates it on first start)",
        "current": "current: at this chunkyard's head, nothing to do",
        "behind": "behind: upgrade needed: stop the gateways that use it and run "
        f"`{_upgrade_hint(args)}`",
        "ahead": "ahead: a newer chunkyard upgraded it: upgrade chunkyard",
        "foreign": "not a chunkyard catalog: it has tables but no schema revision",
    }[r["state"]]
    print(f"catalog   {r['catalog']}")
    print(f"revision  {r['revision'] or '-'}")
    print(f"head      {r['head']}")
    print(f"state     {state}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply the migrations the catalog lacks. Gateways never do it themselves, since
    gateways of older code may share the catalog: stop them first."""
    os.umask(PRIVATE_UMASK)
    from ..repository import maintenance

    with redacted_errors():
        r = _run(maintenance.upgrade(catalog_url(args.data, create=True)))
    if args.json:
        print(json.dumps(r))
    elif not r["upgraded"]:
        print(f"the catalog {r['catalog']} is at revision {r['to']}, this chunkyard's head")
    elif r["from"] is None:
        print(f"created the schema of the catalog {r['catalog']} at revision {r['to']}")
    else:
        print(f"upgraded the catalog {r['catalog']} from revision {r['from']} to {r['to']}")
    return 0


class _Lines:
    """Copy progress without a terminal: notes on stderr, nothing else."""

    def note(self, message: str) -> None:
        print(f"chunkyard: {message}", file=sys.stderr)

    def table(self, name: str, total: int) -> None:
        pass

    def advance(self, name: str, rows: int) -> None:
        pass


class _Bars(_Lines):
    """Copy progress on a terminal: a bar per table, rows copied of its total."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = Console(stderr=True)
        self.bars = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            console=self.console,
            refresh_per_second=5,
        )
        self.tasks: dict[str, Any] = {}

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def table(self, name: str, total: int) -> None:
        self.tasks[name] = self.bars.add_task(name, total=total)

    def advance(self, name: str, rows: int) -> None:
        self.bars.advance(self.tasks[name], rows)


def cmd_db_copy(args: argparse.Namespace) -> int:
    """Copy a whole catalog into another database, then check the copy."""
    os.umask(PRIVATE_UMASK)
    from ..repository import maintenance

    progress: _Lines | None = None
    if not args.json:
        progress = _Bars() if sys.stderr.isatty() else _Lines()
    with redacted_errors():
        if isinstance(progress, _Bars):
            with progress.bars:
                r = _run(maintenance.copy(args.source, args.target, args.force, progress))
        else:
            r = _run(maintenance.copy(args.source, args.target, args.force, progress))
    if args.json:
        print(json.dumps(r))
        return 0
    for line in copy_summary(r):
        print(line)
    return 0


def cmd_db_rebuild(args: argparse.Namespace) -> int:
    """Rebuild a lost catalog from the store (``--from-store``): exit 5 when versions
    had to be left out (a pack gone or damaged), with the report."""
    os.umask(PRIVATE_UMASK)
    from ..config import Settings
    from ..repository import maintenance

    if not args.from_store:
        print("chunkyard: error: say where from: --from-store", file=sys.stderr)
        return 2
    progress: _Lines | None = None
    if not args.json:
        progress = _Bars() if sys.stderr.isatty() else _Lines()
    with redacted_errors():
        settings = Settings.load(args.data)
        run = maintenance.rebuild_from_store(settings, args.force, progress)
        if isinstance(progress, _Bars):
            with progress.bars:
                r = _run(run)
        else:
            r = _run(run)
    if args.json:
        print(json.dumps(r))
    else:
        for line in rebuild_summary(r):
            print(line)
    return 5 if r["skipped"] else 0


def rebuild_summary(r: dict[str, Any]) -> list[str]:
    """What ``db rebuild`` says when it is done, from its JSON report."""
    lines = [
        f"rebuilt {r['catalog']} from {r['store']} in {r['seconds']:.1f} s: "
        f"{r['records']} records, {r['artifacts']} artifacts, {r['versions']} versions "
        f"({r['files']} files), {r['tags']} tags, {r['aliases']} aliases "
        f"({r['alias_moves']} moves), {r['removals']} removals",
        f"  packs read and verified: {r['packs']} ({r['pack_bytes']} bytes); every stored "
        "version's file ids and digest recomputed from them",
    ]
    if r["emptied"]:
        lines.append(f"  emptied first (--force): {sum(r['emptied'].values())} rows")
    for s in r["skipped"]:
        lines.append(f"  LEFT OUT {s['name']}@{s['version']}: {s['reason']}")
    for b in r["borrowing"]:
        lines.append(
            f"  {b['name']}@{b['version']} borrows chunks from {len(b['objects'])} indexed "
            "reference object(s): index them again with `chunkyard ref --index`"
        )
    for a in r["dangling_aliases"]:
        lines.append(f"  alias {a['name']}:{a['alias']} left out: version {a['version']} is not")
    lines.append(
        "tokens are not rebuilt (the store never held them): make an admin token with "
        "`chunkyard token create --data DIR --scope admin`"
    )
    return lines


def copy_summary(r: dict[str, Any]) -> list[str]:
    """What ``db copy`` says when it is done, from its JSON summary."""
    c = r["checked"]
    width = max(len(t) for t in r["tables"])
    lines = [f"copied {r['source']} -> {r['target']}: {r['rows']} rows"]
    lines += [f"  {name:<{width}}  {n}" for name, n in r["tables"].items()]
    if r["emptied"]:
        lines.append(f"emptied first (--force): {sum(r['emptied'].values())} rows")
    lines.append(
        f"checked: row counts equal in all {len(r['tables'])} tables; "
        f"{c['stored_versions']} stored versions ({c['files']} files): every file id and "
        "version digest recomputed from the copied pack entries and manifests matches"
    )
    if c["reference_content"]:
        lines.append(
            f"  reference versions with a content digest: {c['reference_content']}, "
            "recomputed from their files' recorded file ids (no chunks to rebuild them from)"
        )
    if c["reference_pins"] or c["format2_versions"]:
        lines.append(
            f"  not recomputable: reference versions with a pin digest: {c['reference_pins']}, "
            f"stored versions of format 2 (uploaders' digests): {c['format2_versions']}; "
            "their file counts were checked and manifests parsed"
        )
    if r["sequences"]:
        nxt = ", ".join(f"{k} {v}" for k, v in r["sequences"].items())
        lines.append(f"next ids set on the target: {nxt}")
    lines.append(
        "the packs were not copied: serve the new catalog with the same CHUNKYARD_STORE, "
        "or copy the store's objects to the new store too"
    )
    return lines


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction in (0, 1], like 0.1: {text!r}")
    return value


def add_commands(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the server's commands to the ``chunkyard`` program (``cmd(name, fn, help)``
    makes a subcommand)."""
    from ..config import env_flag

    data = os.environ.get("CHUNKYARD_DATA", "./chunkyard-data")
    s = cmd("serve", cmd_serve, "run the gateway")
    s.add_argument("--host", default=os.environ.get("CHUNKYARD_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("CHUNKYARD_PORT", "8080")))
    s.add_argument("--data", default=data)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="warning")
    s.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("CHUNKYARD_LOG_FORMAT", "text"),
        help="json: one object a line with the request id, and an access line per request "
        "(env CHUNKYARD_LOG_FORMAT)",
    )
    s.add_argument(
        "--auth",
        action="store_true",
        default=env_flag("CHUNKYARD_AUTH"),
        help="require a bearer token on every request (also CHUNKYARD_AUTH=1)",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --auth: anyone who can reach the "
        "gateway can read and write every artifact",
    )
    s = cmd(
        "fsck",
        cmd_fsck,
        "read packs back and check every chunk and manifest (beside the gateways); "
        "exit 5 on damage",
    )
    s.add_argument("--data", default=data)
    s.add_argument(
        "--sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="read about this fraction of the packs, chosen at random (default 1: all); "
        "manifests are always all checked",
    )
    s = cmd("verifier", cmd_verifier, "verify uploaded packs (for CHUNKYARD_VERIFY=external)")
    s.add_argument("--data", default=data)
    s.add_argument("--once", action="store_true", help="stop when no pack is left to verify")
