"""The `lora` rung: standard peft LoRA on the same pairs, at the same number of optimizer steps as the MoME job.

Equal footing with the job: `finetuneArgs.max_steps` updates, each over `memory.batchSize *
gradient_accumulation_steps` examples (drawn from a reshuffled pass over the data, like epochs), AdamW at the job's
`learning_rate` unless told otherwise, loss on the answer tokens (+ end-of-turn) only. The adapter is the usual
recipe for memorisation: rank 16, alpha 32, no dropout, on every attention and MLP projection of every layer.

    from memtune.evaluation.lora import LoraSettings, train_lora
    result = train_lora("smollm2-135m-instruct", examples, LoraSettings(steps=100, learning_rate=1e-3, batch_size=16))
    result.answer(["What year was the Brennock Accord signed?"])

`checkpoint(step, training_seconds, result)` is called after each update; it may evaluate (its time is not counted
as training time) and returns True to stop early: bench/lora_baseline.py draws a time-to-recall curve with it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from memtune.data import Example
from memtune.evaluation import causal
from memtune.spec import MemoryTuningJobSpec
from memtune.trainer.mome.base import load_base_model

log = logging.getLogger(__name__)

DEFAULT_LORA_LR = 1e-3
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    steps: int
    """Optimizer updates (equal to the MoME job's max_steps)."""
    learning_rate: float
    batch_size: int
    """Examples per optimizer update."""
    rank: int = 16
    alpha: int = 32
    seed: int = 0

    @classmethod
    def matching(cls, spec: MemoryTuningJobSpec, learning_rate: float | None = None) -> LoraSettings:
        """LoRA on the job's footing: same steps, examples per step and seed; LoRA's own learning rate."""
        args = spec.finetuneArgs
        return cls(
            steps=args.max_steps,
            learning_rate=learning_rate or DEFAULT_LORA_LR,
            batch_size=spec.memory.batchSize * args.gradient_accumulation_steps,
            seed=spec.memory.seed,
        )


@dataclass
class LoraResult:
    model: PeftModel
    tokenizer: object
    losses: list[float] = field(default_factory=list)
    """Mean answer loss of each step's batch, before its update."""
    seconds: float = 0.0
    """Training time: the updates only, not checkpoint evaluations."""

    def answer(self, questions: Sequence[str], *, max_new_tokens: int = causal.DEFAULT_MAX_NEW_TOKENS) -> list[str]:
        return causal.greedy_answers(self.model, self.tokenizer, questions, max_new_tokens=max_new_tokens)

    def predict_tokens(self, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        return causal.teacher_forced_predictions(self.model, self.tokenizer, questions, answers)


def _batches(count: int, size: int, rng: random.Random) -> Iterator[list[int]]:
    """Endless batches of indices: each pass over the data is a fresh shuffle (a batch may span two passes)."""
    order: list[int] = []
    while True:
        while len(order) < size:
            extra = list(range(count))
            rng.shuffle(extra)
            order += extra
        yield order[:size]
        order = order[size:]


def _collate(sequences: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.tensor([i + [pad_id] * (width - len(i)) for i, _ in sequences])  # (B, T)
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in sequences])  # (B, T)
    attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in sequences])  # (B, T)
    return ids, labels, attention


def train_lora(
    base_model: str,
    train: Sequence[Example],
    settings: LoraSettings,
    checkpoint: Callable[[int, float, LoraResult], bool] | None = None,
    *,
    device: torch.device | str = "cpu",
) -> LoraResult:
    """Fit a fresh LoRA adapter on `train` for `settings.steps` updates (fewer if `checkpoint` says stop), on
    `device` with float32 weights (the usual LoRA recipe; bf16 adapters would be a different baseline)."""
    if not train:
        raise ValueError("LoRA needs at least one training pair")
    torch.manual_seed(settings.seed)
    base = load_base_model(base_model)  # a private copy: the adapter must not leak into other rungs
    base.model.to(device)
    config = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=list(TARGET_MODULES)
    )
    model = get_peft_model(base.model, config)
    tokenizer = base.tokenizer
    sequences = [causal.training_sequence(tokenizer, e.input, e.output) for e in train]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate)
    batches = _batches(len(sequences), settings.batch_size, random.Random(settings.seed))  # noqa: S311 - shuffling, not secrets
    result = LoraResult(model, tokenizer)
    model.train()
    for step in range(1, settings.steps + 1):
        started = time.monotonic()
        batch = _collate([sequences[i] for i in next(batches)], tokenizer.pad_token_id)
        ids, labels, attention = (tensor.to(model.device) for tensor in batch)
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss  # mean over answer tokens
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result.seconds += time.monotonic() - started
        result.losses.append(loss.item())
        if step % 10 == 0 or step == settings.steps:
            log.info("lora step %d/%d loss %.4f", step, settings.steps, loss.item())
        if checkpoint is not None:
            model.eval()
            stop = checkpoint(step, result.seconds, result)
            model.train()
            if stop:
                break
    model.eval()
    return result
