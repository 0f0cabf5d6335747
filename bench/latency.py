"""Latency per request of a trained run against the plain base model, without retraining (mome_bench's method).

    .venv/bin/python bench/latency.py --run /tmp/memtune-bench/synthetic-200 --out bench/results/latency

One prompt at a time, every request generating exactly --tokens tokens, base and MoME alternating so machine noise
hits both alike, on separate copies of the weights (the base copy has no expert hooks at all); medians over
--rounds passes of the run's first --prompts trained questions. Writes latency.json and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import yaml
from mome_bench import latency

from memtune.data import load_examples
from memtune.spec import parse_job
from memtune.trainer.mome.artifacts import resolve_run
from memtune.trainer.mome.model import MemoryModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a run folder or job output")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default=None)
    options = parser.parse_args()
    folder = resolve_run(options.run)
    if folder is None:
        raise SystemExit(f"--run: {options.run} holds no committed run")
    load_start = os.getloadavg()[0]
    tuned = MemoryModel.load(str(folder), options.device)
    assert tuned.run is not None  # a run folder
    plain = MemoryModel.load(tuned.run.base_model, tuned.device, tuned.dtype)
    job = parse_job(yaml.safe_load((folder / "job.yaml").read_text(encoding="utf-8")))
    questions = [example.input for example in load_examples(job.spec.dataset)]  # the trained questions
    result = latency(tuned, plain, questions[: options.prompts], options.tokens, options.rounds)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    result |= {
        "run": str(folder),
        "device": str(tuned.device),
        "dtype": str(tuned.dtype).removeprefix("torch."),
        "commit": commit.stdout.strip(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average": {"start": load_start, "end": os.getloadavg()[0], "cores": os.cpu_count()},
    }
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "latency.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
