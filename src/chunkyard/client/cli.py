"""The client's commands of the ``chunkyard`` program: a thin layer over
``chunkyard.Client`` (``chunkyard.cli`` assembles the program and maps errors to exit
codes)."""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequest


def _human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _tags(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        key, sep, value = p.partition("=")
        if not sep:
            raise InvalidRequest(f"--tag wants KEY=VALUE, got {p!r}")
        out[key] = value
    return out


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif not args.quiet:
        print(human)


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """A client whose waits for an unreachable gateway or store are said on stderr
    unless ``--quiet``, with or without a progress bar: a command that waits a minute
    must not look hung (nor does a line on stderr disturb ``--json`` on stdout)."""
    from .api import Client
    from .transport import print_waits

    return Client(
        progress=not (args.json or args.quiet) and sys.stderr.isatty(),
        on_wait=None if args.quiet else print_waits(),
    )


def cmd_push(args: argparse.Namespace) -> int:
    if args.background:
        if args.include or args.exclude:
            raise InvalidRequest("--include/--exclude select files of a push that waits")
        return push_background(args)
    with _client(args) as c:
        r = c.push(
            args.path, args.name, _tags(args.tag), include=args.include, exclude=args.exclude
        )
    what = "new version" if r.get("created") else "unchanged, latest version"
    _print(
        args,
        r,
        f"{r['name']}@{r['version']}  ({what})\n"
        f"  digest {r['digest']}\n  {_human_size(r['size'])} in {r['files']} file(s), "
        f"{r['chunks_new']}/{r['chunks_total']} chunks new, "
        f"{_human_size(r['bytes_uploaded'])} uploaded"
        + (
            f" (resumed: {r['packs_resumed']} pack(s) and {r['parts_resumed']} part(s) sent before)"
            if r.get("resumed")
            else ""
        ),
    )
    return 0


def push_background(args: argparse.Namespace) -> int:
    """``push --background``: snapshot into the spool, start a detached worker, return."""
    from .spool import Spool, spawn_worker
    from .transport import Transport

    spool = Spool()
    url = Transport().url
    job = spool.add(args.path, args.name, url, _tags(args.tag))
    pid = spool.worker_pid(url) or spawn_worker(spool, url)
    r = {**job.describe("pending"), "spool": str(spool.root), "worker_pid": pid}
    _print(
        args,
        r,
        f"spooled {job.name} as job {job.id}: {job.meta['files']} file(s), "
        f"{_human_size(job.meta['size'])}, snapshot by {job.meta['snapshot']}\n"
        f"  worker pid {pid} pushes it to {url}; `chunkyard queue` shows it",
    )
    return 0


def _age(t: float | None) -> str:
    if t is None:
        return "-"
    s = max(0.0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s / n:.0f}{unit}"
    return f"{s:.0f}s"


def cmd_queue(args: argparse.Namespace) -> int:
    """``queue [ls|drain|retry|drop]``: the spool's pending and failed pushes."""
    from .spool import Spool

    spool = Spool()
    command = args.queue_command or "ls"
    if command == "drain":
        return _queue_drain(args, spool)
    if command in ("retry", "drop"):
        if not args.ids and not args.all:
            raise InvalidRequest(f"queue {command} wants job ids, or --all")
        return _queue_retry(args, spool) if command == "retry" else _queue_drop(args, spool)
    pending = [j.describe("pending") for j in spool.pending()]
    failed = [j.describe("failed") for j in spool.failed()]
    urls = sorted({j["gateway"] for j in pending})
    workers = {u: spool.worker_pid(u) for u in urls}
    r = {"spool": str(spool.root), "pending": pending, "failed": failed, "workers": workers}
    lines = [
        f"{j['state']:7}  {j['id']}  {j['name']}  {j['files']} file(s)  "
        f"{_human_size(j['size'])}  age {_age(j['created_at'])}  attempts {j['attempts']}"
        + (f"\n         last error: {j['last_error']['message']}" if j["last_error"] else "")
        for j in pending + failed
    ]
    for u, pid in workers.items():
        lines.append(
            f"worker pid {pid} is pushing to {u}"
            if pid
            else f"no worker is pushing to {u}: `chunkyard queue drain` (CHUNKYARD_URL={u})"
        )
    if failed:
        lines.append("failed jobs stay until `chunkyard queue retry` or `chunkyard queue drop`")
    _print(args, r, "\n".join(lines) if lines else f"(the spool {spool.root} is empty)")
    return 0


def _queue_drain(args: argparse.Namespace, spool: Any) -> int:
    """Push this gateway's pending jobs, waiting out outages, until none is left."""
    from .spool import Worker
    from .transport import Transport, print_waits

    counts = {"committed": 0, "failed": 0, "waiting": 0}

    def report(event: str, job: Any, text: str) -> None:
        counts[event] = counts.get(event, 0) + 1
        if not (args.json or args.quiet):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"{stamp}  {event:9}  {job.name}  job {job.id}: {text}", flush=True)

    t = Transport(on_wait=None if args.json or args.quiet else print_waits())
    worker = Worker(spool, t, report)
    block = args.wait_for_lock or not args.detached
    pid = spool.worker_pid(t.url)
    if pid and not (args.detached or args.json or args.quiet):
        print(f"worker pid {pid} is pushing these jobs: waiting for it", file=sys.stderr)
    try:
        took = worker.drain(block=block, once=args.once)
    finally:
        t.close()
    left = len(spool.pending(t.url))
    r = {**counts, "pending": left, "gateway": t.url, "worker": "this" if took else "another"}
    if not args.detached:
        _print(
            args,
            r,
            f"committed {counts['committed']}, failed {counts['failed']}, pending {left}"
            + ("" if took else f" (worker pid {spool.worker_pid(t.url)} is at it)"),
        )
    return 1 if counts["failed"] else 0


