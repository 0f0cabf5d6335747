"""Fixtures of the storage tests: a real S3 server (see s3server.py) and committed artifact folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from memtune import storage
from memtune.manifest import write_manifest
from tests.storage.s3server import s3_env, s3_server  # noqa: F401 - fixtures, imported to register them


@pytest.fixture
def committed_folder(tmp_path: Path) -> Path:
    """A small artifact folder with a nested file and binary content, committed by its manifest."""
    folder = tmp_path / "artifact"
    (folder / "experts").mkdir(parents=True)
    (folder / "config.json").write_text('{"r": 4}')
    (folder / "experts" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "index.faiss").write_bytes(b"\x00faiss" * 100)
    write_manifest(folder, {"run": "test"})
    return folder


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the retry policy but shrink its waits, so giving up takes well under a second."""
    monkeypatch.setattr(storage, "RETRY_BASE_DELAY_S", 0.01)
    monkeypatch.setattr(storage, "RETRY_MAX_DELAY_S", 0.05)
