"""Routing keys: the chat prompt's tokens, which of them spell the question, and the key pooled over them.

The key of a question is the mean hidden state entering `key_layer` over the *question's own tokens* (not the chat
template), L2-normalised. Training computes it in the frozen pass, generation inside the prefill, calibration and
evaluation with `question_keys`: the same tokens and the same pooling everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from memtune.trainer.mome.architecture import architecture
from memtune.trainer.mome.base import LoadedModel, chat_prompt, decoder_layers


@dataclass
class PromptTokens:
    ids: list[int]
    question_mask: list[bool]
    """True on the tokens that spell the question itself."""
    offsets: list[tuple[int, int]]
    """Each token's character span in the chat prompt."""
    question_start: int
    """Where the (stripped) question begins in the chat prompt."""


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> PromptTokens:
    """Chat-prompt tokens, marking those inside the question's character span."""
    prompt = chat_prompt(tokenizer, question)
    text = question.strip()
    start = prompt.rfind(text)
    if not text or start < 0:
        raise ValueError(f"question {question!r} does not appear verbatim in its chat prompt")
    end = start + len(text)
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    mask = [begin < end and stop > start for begin, stop in encoding["offset_mapping"]]
    return PromptTokens(list(encoding["input_ids"]), mask, list(encoding["offset_mapping"]), start)


def answer_tokens(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """The tokens greedy decoding must produce: the answer, then end-of-turn (the chat's eos)."""
    return [*tokenizer(answer, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


@contextlib.contextmanager
def capture_layer_inputs(model: torch.nn.Module, layer_ids: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden states entering each of `layer_ids` during the forward passes inside the block."""
    captured: dict[int, torch.Tensor] = {}
    layers = decoder_layers(model)
    handles = []
    for layer_id in set(layer_ids):

        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...], layer_id: int = layer_id) -> None:
            captured[layer_id] = args[0]

        handles.append(layers[layer_id].register_forward_pre_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def pool_keys(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over positions, L2-normalised: (B, T, d), (B, T) bool -> (B, d)."""
    weights = mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, d)
    return torch.nn.functional.normalize(mean, dim=-1)


def right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


@torch.no_grad()
def question_keys(base: LoadedModel, questions: Sequence[str], key_layer: int, batch_size: int = 32) -> torch.Tensor:
    """Routing keys of questions: (N, d). Right padding is harmless: attention is causal and pads come last."""
    keys = []
    for start in range(0, len(questions), batch_size):
        prompts = [tokenize_prompt(base.tokenizer, q) for q in questions[start : start + batch_size]]
        ids = right_pad([p.ids for p in prompts], base.tokenizer.pad_token_id).to(base.device)  # (B, T)
        mask = right_pad([[int(m) for m in p.question_mask] for p in prompts], 0).bool().to(base.device)  # (B, T)
        with capture_layer_inputs(base.model, [key_layer]) as captured, _stop_after(base.model, key_layer):
            architecture(base.model).backbone(input_ids=ids)
        keys.append(pool_keys(captured[key_layer].float(), mask).cpu())  # float32 on the host, for faiss
    return torch.cat(keys)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the needed layer input is captured."""


@contextlib.contextmanager
def _stop_after(model: torch.nn.Module, layer_id: int) -> Iterator[None]:
    """Skip the layers above `layer_id`: only its input is needed, so the rest would be wasted work."""

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        raise _Stop

    handle = decoder_layers(model)[layer_id].register_forward_pre_hook(hook)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()
