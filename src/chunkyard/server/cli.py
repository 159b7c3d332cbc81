"""The server's commands: ``serve`` (the gateway) and ``verifier`` (pack verification
in a process of its own). Heavy imports happen inside the commands, so that the client
commands of the same ``chunkyard`` program start fast."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any


async def _check_store(settings: Any) -> None:
    from .app import open_repository_store

    store = open_repository_store(settings)
    try:
        await store.check()
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ..config import Settings
    from .app import create_app

    settings = Settings.load(args.data, args.host, args.port)
    asyncio.run(_check_store(settings))  # refuse to start on a useless store
    print(
        f"chunkyard gateway on http://{args.host}:{args.port}  catalog={settings.db_url}  "
        f"store={settings.store_url}",
        file=sys.stderr,
    )
    print(
        f"push with:  CHUNKYARD_URL=http://{args.host}:{args.port} chunkyard push FILE "
        "team/project/model",
        file=sys.stderr,
    )
    if args.workers > 1:
        os.environ.update(
            CHUNKYARD_DATA=str(settings.data_dir),
            CHUNKYARD_HOST=args.host,
            CHUNKYARD_PORT=str(args.port),
        )
        uvicorn.run(
            "chunkyard.server.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
        )
    else:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_verifier(args: argparse.Namespace) -> int:
    """Verify completed packs (CHUNKYARD_VERIFY=external), from the same settings as
    the gateway: the data dir, CHUNKYARD_DB and CHUNKYARD_STORE."""
    from ..config import Settings
    from ..repository import Repository, verifier

    async def run() -> None:
        settings = Settings.load(args.data)
        settings.verify = "external"
        repo = await Repository.open(settings)
        try:
            await verifier.run(repo, once=args.once)
        finally:
            await repo.close()

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
    data = os.environ.get("CHUNKYARD_DATA", "./chunkyard-data")
    s = cmd("serve", cmd_serve, "run the gateway")
    s.add_argument("--host", default=os.environ.get("CHUNKYARD_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("CHUNKYARD_PORT", "8080")))
    s.add_argument("--data", default=data)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="warning")
    s = cmd("verifier", cmd_verifier, "verify uploaded packs (for CHUNKYARD_VERIFY=external)")
    s.add_argument("--data", default=data)
    s.add_argument("--once", action="store_true", help="stop when no pack is left to verify")
