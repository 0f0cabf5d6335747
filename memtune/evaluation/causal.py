"""Greedy answers and teacher-forced token predictions of a plain transformers causal LM (base or LoRA-wrapped).

Both build the exact sequences the engine trains on: `chat_prompt(question)` tokens, then the answer's tokens, then
end-of-turn (the tokenizer's eos, `<|im_end|>` for SmolLM2).

Greedy decoding (the ladder's documented setting): `do_sample=False`, at most `max_new_tokens` new tokens (default
128), stopping at the first end-of-turn token; the answer is the decoded new tokens without special tokens, stripped
of surrounding whitespace.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from memtune.trainer.mome.base import chat_prompt

DEFAULT_MAX_NEW_TOKENS = 128


def _prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    return list(tokenizer(chat_prompt(tokenizer, question), add_special_tokens=False)["input_ids"])


def _answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    return list(tokenizer(answer, add_special_tokens=False)["input_ids"])


def training_sequence(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels): prompt + answer + eos, with the prompt's labels masked (-100): loss on the answer only."""
    prompt = _prompt_ids(tokenizer, question)
    target = [*_answer_ids(tokenizer, answer), tokenizer.eos_token_id]
    return prompt + target, [-100] * len(prompt) + target


def _pad(rows: Sequence[list[int]], value: int, *, left: bool) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> list[str]:
    """The documented greedy decoding, batched with left padding so every row's prompt ends at the same column."""
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [_prompt_ids(tokenizer, q) for q in questions[start : start + batch_size]]
        ids = _pad(prompts, tokenizer.pad_token_id, left=True).to(model.device)  # (B, P)
        attention = _pad([[1] * len(p) for p in prompts], 0, left=True).to(model.device)  # (B, P)
        out = model.generate(
            input_ids=ids,
            attention_mask=attention,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B, P + new)
        answers += [text.strip() for text in tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)]
    return answers


@torch.no_grad()
def teacher_forced_predictions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[tuple[list[int], list[int]]]:
    """Per item, (argmax tokens, gold answer tokens): the model's pick at each answer position given the gold prefix.

    The target is the answer's tokens without end-of-turn, as in the knowledge-editing papers' token accuracy.
    """
    results: list[tuple[list[int], list[int]]] = []
    for start in range(0, len(questions), batch_size):
        chunk = list(zip(questions[start : start + batch_size], answers[start : start + batch_size], strict=True))
        prompts = [_prompt_ids(tokenizer, q) for q, _ in chunk]
        targets = [_answer_ids(tokenizer, a) for _, a in chunk]
        ids = _pad([p + t for p, t in zip(prompts, targets, strict=True)], tokenizer.pad_token_id, left=False)
        ids = ids.to(model.device)
        logits = model(input_ids=ids).logits  # (B, T, V); right padding is harmless for a causal model
        picks = logits.argmax(-1)  # (B, T)
        for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
            p, a = len(prompt), len(target)
            # The token at position p + i is predicted from position p + i - 1.
            results.append((picks[row, p - 1 : p - 1 + a].tolist(), target))
    return results
