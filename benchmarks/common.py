"""Shared benchmark helpers: machine info, test files, processes, figures and reports.

Benchmarks compare side by side within one run (the 2-core development machine is
shared and noisy, so absolute times move between runs; ratios much less). A workload
fills a :class:`Report` with figures, each with its goal and the baselines measured
beside it, and with the steps it ran as subprocesses (wall, CPU, peak RSS of the client
and of the gateway). Nothing here asserts: a missed goal is a reported ``FAIL``.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
RESULTS = ROOT / "benchmarks" / "results"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: bump when a generator changes its output, so cached files are not reused wrongly
GENERATOR_VERSION = 2
#: generators work in pieces of this size, so generating a 4 GiB file stays small
#: (about 5 × PIECE of numpy temporaries)
PIECE = 16 * MiB

PACKAGES = ("chunkyard", "blake3", "zstandard", "pyfastcdc", "hf_xet", "boto3", "numpy")


class BenchError(RuntimeError):
    """A benchmark step could not run (a failed command, a gateway that did not start)."""


# -- machine -----------------------------------------------------------------------


def _cpu_model() -> str:
    """The CPU's name, family and model, and its widest vector unit. The VM names only
    "AMD EPYC", and sessions under that name have measured zstd level 1 on bf16 at 0.89
    and at 0.50 GB/s on one thread: figures from different runs compare only where
    this line (and the calibration figures of ``core``) match."""
    with contextlib.suppress(OSError):
        first = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
        info = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in first.splitlines())
        )
        flags = set(info.get("flags", "").split())
        vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return (
            f"{info.get('model name', '?')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}, {vector})"
        )
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (and with which code)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git("rev-parse", "HEAD"),
        # the other engineer works in the same tree: say whether src/ had local changes
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "src")),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "loadavg": os.getloadavg(),
    }


# -- sizes and rates ---------------------------------------------------------------


def human_size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.2f} {unit}"
    return f"{n:.0f} B"


def gbps(size: int, seconds: float) -> float:
    """Decimal GB/s, as the design brief quotes rates."""
    return size / 1e9 / seconds if seconds > 0 else float("inf")


def mbps(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else float("inf")


# -- test files --------------------------------------------------------------------


def default_workdir() -> Path:
    return Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "chunkyard-bench"


def _generate(path: Path, size: int, piece: Callable[[int], bytes]) -> Path:
    """Write ``size`` bytes made by ``piece(n)`` to ``path`` unless it already exists.
    Written under a temporary name and renamed, so an existing file is always whole."""
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            left = size
            while left:
                data = piece(min(PIECE, left))
                f.write(data)
                left -= len(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def bf16_file(workdir: Path, size: int, seed: int = 1) -> Path:
    """bf16-like weights: normal(0, 0.02) float32 values, top 16 bits kept (what a
    float32 → bfloat16 truncation keeps), little-endian uint16. Compresses like real
    bf16 checkpoints (the sign/exponent byte is skewed, the mantissa byte is noise)."""
    if size % 2:
        raise ValueError("a bf16 file has an even size")
    rng = np.random.default_rng(seed)

    def piece(n: int) -> bytes:
        f32 = rng.standard_normal(n // 2, dtype=np.float32)
        f32 *= np.float32(0.02)
        return (f32.view(np.uint32) >> 16).astype("<u2").tobytes()

    name = f"bf16-{size}-s{seed}-g{GENERATOR_VERSION}.bin"
    return _generate(workdir / name, size, piece)


def random_file(workdir: Path, size: int, seed: int = 2) -> Path:
    """Incompressible bytes."""
    rng = np.random.default_rng(seed)
    name = f"random-{size}-s{seed}-g{GENERATOR_VERSION}.bin"
    return _generate(workdir / name, size, rng.bytes)


def float32_file(workdir: Path, size: int, seed: int = 4) -> Path:
    """float32 weights: normal(0, 0.02), little-endian (a full-precision checkpoint or
    optimizer state: the exponent byte is skewed, three mantissa bytes are noise)."""
    if size % 4:
        raise ValueError("a float32 file has a size divisible by 4")
    rng = np.random.default_rng(seed)

    def piece(n: int) -> bytes:
        f32 = rng.standard_normal(n // 4, dtype=np.float32)
        f32 *= np.float32(0.02)
        return f32.astype("<f4").tobytes()

    return _generate(workdir / f"float32-{size}-s{seed}-g{GENERATOR_VERSION}.bin", size, piece)


def text_file(workdir: Path, size: int, seed: int = 5) -> Path:
    """Text: words of 2-10 letters drawn with a Zipf-like frequency from a 20,000-word
    vocabulary, a newline every ~12 words (compresses about 2x with zstd level 1, like
    prose or JSON lines)."""
    rng = np.random.default_rng(seed)
    vocab = [
        bytes(rng.integers(97, 123, int(k)).astype(np.uint8)) for k in rng.integers(2, 11, 20_000)
    ]
    words = np.array(vocab, dtype=object)
    tail = b""

    def piece(n: int) -> bytes:
        nonlocal tail
        out = [tail]
        have = len(tail)
        while have < n:
            idx = np.minimum(rng.zipf(1.2, 65_536), len(words)) - 1
            seps = np.where(rng.random(len(idx)) < 1 / 12, b"\n", b" ")
            chunk = b"".join(
                (w + s) for w, s in zip(words[idx].tolist(), seps.tolist(), strict=True)
            )
            out.append(chunk)
            have += len(chunk)
        data = b"".join(out)
        tail = data[n:]
        return data[:n]

    return _generate(workdir / f"text-{size}-s{seed}-g{GENERATOR_VERSION}.bin", size, piece)


def changed_copy(src: Path, fraction: float = 0.01, places: int = 10, seed: int = 3) -> Path:
    """A copy of ``src`` with ``fraction`` of its bytes overwritten with random bytes, in
    ``places`` runs of equal length scattered over the file (one run in each of
    ``places`` equal slices, at a seeded random offset within the slice)."""
    size = src.stat().st_size
    dest = src.with_name(f"{src.stem}.changed-{fraction:g}-{places}-s{seed}.bin")
    if dest.exists() and dest.stat().st_size == size:
        return dest
    run = max(1, int(size * fraction) // places)
    slice_len = size // places
    if run > slice_len:
        raise ValueError("too many changed bytes for the file")
    rng = np.random.default_rng(seed)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.part")
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "r+b") as f:
            for i in range(places):
                offset = i * slice_len + int(rng.integers(0, slice_len - run + 1))
                f.seek(offset)
                f.write(rng.bytes(run))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def remove_generated(workdir: Path) -> None:
    """Delete the test files this module generated in ``workdir`` (and nothing else)."""
    for pattern in ("bf16-*.bin", "random-*.bin", "float32-*.bin", "text-*.bin", "*.part"):
        for f in workdir.glob(pattern):
            f.unlink(missing_ok=True)
    # the many-file sets of benchmarks.smallfiles: directories and their markers
    for pattern in ("smallfiles-*-g*", "shards-*-g*"):
        for d in workdir.glob(pattern):
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()  # only if nothing else is left in it


def warm(path: Path, block: int = 16 * MiB) -> float:
    """Read ``path`` once so that what follows reads from the page cache; seconds."""
    buf = bytearray(block)
    view = memoryview(buf)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(view):
            pass
    return time.perf_counter() - t


def settle() -> None:
    """Write dirty pages out before a timed step, so it does not pay for the writeback
    of what the previous step wrote (the pulls and copies write GiBs)."""
    os.sync()


def delete_s3_prefix(bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix`` in ``bucket`` (the test server of
    ``scripts/services``, from the environment); the number deleted. For the objects a
    workload wrote, so that runs do not pile up in a shared test bucket."""
    import boto3

    if not prefix or not prefix.endswith("/"):
        raise ValueError("a prefix ending in '/' is required")
    s3 = boto3.client("s3")
    deleted = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            deleted += len(keys)
    return deleted


