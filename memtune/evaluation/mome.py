"""The `mome` rung's extras on top of the engine's generator: its loss curve and teacher-forced token predictions.

Teacher forcing must apply the experts exactly where generation does (experts.py): not on the prompt, except its
last token, then on every answer token. So it runs in two chunks, like generation's prefill and decoding:

    prompt ids (B, P)   -> base model, experts on the last position only (last_only=True), KV cache kept
    answer ids (B, A-1) -> experts on every position (last_only=False), reading that cache

and the argmax at prompt position P-1 and answer positions 0..A-2 predicts answer tokens 0..A-1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache

from memtune.trainer.mome.experts import ExpertHooks
from memtune.trainer.mome.generation import Generator
from memtune.trainer.mome.keys import question_keys, tokenize_prompt

LOSS_CURVE_NAME = "loss_curve.json"  # written by memtune.trainer.mome.artifacts.save_run


def read_loss_curve(run_dir: str | Path) -> list[float]:
    """The run's answer loss per optimizer step (index i is step i + 1)."""
    points = json.loads((Path(run_dir) / LOSS_CURVE_NAME).read_text(encoding="utf-8"))
    return [float(point["loss"]) for point in sorted(points, key=lambda point: point["step"])]


class MomeTokenPredictor:
    """Teacher-forced argmax tokens of a memory-tuned model, routed as generation routes."""

    def __init__(self, generator: Generator):
        if generator.memory is None:
            raise ValueError("teacher forcing through memory needs a run folder, not a plain base model")
        self.base = generator.base
        self.memory = generator.memory
        self.router = generator.memory.router()
        self.hooks = ExpertHooks(self.base.model, self.memory.layout.expert_layers)

    @torch.no_grad()
    def _one(self, question: str, target: list[int]) -> list[int]:
        prompt = torch.tensor([tokenize_prompt(self.base.tokenizer, question).ids])  # (1, P)
        routing = self.router(question_keys(self.base, [question], self.memory.layout.key_layer), [question])
        a, b = self.memory.params["A"], self.memory.params["B"]
        cache = DynamicCache(config=self.base.model.config)
        with self.hooks.active(a, b, routing.route, last_only=True):
            first = self.base.model(input_ids=prompt, cache=cache, use_cache=True).logits[:, -1]  # (1, V)
        picks = [int(first.argmax(-1))]
        if len(target) > 1:
            answer = torch.tensor([target[:-1]])  # (1, A-1): the gold prefix
            with self.hooks.active(a, b, routing.route, last_only=False):
                logits = self.base.model(input_ids=answer, cache=cache, use_cache=True).logits  # (1, A-1, V)
            picks += logits[0].argmax(-1).tolist()
        return picks

    def predict_tokens(self, questions: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """Per item, (argmax tokens, gold answer tokens without end-of-turn); one item at a time (no padding)."""
        results = []
        for question, answer in zip(questions, answers, strict=True):
            target = list(self.base.tokenizer(answer, add_special_tokens=False)["input_ids"])
            results.append((self._one(question, target), target))
        return results
