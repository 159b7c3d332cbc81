"""Run benchmark workloads: ``python -m benchmarks.run [--quick] [--only core,...]``.

A workload is a module in :data:`WORKLOADS` with ``run(ctx) -> Report`` and
``SERVICES`` (names for ``scripts/services start``, started here before it runs and
stopped at the end). Each report is printed as a table and written to
``benchmarks/results/<workload>.json``. Missed goals are reported, never asserted; the
exit status is non-zero only when a step could not run at all.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import psutil
from rich.console import Console

from benchmarks.common import (
    ROOT,
    Context,
    GiB,
    MiB,
    Report,
    default_workdir,
    human_size,
    machine_info,
    remove_generated,
    stop_all_gateways,
)

#: name -> module; add a workload by adding a module with run() and SERVICES
WORKLOADS: dict[str, str] = {
    "core": "benchmarks.core",
    "ingest": "benchmarks.ingest",
    "direct": "benchmarks.direct",
    "series": "benchmarks.series",
    "smallfiles": "benchmarks.smallfiles",
    "refs": "benchmarks.refs",
    "load": "benchmarks.load",
    "team": "benchmarks.team",
    "faults": "benchmarks.faults",
    "gc": "benchmarks.gc",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench",
        description="chunkyard benchmarks: side-by-side figures, a table on stdout and "
        "JSON in benchmarks/results/<workload>.json",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="256 MiB files instead of 1 GiB; a size sweep of 64 and 256 MiB instead of "
        "256 MiB, 1 GiB and 4 GiB; a 128 MiB model series, 2,000 small files and 6 MiB "
        "shards, 1,000 references, 5 s load phases, 6 s team push windows with 32 pushers and "
        "catalogs of 10k and 100k versions, 96 MiB through the fault proxies (about 6 "
        "minutes here, 2 of them team's)",
    )
    p.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"workloads to run (default: all of {', '.join(WORKLOADS)})",
    )
    p.add_argument(
        "--size-gib",
        type=float,
        metavar="N",
        help="main test file size in GiB (size sweep: N/4, N and 4N GiB)",
    )
    p.add_argument(
        "--repeats", type=int, default=3, help="best-of-N for repeatable figures (default 3)"
    )
    p.add_argument(
        "--workdir",
        type=os.path.abspath,
        default=str(default_workdir()),
        help="where test files are generated and kept for reuse (default $TMPDIR/chunkyard-bench)",
    )
    p.add_argument(
        "--clean", action="store_true", help="delete the generated test files at the end"
    )
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(WORKLOADS)}")
    args.names = names
    if args.size_gib is not None and args.size_gib <= 0:
        p.error("--size-gib must be positive")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    return args


def _sizes(args: argparse.Namespace) -> tuple[int, tuple[int, ...]]:
    """The main file size and the size sweep (workloads 1, 2 and 5 of issue 5)."""
    if args.size_gib is not None:
        size = int(args.size_gib * GiB) // MiB * MiB or MiB
        return size, (max(MiB, size // 4 // MiB * MiB), size, 4 * size)
    if args.quick:
        return 256 * MiB, (64 * MiB, 256 * MiB)
    return GiB, (256 * MiB, GiB, 4 * GiB)


def _remove_stale_rundirs(workdir: Path) -> None:
    """Scratch dirs of earlier runs that were killed (SIGKILL leaves no chance to clean)."""
    for d in workdir.glob("run-*"):
        pid = d.name.removeprefix("run-")
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM / SIGHUP unwind like Ctrl-C, so every finally (gateways, services) runs
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _services(action: str, names: list[str]) -> None:
    if names:
        subprocess.run([str(ROOT / "scripts" / "services"), action, *names], check=True)
    if action == "start" and names:  # the servers' settings, as `eval $(... env)` would
        out = subprocess.run(
            [str(ROOT / "scripts" / "services"), "env"], check=True, capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                os.environ[key] = shlex.split(value)[0] if value else ""


def _running_services() -> set[str]:
    out = subprocess.run(
        [str(ROOT / "scripts" / "services"), "status"], capture_output=True, text=True
    ).stdout
    return {line.split(":")[0] for line in out.splitlines() if ": running" in line}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    # Ctrl-C, and `kill -INT` too when started in the background (where SIGINT is ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # a table wider than 80 columns when written to a file or a pipe
    console = Console(width=None if sys.stdout.isatty() else 160, log_path=False)
    size, sizes = _sizes(args)
    workdir = Path(args.workdir)
    ctx = Context(
        workdir=workdir,
        rundir=workdir / f"run-{os.getpid()}",
        size=size,
        sizes=sizes,
        repeats=args.repeats,
        console=console,
        quick=args.quick,
    )
    _remove_stale_rundirs(workdir)
    ctx.rundir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    console.print(
        f"[bold]chunkyard benchmarks[/] {', '.join(args.names)}: files {human_size(size)}, "
        f"sweep {', '.join(human_size(s) for s in sizes)}, best of "
        f"{args.repeats}; {machine['cpu']}, {machine['cores']} cores, "
        f"{human_size(machine['ram_bytes'])} RAM, load {machine['loadavg'][0]:.2f}; "
        f"commit {machine['git_commit'][:10]}{' (dirty)' if machine['git_dirty'] else ''}"
    )
    started: list[str] = []
    reports: list[Report] = []
    status = 0
    t_all = time.perf_counter()
    try:
        for name in args.names:
            module = importlib.import_module(WORKLOADS[name])
            need = [s for s in getattr(module, "SERVICES", ()) if s not in started]
            running = _running_services()
            _services("start", need)
            started += [s for s in need if s not in running]  # leave others' servers up
            t = time.perf_counter()
            try:
                report: Report = module.run(ctx)
            except Exception as exc:  # a workload that could not even start
                report = Report(name, errors=[f"{type(exc).__name__}: {exc}"])
                console.print_exception()
            report.wall_s = time.perf_counter() - t
            reports.append(report)
            path = report.write({**machine, "loadavg_end": os.getloadavg()})
            report.print(console)
            console.print(f"written {path.relative_to(ROOT)}")
    except KeyboardInterrupt as exc:
        console.print(f"[red]interrupted[/] {exc}")
        status = 130
    finally:
        stop_all_gateways()
        try:
            _services("stop", started)
        finally:
            shutil.rmtree(ctx.rundir, ignore_errors=True)
            if args.clean:
                remove_generated(ctx.workdir)
    met = sum(r.goals()[0] for r in reports)
    missed = sum(r.goals()[1] for r in reports)
    errors = sum(len(r.errors) for r in reports)
    console.print(
        f"[bold]done[/] in {time.perf_counter() - t_all:.0f} s: {met} goals met, "
        f"{missed} missed, {errors} error(s)"
    )
    try:  # REPORT.md and the plots, from every results JSON there is (this run's and older)
        from benchmarks.report import write_report

        console.print(f"written {write_report().relative_to(ROOT)} (and its plots)")
    except Exception:
        console.print_exception()
    if status:
        return status
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
