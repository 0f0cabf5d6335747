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

from memtune.trainer.mome.architecture import Architecture, architecture
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
    token_nats: torch.Tensor
    """(P,) float32 surprisal of each chat-prompt token under the base model (nats; 0 for the first and for tokens
    outside the question): what the gate's anchors are made of (anchors.evidence), from this same pass."""


@torch.no_grad()
def encode_examples(
    base: LoadedModel,
    pairs: Sequence[tuple[str, str]],
    key_layer: int,
    first: int,
    batch_size: int = 16,
) -> Iterator[Encoded]:
    """Run the base model over (question, answer) pairs once and yield, in order, their keys, prefix caches (layers
    `first` and up) and answer regions (entering layer `first`); one batch is in memory at a time. The model runs on
    its device; what is yielded is on the host (the key in float32, the rest in the model's dtype)."""
    arch = architecture(base.model)
    top = range(first, len(arch.layers))
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [tokenize_prompt(base.tokenizer, q) for q, _ in chunk]
        answers = [answer_tokens(base.tokenizer, a) for _, a in chunk]
        ids = right_pad([p.ids + a for p, a in zip(prompts, answers, strict=True)], base.tokenizer.pad_token_id)
        ids = ids.to(base.device)  # (B, T)
        mask = right_pad([[int(m) for m in p.question_mask] for p in prompts], 0).bool().to(base.device)  # (B, P_max)
        cache = arch.new_cache()
        with capture_layer_inputs(base.model, [key_layer, first]) as captured:
            final = arch.backbone(input_ids=ids, cache=cache, use_cache=True).last_hidden_state  # (B, T, d), normed
        nats = _question_nats(arch, final, ids, mask)  # (B, P_max) on the host
        keys = pool_keys(captured[key_layer][:, : mask.shape[1]].float(), mask).cpu()  # (B, d)
        kv_k = torch.stack([arch.cached(cache, layer)[0] for layer in top], 1).cpu()  # (B, L, kv_heads, T, hd)
        kv_v = torch.stack([arch.cached(cache, layer)[1] for layer in top], 1).cpu()
        region = captured[first].cpu()  # (B, T, d)
        for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            p, a = len(prompt.ids), len(answer)
            yield Encoded(
                key=keys[row].clone(),
                prefix_k=kv_k[row, :, :, : p - 1].clone(),
                prefix_v=kv_v[row, :, :, : p - 1].clone(),
                region=region[row, p - 1 : p - 1 + a].clone(),
                targets=torch.tensor(answer),
                token_nats=nats[row, :p].clone(),
            )


def _question_nats(arch: Architecture, final: torch.Tensor, ids: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """(B, P) surprisal of the question's tokens, -log p(token t | tokens < t) from the logits at t - 1, on the host;
    0 elsewhere. Computed only where needed: a (question tokens, vocab) block, never (B, T, vocab).
    final (B, T, d): the backbone's normed output; ids (B, T); question (B, P) bool."""
    width = question.shape[1]
    predicting = question[:, 1:]  # (B, P-1): position t - 1 predicts question token t
    nats = torch.zeros(question.shape, dtype=torch.float32)
    if predicting.any():
        logits = arch.logits(final[:, : width - 1][predicting], normed=True).float()  # (n, vocab)
        targets = ids[:, 1:width][predicting]  # (n,)
        picked = -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
        nats[:, 1:][predicting.cpu()] = picked.cpu()
    return nats
