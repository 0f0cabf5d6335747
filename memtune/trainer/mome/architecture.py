"""Where a causal LM keeps what memtune touches, and how to run its top blocks on an answer region.

    arch = architecture(model)                     # computed once per model object
    arch.layers[i], arch.mlp(i)                    # decoder block i; the module whose output experts add to
    arch.backbone(input_ids=ids, cache=cache)      # embeddings, every block, final norm (no LM head)
    arch.run_blocks(hidden, positions, attend, cache, start)   # blocks start.. on an answer region (region.py)
    arch.logits(hidden)                            # final norm, LM head, logit soft-capping

From transformers' own API, the same for every family: the backbone (`get_decoder()`), the LM head
(`get_output_embeddings()`), each layer's attention kind and window (`layer_types` / `sliding_window`, read by the
cache's own `get_layer_types_and_kwargs`), masks in the format the model's attention implementation expects
(`ALL_MASK_ATTENTION_FUNCTIONS`, as `create_causal_mask` builds them), and which keywords a block takes (its forward
signature: the KV cache is `cache` in most families, `layer_past` in GPT-NeoX and Falcon).
Named here, because transformers has no accessor for them:
- the block stack: the backbone's ModuleList of `num_hidden_layers` blocks (`layers`; `h` in GPT-2 and Falcon);
- the final norm: `norm` | `ln_f` (GPT-2, Falcon) | `final_layer_norm` (GPT-NeoX);
- the MLP: `mlp` (a dense MLP, or the sparse MoE block of Mixtral / Qwen-MoE, shared expert included);
- positions: rotary (`rotary_emb` on the backbone, one table per layer type in Gemma 3), absolute (GPT-2: added to
  the embeddings below every block, so blocks need nothing), ALiBi (Falcon with `alibi=True`: a bias folded into the
  mask exactly as FalconModel folds it).

Tested families (tests/trainer/test_families.py, tiny random-weight models): Llama, Mistral, Mixtral, Qwen2,
Qwen2-MoE, Qwen3, Qwen3-MoE, Gemma 2, Gemma 3 (text-only, and the image-text wrapper, used on text), Phi-3, OLMo 2,
GPT-NeoX, GPT-2, Falcon (7B and 40B layouts, rotary; and ALiBi). Attention implementations: eager and sdpa.
"""

from __future__ import annotations

import functools
import inspect
import math
import weakref
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    causal_mask_function,
    sliding_window_causal_mask_function,
)

from memtune.spec import ModelError

_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
_MLP_NAMES = ("mlp", "feed_forward")
_CACHE_KEYWORDS = ("cache", "layer_past", "past_key_values")
_ATTENTION_KINDS = ("full_attention", "sliding_attention")


class PrefixCache(Protocol):
    """What a block's attention calls on its cache: prepend the cached columns to this chunk's keys/values."""

    def update(
        self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True, eq=False)
