"""The frozen pass: run the base model once and keep only what routing and training need.

For each example this gives
- the routing key: mean hidden state over the *question's own tokens* (not the chat template) at `key_layer`,
  L2-normalised; generation computes the same key from the prompt alone;
- the prefix cache: keys/values of every expert layer at the prompt positions before the last one (experts never
  touch them, see experts.py), so training attends to them without recomputing;
- the answer region's hidden states at the first expert layer's input and the answer tokens to predict.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from memtune.trainer.mome.architecture import architecture
from memtune.trainer.mome.base import LoadedModel
from memtune.trainer.mome.keys import answer_tokens, capture_layer_inputs, pool_keys, right_pad, tokenize_prompt


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


@torch.no_grad()
def encode_examples(
    base: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    key_layer: int,
    first: int,
    batch_size: int = 16,
) -> Iterator[Encoded]:
    """Run the base model over (question, answer) pairs once and yield, in order, their keys, prefix caches (layers
    `first` and up) and answer regions (entering layer `first`); one batch is in memory at a time."""
    arch = architecture(base.model)
    top = range(first, len(arch.layers))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [tokenize_prompt(base.tokenizer, q) for q, _ in chunk]
        answers = [answer_tokens(base.tokenizer, a) for _, a in chunk]
        ids = right_pad([p.ids + a for p, a in zip(prompts, answers, strict=True)], base.tokenizer.pad_token_id)
        mask = right_pad([[int(m) for m in p.question_mask] for p in prompts], 0).bool()  # (B, P_max)
        cache = arch.new_cache()
        with capture_layer_inputs(base.model, [key_layer, first]) as captured:
            arch.backbone(input_ids=ids, cache=cache, use_cache=True)
        keys = pool_keys(captured[key_layer][:, : mask.shape[1]], mask)  # (B, d)
        kv_k = torch.stack([arch.cached(cache, layer)[0] for layer in top], 1)  # (B, L, kv_heads, T, hd)
        kv_v = torch.stack([arch.cached(cache, layer)[1] for layer in top], 1)
        for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            p, a = len(prompt.ids), len(answer)
            yield Encoded(
                key=keys[row].clone(),
                prefix_k=kv_k[row, :, :, : p - 1].clone(),
                prefix_v=kv_v[row, :, :, : p - 1].clone(),
                region=captured[first][row, p - 1 : p - 1 + a].clone(),
                targets=torch.tensor(answer),
            )
