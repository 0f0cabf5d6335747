"""The frozen pass: run the base model once and keep only what routing and training need.

For each example this gives
- the routing key: mean hidden state over the *question's own tokens* (not the chat template) at `key_layer`,
  L2-normalised; generation computes the same key from the prompt alone;
- the prefix cache: keys/values of every expert layer at the prompt positions before the last one (experts never
  touch them, see experts.py), so training attends to them without recomputing;
- the answer region's hidden states at the first expert layer's input and the answer tokens to predict.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from memtune.trainer.models import LoadedModel, chat_prompt, decoder_layers


@dataclass
class PromptTokens:
    ids: list[int]
    question_mask: list[bool]
    """True on the tokens that spell the question itself."""
    offsets: list[tuple[int, int]]
    """Each token's character span in the chat prompt."""
    question_start: int
    """Where the (stripped) question begins in the chat prompt."""


@dataclass
class Encoded:
    """One training example after the frozen pass."""

    key: torch.Tensor
    """(d,) normalised routing key."""
    prefix_k: torch.Tensor
    """(L, kv_heads, P-1, head_dim) keys of every layer from the first expert layer up, at the prompt minus its
    last token."""
    prefix_v: torch.Tensor
    """(L, kv_heads, P-1, head_dim) values, likewise."""
    region: torch.Tensor
    """(A, d) hidden states entering the first expert layer at the last prompt token and the answer tokens but one."""
    targets: torch.Tensor
    """(A,) answer tokens followed by end-of-turn: what the region must predict."""


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
        ids = right_pad([p.ids for p in prompts], base.tokenizer.pad_token_id)  # (B, T)
        mask = right_pad([[int(m) for m in p.question_mask] for p in prompts], 0).bool()  # (B, T)
        with capture_layer_inputs(base.model, [key_layer]) as captured, _stop_after(base.model, key_layer):
            base.model.model(input_ids=ids)
        keys.append(pool_keys(captured[key_layer], mask))
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


@torch.no_grad()
def encode_examples(
    base: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    key_layer: int,
    first: int,
    batch_size: int = 16,
) -> list[Encoded]:
    """Run the base model over (question, answer) pairs once and keep keys, prefix caches (layers `first` and up)
    and answer regions (entering layer `first`)."""
    top = range(first, len(decoder_layers(base.model)))
    encoded: list[Encoded] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [tokenize_prompt(base.tokenizer, q) for q, _ in chunk]
        answers = [answer_tokens(base.tokenizer, a) for _, a in chunk]
        ids = right_pad([p.ids + a for p, a in zip(prompts, answers, strict=True)], base.tokenizer.pad_token_id)
        mask = right_pad([[int(m) for m in p.question_mask] for p in prompts], 0).bool()  # (B, P_max)
        cache = DynamicCache(config=base.model.config)
        with capture_layer_inputs(base.model, [key_layer, first]) as captured:
            base.model.model(input_ids=ids, cache=cache, use_cache=True)
        keys = pool_keys(captured[key_layer][:, : mask.shape[1]], mask)  # (B, d)
        kv_k = torch.stack([cache.layers[layer].keys for layer in top], 1)  # (B, L, kv_heads, T, hd)
        kv_v = torch.stack([cache.layers[layer].values for layer in top], 1)
        for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            p, a = len(prompt.ids), len(answer)
            encoded.append(
                Encoded(
                    key=keys[row].clone(),
                    prefix_k=kv_k[row, :, :, : p - 1].clone(),
                    prefix_v=kv_v[row, :, :, : p - 1].clone(),
                    region=captured[first][row, p - 1 : p - 1 + a].clone(),
                    targets=torch.tensor(answer),
                )
            )
    return encoded
