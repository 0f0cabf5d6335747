"""MemoryModel with the real default model and the short trained run: split-prefill generation against the single
prefill it replaced, gated rows against the base model bit for bit, the router's new inputs, finish reasons and
answer budgets, teacher forcing, bfloat16 on the CPU, and the device tests bench/gpu_check.sh runs on a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.trainer.conftest import UNRELATED

pytestmark = pytest.mark.slow


@torch.no_grad()
def _single_prefill(model, prompts: list[str], max_new_tokens: int):
    """Generation as it was before the split prefill (commit f688b0f's Generator): one prefill over the whole prompt,
    routed from a pre-hook at the key layer, experts armed at the last prompt position and every decoded token."""
    from memtune.trainer.mome.base import decoder_layers
    from memtune.trainer.mome.devices import EXPERT_DTYPE
    from memtune.trainer.mome.keys import pool_keys, tokenize_prompt

    tokenizer, memory = model.tokenizer, model.memory
    # the whole bank in RAM, as the old generator held it, in the dtype experts compute in (stored: bfloat16)
    params = {name: tensor.to(EXPERT_DTYPE) for name, tensor in memory.params.items()}
    tokens = [tokenize_prompt(tokenizer, prompt) for prompt in prompts]
    width, pad = max(len(t.ids) for t in tokens), tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(t.ids)) + t.ids for t in tokens])
    attention = torch.tensor([[0] * (width - len(t.ids)) + [1] * len(t.ids) for t in tokens])
    question = torch.tensor([[False] * (width - len(t.ids)) + t.question_mask for t in tokens])
    decided = []

    def route(module, args) -> None:
        if decided:
            return
        routing = model.router(pool_keys(args[0], question), prompts)
        decided.append(routing)
        if not bool(routing.gated.all()):
            model.hooks.set_route(params["A"], params["B"], routing.route, last_only=True)

    handle = decoder_layers(model.base.model)[memory.layout.key_layer].register_forward_pre_hook(route)
    try:
        output = model.base.model.generate(
            ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
    finally:
        handle.remove()
        model.hooks.clear()
    texts = [t.strip() for t in tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)]
    return texts, decided[0]


def test_split_prefill_answers_exactly_as_the_single_prefill_did(tuned, facts) -> None:
    prompts = [f["input"] for f in facts] + UNRELATED + [f["paraphrase"] for f in facts]
    answers = tuned.generate(prompts, max_new_tokens=12, batch_size=len(prompts))  # one left-padded batch
    texts, routing = _single_prefill(tuned, prompts, 12)
    assert [a.output for a in answers] == texts
    for row, answer in enumerate(answers):
        before = routing.describe(row)
        assert (answer.route["experts"], answer.route["gated"]) == (before["experts"], before["gated"])
        assert answer.route["distance"] == pytest.approx(before["distance"], abs=1e-5)
    assert [a.output for a in answers[: len(facts)]] == [f["output"] for f in facts]


def test_gated_rows_are_the_base_model_bit_for_bit_beside_routed_ones(tuned, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    prompts = [x for pair in zip(UNRELATED, [f["input"] for f in facts], strict=False) for x in pair]  # mixed
    answers = tuned.generate(prompts, max_new_tokens=24, batch_size=len(prompts))
    gated = [a.route["gated"] for a in answers]
    assert gated == [True, False] * len(UNRELATED)
    plain = MemoryModel(tuned.base)  # the same weights, no memory (the hooks stay idle without a route)
    base = plain.generate(prompts, max_new_tokens=24, batch_size=len(prompts))
    for answer, reference, is_gated, prompt in zip(answers, base, gated, prompts, strict=True):
        if is_gated:
            assert (answer.output, answer.completion_tokens) == (reference.output, reference.completion_tokens)
        else:
            assert answer.output == next(f["output"] for f in facts if f["input"] == prompt)
    # teacher-forced, every logit of a gated row is the base model's, bit for bit (its experts add exactly 0)
    targets = [a.output for a in base]
    routed = tuned.score(prompts, targets, batch_size=len(prompts))
    bare = plain.score(prompts, targets, batch_size=len(prompts))
    for one, other, is_gated in zip(routed, bare, gated, strict=True):
        assert (one.nats == other.nats and one.predicted == other.predicted) == is_gated


def test_answers_say_how_they_finished_and_the_default_budget_covers_the_longest_answer(tuned, trained, facts) -> None:
    from memtune.trainer.mome.artifacts import RunInfo
    from memtune.trainer.mome.keys import answer_tokens, tokenize_prompt
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    meta = json.loads((Path(summary.run_dir) / "memtune.json").read_text())
    lengths = [len(answer_tokens(tuned.tokenizer, f["output"])) for f in facts]
    assert meta["longest_answer_tokens"] == max(lengths)
    assert tuned.default_max_new_tokens == 128  # short answers: the floor
    long_run = RunInfo(Path("run"), {"longest_answer_tokens": 200}, [])
    assert MemoryModel(tuned.base, run=long_run).default_max_new_tokens == 216
    assert MemoryModel(tuned.base).default_max_new_tokens == 128
    question, answer = facts[4]["input"], facts[4]["output"]  # "Quilum Grishazan": several tokens
    [cut] = tuned.generate([question], max_new_tokens=3)
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 3) and answer.startswith(cut.output)
    [whole] = tuned.generate([question])
    assert (whole.output, whole.finish_reason, whole.completion_tokens) == (answer, "stop", lengths[4])
    assert whole.prompt_tokens == len(tokenize_prompt(tuned.tokenizer, question).ids)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        tuned.generate([question], max_new_tokens=0)
    with pytest.raises(ValueError, match=r"prompt 1: .*does not appear verbatim"):
        tuned.generate([question, "  "])
    with pytest.raises(ValueError, match="exceed the model's context"):
        tuned.generate([question], max_new_tokens=10**6)


def test_generate_batch_hands_decoding_to_the_caller(tuned, facts) -> None:
    """The server's hook: routes reported once before any decoding step, processors and stopping criteria per row,
    and untouched rows answering exactly as `generate` does in the same batch."""
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    from memtune.trainer.mome.keys import tokenize_prompt

    prompts = [facts[0]["input"], UNRELATED[0], facts[4]["input"]]
    tokens = [tokenize_prompt(tuned.tokenizer, prompt) for prompt in prompts]
    width = max(len(t.ids) for t in tokens)
    expected = tuned.generate(prompts, max_new_tokens=12, batch_size=len(prompts))
    forced = tuned.tokenizer.encode(" Zebra", add_special_tokens=False)[0]
    events: list[object] = []

    class Force(LogitsProcessor):  # row 1 can only say `forced`
        def __call__(self, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            events.append(ids.shape[1] - width)
            scores[1] = float("-inf")
            scores[1, forced] = 0.0
            return scores

    class StopRowOneAfterThree(StoppingCriteria):
        def __call__(self, ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
            done = torch.zeros(ids.shape[0], dtype=torch.bool)
            done[1] = ids.shape[1] - width >= 3
            return done

    output = tuned.generate_batch(
        tokens,
        prompts,
        max_new_tokens=12,
        on_route=lambda routes: events.append(routes),
        logits_processor=LogitsProcessorList([Force()]),
        stopping_criteria=StoppingCriteriaList([StopRowOneAfterThree()]),
    )
    assert events[0] == [a.route for a in expected] and events[1:4] == [0, 1, 2]
    assert output[1, width : width + 3].tolist() == [forced] * 3
    assert set(output[1, width + 3 :].tolist()) <= {tuned.tokenizer.pad_token_id}
    decode = tuned.tokenizer.decode
    for row in (0, 2):
        assert decode(output[row, width:].tolist(), skip_special_tokens=True).strip() == expected[row].output
    with pytest.raises(ValueError, match="one question per prompt"):
        tuned.generate_batch(tokens, prompts[:2], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0: .*exceed the model's context"):
        tuned.generate_batch(tokens[:1], prompts[:1], max_new_tokens=10**6)


def test_teacher_forcing_applies_the_experts_where_generation_does(tuned, facts) -> None:
    questions, answers = [f["input"] for f in facts], [f["output"] for f in facts]
    scored = tuned.score(questions, answers, end_of_turn=True)
    assert all(item.predicted == item.target and item.target[-1] == tuned.tokenizer.eos_token_id for item in scored)
    assert all(not item.route["gated"] and max(item.nats) < 1.0 for item in scored)
    pairs = tuned.predict_tokens(questions, answers)
    assert [target for _, target in pairs] == [item.target[:-1] for item in scored]
    assert all(predicted == target for predicted, target in pairs)


def test_bfloat16_on_the_cpu_still_recalls_every_trained_fact(trained, facts) -> None:
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    with MemoryModel.load(summary.run_dir, "cpu", "bfloat16") as model:
        assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
        answers = model.generate([f["input"] for f in facts], max_new_tokens=16)
    assert [a.output for a in answers] == [f["output"] for f in facts]
    assert all(not a.route["gated"] for a in answers)


def test_generate_cli_notes_answers_cut_at_the_limit(trained, facts, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from memtune.cli import app

    _, summary = trained
    result = CliRunner().invoke(
        app, ["generate", "--model", summary.run_dir, "--prompt", facts[4]["input"], "--max-new-tokens", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "stopped at the limit of 2 new tokens (finish_reason: length)" in " ".join(result.output.split())
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"input": f["input"]}) + "\n" for f in facts[:2]))
    result = CliRunner().invoke(app, ["generate", "--model", summary.run_dir, "--input-file", str(questions)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(line["output"], line["finish_reason"]) for line in lines] == [(f["output"], "stop") for f in facts[:2]]
    assert "stopped at the limit" not in result.output
    bad = CliRunner().invoke(app, ["generate", "--model", summary.run_dir, "--prompt", "x", "--device", "tpu"])
    assert bad.exit_code == 1 and "device" in bad.output  # bad input: exit 1 (failures.py)


def test_the_sdk_warns_when_an_answer_is_cut(trained, facts) -> None:
    from memtune import MemoryTuner
    from memtune.client import MemoryTunerWarning

    _, summary = trained
    tuner = MemoryTuner(model_name=summary.run_dir, device="cpu")
    with pytest.warns(MemoryTunerWarning, match="stopped at the limit of 2 new tokens"):
        tuner.generate(facts[4]["input"], max_new_tokens=2)
    assert tuner.generate(facts[0]["input"]) == facts[0]["output"]


@pytest.mark.device
def test_the_engine_runs_whole_on_the_device(trained, facts, device: str) -> None:
    """What bench/gpu_check.sh runs on a GPU: every tensor on the device, the default precision, exact recall, and
    gated prompts answered as the base model answers on the same device."""
    from memtune.trainer.mome.model import MemoryModel

    _, summary = trained
    target = torch.device(device)
    with MemoryModel.load(summary.run_dir, device) as model:
        assert model.device.type == target.type
        assert {p.device.type for p in model.base.model.parameters()} == {target.type}
        assert model.dtype == (torch.float32 if target.type == "cpu" else model.dtype)
        if target.type == "cuda":
            assert model.dtype in (torch.bfloat16, torch.float16)
        prompts = [f["input"] for f in facts] + UNRELATED
        answers = model.generate(prompts, max_new_tokens=16)
        assert [a.output for a in answers[: len(facts)]] == [f["output"] for f in facts]
        assert all(a.route["gated"] for a in answers[len(facts) :])
        gathered = model.memory.bank.gather(torch.tensor([0, 1]), model.device, torch.float32)
        assert gathered["A"].device.type == target.type
        scored = model.score([f["input"] for f in facts], [f["output"] for f in facts])
        assert all(item.predicted == item.target for item in scored)
        plain = MemoryModel(model.base)  # the same weights on the same device, no memory
        base = plain.generate(prompts, max_new_tokens=16)
        # gated rows: the base model's own answers (split prefill vs plain generate: equal tokens, also in bf16)
        assert [a.output for a in answers[len(facts) :]] == [a.output for a in base[len(facts) :]]
        # and teacher-forced, bit for bit: a gated row's experts add exactly 0 on any device and dtype
        targets = [a.output for a in base]
        routed, bare = model.score(prompts, targets), plain.score(prompts, targets)
        assert [item.nats for item in routed[len(facts) :]] == [item.nats for item in bare[len(facts) :]]
