"""The server's commands: ``serve`` (the gateway) and ``verifier`` (pack verification
in a process of its own). Heavy imports happen inside the commands, so that the client
commands of the same ``chunkyard`` program start fast."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: files and directories the gateway creates are its owner's alone (0600 / 0700)
PRIVATE_UMASK = 0o077


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to loopback only: 127.0.0.0/8, ::1 (also IPv4-mapped)
    or ``localhost``. Names are not resolved: anything else counts as reachable."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


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


async def _check_store(settings: Any) -> None:
    from .app import open_repository_store

    store = open_repository_store(settings)
    try:
        await store.check()
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
        asyncio.run(_check_store(settings))  # refuse to start on a useless store
    print(banner(settings, args.host, args.port), file=sys.stderr)
    log_config = logs.uvicorn_log_config()
    if args.workers > 1:
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
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            log_config=log_config,
        )
    return 0


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
            await verifier.run(repo, once=args.once)
        finally:
            await repo.close()

    with redacted_errors():
        asyncio.run(run())
    return 0


def token_offline(args: argparse.Namespace) -> Any:
    """``token create|ls|revoke`` straight against the catalog (``--data`` or
    ``CHUNKYARD_DB``): how the first admin token is made, before any exists."""
    from ..config import Settings
    from ..repository import tokens

    settings = Settings.load(args.data)
    return asyncio.run(
        tokens.offline(
            settings.db_url,
            args.token_command,
            scopes=getattr(args, "scope", None),
            ttl=getattr(args, "ttl", None),
            label=getattr(args, "label", None),
            token_id=getattr(args, "id", None),
        )
    )


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
    s = cmd("verifier", cmd_verifier, "verify uploaded packs (for CHUNKYARD_VERIFY=external)")
    s.add_argument("--data", default=data)
    s.add_argument("--once", action="store_true", help="stop when no pack is left to verify")
