"""Scale benchmark on one accelerator (issue 14); bench/gpu_check.sh runs it after the device tests.

    python bench/gpu_scale.py --device cuda --out bench/results/gpu          # on a GPU machine
    python bench/gpu_scale.py --device cpu --dry --out /tmp/gpu-scale-dry    # the same path on the CPU, tiny shapes

Part 1, the default model (SmolLM2-135M): one job of --facts synthetic facts (`run_job`, the README recipe), then on
the device: exact-match recall of the trained questions, generation throughput (tokens/s, one batch of 32 prompts, a
fixed 64 new tokens each) of the base model and of MoME, latency per request (mome_bench's method: one prompt at a
time, base and MoME alternating, a fixed 32 tokens), peak device memory of each phase, bytes per fact on disk.

Part 2, Llama-3.1-8B's shapes with random weights (`from_config`, built on the device; the default model's tokenizer,
so vocab ids stay below 49152 of the 128256 rows): throughput, latency and device memory with a synthetic bank of
--bank-experts experts at Lamini's r_value 64 on the top 8 layers, stored bfloat16, written by the real `save_run`
and read lazily; bytes per fact at real width. When part 1's training ran on the device and time is left, also one
job of --big-facts facts on this model: recall is exact-match measurable (random weights know nothing: it is all
memory). `--dry` swaps part 2 for a 4-layer, width-64 model of the same family and shrinks part 1.

Every phase records its wall time; the run stops starting new phases past --budget seconds and says which it skipped.
Writes summary.json and report.md under --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import torch
from facts import UNRELATED, make_facts

from memtune.spec import DEFAULT_BASE_MODEL, FinetuneArgs, parse_job
from memtune.trainer.mome.artifacts import load_memory, read_run, save_run
from memtune.trainer.mome.bank import TensorBank
from memtune.trainer.mome.base import LoadedModel, resolve_model_path
from memtune.trainer.mome.devices import resolve_device, resolve_dtype
from memtune.trainer.mome.index import build_index, plan_index
from memtune.trainer.mome.memory import Memory, MemoryLayout
from memtune.trainer.mome.model import MemoryModel
from memtune.trainer.tuning.job import run_job

# Lamini's default learning_rate (9e-4) at rank 16: the experts step at 1e-2 (schedule.py).
RECIPE = {"max_steps": 300, "index_method": "IndexFlatL2", "learning_rate": 9.0e-4, "r_value": 16}
# Llama-3.1-8B (meta-llama/Llama-3.1-8B config.json), random weights.
LLAMA_31_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,  # 131072 in the real config; nothing here is longer than a few hundred tokens
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    "initializer_range": 0.5,  # tiny tied embeddings at 0.02 keep every logit near 0: nothing would be learnable
}


class Clock:
    """Wall time per phase, device memory peaks, and the budget."""

    def __init__(self, device: torch.device, budget: float):
        self.device, self.budget, self.started = device, budget, time.perf_counter()
        self.skipped: list[str] = []

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, work: Callable[[], Any]) -> tuple[Any, float, int | None]:
        """(result, seconds, peak device bytes allocated during `work`; None off CUDA)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        started = time.perf_counter()
        result = work()
        self.sync()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return result, seconds, peak


