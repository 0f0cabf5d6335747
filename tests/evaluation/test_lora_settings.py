"""The LoRA rung's footing: the job's steps, examples per step and seed, at LoRA's own learning rate."""

from __future__ import annotations

from memtune.evaluation.lora import DEFAULT_LORA_LR, LoraSettings
from memtune.spec import parse_job

JOB = parse_job(
    {
        "metadata": {"name": "facts"},
        "spec": {
            "dataset": {"uri": "facts.jsonl"},
            "output": {"uri": "runs/facts"},
            "finetuneArgs": {"max_steps": 120, "learning_rate": 1e-2, "gradient_accumulation_steps": 3},
            "memory": {"batchSize": 8, "seed": 5},
        },
    }
)


def test_matching_settings_take_the_jobs_footing_but_not_its_expert_rate() -> None:
    settings = LoraSettings.matching(JOB.spec)
    assert (settings.steps, settings.batch_size, settings.seed) == (120, 24, 5)
    assert settings.learning_rate == DEFAULT_LORA_LR != JOB.spec.finetuneArgs.learning_rate
    assert LoraSettings.matching(JOB.spec, 3e-4).learning_rate == 3e-4
