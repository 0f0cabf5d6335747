"""Every supported causal-LM family as a tiny random-weight model (`from_config`, nothing downloaded): its structure is
found, the training forward over answer regions equals the full model, and a few facts tuned end to end are recalled
exactly while gated prompts keep the base model's output bit for bit.

Random weights know nothing, so every recalled answer is the memory's. The models share a tiny byte-level BPE
tokenizer trained here on the test sentences (400 tokens, so a training step costs little), with a ChatML template;
the families that ship base models without a chat template (GPT-2, GPT-NeoX, Falcon) get it without one, so they run
on the plain prompt format. Sliding windows (8 tokens) are shorter than every prompt, so the
region forward's windowed masks are exercised; depths differ so the default layout is derived for 4 to 10 layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from memtune.spec import parse_job
from tests.trainer.conftest import DATA, UNRELATED

# Weights 10x larger than transformers' 0.02 default: the logits of a 64-wide model then span enough range for an
# answer token to reach the training's stopLoss, so a fact is learned in tens of steps.
_INIT = {"initializer_range": 0.2}
_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, **_INIT}
_WINDOW = {"sliding_window": 8}
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_NEOX = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, **_INIT}
_FALCON = {"hidden_size": 64, "num_attention_heads": 4, **_INIT}
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
_VISION |= {"image_size": 28, "patch_size": 14}

# name -> (model_type, config, depth, chat template?)
FAMILIES: dict[str, tuple[str, dict[str, Any], int, bool]] = {
    "llama": ("llama", _SMALL, 4, True),
    "mistral": ("mistral", {**_SMALL, **_WINDOW}, 5, True),
    "mixtral": ("mixtral", {**_SMALL, **_WINDOW, "num_local_experts": 4, "num_experts_per_tok": 2}, 4, True),
    "qwen2": ("qwen2", {**_SMALL, **_WINDOW, "use_sliding_window": True, "max_window_layers": 3}, 6, True),
    "qwen2_moe": ("qwen2_moe", {**_SMALL, **_MOE, "shared_expert_intermediate_size": 64}, 4, True),
    "qwen3": ("qwen3", {**_SMALL, "head_dim": 16}, 6, True),
    "qwen3_moe": ("qwen3_moe", {**_SMALL, **_MOE, "head_dim": 16}, 4, True),
    # Logits soft-capped at 6 (Gemma 2's own is 30): the cap moves these logits by far more than float error.
    "gemma2": (
        "gemma2",
        {**_SMALL, **_WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16, "final_logit_softcapping": 6.0},
        6,
        True,
    ),
    "gemma3": ("gemma3_text", {**_SMALL, **_WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16}, 7, True),
    # Gemma 3 4B-27B checkpoints: AutoModelForCausalLM gives Gemma3ForConditionalGeneration (vision tower + LM).
    "gemma3_vlm": ("gemma3", {**_SMALL, **_WINDOW, "head_dim": 16, "query_pre_attn_scalar": 16}, 6, True),
    "phi3": ("phi3", {**_SMALL, **_WINDOW}, 4, True),
    "olmo2": ("olmo2", _SMALL, 5, True),
    "gpt_neox": ("gpt_neox", {**_NEOX, "rotary_pct": 0.25}, 4, False),
    "gpt2": ("gpt2", {"n_embd": 64, "n_head": 4, **_INIT}, 10, False),
    "falcon": ("falcon", _FALCON, 4, False),  # Falcon-7B's layout: multi-query, parallel attention and MLP
    "falcon_40b": ("falcon", {**_FALCON, "new_decoder_architecture": True, "num_kv_heads": 2}, 4, False),
    "falcon_alibi": (
        "falcon",
        {**_FALCON, "alibi": True, "parallel_attn": False, "multi_query": False, "new_decoder_architecture": False},
        4,
        False,
    ),
}
POSITIONS = {"gpt2": "absolute", "falcon_alibi": "alibi"}  # every other family: rotary


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(chat: bool):
    """A byte-level BPE tokenizer (any text encodes) of 400 tokens trained on the test sentences, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [line for fact in _facts(None) for line in fact.values()] + UNRELATED
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=alphabet, show_progress=False),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML if chat else None
    return tokenizer


