"""Serving a job output on real S3 (SeaweedFS on 127.0.0.1): fetched and verified on load, newer runs picked up."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from memtune import storage
from memtune.data import memtune_home
from tests.serving.conftest import LiveServer, commit_newer_run

pytestmark = pytest.mark.slow


def test_an_s3_job_output_is_served_and_reloaded(s3_env, trained_output, facts, tmp_path: Path, monkeypatch) -> None:
    output_dir, run = trained_output
    home = tmp_path / "home"  # fetched runs land here; the converted base model is shared, not converted again
    home.mkdir()
    (home / "models").symlink_to(memtune_home() / "models")
    monkeypatch.setenv("MEMTUNE_HOME", str(home))
    output = f"{s3_env.make_bucket()}/facts"
    storage.publish_folder(run, storage.run_uri(output, run.name))
    live = LiveServer(output).start()
    try:
        assert httpx.get(f"{live.url}/readyz").json()["run"] == run.name
        unchanged = httpx.post(f"{live.url}/admin/reload", timeout=300).json()
        assert unchanged == {"reloaded": False, "run": run.name, "reason": "already serving the newest committed run"}

        local = tmp_path / "facts"
        shutil.copytree(output_dir, local)
        newer = commit_newer_run(local, local / "runs" / run.name)
        storage.publish_folder(newer, storage.run_uri(output, newer.name))
        reloaded = httpx.post(f"{live.url}/admin/reload", timeout=300).json()
        assert reloaded == {"reloaded": True, "run": newer.name, "previous": run.name}
        body = {"model": "facts", "prompt": facts[0]["input"], "max_tokens": 8}
        choice = httpx.post(f"{live.url}/v1/completions", json=body, timeout=300).json()["choices"][0]
        assert choice["text"].strip() == facts[0]["output"] and choice["route"]["run"] == newer.name
    finally:
        live.stop()
