"""The Argo CD health check (charts/memtune/files/health.lua) run in a real Lua runtime over sample jobs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lupa import LuaRuntime

from .render import CHART
from .samples import SAMPLES

SCRIPT = (CHART / "files" / "health.lua").read_text(encoding="utf-8")
ARGO_HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def argo_health(obj: dict[str, Any]) -> tuple[str, str]:
    """Run the script as Argo CD does: the resource as global `obj`, the returned table read back.

    Argo CD decodes the object from JSON in Go, so every number reaches Lua as a float; so here too.
    """
    lua = LuaRuntime(unpack_returned_tuples=True)
    as_argo_sees_it = json.loads(json.dumps(obj), parse_int=float)
    lua.globals().obj = lua.table_from(as_argo_sees_it, recursive=True)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_health_of_each_life_stage(name: str) -> None:
    obj, expected, _ = SAMPLES[name]
    status, message = argo_health(obj)
    assert status in ARGO_HEALTH
    assert (status, bool(message)) == (expected, True)


def test_running_job_reports_its_step() -> None:
    assert argo_health(SAMPLES["running"][0]) == ("Progressing", "Running: step 10/100")


def test_failed_job_reports_the_operators_reason() -> None:
    assert argo_health(SAMPLES["failed"][0]) == ("Degraded", "dataset line 3: missing 'output'")


def test_succeeded_job_points_at_its_artifacts() -> None:
    status, message = argo_health(SAMPLES["succeeded"][0])
    assert status == "Healthy"
    assert SAMPLES["succeeded"][0]["status"]["artifactsUri"] in message


def test_stale_status_names_both_generations() -> None:
    status, message = argo_health(SAMPLES["stale"][0])
    assert status == "Progressing"
    assert "generation 2" in message and "generation 1" in message


def test_missing_fields_never_crash_the_script() -> None:
    """Argo CD shows a Lua error as a broken app; partial statuses the operator may write must still read."""
    bare = {"apiVersion": "memtune.dev/v1alpha1", "kind": "MemoryTuningJob", "metadata": {"name": "x"}}
    assert argo_health(bare)[0] == "Progressing"
    assert argo_health({**bare, "status": {}})[0] == "Progressing"
    assert argo_health({**bare, "status": {"phase": "Running", "progress": {}}}) == ("Progressing", "Running")
    assert argo_health({**bare, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == (
        "Degraded",
        "Training failed",
    )