class Architecture:
    """One causal LM's structure as memtune uses it; build with `architecture(model)`."""

    model_config: Any
    """The model's own config (its text part is `config`). No reference to the model: the per-model cache is weak."""
    backbone: nn.Module
    """Embeddings, blocks and final norm; called with `input_ids` and an optional `cache` (a transformers Cache)."""
    layers: nn.ModuleList
    norm: nn.Module
    head: nn.Module
    layer_types: tuple[str, ...]
    """Per layer: "full_attention" or "sliding_attention"."""
    windows: tuple[int | None, ...]
    """Per layer: the sliding window (tokens) of a sliding layer, else None."""
    positions: Literal["rotary", "absolute", "alibi"]
    rotary_per_type: bool
    """The rotary module takes the layer type (Gemma 3: local and global tables)."""

    @property
    def config(self) -> Any:
        return self.model_config.get_text_config(decoder=True)

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    def mlp(self, layer_id: int) -> nn.Module:
        """Block `layer_id`'s MLP: its input (B, T, d) is the expert's input, its output gets the expert's delta."""
        block = self.layers[layer_id]
        for name in _MLP_NAMES:
            module = getattr(block, name, None)
            if isinstance(module, nn.Module):
                return module
        raise ModelError(f"{type(block).__name__}: no MLP found (looked for {', '.join(_MLP_NAMES)})")

    @staticmethod
    def new_cache() -> DynamicCache:
        """A cache that keeps every position of every layer.

        Not `DynamicCache(config=...)`: that one keeps only the last window of a sliding layer, and the prefix cache
        needs all of it (the region forward applies the window itself, through the mask).
        """
        return DynamicCache()

    @staticmethod
    def cached(cache: DynamicCache, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values `cache` holds for `layer_id`: (B, kv_heads, T, head_dim) each."""
        layer = cache.layers[layer_id]
        return layer.keys, layer.values

    def logits(self, hidden: torch.Tensor, *, normed: bool = False) -> torch.Tensor:
        """(..., d) hidden states leaving the last block -> (..., vocab) logits, as the model's own forward makes them
        (final norm, LM head, then Gemma's tanh soft-capping where the model's own config sets
        `final_logit_softcapping`: Gemma2/3ForCausalLM apply it, Gemma 3's multimodal wrapper does not).
        normed: `hidden` already passed the final norm (the backbone's output)."""
        logits = self.head(hidden if normed else self.norm(hidden))
        cap = getattr(self.model_config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def run_blocks(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        attend: torch.Tensor,
        cache: PrefixCache,
        start: int,
    ) -> torch.Tensor:
        """Run blocks `start`.. on chunks that continue cached prefixes; return the last block's output (B, A, d).

        hidden (B, A, d): states entering block `start`; positions (B, A): their absolute positions;
        attend (B, K + A) bool: which key columns are real tokens: K cached columns (left-padded, so every prefix
        ends at column K-1, and a column's distance to a query is the positions' distance), then the A chunk columns;
        cache: prepends each layer's K cached columns (`PrefixCache`). Queries attend causally within the chunk and
        to the real cached columns, within the window on sliding layers.
        """
        positions, attend = positions.to(hidden.device), attend.to(hidden.device)
        rows, length = positions.shape
        offset = attend.shape[1] - length
        top = range(start, len(self.layers))
        alibi = self._alibi(attend, hidden.dtype) if self.positions == "alibi" else None
        masks = {
            window: self._mask(window, rows, length, offset, attend, hidden, alibi)
            for window in {self.windows[layer] for layer in top}
        }
        rotary = self._rotary(hidden, positions, {self.layer_types[layer] for layer in top})
        for layer in top:
            block, kind = self.layers[layer], self.layer_types[layer]
            keywords = _keywords(type(block))
            arguments: dict[str, Any] = {"attention_mask": masks[self.windows[layer]]}
            arguments[next(name for name in _CACHE_KEYWORDS if name in keywords)] = cache
            if "position_embeddings" in keywords:
                arguments["position_embeddings"] = rotary[kind] if rotary is not None else None
            if "position_ids" in keywords:
                arguments["position_ids"] = positions
            if "alibi" in keywords:
                arguments["alibi"] = alibi
            out = block(hidden, **arguments)
            hidden = out[0] if isinstance(out, tuple) else out  # Falcon's blocks return (hidden, attention weights)
        return hidden

    def _mask(
        self,
        window: int | None,
        rows: int,
        length: int,
        offset: int,
        attend: torch.Tensor,
        hidden: torch.Tensor,
        alibi: torch.Tensor | None,
    ) -> Any:
        """The 4D mask of a causal (window None) or sliding-window layer, made by transformers' mask function for this
        attention implementation with the arguments `create_causal_mask` / `create_sliding_window_causal_mask` pass."""
        function = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
        implementation = self.config._attn_implementation
        if implementation not in ALL_MASK_ATTENTION_FUNCTIONS:
            raise ModelError(f"attention implementation {implementation!r} is not supported by the region forward")
        mask = ALL_MASK_ATTENTION_FUNCTIONS[implementation](
            batch_size=rows,
            q_length=length,
            kv_length=attend.shape[1],
            q_offset=offset,
            kv_offset=0,
            mask_function=function,
            attention_mask=attend,
            allow_is_causal_skip=False,
            local_size=window,
            dtype=hidden.dtype,
            config=self.config,
            device=hidden.device,
        )
        if alibi is None:
            return mask
        # FalconModel's fold: a float mask carrying the ALiBi bias, scaled by 1/sqrt(head_dim), -inf where masked.
        lowest = torch.finfo(hidden.dtype).min
        if mask.dtype == torch.bool:
            mask = torch.where(mask, torch.zeros((), dtype=hidden.dtype, device=mask.device), lowest)
        heads = self.config.num_attention_heads
        bias = alibi.reshape(rows, heads, *alibi.shape[1:]) / math.sqrt(self.hidden_size // heads)
        return torch.masked_fill(bias, mask < -1, lowest)

    def _alibi(self, attend: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Falcon's ALiBi tensor (B·heads, 1, K + A) over the real columns, positions counted from each row's first."""
        from transformers.models.falcon.modeling_falcon import build_alibi_tensor

        return build_alibi_tensor(attend.long(), self.config.num_attention_heads, dtype=dtype)

    def _rotary(
        self, hidden: torch.Tensor, positions: torch.Tensor, kinds: set[str]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """(cos, sin) per attention kind, from the backbone's rotary module, or None without one."""
        rotary = getattr(self.backbone, "rotary_emb", None)
        if self.positions != "rotary" or rotary is None:
            return None
        if self.rotary_per_type:
            return {kind: rotary(hidden, positions, kind) for kind in kinds}
        table = rotary(hidden, positions)
        return dict.fromkeys(kinds, table)


@functools.cache
def _keywords(block: type[nn.Module]) -> frozenset[str]:
    """The keyword arguments a block class's forward takes (its signature); it must take a KV cache."""
    names = frozenset(inspect.signature(block.forward).parameters)
    if not names & set(_CACHE_KEYWORDS):
        raise ModelError(f"{block.__name__}.forward takes no KV cache argument ({', '.join(_CACHE_KEYWORDS)})")
    return names


_CACHE: weakref.WeakKeyDictionary[nn.Module, Architecture] = weakref.WeakKeyDictionary()


def architecture(model: PreTrainedModel) -> Architecture:
    """The structure of `model` (computed once per model object).

    Raises ModelError naming what is missing for a model whose structure memtune cannot use.
    """
    found = _CACHE.get(model)
    if found is None:
        found = _CACHE[model] = _describe(model)
    return found


def _describe(model: PreTrainedModel) -> Architecture:
    name = type(model).__name__
    config = model.config.get_text_config(decoder=True)
    depth = getattr(config, "num_hidden_layers", None)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(backbone, nn.Module) or backbone is model:
        raise ModelError(f"{name}: no decoder backbone (model.get_decoder() found none)")
    stacks = [child for child in backbone.children() if isinstance(child, nn.ModuleList) and len(child) == depth]
    if len(stacks) != 1:
        raise ModelError(f"{name}: no stack of {depth} decoder blocks in {type(backbone).__name__}")
    norm = next((getattr(backbone, n) for n in _NORM_NAMES if isinstance(getattr(backbone, n, None), nn.Module)), None)
    if norm is None:
        raise ModelError(f"{name}: no final norm on {type(backbone).__name__} (looked for {', '.join(_NORM_NAMES)})")
    head = model.get_output_embeddings()
    if head is None:
        raise ModelError(f"{name}: no LM head (get_output_embeddings() is None)")
    types, kwargs = get_layer_types_and_kwargs(config)
    unknown = sorted(set(types) - set(_ATTENTION_KINDS))
    if unknown:
        raise ModelError(f"{name}: layer types {unknown} are not supported (only {', '.join(_ATTENTION_KINDS)})")
    keywords = _keywords(type(stacks[0][0]))  # blocks that take no KV cache fail here
    rotary = getattr(backbone, "rotary_emb", None)
    positions: Literal["rotary", "absolute", "alibi"]
    if getattr(config, "alibi", False) or ("alibi" in keywords and config.model_type != "falcon"):
        if config.model_type != "falcon":
            raise ModelError(f"{name}: ALiBi is supported for Falcon only")
        positions = "alibi"
    elif rotary is not None:
        positions = "rotary"
    elif "position_embeddings" in keywords:
        raise ModelError(f"{name}: its blocks take rotary position embeddings but the backbone has no rotary_emb")
    else:
        positions = "absolute"
    arch = Architecture(
        model_config=model.config,
        backbone=backbone,
        layers=stacks[0],
        norm=norm,
        head=head,
        layer_types=tuple(types),
        windows=tuple(k.get("sliding_window") for k in kwargs),
        positions=positions,
        rotary_per_type=rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters,
    )
    for layer in range(len(arch.layers)):
        arch.mlp(layer)  # every block must have one: fail at load, not in the middle of training
    return arch
