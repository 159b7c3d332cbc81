"""Generate ``benchmarks/results/REPORT.md`` and its PNG plots from the results JSON.

``python -m benchmarks.report [--results DIR]`` reads every ``<workload>.json`` there
(whatever workloads were last run, possibly on different days: each section says when,
on which commit and with which sizes) and writes, beside them:

- ``throughput.png``: MB/s against file size, chunkyard beside boto3 (push/pull on
  SeaweedFS and the local store, from ``direct`` and ``smallfiles``) and beside hf_xet
  (chunk + hash, from ``ingest``), where the data has them;
- ``series.png``: bytes stored per checkpoint against file-level storage and the ideal
  for 64 KiB content-defined chunks (from ``series``), per version and cumulative;
- ``rss.png``: peak RSS against file size for client and gateway, push and pull (from
  ``core``'s memory figures);
- ``REPORT.md``: every workload's figures and steps as tables, and the plots.

Nothing is measured here; a missing workload is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, fmt, human_size, mbps

ORDER = (
    "core",
    "ingest",
    "direct",
    "series",
    "smallfiles",
    "refs",
    "load",
    "team",
    "faults",
    "gc",
)


def load(results: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "workload" in data and "figures" in data:
            out[data["workload"]] = data
    return dict(sorted(out.items(), key=lambda kv: (ORDER + (kv[0],)).index(kv[0])))


def _fig(data: dict[str, Any], key: str) -> float | None:
    for f in data.get("figures", []):
        if f["key"] == key:
            return f["value"]
    return None


def _step(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    for s in data.get("steps", []):
        if s["name"] == name:
            return s
    return None


# -- plots ---------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_points(res: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """series label -> [(file size, MB/s)]"""
    pts: dict[str, list[tuple[int, float]]] = {}

    def add(label: str, size: int | None, v: float | None) -> None:
        if size and v:
            pts.setdefault(label, []).append((int(size), float(v)))

    if "direct" in res:
        d = res["direct"]
        per_size = d["params"].get("per_size") or []
        where = {"s3": "SeaweedFS", "local": "local store"}
        for p in per_size:
            if p["store"] not in where:
                continue  # the emulators: in the tables, not in the plot
            at = where[p["store"]]
            sdk = (
                ("cp", "cp")
                if p["store"] == "local"
                else ("boto3 upload_file", "boto3 download_file")
            )
            add(f"chunkyard push ({at})", p["size"], mbps(p["size"], p["push_s"]))
            add(f"chunkyard pull ({at})", p["size"], mbps(p["size"], p["pull_s"]))
            if p["store"] == "s3":
                add(f"{sdk[0]} ({at})", p["size"], mbps(p["size"], p["sdk_upload_s"]))
                add(f"{sdk[1]} ({at})", p["size"], mbps(p["size"], p["sdk_download_s"]))
        for op, sdk in (("push", "boto3 upload_file"), ("pull", "boto3 download_file")):
            s = _step(d, f"s3: {op}")  # results written before the size sweep
            ratio = _fig(d, f"s3_{op}_ratio")
            if not per_size and s and ratio:
                add(f"chunkyard {op} (SeaweedFS)", s["size"], mbps(s["size"], s["wall_s"]))
                add(sdk + " (SeaweedFS)", s["size"], mbps(s["size"], s["wall_s"] / ratio))
    if "ingest" in res:
        for p in res["ingest"]["params"].get("points") or []:
            add(f"chunkyard ingest {p['kind']} (CPU only)", p["size"], 1000 * p["ingest_gbps"])
            if p["kind"] == "bf16":
                add("chunkyard chunk + hash (CPU only)", p["size"], 1000 * p["chunk_hash_gbps"])
                add("hf_xet.hash_files (CPU only)", p["size"], 1000 * p["hf_xet_gbps"])
    if "smallfiles" in res:
        d = res["smallfiles"]
        p = d["params"]
        per_file = {"small": p.get("small_file_size"), "shards": p.get("shard_size")}
        for skey, size in per_file.items():
            for step in d.get("steps", []):
                name = step["name"]
                if ("files" in name) != (skey == "small"):
                    continue
                rate = mbps(step["size"], step["wall_s"])
                if name.startswith("local: push"):
                    add("chunkyard push (local store)", size, rate)
                elif name.startswith("local: pull"):
                    add("chunkyard pull (local store)", size, rate)
                elif name.startswith("s3: push"):
                    add("chunkyard push (SeaweedFS)", size, rate)
                elif name.startswith("s3: pull"):
                    add("chunkyard pull (SeaweedFS)", size, rate)
                elif name.startswith("boto3: upload"):
                    add("boto3 upload_file (SeaweedFS)", size, rate)
                elif name.startswith("boto3: download"):
                    add("boto3 download_file (SeaweedFS)", size, rate)
    if "core" in res and "ingest" not in res:
        d = res["core"]
        size = d["params"].get("size")
        ours = _fig(d, "chunk_ids_gbps") or _fig(d, "hash_file_gbps")
        add("chunkyard chunk + hash (CPU only)", size, None if ours is None else 1000 * ours)
        xet = _fig(d, "hf_xet_gbps")
        add("hf_xet.hash_files (CPU only)", size, None if xet is None else 1000 * xet)
    if "core" in res and not res.get("direct", {}).get("params", {}).get("per_size"):
        d = res["core"]
        size = d["params"].get("size")
        add("chunkyard push (local store)", size, _fig(d, "random_push_mbps"))
        add("chunkyard pull (local store)", size, _fig(d, "random_pull_mbps"))
    return {k: sorted(v) for k, v in pts.items()}


def plot_throughput(res: dict[str, dict[str, Any]], out: Path) -> Path | None:
    pts = throughput_points(res)
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, (label, xy) in enumerate(pts.items()):
        dashed = label.startswith(("boto3", "hf_xet", "cp"))
        style = "--o" if dashed else ":s" if "local store" in label else "-o"
        if "CPU only" in label:
            style = "-.^" if dashed else "-^"
        ax.plot(
            [x for x, _ in xy],
            [y for _, y in xy],
            style,
            color=colors[i % len(colors)],
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ticks = sorted({x for xy in pts.values() for x, _ in xy})
    ax.set_xticks(ticks, [human_size(t) for t in ticks])
    ax.set_xlabel("file size (per file; many-file sets are one point per file size)")
    ax.set_ylabel("MB/s (log)")
    ax.set_title("Throughput vs file size: chunkyard beside boto3 and hf_xet")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_series(res: dict[str, dict[str, Any]], out: Path) -> Path | None:
    rows = res.get("series", {}).get("params", {}).get("per_version")
    if not rows:
        return None
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    vs = [row["version"] for row in rows]
    kinds = (
        ("file_level", "file-level (MLflow/DVC/Git LFS)"),
        ("ideal_cdc", "ideal 64 KiB CDC, no compression"),
        ("stored", "chunkyard stored"),
        ("sent", "chunkyard sent"),
    )
    width = 0.2
    for i, (k, label) in enumerate(kinds):
        ax1.bar(
            [v + (i - 1.5) * width for v in vs],
            [row[k] / 2**20 for row in rows],
            width,
            label=label,
        )
    ax1.set_xticks(vs)
    ax1.set_xlabel("version")
    ax1.set_ylabel("MiB")
    ax1.set_title("Bytes per checkpoint")
    ax1.set_ylim(top=1.35 * max(row["file_level"] for row in rows) / 2**20)
    ax1.legend(fontsize=8, loc="upper right", ncol=2)
    for k, label in kinds[:3] + (("size", "logical (sum of version sizes)"),):
        acc, ys = 0, []
        for row in rows:
            acc += row[k]
            ys.append(acc / 2**30)
        ax2.plot(vs, ys, "-o", label=label)
    ax2.set_xticks(vs)
    ax2.set_xlabel("version")
    ax2.set_ylabel("GiB, cumulative")
    ax2.set_title("Stored over the series")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_rss(res: dict[str, dict[str, Any]], out: Path) -> Path | None:
    core = res.get("core")
    if not core:
        return None
    sizes = core["params"].get("memory_sizes") or []
    lines: dict[str, list[tuple[int, float]]] = {}
    for what in ("client_push", "client_pull", "gateway_push", "gateway_pull"):
        for size in sizes:
            v = _fig(core, f"rss_{what}_{size}")
            if v:
                lines.setdefault(what.replace("_", " "), []).append((size, v / 2**20))
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, xy in lines.items():
        ax.plot([x for x, _ in xy], [y for _, y in xy], "-o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [human_size(s) for s in sizes])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("file size")
    ax.set_ylabel("peak RSS, MiB")
    ax.set_title("Peak RSS vs file size (must be flat)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- markdown --------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]], right: set[int]) -> list[str]:
    out = ["| " + " | ".join(header) + " |"]
    out.append(
        "| " + " | ".join("---:" if i in right else "---" for i in range(len(header))) + " |"
    )
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def workload_md(data: dict[str, Any]) -> list[str]:
    m = data.get("machine", {})
    name = data["workload"]
    # per-row data (series versions, ingest points, direct sizes) is in the tables and
    # the JSON; the parameter line keeps to scalars and short lists
    params = {
        k: v
        for k, v in data.get("params", {}).items()
        if not (isinstance(v, list) and v and isinstance(v[0], dict))
    }
    lines = [
        f"## {name}",
        "",
        f"Measured {m.get('date', '?')} on commit `{str(m.get('git_commit', ''))[:10]}`"
        f"{' (dirty tree)' if m.get('git_dirty') else ''}: {m.get('cpu', '?')}, "
        f"{m.get('cores', '?')} cores, {human_size(m.get('ram_bytes') or 0)} RAM, load "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg', []))}; wall "
        f"{data.get('wall_seconds', 0):.0f} s.",
        "",
        "Parameters: " + ", ".join(f"`{k}`={json.dumps(v)}" for k, v in params.items()),
        "",
    ]
    rows = []
    for f in data["figures"]:
        goal = ""
        if f.get("goal"):
            sign = "≥" if f["goal"]["op"] == ">=" else "≤"
            goal = f"{sign} {fmt(f['goal']['value'], f['unit'])}"
        result = {True: "pass", False: "**FAIL**", None: ""}[f.get("passed")]
        label = f"↳ {f['label']}" if f.get("baseline_of") else f"**{f['label']}**"
        rows.append([label, fmt(f["value"], f["unit"]), goal, result, f.get("note", "")])
    lines += _table(["figure", "value", "goal", "result", "note"], rows, {1, 2})
    if data.get("steps") and name != "series":  # series: the per-version table instead
        lines += ["", "<details><summary>steps (subprocesses)</summary>", ""]
        srows = []
        for s in data["steps"]:
            gw_cpu, gw_peak = s.get("gateway_cpu_s"), s.get("gateway_peak_rss")
            srows.append(
                [
                    s["name"],
                    human_size(s["size"]),
                    f"{s['wall_s']:.2f}",
                    "" if s.get("mb_per_s") is None else f"{s['mb_per_s']:.0f}",
                    f"{s['client_cpu_s']:.2f}",
                    human_size(s["client_peak_rss"]),
                    "" if gw_cpu is None else f"{gw_cpu:.2f}",
                    "" if gw_peak is None else human_size(gw_peak),
                ]
            )
        header = ["step", "size", "wall s", "MB/s", "client CPU s", "client peak"]
        lines += _table(header + ["gateway CPU s", "gateway peak"], srows, set(range(1, 8)))
        lines += ["", "</details>"]
    if name == "series":
        lines += ["", "Per version (sizes in MiB):", ""]
        vrows = []
        for row in data["params"].get("per_version", []):
            c = row["components"]
            vrows.append(
                [
                    row["version"],
                    f"{row['size'] / 2**20:.1f}",
                    f"{row['sent'] / 2**20:.1f}",
                    f"{row['stored'] / 2**20:.1f}",
                    f"{row['file_level'] / 2**20:.1f}",
                    f"{row['ideal_cdc'] / 2**20:.1f}",
                    " / ".join(f"{c[k]['stored'] / 2**20:.1f}" for k in c),
                    f"{row['push_s']:.2f}",
                ]
            )
        comps = " / ".join(data["params"]["per_version"][0]["components"]) if vrows else ""
        lines += _table(
            [
                "version",
                "size",
                "sent",
                "stored",
                "file-level",
                "ideal CDC",
                f"stored: {comps}",
                "push s",
            ],
            vrows,
            set(range(8)),
        )
    if name == "team":
        lines += team_scale_md(data.get("params", {}).get("scale") or [])
    if data.get("errors"):
        lines += ["", "Errors:", ""] + [f"- `{_cell(e.splitlines()[0])}`" for e in data["errors"]]
    load = data.get("load") or {}
    if load:
        lines += [
            "",
            "Others' load (cores busy with work not ours, the noise): "
            + "; ".join(f"{k}: {v['others_cores']:.2f}" for k, v in load.items()),
        ]
    return lines + [""]


def team_scale_md(rows: list[dict[str, Any]]) -> list[str]:
    """The catalog-at-scale matrix of ``team``: p50 / p99 per request, catalog and size."""
    done = [r for r in rows if "alias" in r]
    if not done:
        return []

    def cell(v: dict[str, Any] | None, hi: str = "p99_ms") -> str:
        if not v or v.get("p50_ms") is None:
            return "—"
        return f"{v['p50_ms']:.1f} / {v[hi]:.1f}"

    header = ["request (p50 / p99 ms; 100k keys: median / max)"]
    header += [f"{r['db']}, {r['versions']:,} versions" for r in done]
    ops = (
        ("alias", "resolve NAME:ALIAS", "p99_ms"),
        ("show", "show NAME@VERSION", "p99_ms"),
        ("prefix_page", "prefix page of 100", "p99_ms"),
        ("missing_100k", "missing-chunk query, 100,000 keys (2 requests)", "max_ms"),
        ("function_100k", "… the catalog function alone", "max_ms"),
    )
    body = [[label] + [cell(r.get(op), hi) for r in done] for op, label, hi in ops]
    body.append(["fill, s"] + [f"{r.get('fill_s', 0):.0f}" for r in done])
    return ["", "Catalog at scale:", ""] + _table(header, body, set(range(1, len(header))))


def write_report(results: Path = RESULTS) -> Path:
    res = load(results)
    plots = [
        ("Throughput vs file size", plot_throughput(res, results / "throughput.png")),
        ("Bytes stored per checkpoint (series)", plot_series(res, results / "series.png")),
        ("Peak RSS vs file size (core)", plot_rss(res, results / "rss.png")),
    ]
    lines = [
        "# chunkyard benchmark report",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json` "
        "(written by `scripts/bench`); do not edit by hand. Each section names when, on "
        "which commit and machine it was measured: sections can come from different runs. "
        "Reproduce with `scripts/bench` (or `scripts/bench --quick`, smaller sizes).",
        "",
        "Workloads: " + (", ".join(f"[{k}](#{k})" for k in res) or "none found"),
        "",
        "## Plots",
        "",
    ]
    for title, path in plots:
        if path is None:
            lines += [f"- {title}: no data (run the workload it comes from)", ""]
        else:
            lines += [f"### {title}", "", f"![{title}]({path.name})", ""]
    for data in res.values():
        lines += workload_md(data)
    out = results / "REPORT.md"
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    p.add_argument("--results", type=Path, default=RESULTS, help="results directory")
    args = p.parse_args(argv)
    path = write_report(args.results)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
