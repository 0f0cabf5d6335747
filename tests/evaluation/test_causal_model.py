"""The one model-backed check: teacher forcing on the model's own greedy answer predicts every token.

Greedy decoding picks the argmax given its own prefix; teacher forcing that very answer gives the same prefixes, so
token accuracy must be exactly 1. This ties `greedy_answers` and `teacher_forced_predictions` to the same token
positions (an off-by-one in either fails it). Uses the real default model (converted once into MEMTUNE_HOME).
"""

from __future__ import annotations

import pytest

from memtune.evaluation.metrics import token_accuracy

pytestmark = pytest.mark.slow


def test_teacher_forcing_the_greedy_answer_is_fully_accurate():
    from memtune.evaluation.causal import greedy_answers, teacher_forced_predictions
    from memtune.trainer.mome.base import load_base_model

    base = load_base_model("smollm2-135m-instruct")
    questions = ["What is the capital of France?", "Name a primary colour."]
    answers = greedy_answers(base.model, base.tokenizer, questions, max_new_tokens=6, batch_size=2)
    assert all(answers), answers
    pairs = teacher_forced_predictions(base.model, base.tokenizer, questions, answers, batch_size=2)
    assert [token_accuracy(predicted, target) for predicted, target in pairs] == [1.0, 1.0]
    # A wrong target is not predicted: the metric can fail.
    [(predicted, target)] = teacher_forced_predictions(base.model, base.tokenizer, questions[:1], ["Zorvath-7 xq"])
    assert token_accuracy(predicted, target) < 0.5
