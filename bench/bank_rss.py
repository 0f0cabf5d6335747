"""Memory of loading a run's expert bank: eager (the whole bank in RAM) against lazy (safetensors mmap, routed experts
only), on a synthetic run written by the real `save_run` at the default model's width.

    .venv/bin/python bench/bank_rss.py --experts 10000 --rank 16 --out bench/results/bank-rss

A bank of `--experts` random experts (8 expert layers of width 576, rank `--rank`, float32 or bfloat16) is written
once under `--work`; then each mode runs in a fresh process, which reports its resident set after `import torch` and
memtune (the floor), after loading the memory, and after gathering the experts of one routed batch (8 prompts × top-2).
RSS comes from /proc/self/status (VmRSS now, VmHWM the peak). Writes report.md and summary.json under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HIDDEN, LAYERS, KEY_LAYER = 576, list(range(22, 30)), 12  # SmolLM2-135M: width 576, 30 layers, experts on the top 8
SHA = "synthetic-" + "0" * 54


def write_run(folder: Path, experts: int, rank: int, dtype: str) -> Path:
    import torch
    from torch import nn

    from memtune.spec import FinetuneArgs
    from memtune.trainer.mome.artifacts import save_run
    from memtune.trainer.mome.bank import TensorBank
    from memtune.trainer.mome.index import build_index, plan_index
    from memtune.trainer.mome.memory import Memory, MemoryLayout

    generator = torch.Generator().manual_seed(0)
    storage = getattr(torch, dtype)
    a = (torch.randn(experts, len(LAYERS), HIDDEN, rank, generator=generator) / HIDDEN**0.5).to(storage)
    b = (torch.randn(experts, len(LAYERS), rank, HIDDEN, generator=generator) * 1e-3).to(storage)
    keys = nn.functional.normalize(torch.randn(experts, HIDDEN, generator=generator), dim=-1)
    plan = plan_index("IndexFlatL2", experts, HIDDEN, FinetuneArgs())
    memory = Memory(
        MemoryLayout(KEY_LAYER, LAYERS, rank, 2, None, 0.02),
        TensorBank({"A": a, "B": b}),
        keys,
        torch.arange(experts),
        build_index(keys.numpy(), plan),
        plan,
    )
    meta = {"base_model": {"id": "synthetic", "sha256": SHA}, "cache_key": "bank-rss"}
    save_run(folder, memory, meta, {}, [{"step": 1, "loss": 1.0}])
    return folder


# Run in a fresh interpreter per mode: RSS of one process, nothing shared with the writer.
PROBE = r"""
import json, random, sys, time
def rss():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {k: int(status[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
import torch
from memtune.trainer.mome.artifacts import load_memory, read_run
folder, mode, sha = sys.argv[1], sys.argv[2], sys.argv[3]
floor = rss()
started = time.perf_counter()
memory = load_memory(read_run(folder), sha, lazy=mode == "lazy")
loaded_s = time.perf_counter() - started
loaded = rss()
experts = torch.tensor(random.Random(0).sample(range(memory.num_experts), 16))
started = time.perf_counter()
memory.bank.gather(experts, torch.device("cpu"), torch.float32)
gather_ms = 1000 * (time.perf_counter() - started)
print(json.dumps({"mode": mode, "floor": floor, "loaded": loaded, "after_gather": rss(), "load_seconds": loaded_s,
                  "gather_16_ms": gather_ms, "experts": memory.num_experts}))
"""


def probe(folder: Path, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), mode, SHA], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{mode} probe failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-bank-rss")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic run (it is large)")
    options = parser.parse_args()
    load_start = os.getloadavg()[0]
    folder = options.work / f"run-{options.experts}-r{options.rank}-{options.dtype}"
    if folder.exists():
        shutil.rmtree(folder)
    started = time.perf_counter()
    write_run(folder, options.experts, options.rank, options.dtype)
    write_s = time.perf_counter() - started
    disk = sum(p.stat().st_size for p in (folder / "experts").iterdir())
    results = {mode: probe(folder, mode) for mode in ("eager", "lazy")}
    if not options.keep:
        shutil.rmtree(folder)
    summary = {
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "experts": options.experts,
        "rank": options.rank,
        "dtype": options.dtype,
        "width": HIDDEN,
        "expert_layers": len(LAYERS),
        "bank_bytes_on_disk": disk,
        "write_seconds": write_s,
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
        "modes": results,
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (options.out / "report.md").write_text(report(summary), encoding="utf-8")
    print(report(summary))


def report(summary: dict) -> str:
    mib = 1024 * 1024
    rows = []
    for mode, r in summary["modes"].items():
        floor = r["floor"]["VmRSS"]
        loaded, gathered = r["loaded"]["VmRSS"] - floor, r["after_gather"]["VmRSS"] - floor
        rows.append(
            f"| {mode} | {floor / mib:.0f} | {loaded / mib:.0f} | {gathered / mib:.0f} | "
            f"{r['after_gather']['VmHWM'] / mib:.0f} | {r['load_seconds']:.1f} | {r['gather_16_ms']:.1f} |"
        )
    load = summary["load_average"]
    return "\n".join(
        [
            f"# Expert bank memory: {summary['experts']} experts, eager vs lazy",
            "",
            f"Commit {summary['commit']}, {summary['date']}; {load['cores']} CPU cores, 1-minute load average "
            f"{load['start']:.1f} at the start, {load['end']:.1f} at the end (other helpers share this machine).",
            f"Synthetic run written by `save_run`: width {summary['width']}, {summary['expert_layers']} expert layers, "
            f"rank {summary['rank']}, {summary['dtype']}: {summary['bank_bytes_on_disk'] / mib:.0f} MiB of expert "
            f"shards ({summary['bank_bytes_on_disk'] / summary['experts'] / 1024:.0f} KiB per expert).",
            "",
            "| mode | RSS after imports (MiB) | + after load (MiB) | + after gathering 16 experts (MiB) | peak RSS "
            "(MiB) | load (s, checksums included) | gather 16 (ms) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Load time includes verifying every file's sha256 against the manifest (both modes read the whole bank "
            "once for that, through the page cache, not into the process).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