def delete_store_prefix(url: str) -> int:
    """Delete every object under a store URL (``s3://``, ``az://``, ``gs://`` with the
    test servers' settings from the environment) through chunkyard's own store layer;
    the number deleted. For what a workload wrote on the emulators."""
    import asyncio

    from chunkyard.stores import open_store

    async def run() -> int:
        store = open_store(url)
        try:
            keys = [info.key async for info in store.list("")]
            for key in keys:
                await store.delete(key)
            return len(keys)
        finally:
            await store.close()

    return asyncio.run(run())


# -- processes ---------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the benchmark dies (even by SIGKILL),
    so no gateway outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any CHUNKYARD_* setting of the caller's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    env.update(extra)
    return env


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, all threads (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_bytes(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmHWM, VmRSS, …) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * KiB
    raise KeyError(key)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0), so a peak can be read per step."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class Measured:
    """One subprocess run: wall seconds, CPU seconds (user + system, its reaped children
    included) and peak RSS (the process tree's VmHWM, sampled until it exits)."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self) -> Measured:
        if self.returncode != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-15:])
            raise BenchError(f"{' '.join(self.argv)} exited {self.returncode}:\n{tail}")
        return self


def _tree_peak_rss(p: psutil.Process) -> int:
    """VmHWM of ``p`` plus that of each of its children. Read from /proc because the
    kernel's ru_maxrss of a child also counts the parent's memory from before exec (the
    forked copy of this benchmark process, hundreds of MiB)."""
    pids = [p.pid] + [c.pid for c in p.children(recursive=True)]
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, KeyError):
            total += proc_status_bytes(pid, "VmHWM")
    return total


def run_measured(
    argv: list[str], env: dict[str, str] | None = None, interval: float = 0.02
) -> Measured:
    """Run ``argv`` to completion while sampling its RSS (with children) every
    ``interval`` seconds. The child is killed if this is interrupted."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            try:
                p = psutil.Process(proc.pid)
                while not stop.is_set():
                    peak = max(peak, _tree_peak_rss(p))
                    stop.wait(interval)
            except psutil.Error:
                return

        sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop.set()
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            argv=[str(a) for a in argv],
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss=peak,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


