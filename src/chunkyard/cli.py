"""The ``chunkyard`` program: the client's commands (``chunkyard.client.cli``) and the
server's (``chunkyard.server.cli``) under one name.

Every error is one line on stderr (and one JSON object on stdout with ``--json``), the
traceback only with ``--debug``, and the exit code says what kind it was: 2 for bad
input or a catalog this chunkyard cannot use as it is (to upgrade, newer, unreachable),
3 for not found, 4 for a conflict, 5 for an integrity failure, 1 for anything else
(the gateway unreachable, the store failing, a local file that cannot be read).

The options every command takes (``--url``, ``--token``, ``--profile``, ``--json``,
``--quiet``, ``--debug``) may come before or after the command's name.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import traceback
from collections.abc import Callable, Iterator

from .client import cli as client_cli
from .errors import (
    CatalogError,
    ChunkyardError,
    Conflict,
    IntegrityFailure,
    InvalidRequest,
    NotFound,
)
from .migrate import cli as migrate_cli
from .server import cli as server_cli
from .version import __version__

#: the global options that reach the client through its environment (:mod:`.profiles`)
AS_ENVIRONMENT = {
    "url": "CHUNKYARD_URL",
    "token": "CHUNKYARD_TOKEN",
    "profile": "CHUNKYARD_PROFILE",
}


def _global_options(p: argparse.ArgumentParser, top: bool) -> None:
    """On the program (with defaults) and on every command (without, so that an option
    given before the command's name is not reset by the command's parser)."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    have = {o for a in p._actions for o in a.option_strings}
    g = p.add_argument_group("global options")
    if "--url" not in have:
        g.add_argument(
            "--url",
            default=default(None),
            help="the gateway (else CHUNKYARD_URL, else the profile)",
        )
        g.add_argument("--token", default=default(None), help="bearer token (else CHUNKYARD_TOKEN)")
        g.add_argument(
            "--profile",
            default=default(None),
            help="a profile of ~/.config/chunkyard/config.toml (else CHUNKYARD_PROFILE)",
        )
    if "--json" not in have:
        g.add_argument(
            "--json", action="store_true", default=default(False), help="print one JSON object"
        )
    g.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only errors"
    )
    g.add_argument(
        "--debug", action="store_true", default=default(False), help="tracebacks on errors"
    )


def _commands(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser that runs something: the leaves of the tree of subcommands, and a
    command that runs without one of its subcommands (``queue``)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or "fn" in p._defaults:
        yield p
    for action in subs:
        for child in dict.fromkeys(action.choices.values()):
            yield from _commands(child)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chunkyard", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"chunkyard {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(
        name: str, fn: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.set_defaults(fn=fn)
        return sp

    server_cli.add_commands(cmd)
    client_cli.add_commands(cmd, sub)
    migrate_cli.add_commands(cmd)
    _token_commands(sub)
    _db_commands(sub)
    s = cmd("completion", cmd_completion, "print a shell completion script: bash, zsh or tcsh")
    s.add_argument("shell", choices=("bash", "zsh", "tcsh"))
    for command in _commands(p):
        _global_options(command, top=False)
    return p


def cmd_completion(args: argparse.Namespace) -> int:
    """Generated from this very parser by ``shtab``, so it cannot drift from the
    commands: ``eval "$(chunkyard completion bash)"`` in ~/.bashrc."""
    import shtab

    print(shtab.complete(parser(), shell=args.shell))
    return 0


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
        help="read:PREFIX, write:PREFIX (reads too), metrics or admin; repeatable",
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
    # This process is the program, not a library in someone's training job: numpy's
    # OpenBLAS need not start a spinning thread per core when a command loads it (~0.1
    # core-s in a 1 GiB pull here); chunkyard does no linear algebra. Importing this
    # module loads no numpy (tested), so this comes first.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = parser().parse_args(argv)
    for option, variable in AS_ENVIRONMENT.items():  # flags first, then the environment
        if getattr(args, option, None):
            os.environ[variable] = getattr(args, option)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # `chunkyard ls --json | head`: the reader left, so this ends quietly, as a
            # process that SIGPIPE ends would (Python ignores the signal), and no flush
            # at exit tries the pipe again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        if args.debug:
            traceback.print_exc()
        if not isinstance(exc, ChunkyardError):  # a bug, or the machine: one line too
            exc = _unexpected(exc, args.debug)
        if args.json:
            print(json.dumps(exc.to_json()), file=sys.stdout)
        rid = f" (request id {exc.request_id})" if exc.request_id else ""
        print(f"chunkyard: error: {exc.message} [{exc.code}]{rid}", file=sys.stderr)
        return exit_code(exc)


def _stdout_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (a broken pipe may also
    be a socket's, which is an error to report)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll, or stdout no file
        return False


def _unexpected(exc: Exception, debug: bool) -> ChunkyardError:
    if isinstance(exc, OSError):  # a local file or directory: the message names it
        out = ChunkyardError(str(exc))
        out.code = "os_error"
        return out
    hint = "" if debug else " (--debug shows the traceback)"
    out = ChunkyardError(f"{type(exc).__name__}: {exc}{hint}")
    out.code = "unexpected"
    return out


if __name__ == "__main__":
    sys.exit(main())
