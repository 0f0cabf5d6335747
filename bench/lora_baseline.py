"""Plain LoRA fine-tuning (peft) on the same facts, for the time-to-recall comparison with MoME.

    .venv/bin/python bench/lora_baseline.py --facts bench/results/synthetic-200/facts.jsonl \
        --minutes 30 --out bench/results/synthetic-200/lora.json

Full prompt + answer sequences through the whole model (loss on answer tokens only, as MoME), AdamW, LoRA on every
attention and MLP projection. Every `--eval-every` seconds of training, recall = share of facts whose every
answer token is the greedy argmax under teacher forcing (what exact-match greedy decoding needs). Stops at 99%
recall or after `--minutes`; evaluation time is not counted as training time.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from memtune.trainer.encode import answer_tokens, tokenize_prompt
from memtune.trainer.models import load_base_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def batches(rows: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and labels (B, T) with -100 outside the answers."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    for row, (tokens, prompt_len) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
    return ids, labels


def answer_loss_and_exact(model, ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V): position t predicts token t+1
    targets = labels[:, 1:]
    mask = targets >= 0
    loss = torch.nn.functional.cross_entropy(logits[mask], targets[mask])
    wrong = (logits.argmax(-1) != targets) & mask
    return loss, ~wrong.any(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--eval-every", type=float, default=120, help="seconds of training between recall checks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    base = load_base_model("smollm2-135m-instruct")
    tokenizer = base.tokenizer
    facts = [json.loads(line) for line in options.facts.read_text().splitlines()]
    rows = []
    for fact in facts:
        prompt = tokenize_prompt(tokenizer, fact["input"]).ids
        rows.append((prompt + answer_tokens(tokenizer, fact["output"]), len(prompt)))
    model = get_peft_model(
        base.model, LoraConfig(r=options.rank, lora_alpha=2 * options.rank, target_modules=PROJECTIONS)
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.lr)
    rng = random.Random(0)
    curve = []
    trained = 0.0
    next_eval = 0.0
    step = 0
    while trained < 60 * options.minutes:
        if trained >= next_eval:
            model.eval()
            with torch.no_grad():
                exact = torch.cat(
                    [
                        answer_loss_and_exact(model, *batches(rows[i : i + 32], tokenizer.pad_token_id))[1]
                        for i in range(0, len(rows), 32)
                    ]
                )
            model.train()
            curve.append({"seconds": trained, "step": step, "recall": float(exact.float().mean())})
            print(curve[-1], flush=True)
            if curve[-1]["recall"] >= 0.99:
                break
            next_eval = trained + options.eval_every
        started = time.perf_counter()
        loss, _ = answer_loss_and_exact(model, *batches(rng.sample(rows, options.batch), tokenizer.pad_token_id))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        trained += time.perf_counter() - started
    reached = next((p["seconds"] for p in curve if p["recall"] >= 0.99), None)
    options.out.write_text(
        json.dumps({"curve": curve, "seconds_to_99": reached, "cap_minutes": options.minutes}, indent=2)
    )


if __name__ == "__main__":
    main()
