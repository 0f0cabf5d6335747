"""Plain LoRA fine-tuning (peft) on the same facts, for the time-to-recall comparison with MoME.

    .venv/bin/python bench/lora_baseline.py --facts bench/results/synthetic-200/facts.jsonl \
        --minutes 30 --out bench/results/synthetic-200/lora.json

The trainer is the ladder's `lora` rung (memtune.evaluation.lora): full prompt + answer sequences through the whole
model, loss on the answer tokens (+ end-of-turn) only, AdamW, rank 16 / alpha 32 on every attention and MLP
projection. After every `--eval-every` seconds of training, recall = share of facts whose every answer token is the
argmax under teacher forcing (what greedy exact match needs). Stops at 99% recall or after `--minutes` of training;
evaluation time is not counted. The output JSON holds the curve and `seconds_to_99` (null: not reached).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memtune.data import read_examples
from memtune.evaluation.causal import teacher_forced_predictions
from memtune.evaluation.lora import LoraResult, LoraSettings, train_lora

TARGET = 0.99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--eval-every", type=float, default=120, help="seconds of training between recall checks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    facts = read_examples(str(options.facts))
    questions, answers = [f.input for f in facts], [f.output for f in facts]
    curve: list[dict[str, float]] = []

    def recall(result: LoraResult) -> float:
        picks = teacher_forced_predictions(result.model, result.tokenizer, questions, answers, batch_size=32)
        return sum(pick == gold for pick, gold in picks) / len(picks)

    def checkpoint(step: int, seconds: float, result: LoraResult) -> bool:
        due = not curve or seconds >= curve[-1]["seconds"] + options.eval_every or seconds >= 60 * options.minutes
        if due:
            curve.append({"seconds": seconds, "step": step, "recall": recall(result), "loss": result.losses[-1]})
            print(curve[-1], flush=True)
        return bool(curve) and (curve[-1]["recall"] >= TARGET or seconds >= 60 * options.minutes)

    settings = LoraSettings(steps=10**9, learning_rate=options.lr, batch_size=options.batch)
    train_lora("smollm2-135m-instruct", facts, settings, checkpoint)
    reached = next((p["seconds"] for p in curve if p["recall"] >= TARGET), None)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(
        json.dumps(
            {
                "curve": curve,
                "seconds_to_99": reached,
                "cap_minutes": options.minutes,
                "lr": options.lr,
                "eval_every": options.eval_every,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