def throughput(model: MemoryModel, prompts: list[str], tokens: int, clock: Clock) -> dict[str, float | int | None]:
    """One batch, every row generating exactly `tokens` tokens: generated tokens per second and peak memory."""
    model.generate(prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up: kernels, allocator
    _, seconds, peak = clock.measure(
        lambda: model.generate(prompts, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=len(prompts))
    )
    return {"tokens_per_second": len(prompts) * tokens / seconds, "batch": len(prompts), "peak_bytes": peak}


def latency(tuned: MemoryModel, base: MemoryModel, prompts: list[str], tokens: int, clock: Clock) -> dict[str, float]:
    """mome_bench's method: one prompt at a time, fixed length, base and MoME alternating; medians."""
    seconds: dict[str, list[float]] = {"base": [], "mome": []}
    for prompt in prompts:
        for name, model in (("base", base), ("mome", tuned)):
            _, spent, _ = clock.measure(
                lambda model=model, prompt=prompt: model.generate(
                    [prompt], max_new_tokens=tokens, min_new_tokens=tokens, batch_size=1
                )
            )
            seconds[name].append(spent)
    base_ms, mome_ms = (1000 * statistics.median(seconds[name]) for name in ("base", "mome"))
    return {"base_ms": base_ms, "mome_ms": mome_ms, "ratio": mome_ms / base_ms, "tokens": tokens}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def train(
    base_model: str,
    facts: list[dict[str, str]],
    work: Path,
    clock: Clock,
    memory: dict[str, Any] | None = None,
    **recipe: Any,
) -> tuple[dict[str, Any], str]:
    """One job; returns its numbers and run folder. Which device trained is read off the device's memory peak."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "facts.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in facts))
    job = parse_job(
        {
            "metadata": {"name": "scale"},
            "spec": {
                "baseModel": base_model,
                "dataset": {"uri": str(data)},
                "finetuneArgs": {**RECIPE, **recipe},
                "output": {"uri": str(work / "out")},
                **({"memory": memory} if memory else {}),
            },
        }
    )
    summary, seconds, peak = clock.measure(lambda: run_job(job, use_cached_model=False, show_progress=False))
    on_device = clock.device.type == "cpu" or bool(peak)
    result = {
        "facts": len(facts),
        "seconds": seconds,
        "seconds_per_fact": seconds / len(facts),
        "steps": summary.steps,
        "training_recall": summary.recall,
        "training_device": clock.device.type if on_device else "cpu",
        "peak_device_bytes": peak,
        "peak_device_bytes_per_fact": peak / len(facts) if peak else None,
        "run_bytes_on_disk": folder_bytes(Path(summary.run_dir)),
        "bytes_per_fact_on_disk": folder_bytes(Path(summary.run_dir)) / len(facts),
    }
    return result, summary.run_dir


def recall(model: MemoryModel, facts: list[dict[str, str]], clock: Clock) -> dict[str, Any]:
    answers, seconds, peak = clock.measure(lambda: model.generate([f["input"] for f in facts], batch_size=32))
    hits = [a.output == f["output"].strip() for a, f in zip(answers, facts, strict=True)]
    return {"exact_match": sum(hits) / len(hits), "seconds": seconds, "peak_device_bytes": peak}


def part_default(options: argparse.Namespace, device: torch.device, clock: Clock) -> dict[str, Any]:
    facts = make_facts(options.facts)
    trained, run_dir = train(DEFAULT_BASE_MODEL, facts, options.work / "default", clock)
    result: dict[str, Any] = {"model": DEFAULT_BASE_MODEL, "training": trained}
    with MemoryModel.load(run_dir, device) as tuned:
        result["dtype"] = str(tuned.dtype).removeprefix("torch.")
        result["recall"] = recall(tuned, facts, clock)
        prompts = [f["input"] for f in facts][:32]
        result["throughput_mome"] = throughput(tuned, prompts, 64, clock)
        plain = MemoryModel.load(DEFAULT_BASE_MODEL, device)  # separate weights, no hooks
        result["throughput_base"] = throughput(plain, prompts, 64, clock)
        result["latency"] = latency(tuned, plain, prompts[:8], 32, clock)
        gated = tuned.generate(UNRELATED[:16], max_new_tokens=24)
        base_answers = plain.generate(UNRELATED[:16], max_new_tokens=24)
        result["locality"] = sum(a.output == b.output for a, b in zip(gated, base_answers, strict=True)) / 16
        plain.close()
    return result


def random_model(config: dict[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> LoadedModel:
    """A randomly initialised Llama built on `device` (no CPU copy of the weights), with the default tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder = resolve_model_path(DEFAULT_BASE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    with device:
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, "llama-3.1-8b-shapes", f"random-seed-{seed}", folder)


def synthetic_memory(base: LoadedModel, experts: int, rank: int, folder: Path) -> Memory:
    """A bank of random experts on the model's top 8 layers (bfloat16 storage), saved by save_run, loaded lazily."""
    config = base.model.config
    layers, hidden = config.num_hidden_layers, config.hidden_size
    expert_layers = list(range(max(layers - 8, layers // 2), layers))  # the top 8 (half of a tiny model)
    key_layer = min(round(0.4 * layers), expert_layers[0] - 1)
    generator = torch.Generator().manual_seed(0)
    a = (torch.randn(experts, len(expert_layers), hidden, rank, generator=generator) / hidden**0.5).bfloat16()
    b = (torch.randn(experts, len(expert_layers), rank, hidden, generator=generator) * 1e-3).bfloat16()
    keys = torch.nn.functional.normalize(torch.randn(experts, hidden, generator=generator), dim=-1)
    plan = plan_index("IndexFlatL2", experts, hidden, FinetuneArgs())
    # threshold None: never gated, so every prompt pays for its experts (the worst case for speed)
    layout = MemoryLayout(key_layer, expert_layers, rank, 2, None, 0.02)
    memory = Memory(
        layout, TensorBank({"A": a, "B": b}), keys, torch.arange(experts), build_index(keys.numpy(), plan), plan
    )
    meta = {"base_model": {"id": base.model_id, "sha256": base.sha256}, "cache_key": "synthetic"}
    save_run(folder, memory, meta, {}, [{"step": 1, "loss": 1.0}])
    return load_memory(read_run(folder), base.sha256, lazy=True)


def part_big(options: argparse.Namespace, device: torch.device, clock: Clock, trained_on: str) -> dict[str, Any]:
    config = TINY if options.dry else LLAMA_31_8B
    dtype = resolve_dtype(None, device)
    base, build_seconds, peak = clock.measure(lambda: random_model(config, device, dtype))
    params = sum(p.numel() for p in base.model.parameters())
    result: dict[str, Any] = {
        "config": config,
        "parameters": params,
        "dtype": str(dtype).removeprefix("torch."),
        "build_seconds": build_seconds,
        "weights_device_bytes": peak,
    }
    folder = options.work / "big-bank"
    memory, write_seconds, _ = clock.measure(lambda: synthetic_memory(base, options.bank_experts, 64, folder))
    run = read_run(folder)
    result["bank"] = {
        "experts": memory.num_experts,
        "rank": 64,
        "layers": len(memory.layout.expert_layers),
        "storage_dtype": run.meta["experts"]["dtype"],
        "bytes_per_expert": memory.bank.bytes_per_expert,
        "bytes_per_fact_on_disk": folder_bytes(folder) / memory.num_experts,
        "write_seconds": write_seconds,
    }
    prompts = [f["input"] for f in make_facts(32)]
    with MemoryModel(base, memory, run) as tuned:
        result["throughput_mome"] = throughput(tuned, prompts, 64, clock)
        result["bank"]["experts_read"] = memory.bank.reads
    plain = MemoryModel(base)  # the hooks are gone: the very same weights, plain
    result["throughput_base"] = throughput(plain, prompts, 64, clock)
    with MemoryModel(base, load_memory(run, base.sha256, lazy=True), run) as tuned:
        result["latency"] = latency(tuned, plain, prompts[:4], 32, clock)
    if trained_on != device.type:
        clock.skipped.append(f"training at this width: part 1 trained on {trained_on}, not on {device.type}")
    elif clock.left() < options.big_train_reserve:
        clock.skipped.append(f"training at this width: {clock.left():.0f} s left of the budget")
    else:
        result["training"] = train_big(base, options, device, clock)
    return result


def train_big(base: LoadedModel, options: argparse.Namespace, device: torch.device, clock: Clock) -> dict[str, Any]:
    """Save the random model as a folder (run_job loads base models from folders), tune facts on it, measure recall."""
    folder = options.work / "big-model"
    base.model.save_pretrained(folder, safe_serialization=True)
    base.tokenizer.save_pretrained(folder)
    facts = make_facts(options.big_facts)
    # the tiny dry-run model has 4 layers: the default 8 expert layers do not fit (the 8B shapes take the defaults)
    memory = {"keyLayer": 1, "expertLayers": [2, 3]} if options.dry else None
    learning_rate = 9.0e-2 if options.dry else 9.0e-4  # on Lamini's scale: experts step at 0.1 / 1e-2 (rank 16)
    trained, run_dir = train(
        str(folder), facts, options.work / "big", clock, memory, r_value=16, learning_rate=learning_rate
    )
    with MemoryModel.load(run_dir, device) as tuned:
        trained["recall"] = recall(tuned, facts, clock)
    return trained


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry", action="store_true", help="tiny shapes: exercise the path, measure nothing real")
    parser.add_argument("--facts", type=int, default=None, help="part 1 facts (default 64; 8 with --dry)")
    parser.add_argument("--bank-experts", type=int, default=None, help="part 2 bank (default 256; 16 with --dry)")
    parser.add_argument("--big-facts", type=int, default=16)
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; no new phase starts past it")
    parser.add_argument("--big-train-reserve", type=float, default=150.0, help="seconds part 2's training needs")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    options = parser.parse_args()
    options.facts = options.facts or (8 if options.dry else 64)
    options.bank_experts = options.bank_experts or (16 if options.dry else 256)
    scratch = options.work is None
    options.work = options.work or Path(tempfile.mkdtemp(prefix="memtune-gpu-scale-"))
    device = resolve_device(options.device)
    clock = Clock(device, options.budget)
    summary: dict[str, Any] = {
        "commit": _commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dry": options.dry,
        "torch": torch.__version__,
        "load_average_start": os.getloadavg()[0],
        "cpu_cores": os.cpu_count(),
    }
    try:
        summary["default_model"] = part_default(options, device, clock)
        trained_on = summary["default_model"]["training"]["training_device"]
        if clock.left() > 0:
            summary["llama_8b_shapes"] = part_big(options, device, clock, trained_on)
        else:
            clock.skipped.append("part 2 (Llama-3.1-8B shapes): out of budget")
    finally:
        summary["skipped"] = clock.skipped
        summary["seconds"] = time.perf_counter() - clock.started
        summary["load_average_end"] = os.getloadavg()[0]
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        (options.out / "report.md").write_text(report(summary), encoding="utf-8")
        if scratch:
            shutil.rmtree(options.work, ignore_errors=True)
    print(report(summary))


def _size(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f} MiB" if value >= 2**20 else f"{value / 1024:,.1f} KiB"


def report(summary: dict[str, Any]) -> str:
    lines = [
        f"# Scale benchmark on {summary['device']} ({summary['device_name']})" + (" — DRY RUN" * summary["dry"]),
        "",
        f"Commit {summary['commit']}, {summary['date']}, torch {summary['torch']}, {summary['cpu_cores']} CPU cores, "
        f"1-minute load average {summary['load_average_start']:.1f} at the start, "
        f"{summary.get('load_average_end', float('nan')):.1f} at the end; {summary.get('seconds', 0):.0f} s in all.",
    ]
    if summary["dry"]:
        lines += ["", "Dry run: tiny shapes on this device to exercise the code path; none of these is a GPU number."]
    part = summary.get("default_model")
    if part:
        training, speed = part["training"], part["latency"]
        lines += [
            "",
            f"## {part['model']} ({part['dtype']} for generation)",
            "",
            "| measure | value |",
            "|---|---|",
            f"| facts tuned | {training['facts']} in {training['seconds']:.0f} s ({training['steps']} steps), "
            f"trained on {training['training_device']} |",
            f"| peak device memory while training | {_size(training['peak_device_bytes'])} |",
            f"| bytes per fact on disk (whole run folder) | {_size(training['bytes_per_fact_on_disk'])} |",
            f"| exact match, trained questions (on {summary['device']}) | {part['recall']['exact_match']:.1%} |",
            f"| locality (16 unrelated prompts: same answer as the base model) | {part['locality']:.1%} |",
            f"| generation, batch {part['throughput_mome']['batch']} × 64 tokens: MoME / base | "
            f"{part['throughput_mome']['tokens_per_second']:.0f} / {part['throughput_base']['tokens_per_second']:.0f} "
            f"tokens/s, peak {_size(part['throughput_mome']['peak_bytes'])} / "
            f"{_size(part['throughput_base']['peak_bytes'])} |",
            f"| latency per request ({speed['tokens']} tokens, one prompt at a time): MoME / base | "
            f"{speed['mome_ms']:.0f} / {speed['base_ms']:.0f} ms = {speed['ratio']:.2f}x |",
        ]
    big = summary.get("llama_8b_shapes")
    if big:
        bank, speed = big["bank"], big["latency"]
        lines += [
            "",
            f"## Llama-3.1-8B shapes, random weights ({big['parameters'] / 1e6:,.1f} M parameters, {big['dtype']})",
            "",
            "| measure | value |",
            "|---|---|",
            f"| weights on the device | {_size(big['weights_device_bytes'])} (built in {big['build_seconds']:.0f} s) |",
            f"| expert (rank {bank['rank']}, {bank['layers']} layers, {bank['storage_dtype']}) | "
            f"{_size(bank['bytes_per_expert'])} |",
            f"| bytes per fact on disk ({bank['experts']} synthetic experts, whole run folder) | "
            f"{_size(bank['bytes_per_fact_on_disk'])} |",
            f"| generation, batch {big['throughput_mome']['batch']} × 64 tokens, never gated: MoME / base | "
            f"{big['throughput_mome']['tokens_per_second']:.0f} / {big['throughput_base']['tokens_per_second']:.0f} "
            f"tokens/s, peak {_size(big['throughput_mome']['peak_bytes'])} / "
            f"{_size(big['throughput_base']['peak_bytes'])} |",
            f"| experts read from the bank for that batch (lazy) | {bank['experts_read']} of {bank['experts']} |",
            f"| latency per request ({speed['tokens']} tokens): MoME / base | {speed['mome_ms']:.0f} / "
            f"{speed['base_ms']:.0f} ms = {speed['ratio']:.2f}x |",
        ]
        if "training" in big:
            training = big["training"]
            lines += [
                f"| facts tuned at this width | {training['facts']} in {training['seconds']:.0f} s, "
                f"trained on {training['training_device']}, peak {_size(training['peak_device_bytes'])} |",
                f"| exact match, trained questions | {training['recall']['exact_match']:.1%} |",
                f"| bytes per fact on disk (rank 16) | {_size(training['bytes_per_fact_on_disk'])} |",
            ]
    if summary.get("skipped"):
        lines += ["", "Not measured:", *(f"- {reason}" for reason in summary["skipped"])]
    return "\n".join([*lines, ""])


if __name__ == "__main__":
    main()
