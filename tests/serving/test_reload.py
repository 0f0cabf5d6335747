"""Reload: a newer committed run replaces the served one while requests are in flight, none dropped; a run that
fails verification is refused and the old one keeps serving. Also the API key, on the same server."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.serving.conftest import LiveServer, commit_newer_run
from tests.serving.test_http import metric

pytestmark = pytest.mark.slow
KEY = "test-key-123"


@pytest.fixture(scope="module")
def output(trained_output, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the job output, so that new runs here change nothing for the other tests."""
    copy = tmp_path_factory.mktemp("reload") / "facts"
    shutil.copytree(trained_output[0], copy)
    return copy


@pytest.fixture(scope="module")
def server(output: Path):
    live = LiveServer(str(output), api_key=KEY, max_batch=4).start()
    yield live
    live.stop()


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def reload(server: LiveServer) -> httpx.Response:
    return httpx.post(f"{server.url}/admin/reload", headers=headers(), timeout=300)


def served_run(server: LiveServer) -> str:
    return httpx.get(f"{server.url}/readyz").json()["run"]


def test_api_key_is_required(server: LiveServer, facts) -> None:
    body = {"model": "facts", "prompt": facts[0]["input"], "max_tokens": 8}
    refused = httpx.post(f"{server.url}/v1/completions", json=body)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{server.url}/admin/reload").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)
    assert client.completions.create(**body).choices[0].text.strip() == facts[0]["output"]
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # probes need no key


def test_nothing_newer_means_no_reload(server: LiveServer) -> None:
    reply = reload(server)
    assert reply.status_code == 200
    assert reply.json()["reloaded"] is False and reply.json()["run"] == served_run(server)


def test_reload_while_requests_are_in_flight(server: LiveServer, output: Path, facts) -> None:
    old_run = served_run(server)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300)
    questions = [f["input"] for f in facts] * 4  # 24 requests, max_batch 4: several batches queue up
    started = threading.Event()

    def ask(question: str) -> tuple[str, str, str]:
        started.set()
        chunks = list(
            client.chat.completions.create(
                model="facts", messages=[{"role": "user", "content": question}], max_tokens=16, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return question, text, chunks[0].choices[0].route["run"]

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(ask, q) for q in questions]
        started.wait(60)
        time.sleep(0.5)  # the first batch is decoding
        new_run = commit_newer_run(output, output / "runs" / old_run)
        reloaded = reload(server)
        in_flight = sum(not f.done() for f in futures)
        results = [f.result() for f in futures]  # any dropped or failed request raises here
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json() == {"reloaded": True, "run": new_run.name, "previous": old_run}
    assert in_flight > 0  # the reload really overlapped requests
    expected = {f["input"]: f["output"] for f in facts}
    assert all(text.strip() == expected[question] for question, text, _ in results)
    runs = {run for _, _, run in results}
    assert runs <= {old_run, new_run.name}
    assert served_run(server) == new_run.name
    after = client.chat.completions.create(
        model="facts", messages=[{"role": "user", "content": facts[0]["input"]}], max_tokens=8
    )
    assert after.choices[0].route["run"] == new_run.name
    assert metric(server.url, "memtune_reloads_total", result="ok") == 1
    assert metric(server.url, "memtune_model_info", run=new_run.name) == 1


def test_a_damaged_run_is_refused_and_the_old_one_keeps_serving(server: LiveServer, output: Path, facts) -> None:
    serving = served_run(server)
    damaged = commit_newer_run(output, output / "runs" / serving, tamper="keys.safetensors")
    reply = reload(server)
    assert reply.status_code == 409
    error = reply.json()["error"]
    assert error["code"] == "reload_refused" and damaged.name in error["message"]
    assert "keys.safetensors" in error["message"] and "sha256" in error["message"]
    assert served_run(server) == serving
    assert reload(server).status_code == 409  # remembered: not verified again
    assert metric(server.url, "memtune_reloads_total", result="refused") == 1
    body = {"model": "facts", "prompt": facts[2]["input"], "max_tokens": 8}
    answer = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers(), timeout=300).json()
    assert answer["choices"][0]["text"].strip() == facts[2]["output"]
    assert answer["choices"][0]["route"]["run"] == serving
    shutil.rmtree(damaged)  # for the polling test below


def test_polling_picks_up_a_newer_run(output: Path, trained_output, facts) -> None:
    live = LiveServer(str(output), reload_interval_s=0.2).start()
    try:
        serving = served_run(live)
        newer = commit_newer_run(output, output / "runs" / serving)
        deadline = time.monotonic() + 120
        while served_run(live) != newer.name and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served_run(live) == newer.name
        body = {"model": "facts", "prompt": facts[5]["input"], "max_tokens": 8}
        answer = httpx.post(f"{live.url}/v1/completions", json=body, timeout=300).json()["choices"][0]
        assert answer["text"].strip() == facts[5]["output"] and answer["route"]["run"] == newer.name
    finally:
        live.stop()
