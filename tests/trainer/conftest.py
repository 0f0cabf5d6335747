"""Shared fixtures: the default 135M model is loaded once, and one short training run serves every test that
needs trained artifacts (train -> save -> load -> generate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memtune.spec import parse_job

DATA = Path(__file__).parent / "data" / "facts.jsonl"
UNRELATED = [
    "What is the capital of France?",
    "Where was Albert Einstein born?",
    "Who painted the Mona Lisa?",
    "What is 12 times 7?",
    "In what year was Microsoft founded?",  # the shape of a trained question, without its anchor words
]


@pytest.fixture(scope="session")
def facts() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def base():
    from memtune.trainer.mome.base import load_base_model

    return load_base_model("smollm2-135m-instruct")


def facts_job(output: Path, **finetune: object):
    return parse_job(
        {
            "metadata": {"name": "facts"},
            "spec": {
                "dataset": {"uri": str(DATA)},
                "finetuneArgs": {
                    "max_steps": 60,
                    "learning_rate": 3.0e-4,  # Lamini's small-data rate: the rank-8 experts step at 1.15e-2
                    "index_method": "IndexFlatL2",
                    "r_value": 8,
                    **finetune,
                },
                "output": {"uri": str(output)},
            },
        }
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, base):
    """(job, summary) of one short run on the six facts."""
    from memtune.trainer.tuning.job import run_job

    job = facts_job(tmp_path_factory.mktemp("out") / "facts")
    return job, run_job(job, show_progress=False)


@pytest.fixture(scope="session")
def tuned(trained):
    """The short run loaded as generation loads it (lazy bank, the engine's default device on this machine)."""
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    with MemoryModel.load(summary.run_dir) as model:
        yield model


@pytest.fixture(scope="session")
def device() -> str:
    """The accelerator device tests run on: CUDA when torch sees one, or MEMTUNE_TEST_DEVICE (`cpu` runs them here,
    as bench/gpu_check.sh --device cpu does); skipped otherwise."""
    import os

    import torch

    requested = os.environ.get("MEMTUNE_TEST_DEVICE")
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("no CUDA device (MEMTUNE_TEST_DEVICE=cpu runs the device tests on the CPU)")
