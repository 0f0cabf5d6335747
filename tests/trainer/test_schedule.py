"""Lamini's learning rate -> the experts' step and working set (tuning/schedule.py), without a model."""

from __future__ import annotations

import math

import pytest

from memtune.spec import parse_finetune_args
from memtune.trainer.tuning.schedule import MARGIN, expert_rate, plan_schedule, updates_needed

# Lamini's documented recipes (docs, "Memory Tuning") with the size of data each is for.
RECIPES = {
    "small": ({"max_steps": 50, "r_value": 32, "learning_rate": 3e-4}, 15),
    "pdf-800": ({"max_steps": 500, "learning_rate": 9e-5}, 800),
    "text2sql": ({"max_steps": 500, "learning_rate": 1e-5, "r_value": 16, "gradient_accumulation_steps": 1}, 122),
    "facts-10k": ({"max_steps": 10000, "learning_rate": 3e-4, "r_value": 64, "gradient_accumulation_steps": 4}, 10000),
    "defaults": ({}, 15),
}


def test_lamini_default_rate_is_the_reference_step_at_every_rank():
    assert expert_rate(9e-4, 16) == pytest.approx(1e-2)  # revision 4's README recipe, now Lamini's default
    for rank in (8, 16, 32, 64):
        assert expert_rate(9e-4, rank) * rank == pytest.approx(0.16)
    assert updates_needed(expert_rate(9e-4, 64), 64) == 20


def test_lower_rates_step_slower_but_compressed():
    rates = [1e-6, 1e-5, 9e-5, 3e-4, 9e-4, 1e-2]
    steps = [expert_rate(rate, 32) for rate in rates]
    assert steps == sorted(steps)  # the user's rate still orders runs
    assert expert_rate(9e-6, 32) / expert_rate(9e-4, 32) == pytest.approx(0.1)  # 100x lower rate: 10x smaller step
    assert updates_needed(expert_rate(1e-2, 16), 16) == 20  # a larger step than the reference is no faster


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_gives_each_fact_its_updates_within_max_steps(name):
    finetune, facts = RECIPES[name]
    args = parse_finetune_args(finetune)
    plan = plan_schedule(args, batch_size=16, questions=facts)
    assert plan.facts_per_step == 16 * plan.micro_batches >= 16 * args.gradient_accumulation_steps
    assert plan.updates_per_fact <= args.max_steps
    budget = plan.facts_per_step * args.max_steps
    assert budget >= facts * plan.updates_per_fact * MARGIN or plan.facts_per_step >= facts
    assert plan.trainer_args(args).learning_rate == plan.expert_lr
    assert plan.trainer_args(args).gradient_accumulation_steps == plan.micro_batches
    assert plan.trainer_args(args).max_steps == args.max_steps


def test_the_working_set_grows_only_when_the_budget_needs_it():
    args = parse_finetune_args({"max_steps": 500, "learning_rate": 9e-5})  # Lamini's 800+ facts recipe
    assert plan_schedule(args, 16, 100).micro_batches == 2  # 100 facts fit at 32 per update
    large = plan_schedule(args, 16, 800)
    assert large.micro_batches == math.ceil(math.ceil(800 * large.updates_per_fact * MARGIN / 500) / 16) > 2
    tight = plan_schedule(parse_finetune_args({"max_steps": 1}), 16, 40)  # cannot fit: every fact at once
    assert tight.facts_per_step >= 40
