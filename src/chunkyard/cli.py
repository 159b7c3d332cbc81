"""The ``chunkyard`` program: the client's commands (``chunkyard.client.cli``) and the
server's (``chunkyard.server.cli``) under one name.

It catches only :class:`~chunkyard.errors.ChunkyardError`, prints it as one line (or as
JSON with ``--json``) and exits non-zero: 2 for bad input or a catalog this chunkyard
cannot use as it is (to upgrade, newer, unreachable), 3 for not found, 4 for a
conflict, 5 for an integrity failure, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from .client import cli as client_cli
from .errors import (
    CatalogError,
    ChunkyardError,
    Conflict,
    IntegrityFailure,
    InvalidRequest,
    NotFound,
)
from .server import cli as server_cli


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkyard", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        return sp

    server_cli.add_commands(cmd)
    client_cli.add_commands(cmd, sub)
    _token_commands(sub)
    _db_commands(sub)
    return p


def cmd_token(args: argparse.Namespace) -> int:
    """Offline against the catalog with ``--data`` or ``CHUNKYARD_DB`` (the first admin
    token); otherwise through the gateway, as an admin."""
    offline = args.data is not None or bool(os.environ.get("CHUNKYARD_DB"))
    r = server_cli.token_offline(args) if offline else client_cli.token_online(args)
    client_cli.print_token_result(args, r)
    return 0


def _token_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("token", help="make, list and revoke bearer tokens (admin)")
    tsub = t.add_subparsers(dest="token_command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.set_defaults(fn=cmd_token)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument(
            "--data", help="work on this data dir's catalog directly (no gateway needed)"
        )

    s = tsub.add_parser("create", help="make a token; it is printed once, on the last line")
    common(s)
    s.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help="read:PREFIX, write:PREFIX (reads too) or admin; repeatable",
    )
    s.add_argument("--ttl", type=client_cli.parse_duration, help="lifetime: 30d, 12h, 90m, 45s")
    s.add_argument("--label", help="a note to tell tokens apart")
    common(tsub.add_parser("ls", help="list tokens (never their secrets)"))
    s = tsub.add_parser("revoke", help="revoke a token by its id")
    common(s)
    s.add_argument("id")


def _db_commands(sub: argparse._SubParsersAction) -> None:
    """``db status|upgrade|copy|rebuild``: straight against catalogs, no gateway involved."""
    d = sub.add_parser(
        "db",
        help="the catalog's schema: status, upgrade, copy to another database, rebuild "
        "from the store",
    )
    dsub = d.add_subparsers(dest="db_command", required=True)

    def common(sp: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], int]) -> None:
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    def data(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--data",
            help="the data dir whose catalog this is (default CHUNKYARD_DATA or "
            "./chunkyard-data); CHUNKYARD_DB names the catalog instead, as for serve",
        )

    s = dsub.add_parser("status", help="the catalog's schema revision, the code's, and what to do")
    common(s, server_cli.cmd_db_status)
    data(s)
    s = dsub.add_parser("upgrade", help="apply the migrations the catalog lacks (stop gateways)")
    common(s, server_cli.cmd_db_upgrade)
    data(s)
    s = dsub.add_parser(
        "copy",
        help="copy a whole catalog into another database (SQLite <-> PostgreSQL), then "
        "check it; packs stay in their store",
    )
    common(s, server_cli.cmd_db_copy)
    s.add_argument("source", metavar="SOURCE_URL", help="sqlite:///PATH or postgresql://…")
    s.add_argument("target", metavar="TARGET_URL", help="migrated first; must be empty")
    s.add_argument("--force", action="store_true", help="empty a target that holds rows, then copy")
    s = dsub.add_parser(
        "rebuild",
        help="rebuild a lost catalog from the store's metadata records and packs "
        "(CHUNKYARD_STORE, into CHUNKYARD_DB or the data dir's catalog)",
    )
    common(s, server_cli.cmd_db_rebuild)
    data(s)
    s.add_argument(
        "--from-store", action="store_true", help="from the store (the only source there is)"
    )
    s.add_argument("--force", action="store_true", help="empty a catalog that holds rows first")


def exit_code(exc: ChunkyardError) -> int:
    for cls, code in (
        (InvalidRequest, 2),
        (CatalogError, 2),
        (NotFound, 3),
        (Conflict, 4),
        (IntegrityFailure, 5),
    ):
        if isinstance(exc, cls):
            return code
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except ChunkyardError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.to_json()), file=sys.stdout)
        print(f"chunkyard: error: {exc.message} [{exc.code}]", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
