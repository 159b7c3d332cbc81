"""Version series (issue 5, workload 3): a synthetic training run, version by version.

Ten versions of a run directory, each component pushed with ``chunkyard push --json``
to one local gateway:

- ``model/``: a ~500 MiB model (128 MiB with --quick) in 4 safetensors-like shards of
  bf16-like tensors of different sizes (8-byte header length, a JSON header, the data).
  Every step rewrites the last 15 % of the tensors (a fine-tune of the top layers) and
  the header's step; every other step also adds small perturbations to 3 lower tensors
  (a LoRA merge: a dense low-rank update, so those tensors change almost everywhere).
- ``optimizer.safetensors``: optimizer state, a quarter of the model's size (real Adam
  state is larger; kept small so the run stays short), rewritten fully every step.
- ``dataset.bin``: an append-only token file that grows by 5 % per version.
- ``corpus.txt``: a text corpus with 4 scattered edits per MiB (replaced,
  inserted and deleted words) per version.

Per version and in total: bytes sent (``bytes_uploaded``), bytes stored (the delta of
the gateway's ``stored_bytes``), beside (a) file-level storage as MLflow, DVC and Git
LFS do (every file whose whole-file BLAKE3 changed is stored whole) and (b) the ideal
for 64 KiB content-defined chunks without compression (bytes of chunks never seen
before, ``chunkyard.hashing.chunk_ids``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import numpy as np

from benchmarks.common import (
    BIN,
    Context,
    Gateway,
    MiB,
    Report,
    Step,
    human_size,
    run_measured,
)
from chunkyard.hashing import chunk_ids

SERVICES: tuple[str, ...] = ()

VERSIONS = 10
SHARDS = 4
LAYERS = 24
TOP_FRACTION = 0.15  # fine-tune: the last 15 % of the tensors are rewritten each step
LORA_TENSORS = 3
DATASET_GROWTH = 0.05
CORPUS_EDITS_PER_MIB = 4  # scattered edits per MiB of corpus and version
HEADER_PAD = 16 * 1024  # the JSON header is padded to this, so it can be rewritten in place
COMPONENTS = ("model", "optimizer", "dataset", "corpus")


# -- the synthetic run -----------------------------------------------------------


def _bf16(rng: np.random.Generator, n: int, scale: float = 0.02) -> np.ndarray:
    f32 = rng.standard_normal(n, dtype=np.float32)
    f32 *= np.float32(scale)
    return (f32.view(np.uint32) >> 16).astype("<u2")


def _to_f32(bf: np.ndarray) -> np.ndarray:
    return (bf.astype(np.uint32) << 16).view(np.float32)


@dataclass
class Tensor:
    name: str
    shard: int
    numel: int
    offset: int = 0  # in the shard's data section, bytes


def _layout(model_bytes: int) -> list[Tensor]:
    """A transformer-like list of tensors (embeddings, per layer attention, MLP and norms,
    a head) whose sizes add up to about ``model_bytes`` of bf16, spread over shards in
    order."""
    # relative sizes per layer: q, k, v, o, up, gate, down (the norms are tiny)
    rel = {"q": 4, "k": 1, "v": 1, "o": 4, "up": 11, "gate": 11, "down": 11}
    unit = model_bytes // 2 // (LAYERS * sum(rel.values()) + 2 * 16)
    specs: list[tuple[str, int]] = [("embed.weight", 16 * unit)]
    for i in range(LAYERS):
        specs.append((f"layers.{i}.norm1.weight", 1024))
        specs += [(f"layers.{i}.attn.{k}.weight", r * unit) for k, r in rel.items() if r < 5]
        specs.append((f"layers.{i}.norm2.weight", 1024))
        specs += [(f"layers.{i}.mlp.{k}.weight", r * unit) for k, r in rel.items() if r > 5]
    specs.append(("lm_head.weight", 16 * unit))
    total = sum(n for _, n in specs)
    tensors, acc = [], 0
    for name, n in specs:
        tensors.append(Tensor(name, min(SHARDS - 1, acc * SHARDS // total), n))
        acc += n
    offsets = [0] * SHARDS
    for t in tensors:
        t.offset = offsets[t.shard]
        offsets[t.shard] += 2 * t.numel
    return tensors


def _header(tensors: list[Tensor], shard: int, step: int) -> bytes:
    meta: dict[str, Any] = {"__metadata__": {"format": "pt", "step": str(step)}}
    for t in tensors:
        if t.shard == shard:
            meta[t.name] = {
                "dtype": "BF16",
                "shape": [t.numel],
                "data_offsets": [t.offset, t.offset + 2 * t.numel],
            }
    raw = json.dumps(meta, separators=(",", ":")).encode()
    if len(raw) > HEADER_PAD:
        raise ValueError("header larger than its padding")
    return struct.pack("<Q", HEADER_PAD) + raw.ljust(HEADER_PAD, b" ")


class Run:
    """The files of the run in ``root``, changed in place from step to step (each changed
    file is written under a temporary name and renamed, as a trainer saving it would)."""

    def __init__(self, root: Path, model_bytes: int, seed: int = 7) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.tensors = _layout(model_bytes)
        self.step = 0
        self.opt_numel = model_bytes // 4 // 2
        words = [
            bytes(self.rng.integers(97, 123, int(k)).astype(np.uint8))
            for k in self.rng.integers(2, 11, 5000)
        ]
        self.words = np.array(words, dtype=object)
        self.dataset_numel = model_bytes // 4 // 4
        self.corpus_bytes = model_bytes // 8

    def shard_path(self, shard: int) -> Path:
        return self.root / "model" / f"model-{shard + 1:05d}-of-{SHARDS:05d}.safetensors"

    def files(self) -> dict[str, list[Path]]:
        return {
            "model": [self.shard_path(s) for s in range(SHARDS)],
            "optimizer": [self.root / "optimizer.safetensors"],
            "dataset": [self.root / "dataset.bin"],
            "corpus": [self.root / "corpus.txt"],
        }

    # -- version 0 ------------------------------------------------------------
    def create(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        (self.root / "model").mkdir(parents=True)
        for s in range(SHARDS):
            with open(self.shard_path(s), "wb") as f:
                f.write(_header(self.tensors, s, 0))
                for t in self.tensors:
                    if t.shard == s:
                        f.write(_bf16(self.rng, t.numel).tobytes())
        self._optimizer()
        # tokens: a Zipf-like distribution over a 50k vocabulary, int32 as many tokenizers
        # write them
        tokens = np.minimum(self.rng.zipf(1.3, self.dataset_numel), 50_000).astype("<i4")
        (self.root / "dataset.bin").write_bytes(tokens.tobytes())
        n = self.corpus_bytes // 7
        text = b" ".join(self.words[self.rng.integers(0, len(self.words), n)].tolist())
        (self.root / "corpus.txt").write_bytes(text[: self.corpus_bytes])

    # -- one training step ----------------------------------------------------
    def advance(self) -> dict[str, Any]:
        self.step += 1
        first_top = int(len(self.tensors) * (1 - TOP_FRACTION))
        changed = {t.name: "fine-tune" for t in self.tensors[first_top:]}
        if self.step % 2 == 0:
            big = [t for t in self.tensors[:first_top] if t.numel > 4096]
            for i in self.rng.choice(len(big), LORA_TENSORS, replace=False):
                changed[big[int(i)].name] = "lora"
        for s in range(SHARDS):
            path = self.shard_path(s)
            tmp = path.with_name(path.name + ".tmp")
            shutil.copyfile(path, tmp)
            with open(tmp, "r+b") as f:
                f.write(_header(self.tensors, s, self.step))
                for t in self.tensors:
                    if t.shard != s or t.name not in changed:
                        continue
                    pos = 8 + HEADER_PAD + t.offset
                    if changed[t.name] == "fine-tune":
                        new = _bf16(self.rng, t.numel)
                    else:  # W += A @ B with rank 8, as a dense small perturbation
                        f.seek(pos)
                        old = np.frombuffer(f.read(2 * t.numel), dtype="<u2")
                        delta = _bf16(self.rng, t.numel, 0.0005)
                        new = ((_to_f32(old) + _to_f32(delta)).view(np.uint32) >> 16).astype("<u2")
                    f.seek(pos)
                    f.write(new.tobytes())
            os.replace(tmp, path)
        self._optimizer()
        path = self.root / "dataset.bin"
        grow = int(path.stat().st_size * DATASET_GROWTH) // 4
        with open(path, "ab") as f:
            f.write(np.minimum(self.rng.zipf(1.3, grow), 50_000).astype("<i4").tobytes())
        self._edit_corpus()
        kinds = list(changed.values())
        return {
            "tensors_fine_tuned": kinds.count("fine-tune"),
            "tensors_lora": kinds.count("lora"),
            "tensors": len(self.tensors),
        }

    def _optimizer(self) -> None:
        path = self.root / "optimizer.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        meta = {"__metadata__": {"step": str(self.step)}, "exp_avg": {"dtype": "F32"}}
        head = json.dumps(meta).encode().ljust(1024, b" ")
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            left = self.opt_numel // 2  # float32 values
            while left:
                n = min(left, 4 * MiB)
                f.write(self.rng.standard_normal(n, dtype=np.float32).tobytes())
                left -= n
        os.replace(tmp, path)

    def _edit_corpus(self) -> None:
        path = self.root / "corpus.txt"
        data = path.read_bytes()
        edits = max(1, CORPUS_EDITS_PER_MIB * len(data) // MiB)
        pos = np.sort(self.rng.integers(0, len(data), edits))
        out, last = [], 0
        for p in pos.tolist():
            p = max(p, last)
            out.append(data[last:p])
            kind = int(self.rng.integers(0, 3))
            word = bytes(self.words[int(self.rng.integers(0, len(self.words)))])
            if kind == 0:  # insert a word
                out.append(word + b" ")
                last = p
            elif kind == 1:  # replace the next 20 bytes by a word
                out.append(word)
                last = min(len(data), p + 20)
            else:  # delete 10 bytes
                last = min(len(data), p + 10)
        out.append(data[last:])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(out))
        os.replace(tmp, path)


# -- the baselines ---------------------------------------------------------------


def _digest(path: Path) -> bytes:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    h.update_mmap(path)
    return h.digest()


class Baselines:
    def __init__(self) -> None:
        self.digests: dict[str, bytes] = {}
        self.seen: set[bytes] = set()

    def file_level(self, path: Path) -> int:
        d = _digest(path)
        key = str(path)
        changed = self.digests.get(key) != d
        self.digests[key] = d
        return path.stat().st_size if changed else 0

    def ideal(self, path: Path) -> int:
        new = 0
        for _, n, cid in chunk_ids(path):
            if cid not in self.seen:
                self.seen.add(cid)
                new += n
        return new


# -- the workload ------------------------------------------------------------------


def _stored(gw: Gateway) -> int:
    m = run_measured([str(BIN / "chunkyard"), "stats", "--json"], gw.client_env()).check()
    return int(m.json()["stored_bytes"])


def run(ctx: Context) -> Report:
    model_bytes = (128 if ctx.quick else 500) * MiB
    r = Report(
        "series",
        params={
            "quick": ctx.quick,
            "versions": VERSIONS,
            "model_bytes": model_bytes,
            "shards": SHARDS,
            "top_fraction": TOP_FRACTION,
            "lora_tensors_every_other_step": LORA_TENSORS,
            "optimizer_bytes": model_bytes // 4,
            "dataset_growth": DATASET_GROWTH,
            "corpus_edits_per_mib": CORPUS_EDITS_PER_MIB,
        },
    )
    con = ctx.console
    run_dir = ctx.rundir / "series-run"
    per_version: list[dict[str, Any]] = []
    with r.section("generate and push 10 versions", con), Gateway(ctx.rundir / "gw-series") as gw:
        run_ = Run(run_dir, model_bytes)
        base = Baselines()
        run_.create()
        stored_before = _stored(gw)
        for v in range(1, VERSIONS + 1):
            change = {} if v == 1 else run_.advance()
            row: dict[str, Any] = {"version": v, "change": change, "components": {}}
            for comp, paths in run_.files().items():
                target = run_dir / "model" if comp == "model" else paths[0]
                cpu = gw.cpu_seconds()
                m = run_measured(
                    [str(BIN / "chunkyard"), "push", str(target), f"bench/series/{comp}", "--json"],
                    gw.client_env(),
                ).check()
                gw_cpu = gw.cpu_seconds() - cpu
                out = m.json()
                stored_now = _stored(gw)
                size = sum(p.stat().st_size for p in paths)
                row["components"][comp] = {
                    "size": size,
                    "sent": out["bytes_uploaded"],
                    "stored": stored_now - stored_before,
                    "file_level": sum(base.file_level(p) for p in paths),
                    "ideal_cdc": sum(base.ideal(p) for p in paths),
                    "push_s": round(m.wall_s, 3),
                    "chunks_new": out.get("chunks_new"),
                    "chunks_total": out.get("chunks_total"),
                }
                stored_before = stored_now
                r.steps.append(
                    Step(
                        f"v{v} push {comp}",
                        size,
                        m.wall_s,
                        m.cpu_s,
                        m.peak_rss,
                        gw_cpu,
                        gw.peak_rss(),
                        extra=out,
                    )
                )
            for k in ("size", "sent", "stored", "file_level", "ideal_cdc", "push_s"):
                row[k] = sum(c[k] for c in row["components"].values())
            per_version.append(row)
            con.log(
                f"series: v{v} {human_size(row['size'])}: sent {human_size(row['sent'])}, "
                f"stored {human_size(row['stored'])}, file-level "
                f"{human_size(row['file_level'])}, ideal {human_size(row['ideal_cdc'])}"
            )
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(ctx.rundir / "gw-series", ignore_errors=True)
    r.params["per_version"] = per_version
    for row in per_version:
        v = row["version"]
        key = f"v{v}"
        note = (
            "all new"
            if v == 1
            else f"{row['change']['tensors_fine_tuned']} top + "
            f"{row['change']['tensors_lora']} LoRA of {row['change']['tensors']} tensors"
        )
        r.add(
            f"{key}_stored",
            f"v{v} ({human_size(row['size'])}): chunkyard stored",
            row["stored"],
            "B",
            note=note,
        )
        r.add(f"{key}_sent", f"v{v}: chunkyard sent", row["sent"], "B", beside=f"{key}_stored")
        r.add(
            f"{key}_file_level",
            f"v{v}: file-level (MLflow/DVC/LFS)",
            row["file_level"],
            "B",
            beside=f"{key}_stored",
        )
        r.add(
            f"{key}_ideal",
            f"v{v}: ideal 64 KiB CDC, no compression",
            row["ideal_cdc"],
            "B",
            beside=f"{key}_stored",
        )
    if per_version:
        tot = {
            k: sum(row[k] for row in per_version)
            for k in ("size", "sent", "stored", "file_level", "ideal_cdc")
        }
        later = per_version[1:]
        r.add(
            "total_stored",
            f"total stored, {len(per_version)} versions ({human_size(tot['size'])} logical)",
            tot["stored"],
            "B",
            note=f"{tot['size'] / tot['stored']:.2f}× dedup" if tot["stored"] else "",
        )
        r.add("total_sent", "total sent", tot["sent"], "B", beside="total_stored")
        r.add("total_file_level", "total file-level", tot["file_level"], "B", beside="total_stored")
        r.add("total_ideal", "total ideal CDC", tot["ideal_cdc"], "B", beside="total_stored")
        if tot["file_level"]:
            r.add(
                "stored_vs_file_level",
                "chunkyard stored / file-level stored, whole series",
                tot["stored"] / tot["file_level"],
                "×",
            )
        if later:
            fl = sum(row["file_level"] for row in later)
            st = sum(row["stored"] for row in later)
            r.add(
                "later_stored_vs_file_level",
                "same, versions 2+ only (the increments)",
                st / fl if fl else None,
                "×",
            )
        for comp in COMPONENTS:
            c = {
                k: sum(row["components"][comp][k] for row in later)
                for k in ("stored", "file_level", "ideal_cdc")
            }
            r.add(
                f"{comp}_later_stored",
                f"{comp}, versions 2+: chunkyard stored",
                c["stored"],
                "B",
                note=f"file-level {human_size(c['file_level'])}, "
                f"ideal {human_size(c['ideal_cdc'])}",
            )
    return r
