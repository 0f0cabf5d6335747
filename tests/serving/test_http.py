"""The server through plain HTTP: health, metrics, error bodies for malformed input, batching of concurrent requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.trainer.conftest import UNRELATED

pytestmark = pytest.mark.slow


def metric(url: str, name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def chat(url: str, question: str, **extra: object) -> httpx.Response:
    body = {"model": "facts", "messages": [{"role": "user", "content": question}], "max_tokens": 16, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def test_health_and_readiness(live, trained_output) -> None:
    assert httpx.get(f"{live.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live.url}/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] and body["run"] == trained_output[1].name and len(body["manifest_sha256"]) == 64


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "object"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "required"),
        (b'{"model": "facts", "messages": "hi"}', "messages", "array"),
        (b'{"model": "facts", "messages": [{"role": "robot", "content": "hi"}]}', "messages.0.role", "user"),
        (b'{"model": "facts", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens", "1"),
        (b'{"model": "facts", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}', "temperature", ""),
        (b'{"model": "facts", "messages": [{"role": "user", "content": "hi"}], "stop": ["a","b","c","d","e"]}',
         "stop", "at most 4"),
        (b'{"model": "facts", "messages": [{"role": "user", "content": "hi"}], "logprobs": true}',
         "logprobs", "not implemented"),
        (b'{"model": "facts", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "min_tokens": 9}',
         "min_tokens", "above max_tokens"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_error_bodies(live, body: bytes, param: str | None, fragment: str) -> None:
    reply = httpx.post(f"{live.url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]


def test_unknown_paths_and_methods(live) -> None:
    missing = httpx.get(f"{live.url}/v1/engines")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Not Found"
    wrong = httpx.get(f"{live.url}/v1/chat/completions")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert httpx.get(f"{live.url}/v1/models/other").json()["error"]["code"] == "model_not_found"


def test_sse_wire_format(live, facts) -> None:
    body = {"model": "facts", "prompt": facts[0]["input"], "max_tokens": 16, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body, timeout=300) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks).strip() == facts[0]["output"]
    assert chunks[0]["choices"][0]["route"]["gated"] is False
    assert all("route" not in c["choices"][0] for c in chunks[1:])


def test_concurrent_requests_share_batches_and_answer_as_alone(live, facts) -> None:
    questions = [f["input"] for f in facts] + UNRELATED
    alone = [chat(live.url, q).json()["choices"][0] for q in questions]
    batches_before = metric(live.url, "memtune_batch_size_count")
    rows_before = metric(live.url, "memtune_batch_size_sum")
    with ThreadPoolExecutor(len(questions)) as pool:
        together = [r.json()["choices"][0] for r in pool.map(lambda q: chat(live.url, q), questions)]
    batches = metric(live.url, "memtune_batch_size_count") - batches_before
    rows = metric(live.url, "memtune_batch_size_sum") - rows_before
    assert rows == len(questions)
    assert batches < len(questions) / 2  # requests that arrived together went through shared forward passes
    assert [c["message"]["content"] for c in together[: len(facts)]] == [f["output"] for f in facts]
    assert [c["message"]["content"] for c in together] == [c["message"]["content"] for c in alone]
    assert [c["route"]["gated"] for c in together] == [c["route"]["gated"] for c in alone]
    assert [c["route"]["experts"] for c in together] == [c["route"]["experts"] for c in alone]


def test_metrics_count_requests_tokens_and_gated_share(live, facts) -> None:
    before = {
        "ok": metric(live.url, "memtune_requests_total", endpoint="chat", status="200"),
        "bad": metric(live.url, "memtune_requests_total", endpoint="chat", status="400"),
        "tokens": metric(live.url, "memtune_completion_tokens_total"),
        "gated": metric(live.url, "memtune_routes_total", gated="true"),
        "routed": metric(live.url, "memtune_routes_total", gated="false"),
        "latency": metric(live.url, "memtune_request_latency_seconds_count", endpoint="chat"),
    }
    answered = chat(live.url, facts[0]["input"]).json()
    chat(live.url, UNRELATED[0])
    assert chat(live.url, facts[0]["input"], max_tokens=-1).status_code == 400
    assert metric(live.url, "memtune_requests_total", endpoint="chat", status="200") == before["ok"] + 2
    assert metric(live.url, "memtune_requests_total", endpoint="chat", status="400") == before["bad"] + 1
    assert metric(live.url, "memtune_request_latency_seconds_count", endpoint="chat") == before["latency"] + 3
    assert (
        metric(live.url, "memtune_completion_tokens_total") >= before["tokens"] + answered["usage"]["completion_tokens"]
    )
    assert metric(live.url, "memtune_routes_total", gated="true") == before["gated"] + 1
    assert metric(live.url, "memtune_routes_total", gated="false") == before["routed"] + 1
    share = metric(live.url, "memtune_gated_share")
    gated, routed = before["gated"] + 1, before["routed"] + 1
    assert share == pytest.approx(gated / (gated + routed))
    assert metric(live.url, "memtune_model_info", model="facts") == 1
