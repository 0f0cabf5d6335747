"""One short training run on the six facts (once per session) and one live server over it, on 127.0.0.1.

Servers run in-process under uvicorn on a thread (the real app, the real HTTP stack, a real socket); the
subprocess test in test_cli.py runs `memtune serve` itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from memtune.manifest import MANIFEST_NAME, read_manifest, write_manifest
from memtune.storage import new_run_id
from tests.storage.s3server import s3_env, s3_server  # noqa: F401 - fixtures, imported to register them
from tests.trainer.conftest import DATA, facts_job


class LiveServer:
    """`memtune serve`'s app under uvicorn on a free loopback port."""

    def __init__(self, ref: str, **options: object):
        from memtune.serving.app import ServeOptions, create_app

        self.app = create_app(ref, ServeOptions(**options))  # type: ignore[arg-type]
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def start(self, timeout_s: float = 180) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server.load_error is not None:
                raise RuntimeError(f"the server could not load its model: {self.server.load_error}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready after {timeout_s} s")

    @property
    def server(self):
        return self.app.state.server

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


def commit_newer_run(output: Path, source_run: Path, *, tamper: str | None = None) -> Path:
    """Copy a committed run as a newer one with its own manifest (its own identity); `tamper` damages that file
    after the manifest is written (so the manifest no longer vouches for it)."""
    target = output / "runs" / new_run_id()
    shutil.copytree(source_run, target, ignore=shutil.ignore_patterns(MANIFEST_NAME))
    extra = {key: value for key, value in read_manifest(source_run).items() if key not in ("files", "format_version")}
    write_manifest(target, {**extra, "run_id": target.name})
    if tamper:
        victim = target / tamper
        victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    return target


@pytest.fixture(scope="session")
def facts() -> list[dict[str, str]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="session")
def trained_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(job output, its committed run) of one short run on the six facts."""
    from memtune.trainer.tuning.job import run_job

    job = facts_job(tmp_path_factory.mktemp("serving") / "facts")
    summary = run_job(job, show_progress=False)
    assert summary.recall == 1.0
    return Path(job.spec.output.uri), Path(summary.run_dir)


@pytest.fixture(scope="session")
def live(trained_output: tuple[Path, Path]) -> Iterator[LiveServer]:
    """A server over the job output, shared by the tests that do not reload."""
    server = LiveServer(str(trained_output[0]), max_tokens_limit=256).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reference(trained_output: tuple[Path, Path]):
    """The engine itself on the same run: what the server must answer."""
    from memtune.trainer.mome.model import MemoryModel

    with MemoryModel.load(str(trained_output[1]), device="cpu") as model:
        yield model