_live_gateways: set[Gateway] = set()


class Gateway:
    """``chunkyard serve`` as a subprocess on 127.0.0.1 and a free port, with its data in
    ``data_dir``. Use it as a context manager; :func:`stop_all_gateways` is the backstop
    for interrupts, and the gateway also gets SIGTERM if this process dies."""

    def __init__(
        self, data_dir: Path, log: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.env = env or {}
        self.log_path = log or data_dir.with_suffix(".log")
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "gateway not started"
        return self.proc.pid

    def client_env(self) -> dict[str, str]:
        return clean_env(CHUNKYARD_URL=self.url)

    def start(self, timeout: float = 60.0) -> Gateway:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [str(BIN / "chunkyard"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--data", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_env(**self.env),
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C reaches us; we stop it in order
                preexec_fn=_die_with_parent,
            )
        _live_gateways.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise BenchError(f"gateway exited at startup:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.url + "/v1/health", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"gateway did not answer within {timeout:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _live_gateways.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- what the gateway process used ------------------------------------------
    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def peak_rss(self) -> int:
        return proc_status_bytes(self.pid, "VmHWM")

    def rss(self) -> int:
        return proc_status_bytes(self.pid, "VmRSS")

    def reset_peak(self) -> bool:
        return reset_peak_rss(self.pid)


def stop_all_gateways() -> None:
    for gw in list(_live_gateways):
        with contextlib.suppress(Exception):
            gw.stop()


@dataclass
class CpuSnapshot:
    t: float
    busy: float  # CPU seconds the whole machine spent busy (all cores)
    steal: float  # CPU seconds the hypervisor gave to other guests
    own: float  # CPU seconds of this process, its reaped children and live gateways


def cpu_snapshot() -> CpuSnapshot:
    c = psutil.cpu_times()
    busy = c.user + c.nice + c.system + c.irq + c.softirq
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    for gw in list(_live_gateways):
        with contextlib.suppress(Exception):
            own += gw.cpu_seconds()
    return CpuSnapshot(time.perf_counter(), busy, getattr(c, "steal", 0.0), own)


def others_load(a: CpuSnapshot, b: CpuSnapshot) -> dict[str, float]:
    """How busy the machine was with work that is not ours between two snapshots, in
    cores: the noise indicator of a section (the machine is shared)."""
    wall = max(b.t - a.t, 1e-9)
    return {
        "wall_s": round(wall, 2),
        "ours_cores": round((b.own - a.own) / wall, 2),
        "others_cores": round(max(0.0, (b.busy - a.busy) - (b.own - a.own)) / wall, 2),
        "steal_cores": round((b.steal - a.steal) / wall, 2),
    }


# -- figures and reports ------------------------------------------------------------


@dataclass
class Goal:
    op: str  # ">=" or "<="
    value: float

    def met(self, v: float) -> bool:
        return v >= self.value if self.op == ">=" else v <= self.value

    def text(self, unit: str) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {fmt(self.value, unit)}"


def at_least(v: float) -> Goal:
    return Goal(">=", v)


def at_most(v: float) -> Goal:
    return Goal("<=", v)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "—"
    if unit == "B":
        return human_size(v) if v else "0 B"
    if unit == "×":
        return f"{v:.2f}×"
    if unit == "%":
        return f"{v:.2f} %"
    # enough digits that a value just under its goal does not print as the goal
    digits = 0 if abs(v) >= 1000 else 1 if abs(v) >= 100 else 2 if abs(v) >= 1 else 3
    return f"{v:.{digits}f} {unit}"


@dataclass
class Figure:
    key: str
    label: str
    value: float | None
    unit: str
    goal: Goal | None = None
    baseline_of: str | None = None  # the key of the figure this one stands beside
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        if self.goal is None or self.value is None:
            return None
        return self.goal.met(self.value)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["goal"] = asdict(self.goal) if self.goal else None
        out["passed"] = self.passed
        return out


@dataclass
class Step:
    """One subprocess step (a push, a pull, a copy) with what it cost on both sides."""

    name: str
    size: int
    wall_s: float
    client_cpu_s: float
    client_peak_rss: int
    gateway_cpu_s: float | None = None
    gateway_peak_rss: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mbps(self) -> float:
        return mbps(self.size, self.wall_s)


@dataclass
class Report:
    workload: str
    params: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    #: per section: cores busy with our work and with others' (noise), wall seconds
    load: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(
        self,
        key: str,
        label: str,
        value: float | None,
        unit: str,
        goal: Goal | None = None,
        note: str = "",
        samples: list[float] | None = None,
        beside: str | None = None,
    ) -> Figure:
        fig = Figure(key, label, value, unit, goal, beside, note, list(samples or []))
        self.figures.append(fig)
        return fig

    def get(self, key: str) -> float | None:
        for f in self.figures:
            if f.key == key:
                return f.value
        return None

    @contextlib.contextmanager
    def section(self, name: str, console: Console) -> Iterator[None]:
        """Run one part of a workload; an error is recorded and the next part runs.
        Interrupts are not caught."""
        console.log(f"[bold]{self.workload}[/]: {name}")
        start = cpu_snapshot()
        try:
            yield
        except Exception as exc:
            tb = traceback.format_exc()
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            console.print(f"[red]error in {name}:[/]\n{escape(tb)}", highlight=False)
        finally:
            self.load[name] = others_load(start, cpu_snapshot())

    def goals(self) -> tuple[int, int]:
        """(met, missed)"""
        results = [f.passed for f in self.figures if f.passed is not None]
        return sum(1 for r in results if r), sum(1 for r in results if not r)

    def to_json(self, machine: dict[str, Any]) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "wall_seconds": round(self.wall_s, 2),
            "params": self.params,
            "machine": machine,
            "figures": [f.to_json() for f in self.figures],
            "steps": [
                {**asdict(s), "mb_per_s": round(s.mbps, 1) if s.wall_s else None}
                for s in self.steps
            ],
            "errors": self.errors,
            "load": self.load,
        }

    def write(self, machine: dict[str, Any], directory: Path = RESULTS) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.workload}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(machine), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def print(self, console: Console) -> None:
        table = Table(title=f"{self.workload}: figures", title_justify="left")
        for col, justify in (
            ("figure", "left"),
            ("value", "right"),
            ("goal", "right"),
            ("result", "center"),
            ("note", "left"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for f in self.figures:
            result = {True: "[green]pass[/]", False: "[red bold]FAIL[/]", None: ""}[f.passed]
            label = f"  ↳ {f.label}" if f.baseline_of else f.label
            style = "dim" if f.baseline_of else None
            goal = f.goal.text(f.unit) if f.goal else ""
            table.add_row(label, fmt(f.value, f.unit), goal, result, f.note, style=style)
        console.print(table)
        if self.steps:
            steps = Table(title=f"{self.workload}: steps (subprocesses)", title_justify="left")
            for col in (
                "step",
                "size",
                "wall s",
                "MB/s",
                "client CPU s",
                "client peak",
                "gateway CPU s",
                "gateway peak",
            ):
                steps.add_column(col, justify="left" if col == "step" else "right")
            for s in self.steps:
                steps.add_row(
                    s.name,
                    human_size(s.size),
                    f"{s.wall_s:.2f}",
                    f"{s.mbps:.0f}",
                    f"{s.client_cpu_s:.2f}",
                    human_size(s.client_peak_rss),
                    "" if s.gateway_cpu_s is None else f"{s.gateway_cpu_s:.2f}",
                    "" if s.gateway_peak_rss is None else human_size(s.gateway_peak_rss),
                )
            console.print(steps)
        if self.load:
            console.print(
                "others' load (cores busy with work not ours, the noise; steal in brackets): "
                + "; ".join(
                    f"{name.split(' ', 1)[0]} {v['others_cores']:.2f} ({v['steal_cores']:.2f})"
                    for name, v in self.load.items()
                ),
                highlight=False,
            )
        met, missed = self.goals()
        line = f"{self.workload}: {met} goals met, {missed} missed, wall {self.wall_s:.0f} s"
        console.print(line + (f", [red]{len(self.errors)} error(s)[/]" if self.errors else ""))
        for e in self.errors:  # the full traceback was printed where it happened
            lines = e.strip().splitlines()
            short = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1].strip()}"
            console.print(f"  [red]error:[/] {escape(short)}", highlight=False)


@dataclass
class Context:
    """What a workload gets from the runner."""

    workdir: Path  # generated test files, kept for reuse across runs
    rundir: Path  # scratch for this run (gateway data, pulled files), removed at the end
    size: int  # the main test file size (1 GiB; 256 MiB with --quick)
    sizes: tuple[int, ...]  # the size sweep, small to large (256 MiB, 1 GiB, 4 GiB)
    repeats: int  # best-of-N for the figures that can be repeated
    console: Console
    quick: bool = False


def best(samples: list[float]) -> tuple[float, str]:
    """The best (smallest) time and a note on how far apart the samples were."""
    lo, hi = min(samples), max(samples)
    if len(samples) == 1:
        return lo, "1 sample"
    return lo, f"best of {len(samples)}, spread {100 * (hi - lo) / lo:.0f} %"
