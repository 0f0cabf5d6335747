"""Serving benchmark (issue 16): `memtune serve` under load, batched against one-at-a-time, tuned against base.

    .venv/bin/python bench/serve_bench.py --out bench/results/serving

Trains (or reuses, from --work) a 200-fact memory with mome_bench's recipe, starts `memtune serve` twice as a
subprocess (the tuned job output and the plain base model, same flags), and drives each over HTTP with a fixed
list of requests: trained questions, paraphrases and unrelated prompts, every one generating exactly
--tokens tokens (`max_tokens` = `min_tokens`) so both models do the same work. Two phases, each alternating the
servers so that machine noise hits both alike (chunks of two full batches, or single requests, in the order
tuned-base, base-tuned, ...):

    concurrent:  --clients clients (16), each sending its next request when its previous answer arrives
    sequential:  one client, one request at a time (what serving without batching gives)

Reports p50/p99 latency per request, completion tokens/s, errors, the batched/sequential throughput ratio and the
tuned/base latency ratio at equal load, with the commit, date and load average. Writes report.md and summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from facts import UNRELATED, make_facts
from mome_bench import RECIPE

from memtune.spec import parse_job
from memtune.trainer.tuning.job import run_job

BIN = Path(sys.executable).parent


def train(count: int, work: Path, steps: int) -> tuple[Path, list[dict[str, str]], dict]:
    """The job output of a `count`-fact memory (reused when --work already holds a run with the same inputs)."""
    facts = make_facts(count)
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"facts{count}.jsonl"
    data.write_text("".join(json.dumps({"input": f["input"], "output": f["output"]}) + "\n" for f in facts))
    output = work / f"facts{count}"
    recipe = {**RECIPE, "max_steps": steps}
    job = parse_job(
        {"metadata": {"name": "bench"}, "spec": {"dataset": {"uri": str(data)}, "finetuneArgs": recipe,
                                                 "output": {"uri": str(output)}}}
    )  # fmt: skip
    summary = run_job(job, use_cached_model=True, show_progress=True)
    print(f"memory: {summary.run_dir} (recall {summary.recall:.3f}, reused {summary.reused})", flush=True)
    return output, facts, {"steps": steps, "recall": summary.recall, "run": Path(summary.run_dir).name}


def requests_for(facts: list[dict[str, str]], count: int, seed: int = 0) -> list[tuple[str, str | None]]:
    """(prompt, expected answer or None) mixing trained questions (half), paraphrases and unrelated prompts."""
    rng = random.Random(seed)
    chosen = []
    for number in range(count):
        kind = number % 4
        fact = rng.choice(facts)
        if kind in (0, 1):
            chosen.append((fact["input"], fact["output"]))
        elif kind == 2:
            chosen.append((fact["paraphrase"], None))
        else:
            chosen.append((rng.choice(UNRELATED), None))
    return chosen


class Server:
    def __init__(self, model: str, name: str, max_batch: int):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        command = [str(BIN / "memtune"), "serve", "--model", model, "--served-model-name", name,
                   "--port", str(self.port), "--max-batch", str(max_batch)]  # fmt: skip
        self.log = tempfile.NamedTemporaryFile(prefix=f"serve-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} server exited {self.process.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} server not ready after {timeout_s} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


@dataclass
class Tally:
    """What some requests to one server gave; several rounds add up."""

    latencies: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    recalled: int = 0
    asked: int = 0
    gated: int = 0
    loads: list[float] = field(default_factory=list)

    def summary(self, requests: int, clients: int) -> dict:
        ordered = sorted(self.latencies)
        return {
            "requests": requests,
            "clients": clients,
            "errors": len(self.errors),
            "error_samples": self.errors[:5],
            "wall_s": self.wall_s,
            "p50_s": statistics.median(ordered) if ordered else None,
            "p99_s": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else None,
            "mean_s": statistics.fmean(ordered) if ordered else None,
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": self.completion_tokens / self.wall_s,
            "requests_per_s": len(ordered) / self.wall_s,
            "trained_recalled": f"{self.recalled}/{self.asked}",
            "gated": self.gated,
            "load_average": {"start": self.loads[0], "end": self.loads[-1]},
        }


async def drive(server: Server, prompts: list[tuple[str, str | None]], clients: int, tokens: int, tally: Tally) -> None:
    """Send every prompt once with `clients` concurrent clients; add latencies and outcomes to `tally`."""
    queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
    for item in prompts:
        queue.put_nowait(item)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt, expected = queue.get_nowait()
            body = {"model": server.name, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": tokens, "min_tokens": tokens}  # fmt: skip
            started = time.perf_counter()
            try:
                reply = await http.post(f"{server.url}/v1/chat/completions", json=body)
            except httpx.HTTPError as error:
                tally.errors.append(f"{type(error).__name__}: {error}")
                continue
            tally.latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                tally.errors.append(f"{reply.status_code}: {reply.text[:200]}")
                continue
            answer = reply.json()
            tally.completion_tokens += answer["usage"]["completion_tokens"]
            choice = answer["choices"][0]
            tally.gated += bool(choice["route"] and choice["route"]["gated"])
            if expected is not None:
                tally.asked += 1
                tally.recalled += choice["message"]["content"].strip().startswith(expected)

    tally.loads.append(os.getloadavg()[0])
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    tally.wall_s += time.perf_counter() - started
    tally.loads.append(os.getloadavg()[0])


def alternate(servers: dict[str, Server], prompts: list, clients: int, tokens: int, chunk: int) -> dict[str, Tally]:
    """The same prompts to every server in chunks, the order flipping each chunk (ABBA...), so that the machine's
    load, which other work changes, weighs on each server alike."""
    tallies = {name: Tally() for name in servers}
    for number, start in enumerate(range(0, len(prompts), chunk)):
        names = list(servers) if number % 2 == 0 else list(reversed(servers))
        for name in names:
            asyncio.run(drive(servers[name], prompts[start : start + chunk], clients, tokens, tallies[name]))
    return tallies


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200, help="facts in the memory")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrent phase")
    parser.add_argument("--sequential-requests", type=int, default=24, help="requests per one-at-a-time phase")
    parser.add_argument("--tokens", type=int, default=32, help="completion tokens per request (max = min)")
    parser.add_argument("--steps", type=int, default=RECIPE["max_steps"], help="training steps of the memory")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per server (OMP_NUM_THREADS; default: torch's)"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "memtune-serve-bench")
    options = parser.parse_args()
    out = options.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if options.threads:  # training here, and the servers (which inherit the variable)
        import torch

        torch.set_num_threads(options.threads)
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    output, facts, memory = train(options.count, options.work, options.steps)

    servers = {
        "tuned": Server(str(output), "facts", options.clients),
        "base": Server("smollm2-135m-instruct", "base", options.clients),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        prompts = requests_for(facts, options.requests)
        warm = requests_for(facts, options.clients, seed=1)
        results: dict[str, dict] = {}
        for server in servers.values():  # first requests pay one-time costs (allocator, kernels)
            asyncio.run(drive(server, warm, options.clients, options.tokens, Tally()))
        sequential = prompts[: options.sequential_requests]
        for phase, clients, batch, chunk in (
            ("concurrent", options.clients, prompts, 2 * options.clients),  # two full batches per chunk
            ("sequential", 1, sequential, 1),  # request by request
        ):
            tallies = alternate(servers, batch, clients, options.tokens, chunk)
            for name, tally in tallies.items():
                results[f"{name}_{phase}"] = tally.summary(len(batch), clients)
                print(f"{name}_{phase}", json.dumps(results[f"{name}_{phase}"]), flush=True)
    finally:
        for server in servers.values():
            server.stop()

    ratios = {
        "batched_over_sequential_throughput": {
            name: results[f"{name}_concurrent"]["tokens_per_s"] / results[f"{name}_sequential"]["tokens_per_s"]
            for name in servers
        },
        "tuned_over_base_p50_latency": {
            phase: results[f"tuned_{phase}"]["p50_s"] / results[f"base_{phase}"]["p50_s"]
            for phase in ("concurrent", "sequential")
        },
    }
    summary = {
        "commit": commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "facts": options.count,
        "memory": memory,
        "threads": options.threads,
        "tokens_per_request": options.tokens,
        "results": results,
        "ratios": ratios,
        "command": " ".join(sys.argv),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(report(summary))
    print(report(summary))


def report(summary: dict) -> str:
    rows = [
        "| server | clients | requests | errors | p50 s | p99 s | tokens/s | trained answers | load avg (start/end) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, result in summary["results"].items():
        load = result["load_average"]
        rows.append(
            f"| {key.replace('_', ' ')} | {result['clients']} | {result['requests']} | {result['errors']} | "
            f"{result['p50_s']:.2f} | {result['p99_s']:.2f} | {result['tokens_per_s']:.1f} | "
            f"{result['trained_recalled']} | {load['start']:.1f} / {load['end']:.1f} |"
        )
    ratios = summary["ratios"]
    batched = ratios["batched_over_sequential_throughput"]
    tuned = ratios["tuned_over_base_p50_latency"]
    loads = [v for r in summary["results"].values() for v in r["load_average"].values()]
    quiet = max(loads) <= summary["cores"]
    return "\n".join(
        [
            "# memtune serve under load",
            "",
            f"Commit {summary['commit']}, {summary['date']}, {summary['cores']} cores; a {summary['facts']}-fact "
            f"memory on smollm2-135m-instruct (run {summary['memory']['run']}, {summary['memory']['steps']} training "
            f"steps, recall {summary['memory']['recall']:.3f}); every request generates "
            f"{summary['tokens_per_request']} tokens; torch threads per server: {summary['threads'] or 'default'}.",
            f"Machine: load average {min(loads):.1f}-{max(loads):.1f} during the run "
            + (
                "(within the core count: the benchmark had the machine to itself)."
                if quiet
                else "(above the core count: other work shared the machine, so times are upper bounds)."
            ),
            "",
            f"`{summary['command']}`",
            "",
            *rows,
            "",
            f"- batched throughput over one-at-a-time: tuned {batched['tuned']:.2f}x, base {batched['base']:.2f}x "
            "(target: at least 4x)",
            f"- tuned over base p50 latency: {tuned['concurrent']:.2f}x with "
            f"{summary['results']['tuned_concurrent']['clients']} clients, {tuned['sequential']:.2f}x one at a time "
            "(target: at most 1.2x)",
            "- 'trained answers': replies to trained questions that begin with the trained answer (generation runs on "
            "past it to the fixed length).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
