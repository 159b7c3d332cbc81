"""A writer process for ``tests/test_team_scale.py``: pushes directories to a gateway
with ``chunkyard.Client`` and prints, as one JSON object on stdout, what it pushed and
every exception it met.

``python tests/team_writer.py SPEC`` where SPEC is JSON: ``url``, ``workdir`` (a
directory of its own), ``pushes`` (each ``{"name": …, "files": {path: [seed, size]}}``)
and ``retry`` (tries per request; 1: any 5xx or lost connection is an exception). It
prints ``ready`` and waits for a line on stdin before the first push, so that every
writer starts at the same moment.
"""

from __future__ import annotations

import json
import random
import sys
import time
import traceback
from pathlib import Path


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def main() -> int:
    spec = json.loads(sys.argv[1])
    import chunkyard
    from chunkyard.client.transport import RetryPolicy

    workdir = Path(spec["workdir"])
    dirs = []
    for n, push in enumerate(spec["pushes"]):  # written before the start: only pushes race
        d = workdir / f"p{n}"
        for rel, (seed, size) in push["files"].items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(content(seed, size))
        dirs.append(d)
    retry = RetryPolicy(attempts=spec.get("retry", 1), deadline=60)
    out: dict = {"pushes": [], "errors": []}
    with chunkyard.Client(spec["url"], retry=retry) as cy:
        print("ready", flush=True)
        sys.stdin.readline()
        for push, d in zip(spec["pushes"], dirs, strict=True):
            t = time.perf_counter()
            try:
                r = cy.push(d, push["name"])
            except Exception as exc:  # every failure goes back to the test
                out["errors"].append(
                    f"push {push['name']}: {type(exc).__name__}: {exc}\n"
                    + "".join(traceback.format_exc(limit=-4))
                )
                continue
            out["pushes"].append(
                {
                    "name": push["name"],
                    "version": r["version"],
                    "created": r["created"],
                    "dir": str(d),
                    "seconds": time.perf_counter() - t,
                }
            )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
