"""Fixtures of the entrypoint tests: a tiny random Llama (2 layers, hidden 64) with the default model's tokenizer,
built once per session, and job manifests that train it on the six test facts in well under a second per step."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.storage.s3server import s3_env, s3_server  # noqa: F401 - fixtures, imported to register them

FACTS = Path(__file__).parents[1] / "trainer" / "data" / "facts.jsonl"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from memtune.trainer.mome.base import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.5,  # at the usual 0.02 the tied embeddings cap every logit near ±1: nothing is learnable
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def job_writer(model: Path, folder: Path) -> Callable[..., Path]:
    """A function writing manifests (into `folder`) that train `model` on the facts into `output`."""

    def make(output: str, name: str = "tiny", memory: dict[str, Any] | None = None, **finetune: Any) -> Path:
        document = {
            "apiVersion": "memtune.dev/v1alpha1",
            "kind": "MemoryTuningJob",
            "metadata": {"name": name},
            "spec": {
                "baseModel": str(model),
                "dataset": {"uri": str(FACTS)},
                "finetuneArgs": {
                    "max_steps": 40,
                    "learning_rate": 0.0225,  # the tiny model's rank-8 experts step at 0.1 (schedule.py)
                    "index_method": "IndexFlatL2",
                    "r_value": 8,
                    "save_steps": 5,
                    "max_length": 256,
                    **finetune,
                },
                "memory": {"numExpertLayers": 1, "keyLayer": 0, "batchSize": 2, "gate": "always", **(memory or {})},
                "output": {"uri": output},
            },
        }
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    return make


def subprocess_env(folder: Path) -> dict[str, str]:
    """Environment of a trainer subprocess: this checkout importable, its scratch in `folder`."""
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MEMTUNE_SCRATCH": str(folder / "scratch"),
        "OMP_NUM_THREADS": "1",  # two ranks on a shared 2-core machine
    }


@pytest.fixture
def make_job(tiny_model: Path, tmp_path: Path) -> Callable[..., Path]:
    return job_writer(tiny_model, tmp_path)


@pytest.fixture
def trainer_env(tmp_path: Path) -> dict[str, str]:
    return subprocess_env(tmp_path)
