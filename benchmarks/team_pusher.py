"""One pusher process of the ``team`` workload (``benchmarks/team.py``).

``python -m benchmarks.team_pusher SPEC`` (JSON: ``url``, ``workdir``, ``names``,
``sizes`` [smallest, largest] in bytes, ``seed``). It imports only chunkyard, pushes
once to warm up, prints ``ready``, then waits for a line ``GO <start> <end>`` (wall-clock
times) on stdin, pushes fresh content in a loop from ``start`` until ``end`` (the
names in turn, a size drawn log-uniformly between the bounds), and prints one JSON line:
pushes finished inside the window, latencies of every push and of its commit request,
failures, its CPU seconds inside the window and the versions it got per name. A
request answered 5xx is not retried (the push fails); one whose connection dropped
(a pooled connection the gateway closed as idle, say) is, as a client's retry would,
and counted apart.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path


def main() -> int:
    spec = json.loads(sys.argv[1])
    import chunkyard
    from chunkyard.client.transport import RetryPolicy

    rng = random.Random(spec["seed"])
    lo, hi = spec["sizes"]
    workdir = Path(spec["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "f.bin"
    names: list[str] = spec["names"]
    commit_s: list[float] = []
    versions: dict[str, list[int]] = {}
    out = {"ok": 0, "late": 0, "failed": 0, "errors": [], "push_s": [], "commit_s": commit_s}
    counter = 0

    out["reconnects"] = 0

    def on_wait(wait) -> None:  # type: ignore[no-untyped-def]
        if "HTTP" in wait.reason:  # an answer, not a lost connection: give up
            raise wait.error
        out["reconnects"] += 1

    retry = RetryPolicy(attempts=3, deadline=30, base=0.05, cap=0.2)
    with chunkyard.Client(spec["url"], retry=retry, on_wait=on_wait) as cy:
        call = cy.transport.call

        def timed(method: str, p: str, **kw):  # type: ignore[no-untyped-def]
            # the request that creates the version: a session's commit, or a small push
            if not (p.endswith("/commit") or (method == "POST" and p.endswith("/-/versions"))):
                return call(method, p, **kw)
            t = time.perf_counter()
            try:
                return call(method, p, **kw)
            finally:
                commit_s.append(time.perf_counter() - t)

        cy.transport.call = timed  # type: ignore[method-assign]

        def push(name: str) -> None:
            nonlocal counter
            counter += 1
            size = int(2 ** rng.uniform(math.log2(lo), math.log2(hi))) if hi > lo else lo
            path.write_bytes(f"{spec['seed']} {counter} ".encode() + os.urandom(size))
            r = cy.push(path, name)
            versions.setdefault(name, []).append(r["version"])

        push(names[0])  # warm up: connections, code paths
        commit_s.clear()
        print("ready", flush=True)
        _, start, end = sys.stdin.readline().split()
        t_start, t_end = float(start), float(end)
        time.sleep(max(0.0, t_start - time.time()))
        cpu0 = time.process_time()
        n = 0
        while time.time() < t_end:
            t = time.perf_counter()
            try:
                push(names[n % len(names)])
            except Exception as exc:  # counted and reported, never retried
                out["failed"] += 1
                if len(out["errors"]) < 3:
                    out["errors"].append(f"{type(exc).__name__}: {exc}")
            else:
                out["push_s"].append(time.perf_counter() - t)
                out["ok" if time.time() <= t_end else "late"] += 1
            n += 1
        out["cpu_s"] = time.process_time() - cpu0
    out["versions"] = versions
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