class _Models:
    """Builds each family's folder on first use, once per session."""

    def __init__(self, root: Path):
        self.root = root
        self.folders: dict[str, Path] = {}
        self.loaded: dict[str, Any] = {}

    def folder(self, name: str) -> Path:
        if name not in self.folders:
            self.folders[name] = self._build(name)
        return self.folders[name]

    def load(self, name: str):
        from memtune.trainer.mome.base import load_base_model

        if name not in self.loaded:
            self.loaded[name] = load_base_model(str(self.folder(name)))
        return self.loaded[name]

    def _build(self, name: str) -> Path:
        from transformers import AutoConfig, AutoModelForCausalLM

        model_type, overrides, depth, chat = FAMILIES[name]
        tokenizer = tiny_tokenizer(chat)
        text = {
            **overrides,
            "num_hidden_layers": depth,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 256,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if model_type == "gemma3":  # the image-text model: a language model inside a multimodal wrapper
            image_tokens = {"image_token_index": 399, "boi_token_index": 398, "eoi_token_index": 397}
            config = AutoConfig.for_model(
                model_type, text_config=text, vision_config=_VISION, mm_tokens_per_image=4, **image_tokens
            )
        else:
            config = AutoConfig.for_model(model_type, **text)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        folder = self.root / name
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models' matrices gain nothing from a second thread; on a shared CPU the threads' handoffs cost 10-20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def families(tmp_path_factory: pytest.TempPathFactory) -> _Models:
    return _Models(tmp_path_factory.mktemp("families"))


def _facts(count: int | None = 4) -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()][:count]


def test_plain_prompt_without_a_chat_template_is_the_same_for_training_and_evaluation() -> None:
    from memtune.evaluation.causal import training_sequence
    from memtune.trainer.mome.base import chat_prompt
    from memtune.trainer.mome.keys import answer_tokens, tokenize_prompt

    question, answer = "Where was Lumdor Pragridor born?", "Katevsha"
    chat, plain = tiny_tokenizer(chat=True), tiny_tokenizer(chat=False)
    assert chat_prompt(chat, question) == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt(plain, question) == f"Question: {question}\nAnswer:\n"
    plain.add_bos_token = True  # a tokenizer that starts every text with bos (Llama 3, Gemma) gets it here too
    assert chat_prompt(plain, question) == f"<|im_start|>Question: {question}\nAnswer:\n"
    assert tokenize_prompt(plain, question).ids.count(plain.bos_token_id) == 1  # not added a second time
    for tokenizer in (chat, plain):
        prompt = tokenize_prompt(tokenizer, question)
        assert tokenizer.decode([i for i, q in zip(prompt.ids, prompt.question_mask, strict=True) if q]) == question
        ids, labels = training_sequence(tokenizer, question, answer)  # what evaluation scores
        assert ids == prompt.ids + answer_tokens(tokenizer, answer)
        assert labels[len(prompt.ids) :] == answer_tokens(tokenizer, answer)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_structure_is_found(families: _Models, name: str) -> None:
    from memtune.trainer.mome.architecture import architecture

    base = families.load(name)
    arch = architecture(base.model)
    _, overrides, depth, chat = FAMILIES[name]
    assert len(arch.layers) == depth and arch.head is base.model.get_output_embeddings()
    assert arch.positions == POSITIONS.get(name, "rotary")
    sliding = [w for w in arch.windows if w is not None]
    assert sliding == [8] * len(sliding) and bool(sliding) == ("sliding_window" in overrides)
    assert (base.tokenizer.chat_template is not None) == chat


