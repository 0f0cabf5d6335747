"""Constrained decoding: at every step only tokens that keep the text inside the JSON Schema survive."""

from __future__ import annotations

import json

import pytest
import torch

from memtune.documents import DocumentError, check_document, load_yaml
from memtune.output_types import json_schema, parse_object
from memtune.trainer.mome.constrained import SchemaConstraint

OUTPUT_TYPE = {"age": "int", "units": "str", "alive": "bool", "color": ["red", "violet"]}


@pytest.fixture(scope="module")
def tokenizer(base):
    return base.tokenizer


def _allowed(constraint: SchemaConstraint, tokenizer, prompt: list[int], written: str) -> list[str]:
    """The token texts the constraint allows after `written` (fed token by token, as generation would)."""
    ids = prompt + tokenizer.encode(written, add_special_tokens=False)
    for length in range(len(prompt), len(ids) + 1):
        scores = constraint(torch.tensor([ids[:length]]), torch.zeros(1, len(tokenizer)))
    return [tokenizer.decode([token]) for token in torch.isfinite(scores[0]).nonzero()[:, 0].tolist()]


def test_only_schema_text_can_be_written(tokenizer):
    constraint = SchemaConstraint(tokenizer, json_schema(OUTPUT_TYPE))
    prompt = tokenizer.encode("How old is it?", add_special_tokens=False)
    assert {text.strip()[:1] for text in _allowed(constraint, tokenizer, prompt, "")} <= {"{", ""}
    after_key = _allowed(constraint, tokenizer, prompt, '{"age": ')
    assert after_key and all(text.strip() == "" or text.strip()[0] in "-0123456789" for text in after_key)
    choices = _allowed(constraint, tokenizer, prompt, '{"age": 25, "units": "years", "alive": true, "color": "')
    assert choices and all("red".startswith(text) or "violet".startswith(text) for text in choices)
    written = '{"age": 25, "units": "years", "alive": true, "color": "violet"}'
    assert parse_object(written, OUTPUT_TYPE) == json.loads(written)


def test_a_complete_object_allows_only_the_end_of_turn_or_blanks(tokenizer):
    constraint = SchemaConstraint(tokenizer, json_schema({"n": "int"}))
    prompt = tokenizer.encode("q", add_special_tokens=False)
    done = prompt + tokenizer.encode('{"n": 7}', add_special_tokens=False)
    for length in range(len(prompt), len(done) + 1):  # walk the prefix so the enforcer sees each state
        scores = constraint(torch.tensor([done[:length]]), torch.zeros(1, len(tokenizer)))
    allowed = torch.isfinite(scores[0]).nonzero()[:, 0].tolist()
    assert tokenizer.eos_token_id in allowed
    assert all(token == tokenizer.eos_token_id or not tokenizer.decode([token]).strip() for token in allowed)


def test_importing_the_enforcer_leaves_manifest_dates_refused():
    """lm-format-enforcer patches SafeLoader's timestamps into strings on import (this module imported it above);
    constrained.py puts the standard constructor back, so a manifest's date is still refused by its path."""
    with pytest.raises(DocumentError, match=r"a\.when: a date is not a JSON value"):
        check_document(load_yaml("a: {when: 2024-01-01}\n"))
