"""How long a large JSON commit body stalls other requests (a measurement, not a test).

Starts a gateway of its own (a temporary data dir, a free 127.0.0.1 port), posts commit
bodies of ``--mib`` MiB (many empty files) while a thread times ``GET /v1/health`` in a
loop, and prints the worst and 99th-percentile health latency seen meanwhile.

    PYTHONPATH=src python -m benchmarks.json_stall                 # decode, then a commit
    PYTHONPATH=src python -m benchmarks.json_stall --mib 48 --rounds 3 --only decode

``decode``: a body refused at its very last value (a bad digest), so all of it is read
and decoded first: the cost of reading and decoding alone. ``commit``: a valid tree
commit of that many empty files: decoding, the commit's own checks and its catalog write.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import msgspec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(mib: int, kind: str) -> tuple[bytes, int]:
    one = {"path": "", "size": 0, "b3sum": "0" * 64, "terms": []}
    n = mib * 1024 * 1024 // len(msgspec.json.encode({**one, "path": "d00/f0000000"}))
    files = [{**one, "path": f"d{i % 100:02d}/f{i:07d}"} for i in range(n)]
    if kind == "decode":  # the very last value is refused: everything before is decoded
        files[-1]["b3sum"] = "not hex"
    return msgspec.json.encode({"layout": "tree", "files": files}), n


def watch(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=120) as c:
        while not stop.is_set():
            t = time.perf_counter()
            c.get("/v1/health").raise_for_status()
            out.append(time.perf_counter() - t)
            time.sleep(0.005)


def measure(c: httpx.Client, kind: str, raw: bytes, n: int, name: str) -> str:
    sid = c.post("/v1/sessions", json={"name": name}).json()["session"]
    lat: list[float] = []
    stop = threading.Event()
    t = threading.Thread(target=watch, args=(str(c.base_url), stop, lat))
    t.start()
    time.sleep(0.3)
    idle = len(lat)
    t0 = time.perf_counter()
    resp = c.post(
        f"/v1/sessions/{sid}/commit", content=raw, headers={"content-type": "application/json"}
    )
    took = time.perf_counter() - t0
    time.sleep(0.3)
    stop.set()
    t.join()
    during = lat[idle:] or [0.0]
    p99 = statistics.quantiles(during, n=100, method="inclusive")[98] if len(during) > 2 else 0
    return (
        f"{kind:6} {len(raw) / 2**20:5.1f} MiB {n} files: HTTP {resp.status_code} in "
        f"{took:.2f} s; health meanwhile: worst {max(during) * 1000:.0f} ms, p99 "
        f"{p99 * 1000:.0f} ms, {len(during)} requests (idle worst {max(lat[:idle]) * 1000:.1f} ms)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2, help="of the decode measurement")
    ap.add_argument("--only", choices=["decode", "commit"], default=None)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [sys.executable, "-m", "chunkyard.cli", "serve", "--port", str(port), "--data", data],
            env={**os.environ, "CHUNKYARD_DATA": data},
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=url, timeout=300) as c:
                for _ in range(200):
                    try:
                        c.get("/v1/health")
                        break
                    except httpx.TransportError:
                        time.sleep(0.05)
                for kind in [args.only] if args.only else ["decode", "commit"]:
                    raw, n = body(args.mib, kind)
                    for r in range(args.rounds if kind == "decode" else 1):
                        print(measure(c, kind, raw, n, f"stall/{kind}{r}"), flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
