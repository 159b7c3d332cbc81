"""Push and pull through faults between client, gateway and store (issue 13, point 3).

Per store (SeaweedFS for S3, Azurite for Azure), on the same ~300 MiB of random bytes,
in one run, each setup on an empty repository of its own (so nothing dedups across
them):

- ``direct``: client → gateway → store, nothing between;
- ``proxy``: through ``tests/faultproxy.py`` proxies injecting nothing, one in front of
  the gateway and one in front of the store (the gateway's store endpoint, so the
  presigned URLs point at it too): what relaying every byte through Python costs;
- ``faults``: the same proxies injecting issue 13's mix on every request (10 % answered
  500/503; 2 % each reset before forwarding, reset instead of answered, cut mid-body,
  reset after the answer; 5 % delayed up to 0.3 s).

Each setup pushes the file (``chunkyard push``, default retry policy) and pulls it back,
and the pulled file must equal the pushed one byte for byte (an error otherwise).
Figures: push and pull MB/s of each setup, ``faults`` against ``direct`` and against
``proxy``, and how many faults of each kind were injected. The proxies run in this
process, whose CPU during a step is reported beside it.
"""

from __future__ import annotations

import filecmp
import os
import time
import uuid
from pathlib import Path
from typing import Any

from tests.faultproxy import (
    KINDS,
    MIXED,
    NONE,
    FaultProxy,
    Faults,
    azure_endpoint,
    with_azure_endpoint,
)

from benchmarks.common import (
    BIN,
    BenchError,
    Context,
    Gateway,
    MiB,
    Report,
    Step,
    delete_s3_prefix,
    delete_store_prefix,
    human_size,
    mbps,
    random_file,
    run_measured,
    settle,
    warm,
)

SERVICES: tuple[str, ...] = ("s3", "azure")
SIZE, QUICK_SIZE = 300 * MiB, 96 * MiB
SETUPS = ("direct", "proxy", "faults")
STORES = [  # key, label, env var with the test bucket URL
    ("s3", "SeaweedFS (S3)", "CHUNKYARD_TEST_S3_URL"),
    ("azure", "Azurite (emulator)", "CHUNKYARD_TEST_AZURE_URL"),
]


def run(ctx: Context) -> Report:
    size = QUICK_SIZE if ctx.quick else SIZE
    mix = {k: getattr(MIXED, k) for k in (*KINDS, "max_delay")}
    r = Report("faults", params={"size": size, "faults": mix, "setups": list(SETUPS)})
    data = random_file(ctx.workdir, size, seed=13)
    for key, label, var in STORES:
        base = os.environ.get(var)
        if not base:
            r.errors.append(f"{label}: {var} is not set (scripts/services start {key})")
            continue
        with r.section(label, ctx.console):
            one_store(ctx, r, key, label, base, data)
    return r


def _endpoint(key: str) -> str:
    """The store's real endpoint (scheme://host:port), from the test servers' settings."""
    if key == "s3":
        return os.environ["AWS_ENDPOINT_URL"]
    return azure_endpoint(os.environ["AZURE_STORAGE_CONNECTION_STRING"])


def _store_env(key: str, endpoint: str) -> dict[str, str]:
    """The gateway's settings that point its store at ``endpoint``."""
    if key == "s3":
        return {"AWS_ENDPOINT_URL": endpoint}
    conn = os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    return {"AZURE_STORAGE_CONNECTION_STRING": with_azure_endpoint(conn, endpoint)}


class _Setup:
    """One repository (gateway, store prefix) and, unless direct, its two proxies."""

    def __init__(self, ctx: Context, key: str, base: str, name: str, run_id: str) -> None:
        self.name = name
        self.prefix = f"bench-{run_id}-{name}"
        self.store_url = f"{base.rstrip('/')}/{self.prefix}"
        real = _endpoint(key)
        self.proxies: list[FaultProxy] = []
        endpoint = real
        if name != "direct":
            store_proxy = FaultProxy(real, seed=13)
            self.proxies.append(store_proxy)
            endpoint = store_proxy.url
        env = {"CHUNKYARD_STORE": self.store_url, **_store_env(key, endpoint)}
        self.gw = Gateway(ctx.rundir / f"gw-{key}-{name}", env=env).start()
        self.url = self.gw.url
        if name != "direct":
            gw_proxy = FaultProxy(self.gw.url, seed=31)
            self.proxies.insert(0, gw_proxy)
            self.url = gw_proxy.url

    def faults(self, faults: Faults) -> None:
        for p in self.proxies:
            p.faults = faults

    def injected(self) -> dict[str, int]:
        out = {k: 0 for k in KINDS}
        for p in self.proxies:
            for k, n in p.injected.items():
                out[k] += n
        return out

    def requests(self) -> int:
        return sum(p.requests for p in self.proxies)

    def close(self) -> None:
        self.gw.stop()
        for p in self.proxies:
            p.close()


