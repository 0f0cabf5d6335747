"""The server through the real `openai` client: chat, completions, streaming, errors; answers equal the engine's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.trainer.conftest import UNRELATED

pytestmark = pytest.mark.slow

MODEL = "facts"  # the job output's folder name


@pytest.fixture(scope="module")
def client(live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_models_lists_the_served_run(client: openai.OpenAI, trained_output) -> None:
    [card] = client.models.list().data
    assert card.id == MODEL
    assert card.memtune["run"] == trained_output[1].name
    assert card.memtune["experts"] >= 6
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_answers_and_routes_like_the_engine(client: openai.OpenAI, facts, reference) -> None:
    questions = [f["input"] for f in facts] + UNRELATED[:2]
    expected = reference.generate(questions, max_new_tokens=24, batch_size=1)
    for question, answer in zip(questions, expected, strict=True):
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=24
        )
        [choice] = reply.choices
        assert choice.message.content.strip() == answer.output
        route = choice.route
        assert route["experts"] == answer.route["experts"] and route["gated"] == answer.route["gated"]
        assert route["reason"] == answer.route["reason"]
        assert route["distance"] == pytest.approx(answer.route["distance"], abs=1e-4)
        assert route["run"] == reference.run.folder.name
        assert reply.system_fingerprint == f"memtune-{route['run']}"
        assert reply.usage.completion_tokens >= 1
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert [f["output"] for f in facts] == [a.output for a in expected[: len(facts)]]


def test_chat_streaming_gives_the_same_text(client: openai.OpenAI, facts) -> None:
    question = facts[4]["input"]  # a two-word answer: several chunks
    whole = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}])
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, *middle, last, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].route["gated"] is False
    assert "".join(c.choices[0].delta.content or "" for c in middle) == whole.choices[0].message.content
    assert len(middle) >= 2
    assert last.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens


def test_completions_take_a_list_of_prompts(client: openai.OpenAI, facts) -> None:
    reply = client.completions.create(model=MODEL, prompt=[f["input"] for f in facts[:3]], max_tokens=16)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.text.strip() for c in reply.choices] == [f["output"] for f in facts[:3]]
    assert all(c.finish_reason == "stop" and not c.route["gated"] for c in reply.choices)
    assert reply.usage.prompt_tokens > 3 * 10


def test_completions_stream(client: openai.OpenAI, facts) -> None:
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    for chunk in client.completions.create(
        model=MODEL, prompt=[facts[0]["input"], facts[1]["input"]], max_tokens=16, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            finish[choice.index] = choice.finish_reason or finish.get(choice.index)
    assert [texts[0].strip(), texts[1].strip()] == [facts[0]["output"], facts[1]["output"]]
    assert finish == {0: "stop", 1: "stop"}


def test_max_tokens_and_stop(client: openai.OpenAI, facts) -> None:
    question = facts[4]["input"]  # "Quilum Grishazan"
    short = client.completions.create(model=MODEL, prompt=question, max_tokens=1)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 1
    stopped = client.completions.create(model=MODEL, prompt=question, max_tokens=16, stop=[" Gri", "zz"])
    assert stopped.choices[0].text.strip() == "Quilum"
    assert stopped.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt=question, max_tokens=16, stop=" Gri", stream=True)
    )
    assert streamed.strip() == "Quilum"


def test_min_tokens_holds_off_end_of_turn(client: openai.OpenAI, facts) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=facts[1]["input"], max_tokens=12, extra_body={"min_tokens": 12}
    )
    assert reply.usage.completion_tokens == 12 and reply.choices[0].finish_reason == "length"
    assert reply.choices[0].text.startswith(facts[1]["output"])


def test_sampling_is_reproducible_with_a_seed(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        reply = client.completions.create(
            model=MODEL,
            prompt="Write a word.",
            max_tokens=12,
            temperature=1.5,
            seed=seed,
            extra_body={"min_tokens": 12},
        )
        return reply.choices[0].text

    with ThreadPoolExecutor(4) as pool:  # concurrently: the same seed gives the same text inside one batch too
        first, second, third, other = pool.map(ask, [7, 7, 7, 8])
    assert first == second == third
    assert other != first


def test_errors_are_openai_errors(client: openai.OpenAI, facts) -> None:
    question = [{"role": "user", "content": facts[0]["input"]}]
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=question)
    assert unknown.value.code == "model_not_found" and "facts" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model=MODEL, messages=[])
    assert empty.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as no_user:
        client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Be brief."}])
    assert no_user.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model=MODEL, messages=question, max_tokens=100_000)
    assert too_many.value.param == "max_tokens" and "limit" in too_many.value.message
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=8)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as several:
        client.chat.completions.create(model=MODEL, messages=question, n=2)
    assert several.value.param == "n"
    with pytest.raises(openai.BadRequestError) as blank:
        client.completions.create(model=MODEL, prompt="   ")
    assert blank.value.param == "prompt"
    # and the server still answers
    reply = client.chat.completions.create(model=MODEL, messages=question, max_tokens=8)
    assert reply.choices[0].message.content.strip() == facts[0]["output"]


def test_a_conversation_routes_on_its_last_user_message(client: openai.OpenAI, facts) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": [{"type": "text", "text": facts[3]["input"]}]},
        ],
        max_tokens=16,
    )
    route = reply.choices[0].route
    # Earlier turns change the key (causal attention): it lands farther than the single-turn prompt's own key.
    assert route["distance"] > 1e-4
    if not route["gated"]:
        assert reply.choices[0].message.content.strip() == facts[3]["output"]