def _queue_retry(args: argparse.Namespace, spool: Any) -> int:
    from .spool import spawn_worker

    urls = {j.id: j.url for j in spool.failed()}
    ids = spool.retry(args.ids)
    pids = {u: spool.worker_pid(u) or spawn_worker(spool, u) for u in {urls[i] for i in ids}}
    _print(
        args,
        {"retried": ids, "workers": pids},
        "\n".join(f"job {i} is pending again" for i in ids) or "(no failed jobs)",
    )
    return 0


def _queue_drop(args: argparse.Namespace, spool: Any) -> int:
    ids = spool.drop(args.ids)
    _print(
        args,
        {"dropped": ids},
        "\n".join(f"job {i} dropped" for i in ids) or "(no failed jobs)",
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.pull(
            args.ref, args.dest, include=args.include, exclude=args.exclude, delete=args.delete
        )
    checked = (
        f"verified {r['digest'][:16]}…"
        if r.get("digest_of", "content") == "content"
        else "pins checked; not hashed at registration"
    )
    _print(
        args,
        r,
        f"{r['name']}@{r['version']} → {r['path']}  ({_human_size(r['size'])}, {checked}; "
        f"{r['files_written']} written, {r['files_skipped']} unchanged"
        + (f", {r['files_deleted']} deleted)" if "files_deleted" in r else ")"),
    )
    return 0


def cmd_ref(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.ref(args.name, args.uri, hash=args.hash, index=args.index, tags=_tags(args.tag))
    what = "new version" if r.get("created") else "unchanged, latest version"
    digest = "content digest" if r["digest_of"] == "content" else "pin digest"
    _print(
        args,
        r,
        f"{r['name']}@{r['version']}  (reference, {what})\n  source {r['source']}\n"
        f"  {digest} {r['digest']}\n  {_human_size(r['size'])} in {r['files']} object(s), "
        f"{_human_size(r.get('bytes_read', 0))} read",
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 5 (integrity failure) when anything drifted, with the report on stdout."""
    with _client(args) as c:
        r = c.verify(args.ref)
    lines = [
        f"{r['name']}@{r['version']}  kind={r['kind']}  checked {r['checked']}, "
        f"drifted {r['drifted']}"
    ]
    for o in r["objects"]:
        if o["state"] != "ok":
            lines.append(f"  {o['state']:8} {o.get('path') or o.get('uri') or o.get('pack')}")
    lines.append("  ok" if r["ok"] else "  DRIFT: the version no longer matches its sources")
    _print(args, r, "\n".join(lines))
    return 0 if r["ok"] else 5


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def cmd_ls(args: argparse.Namespace) -> int:
    """One page, sorted; with ``--tag``, versions instead of artifacts. The last line
    is ``next: CURSOR`` when there is more (``--cursor CURSOR`` goes on from there)."""
    tags = _tags(args.tag)
    with _client(args) as c:
        if tags:
            page = c.find_versions(args.prefix or "", tags, args.cursor or "", args.limit)
            lines = [
                f"{v['name']}@{v['version']}  {_when(v['created_at'])}  "
                f"{_human_size(v['size'])}  "
                + " ".join(f"{k}={val}" for k, val in sorted(v["tags"].items()))
                for v in page["versions"]
            ]
            empty = "(no versions)"
        else:
            page = c.ls_page(args.prefix or "", args.cursor or "", args.limit)
            lines = [
                f"{a['name']}  latest={a['latest']}  versions={a['versions']}"
                for a in page["artifacts"]
            ]
            empty = "(no artifacts)"
    if page["next"] is not None:
        lines.append(f"next: {page['next']}")
    _print(args, page, "\n".join(lines) if lines else empty)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.show(args.ref)
    lines = [
        f"{v['name']}@{v['version']}  kind: {v['kind']}  layout: {v['layout']}",
        f"  digest  {v['digest']}"
        + ("  (of pins: not hashed)" if v["digest_of"] == "pins" else ""),
        f"  size    {_human_size(v['size'])} ({v['files']} file(s))",
    ]
    if v["kind"] == "reference":
        lines.append(f"  source  {v['source']}")
    if v["aliases"]:
        lines.append("  aliases " + ", ".join(v["aliases"]))
    lines += [f"  tag     {k}={val}" for k, val in sorted(v["tags"].items())]
    for f in v["file_list"][:50]:
        line = f"  file    {f['path']}  {_human_size(f['size'])}"
        if f.get("mode") is not None:
            line += f"  {stat.filemode(stat.S_IFREG | f['mode'])}"
        if "pin" in f:  # a reference object and what pins it
            pin = f["pin"]
            held = f"version {pin['version_id']}" if pin["version_id"] else f"etag {pin['etag']}"
            line += f"  {f['uri']}  pinned: {held or pin['last_modified']}"
            line += ", indexed" if f["indexed"] else (", hashed" if f["digest"] else "")
            if f["state"] == "drifted":
                line += "  DRIFTED"
        lines.append(line)
    if len(v["file_list"]) > 50:
        lines.append(f"  … {len(v['file_list']) - 50} more files")
    dirs = v.get("dirs") or []
    lines += [f"  dir     {d}/  (empty)" for d in dirs[:50]]
    if len(dirs) > 50:
        lines.append(f"  … {len(dirs) - 50} more empty directories")
    _print(args, v, "\n".join(lines))
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    """``alias set|rm|ls|history``. A compare-and-set that loses (``--expect``) exits 4
    with the gateway's message, which names where the alias points now."""
    with _client(args) as c:
        if args.alias_command == "set":
            r = c.set_alias(args.name, args.alias, args.version, args.expect)
            was = r["previous"] if r["previous"] is not None else "none"
            human = f"{r['name']}:{r['alias']} → {r['version']} (was {was})"
        elif args.alias_command == "rm":
            r = c.remove_alias(args.name, args.alias, args.expect)
            human = f"{r['name']}:{r['alias']} removed (was {r['previous']})"
        elif args.alias_command == "ls":
            r = {"name": args.name, "aliases": c.aliases(args.name)}
            human = "\n".join(
                f"{a['alias']}  → {a['version']}  since {_when(a['updated_at'])}"
                for a in r["aliases"]
            )
            human = human or "(no aliases)"
        else:
            r = {"name": args.name, "alias": args.alias}
            r["moves"] = c.alias_history(args.name, args.alias)
            human = "\n".join(_move_line(m) for m in r["moves"]) or "(never set)"
    _print(args, r, human)
    return 0


def _move_line(m: dict[str, Any]) -> str:
    before = "(none)" if m["previous"] is None else str(m["previous"])
    after = "(removed)" if m["version"] is None else str(m["version"])
    by = m["moved_by"] or "(no auth)"
    return f"{_when(m['moved_at'])}  {before} → {after}  by {by}"


def cmd_tag(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.tag(args.ref, _tags(args.tag))
    _print(args, r, f"{r['name']}@{r['version']} tags: {r['tags']}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    """``rm NAME@VERSION`` or ``rm NAME``: a refusal (aliases point there, or many
    versions without --yes) exits 4 and changes nothing."""
    with _client(args) as c:
        r = c.rm(args.ref, force=args.force, yes=args.yes)
    lines = []
    if r["removed"]:
        numbers = ", ".join(str(n) for n in r["removed"])
        lines.append(f"{r['name']}: removed version(s) {numbers}")
    if r["aliases"]:
        lines.append(f"  and alias(es) {', '.join(r['aliases'])} that pointed there")
    if r["already"]:
        lines.append(f"{r['name']}@{r['already'][0]} was removed already: nothing to do")
    if not lines:
        lines.append(f"{r['name']}: no versions left to remove")
    elif r["removed"]:
        lines.append("  the space comes back at the next garbage collection")
    _print(args, r, "\n".join(lines))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as c:
        s = c.stats()
    ratio = s["dedup_ratio"]
    _print(
        args,
        s,
        f"artifacts {s['artifacts']}  versions {s['versions']}\n"
        f"logical {_human_size(s['logical_bytes'])}  stored {_human_size(s['stored_bytes'])}"
        f"  dedup ratio {ratio if ratio is not None else '-'}\n"
        f"chunks {s['chunks']}  packs {s['packs']}",
    )
    return 0


def parse_duration(text: str, zero: bool = False) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds; positive (or 0, with ``zero``)."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a duration is like 30d, 12h, 90m or 45s: {text!r}"
        ) from None
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"a duration must be {'0 or more' if zero else 'positive'}: {text!r}"
        )
    return value


def _grace(text: str) -> float:
    return parse_duration(text, zero=True)


def cmd_gc(args: argparse.Namespace) -> int:
    """Garbage collection through the gateway (admin). Exit 1 when some store call
    failed (what it left is taken by the next run), else 0."""
    status = _Status() if not args.json and sys.stderr.isatty() else None
    with _client(args) as c:
        try:
            r = c.gc(args.grace, args.dry_run, args.delete_orphans, status)
        finally:
            if status is not None:
                status.clear()
    _print(args, r, "\n".join(gc_summary(r)))
    return 1 if r["errors"] else 0


class _Status:
    """One line on the terminal, rewritten as the gateway reports progress."""

    def __call__(self, event: dict[str, Any]) -> None:
        line = (
            f"gc: {event['phase']}: {event['files']} manifests read, "
            f"{event['objects']} store objects listed, {event['deleted']} deleted"
        )
        print(f"\r{line[:120]:<120}", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        print(f"\r{'':<120}\r", end="", file=sys.stderr, flush=True)


def gc_summary(r: dict[str, Any]) -> list[str]:
    """What ``chunkyard gc`` says when it is done, from its JSON summary."""
    would = "would delete" if r["dry_run"] else "deleted"
    lines = [
        ("gc (dry run: nothing changed)" if r["dry_run"] else "gc")
        + f"  grace {r['grace']:g} s  took {r['seconds']:.1f} s",
        f"  mark: {r['versions']} versions, {r['files']} files; {r['packs_scanned']} packs "
        f"in the store, {r['packs_live']} named by a version",
        f"  packs {would}: {r['packs_deleted']} ({_human_size(r['bytes_freed'])}"
        + (" to free)" if r["dry_run"] else " freed)"),
        f"  kept unreferenced (younger than the grace period, or an open session's): "
        f"{r['packs_kept']}",
        f"  sessions past their lifetime: {r['sessions_expired']} (multipart uploads "
        f"aborted {r['uploads_aborted']}, unverified copies {would} "
        f"{r['upload_objects_deleted']})",
        f"  store: {r['objects_listed']} objects under packs/ listed; multipart uploads no "
        f"catalog row knows {'to abort' if r['dry_run'] else 'aborted'}: "
        f"{r['orphan_uploads_aborted']}"
        + ("" if r["store_lists_uploads"] else " (this store cannot list them; it discards them)"),
    ]
    if r["orphan_objects"]:
        deleted = (
            f", {r['orphans_deleted']} deleted"
            if r["orphans_deleted"]
            else " (kept: --delete-orphans deletes them, never right after losing a catalog)"
        )
        lines.append(
            f"  objects no catalog row names: {r['orphan_objects']} "
            f"({_human_size(r['orphan_bytes'])}){deleted}"
        )
    if r["tombstones_removed"]:
        lines.append(f"  tombstones removed: {r['tombstones_removed']}")
    for e in r["errors"]:
        lines.append(f"  store error (the next run retries): {e}")
    return lines


def token_online(args: argparse.Namespace) -> Any:
    """``token create|ls|revoke`` through the gateway (an admin token in CHUNKYARD_TOKEN)."""
    with _client(args) as c:
        if args.token_command == "create":
            return c.create_token(args.scope, args.ttl, args.label)
        if args.token_command == "ls":
            return {"tokens": c.tokens()}
        return c.revoke_token(args.id)


def print_token_result(args: argparse.Namespace, r: dict[str, Any]) -> None:
    """A new token goes alone on the last line, so scripts can take ``tail -n 1``."""
    if args.json:
        _print(args, r, "")
    elif args.token_command == "create":
        expires = r["expires_at"]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires)) if expires else "never"
        print(f"token {r['id']}  scopes: {' '.join(r['scopes'])}  expires: {when}", file=sys.stderr)
        print("keep it now: it is shown once, and only its hash is kept", file=sys.stderr)
        print(r["token"])
    elif args.token_command == "ls":
        lines = []
        for tk in r["tokens"]:
            state = "revoked" if tk["revoked_at"] else "live"
            label = f"  ({tk['label']})" if tk["label"] else ""
            lines.append(f"{tk['id']}  {state:7}  {' '.join(tk['scopes'])}{label}")
        print("\n".join(lines) if lines else "(no tokens)")
    else:
        print(f"token {r['id']} revoked")


def _selection(s: argparse.ArgumentParser) -> None:
    """``--include``/``--exclude``: globs on a tree's relative paths, exclude wins."""
    for flag, what in (("--include", "only files matching"), ("--exclude", "not files matching")):
        s.add_argument(
            flag,
            action="append",
            metavar="GLOB",
            help=f"{what} GLOB (relative POSIX path or a directory of it; repeatable)",
        )


def add_commands(
    cmd: Callable[..., argparse.ArgumentParser], sub: argparse._SubParsersAction
) -> None:
    """Add the client's commands to the ``chunkyard`` program (``cmd(name, fn, help)``
    makes a subcommand; ``sub`` takes command groups such as ``alias``)."""
    s = cmd("push", cmd_push, "push a file or directory as a new version")
    s.add_argument("path")
    s.add_argument("name")
    s.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="tag the version, repeatable; any key, e.g. author=alice, branch=main, "
        "purpose=ab-test (then: chunkyard ls PREFIX --tag branch=main)",
    )
    s.add_argument(
        "--background",
        action="store_true",
        help="snapshot into the spool and return at once; a detached worker pushes it "
        "(chunkyard queue shows it)",
    )
    _selection(s)
    s = cmd("pull", cmd_pull, "pull NAME[@VERSION|:ALIAS] to DEST")
    s.add_argument("ref")
    s.add_argument("dest")
    _selection(s)
    s.add_argument(
        "--delete",
        action="store_true",
        help="remove files under DEST the version lacks (only selected ones), as rsync",
    )
    s = cmd("ref", cmd_ref, "register an external URI as a version (no copy)")
    s.add_argument("name")
    s.add_argument("uri", help="s3://bucket/key, s3://bucket/prefix/, gs://…, az://…, https://…")
    s.add_argument("--hash", action="store_true", help="record each object's BLAKE3 digest")
    s.add_argument(
        "--index",
        action="store_true",
        help="also record chunk ids, so pushes of the same bytes dedup against the source",
    )
    s.add_argument("--tag", action="append", metavar="KEY=VALUE")
    s = cmd("verify", cmd_verify, "check NAME[@VERSION|:ALIAS] against its sources")
    s.add_argument("ref")
    s = cmd("ls", cmd_ls, "list artifacts by name prefix, or with --tag the versions")
    s.add_argument("prefix", nargs="?")
    s.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="list the versions that carry this tag; repeatable: all must match",
    )
    s.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    s.add_argument("--cursor", help="go on from a page's 'next:'")
    s = cmd("show", cmd_show, "show NAME[@VERSION|:ALIAS]")
    s.add_argument("ref")
    s = cmd("tag", cmd_tag, "add write-once tags to a version")
    s.add_argument("ref")
    s.add_argument("--tag", action="append", metavar="KEY=VALUE", required=True)
    a = sub.add_parser("alias", help="manage aliases")
    asub = a.add_subparsers(dest="alias_command", required=True)

    def alias_cmd(name: str, help: str, with_alias: bool = True) -> argparse.ArgumentParser:
        sp = asub.add_parser(name, help=help)
        sp.set_defaults(fn=cmd_alias)
        sp.add_argument("name")
        if with_alias:
            sp.add_argument("alias")
        return sp

    s = alias_cmd("set", "point NAME:ALIAS at VERSION")
    s.add_argument("version", type=int)
    s.add_argument(
        "--expect",
        type=int,
        help="only if the alias points at this version now (0: only if it does not exist)",
    )
    s = alias_cmd("rm", "remove NAME:ALIAS (its history stays)")
    s.add_argument("--expect", type=int, help="only if the alias points at this version now")
    alias_cmd("ls", "list NAME's aliases and where they point", with_alias=False)
    alias_cmd("history", "every move of NAME:ALIAS: when, from and to which version, by whom")
    cmd("stats", cmd_stats, "storage statistics")
    s = cmd("rm", cmd_rm, "remove NAME@VERSION, or every version of NAME")
    s.add_argument("ref", metavar="NAME[@VERSION]")
    s.add_argument(
        "--force",
        action="store_true",
        help="also remove the aliases that point at what is removed (else: refused)",
    )
    s.add_argument(
        "--yes",
        action="store_true",
        help="confirm removing every version of NAME when it has more than one",
    )
    s = cmd(
        "gc",
        cmd_gc,
        "garbage collection (admin): delete packs no version names, abort stale uploads",
    )
    s.add_argument(
        "--grace",
        type=_grace,
        default=24 * 3600.0,
        metavar="DURATION",
        help="keep packs verified less than this long ago, named or not (default 24h; 0s in tests)",
    )
    s.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    s.add_argument(
        "--delete-orphans",
        action="store_true",
        help="also delete objects under packs/ that no catalog row names (never right "
        "after losing a catalog: rebuild it first)",
    )
    _queue_commands(sub)


def _queue_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "queue",
        help="pushes spooled by push --background / Client.push(wait=False): "
        "list (default), drain, retry, drop",
    )
    q.set_defaults(fn=cmd_queue)
    qsub = q.add_subparsers(dest="queue_command")

    def queue_cmd(name: str, help: str) -> argparse.ArgumentParser:
        return qsub.add_parser(name, help=help)

    queue_cmd("ls", "pending and failed jobs: name, files, size, age, attempts, last error")
    s = queue_cmd("drain", "push the pending jobs of CHUNKYARD_URL's gateway until none is left")
    s.add_argument("--once", action="store_true", help="try each due job once, then stop")
    s.add_argument("--detached", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--wait-for-lock", action="store_true", help=argparse.SUPPRESS)
    for name, help in (
        ("retry", "put failed jobs back in line (a worker is started)"),
        ("drop", "delete failed jobs and their snapshots"),
    ):
        s = queue_cmd(name, help)
        s.add_argument("ids", nargs="*", metavar="JOB")
        s.add_argument("--all", action="store_true", help="every failed job")
