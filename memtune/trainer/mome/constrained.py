"""Constrained decoding: greedy generation that can only write a JSON object of a given JSON Schema.

    processor = SchemaConstraint(tokenizer, {"type": "object", "properties": {...}, "required": [...]})
    model.generate(input_ids, logits_processor=LogitsProcessorList([processor]), ...)

At every step each row's allowed next tokens come from lm-format-enforcer's JSON Schema parser (its
`TokenEnforcer`, which walks a prefix tree of the vocabulary); every other token's score becomes -inf, so greedy
decoding picks the model's most likely token among those that keep the text valid, and end-of-turn is allowed only
once the object is complete. The package's own transformers integration does not import under transformers 5, so
the tokenizer table it needs is built here (same recipe: each token decoded after a "0" to keep its leading space).
"""

from __future__ import annotations

import torch
import yaml
from lmformatenforcer import JsonSchemaParser, TokenEnforcer
from lmformatenforcer.tokenenforcer import TokenEnforcerTokenizerData
from transformers import LogitsProcessor, PreTrainedTokenizerBase

# Importing lm-format-enforcer makes every SafeLoader in the process read YAML timestamps as strings (its
# jsonschemaobjectutil patches the shared constructor table). Manifests must go on refusing dates (memtune.documents),
# so the standard constructor goes back.
yaml.SafeLoader.yaml_constructors["tag:yaml.org,2002:timestamp"] = yaml.SafeLoader.construct_yaml_timestamp

_TABLES: dict[int, tuple[PreTrainedTokenizerBase, TokenEnforcerTokenizerData]] = {}


def tokenizer_table(tokenizer: PreTrainedTokenizerBase) -> TokenEnforcerTokenizerData:
    """The enforcer's view of the vocabulary (built once per tokenizer: a few seconds for 49k tokens)."""
    cached = _TABLES.get(id(tokenizer))
    if cached is not None and cached[0] is tokenizer:
        return cached[1]
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    special = set(tokenizer.all_special_ids)
    regular = []
    for token in range(len(tokenizer)):
        if token in special:
            continue
        after_zero = tokenizer.decode([zero, token])[1:]
        alone = tokenizer.decode([token])
        regular.append((token, after_zero, len(after_zero) > len(alone)))

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens).rstrip("\ufffd")

    table = TokenEnforcerTokenizerData(regular, decode, tokenizer.eos_token_id, False, len(tokenizer))
    _TABLES[id(tokenizer)] = (tokenizer, table)
    return table


class SchemaConstraint(LogitsProcessor):
    """Masks every token that would leave the JSON Schema's language; rows are independent (left padding is fine)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, schema: dict):
        self._enforcer = TokenEnforcer(tokenizer_table(tokenizer), JsonSchemaParser(schema))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (B, T) prompt + generated so far; scores (B, V) -> scores with disallowed tokens at -inf."""
        allowed = torch.zeros(scores.shape, dtype=torch.bool)  # (B, V), built on the host
        for row, ids in enumerate(input_ids.tolist()):
            tokens = torch.as_tensor(self._enforcer.get_allowed_tokens(ids).allowed_tokens, dtype=torch.long)
            allowed[row, tokens[tokens < scores.shape[1]]] = True
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))