@pytest.mark.parametrize("name", list(FAMILIES))
def test_region_forward_equals_the_full_model(families: _Models, name: str) -> None:
    """The training forward (cached prefix, top blocks on the answer region only) gives the answer loss of running the
    whole model: without experts against one full forward, with experts against the model's own forward over the
    prompt and then the answer region (experts active there only, as in training)."""
    from transformers import DynamicCache

    from memtune.trainer.mome.experts import ExpertHooks, Route, init_experts
    from memtune.trainer.mome.keys import answer_tokens, tokenize_prompt
    from memtune.trainer.tuning.encode import encode_examples
    from memtune.trainer.tuning.region import collate, region_loss

    base = families.load(name)
    model, tokenizer = base.model, base.tokenizer
    depth = FAMILIES[name][2]
    first = depth // 2
    pairs = [(f["input"], f["output"]) for f in _facts()]  # prompts of different lengths: left padding in the batch
    batch = collate(list(encode_examples(base, pairs, key_layer=first - 1, first=first)))
    sequences = [(tokenize_prompt(tokenizer, q).ids, answer_tokens(tokenizer, a)) for q, a in pairs]
    assert len({len(prompt) for prompt, _ in sequences}) > 1

    with torch.no_grad():
        plain, _ = region_loss(model, first, batch)
        full = torch.stack(
            [
                torch.nn.functional.cross_entropy(
                    model(input_ids=torch.tensor([prompt + answer])).logits[0, len(prompt) - 1 : -1],
                    torch.tensor(answer),
                )
                for prompt, answer in sequences
            ]
        )
    torch.testing.assert_close(plain, full, rtol=1e-5, atol=1e-5)

    params = init_experts(
        len(pairs), depth - first, model.config.get_text_config().hidden_size, 4, torch.Generator().manual_seed(0)
    )
    params["B"].normal_(std=0.5, generator=torch.Generator().manual_seed(1))
    hooks = ExpertHooks(model, list(range(first, depth)))
    try:
        with torch.no_grad():
            everyone = Route(torch.arange(len(pairs))[:, None], torch.ones(len(pairs), 1))
            with hooks.active(params["A"], params["B"], everyone, last_only=False):
                tuned, _ = region_loss(model, first, batch)
            reference = []
            for row, (prompt, answer) in enumerate(sequences):
                cache = DynamicCache(config=model.config)
                model(input_ids=torch.tensor([prompt[:-1]]), cache=cache, use_cache=True)
                own = Route(torch.tensor([[row]]), torch.ones(1, 1))
                with hooks.active(params["A"], params["B"], own, last_only=False):
                    chunk = torch.tensor([prompt[-1:] + answer[:-1]])
                    logits = model(input_ids=chunk, cache=cache, use_cache=True).logits[0]
                reference.append(torch.nn.functional.cross_entropy(logits, torch.tensor(answer)))
    finally:
        hooks.remove()
    torch.testing.assert_close(tuned, torch.stack(reference), rtol=1e-5, atol=1e-5)
    assert (tuned - plain).abs().min() > 1e-3  # the experts do change the answer loss


def _job(folder: Path, output: Path):
    return parse_job(
        {
            "metadata": {"name": "family"},
            "spec": {
                "baseModel": str(folder),
                "dataset": {"uri": str(DATA)},
                "finetuneArgs": {
                    "max_finetuning_examples": len(_facts()),
                    "max_steps": 100,
                    "learning_rate": 3.0e-2,
                    "gradient_accumulation_steps": 1,
                    "index_method": "IndexFlatL2",
                    "r_value": 8,
                },
                # Random weights give no meaning to key distances: no calibration, only a question's own key is
                # close (the gate's anchor words still apply).
                "memory": {"distanceThreshold": 0.1},
                "output": {"uri": str(output)},
            },
        }
    )


@pytest.mark.parametrize("name", list(FAMILIES))
def test_facts_are_recalled_and_gated_prompts_keep_the_base_output(
    families: _Models, name: str, tmp_path: Path
) -> None:
    from memtune.trainer.mome.model import MemoryModel
    from memtune.trainer.tuning.job import run_job

    summary = run_job(_job(families.folder(name), tmp_path / "out"), show_progress=False)
    assert summary.recall == 1.0
    tuned = MemoryModel.load(summary.run_dir)
    facts = _facts()
    answers = tuned.generate([f["input"] for f in facts], max_new_tokens=12)
    assert [a.output for a in answers] == [f["output"] for f in facts]
    assert all(a.route is not None and not a.route["gated"] for a in answers)
    gated = tuned.generate(UNRELATED, max_new_tokens=12)
    assert all(a.route is not None and a.route["gated"] for a in gated)
    plain = MemoryModel.load(str(families.folder(name))).generate(UNRELATED, max_new_tokens=12)
    assert [a.output for a in gated] == [a.output for a in plain]
    tuned.close()


def test_a_model_without_attention_blocks_is_refused_naming_what_is_missing() -> None:
    from transformers import MambaConfig, MambaForCausalLM

    from memtune.spec import ModelError
    from memtune.trainer.mome.architecture import architecture

    model = MambaForCausalLM(MambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=32, pad_token_id=0))
    with pytest.raises(ModelError, match=r"MambaForCausalLM: no final norm on MambaModel"):
        architecture(model)


def test_the_structure_cache_does_not_keep_a_model_alive(families: _Models) -> None:
    import gc
    import weakref

    from transformers import AutoModelForCausalLM

    from memtune.trainer.mome.architecture import architecture

    model = AutoModelForCausalLM.from_pretrained(families.folder("llama"))
    assert architecture(model) is architecture(model)  # computed once
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
