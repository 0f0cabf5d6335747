"""`memtune serve` as a serving pod runs it (the contract's command), and its exit codes when the model is bad."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from memtune.serving.contract import serve_command
from tests.serving.conftest import commit_newer_run

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MEMTUNE_API_KEY": ""},
    )


def test_the_pod_command_serves_and_stops_cleanly(trained_output, facts) -> None:
    port = free_port()
    process = start(serve_command(str(trained_output[0]), name="facts", port=port, reload_interval_s=5))
    try:
        deadline = time.monotonic() + 300
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, process.stdout and process.stdout.read()
        body = {"model": "facts", "messages": [{"role": "user", "content": facts[0]["input"]}], "max_tokens": 8}
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300)
        assert reply.json()["choices"][0]["message"]["content"] == facts[0]["output"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises the signal it caught, so the process ends by SIGTERM
    assert "Finished server process" in output
    assert process.returncode == -signal.SIGTERM, output


def test_a_damaged_run_exits_1_naming_the_file(trained_output, tmp_path: Path) -> None:
    output = tmp_path / "facts"
    shutil.copytree(trained_output[0], output)
    commit_newer_run(output, trained_output[1], tamper="index.faiss")
    process = start(serve_command(str(output), name="facts", port=free_port()))
    log, _ = process.communicate(timeout=300)
    assert process.returncode == 1, log
    assert "index.faiss" in log and "sha256" in log


def test_a_missing_model_is_refused_before_starting(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "memtune"), "serve", "--model", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "nowhere" in message and "no such folder" in message