def _cli(setup: _Setup, *args: str) -> tuple[Any, float, float]:
    """A ``chunkyard`` command against ``setup``: its measurement, the gateway's CPU
    seconds and this process's (the proxies') CPU seconds meanwhile."""
    settle()
    gw_cpu, own_cpu = setup.gw.cpu_seconds(), time.process_time()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUNKYARD_")}
    env["CHUNKYARD_URL"] = setup.url
    m = run_measured([str(BIN / "chunkyard"), *args], env).check()
    return m, setup.gw.cpu_seconds() - gw_cpu, time.process_time() - own_cpu


def one_store(ctx: Context, r: Report, key: str, label: str, base: str, data: Path) -> None:
    size = data.stat().st_size
    run_id = uuid.uuid4().hex[:8]
    setups: dict[str, _Setup] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name in SETUPS:
            setups[name] = _Setup(ctx, key, base, name, run_id)
        warm(data)
        for op in ("push", "pull"):  # the three setups side by side, one op at a time
            for name, setup in setups.items():
                setup.faults(MIXED if name == "faults" else NONE)
                before = setup.requests()
                dest = ctx.rundir / f"pulled-{key}-{name}"
                if op == "push":
                    m, gw_cpu, own = _cli(setup, "push", str(data), f"bench/{key}", "--json")
                    sent = m.json()["bytes_uploaded"]
                    if sent < size:
                        raise BenchError(f"{name}: push sent {sent} bytes of {size}")
                else:
                    dest.unlink(missing_ok=True)
                    m, gw_cpu, own = _cli(setup, "pull", f"bench/{key}", str(dest), "--json")
                    same = filecmp.cmp(data, dest, shallow=False)
                    dest.unlink(missing_ok=True)
                    if not same:
                        raise BenchError(f"{name}: the pulled file differs from the pushed one")
                setup.faults(NONE)
                results.setdefault(name, {})[op] = {
                    "s": m.wall_s,
                    "mbps": mbps(size, m.wall_s),
                    "requests": setup.requests() - before,
                    "proxy_cpu_s": own if setup.proxies else 0.0,
                }
                r.steps.append(
                    Step(
                        f"{key} {name}: {op} {human_size(size)}",
                        size,
                        m.wall_s,
                        m.cpu_s,
                        m.peak_rss,
                        gw_cpu,
                        setup.gw.peak_rss(),
                        {"proxy_cpu_s": round(own, 2)} if setup.proxies else {},
                    )
                )
        results["faults"]["injected"] = setups["faults"].injected()
    finally:
        for setup in setups.values():
            setup.close()
        bucket = base.split("://", 1)[1].split("/")[0]
        for setup in setups.values():  # leave the shared test buckets as they were
            if key == "s3":
                delete_s3_prefix(bucket, setup.prefix + "/")
            else:
                delete_store_prefix(f"az://{bucket}/{setup.prefix}")
    r.params[key] = results
    _figures(r, key, label, size, results)


def _figures(r: Report, key: str, label: str, size: int, res: dict[str, Any]) -> None:
    injected = res["faults"]["injected"]
    for op in ("push", "pull"):
        d, p, f = (res[s][op] for s in SETUPS)
        main = r.add(
            f"{key}_{op}_faults_mbps",
            f"{label}: {op} {human_size(size)} through faults",
            f["mbps"],
            "MB/s",
            note=f"{f['s']:.2f} s, {f['requests']} requests through the proxies; "
            f"proxies' CPU {f['proxy_cpu_s']:.1f} s",
        )
        r.add(
            f"{key}_{op}_proxy_mbps",
            f"{label}: {op} through the proxies, no faults",
            p["mbps"],
            "MB/s",
            note=f"{p['s']:.2f} s; proxies' CPU {p['proxy_cpu_s']:.1f} s",
            beside=main.key,
        )
        r.add(
            f"{key}_{op}_direct_mbps",
            f"{label}: {op} direct, no proxy",
            d["mbps"],
            "MB/s",
            note=f"{d['s']:.2f} s",
            beside=main.key,
        )
        r.add(
            f"{key}_{op}_faults_vs_direct",
            f"{label}: {op} throughput through faults / direct",
            f["mbps"] / d["mbps"],
            "×",
            note=f"/ through the proxies without faults: {f['mbps'] / p['mbps']:.2f}×",
        )
    requests = res["faults"]["push"]["requests"] + res["faults"]["pull"]["requests"]
    r.add(
        f"{key}_faults_injected",
        f"{label}: requests that met a fault (push + pull)",
        100 * sum(injected.values()) / requests,
        "%",
        note=", ".join(f"{k} {n}" for k, n in injected.items())
        + f" of {requests} requests; bytes identical",
    )
