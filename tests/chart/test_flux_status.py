"""How Flux reads a MemoryTuningJob: kstatus's generic rules, and the CEL health expressions of docs/cluster.md."""

from __future__ import annotations

import re
from typing import Any

import celpy
import pytest
import yaml

from . import kstatus
from .render import ROOT
from .samples import SAMPLES

DOCS = ROOT / "docs" / "cluster.md"

# kstatus's own test table for an unknown custom resource (cli-utils pkg/kstatus/status/status_compute_test.go,
# TestCRDGenericStatus): the port must agree with upstream before its reading of our samples means anything.
UPSTREAM_CASES: list[tuple[dict[str, Any], str]] = [
    ({"metadata": {"generation": 1}}, "Current"),
    ({"metadata": {"generation": 2}, "status": {"observedGeneration": 1}}, "InProgress"),
    ({"metadata": {"generation": 1}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}, "Current"),
    (
        {
            "metadata": {"generation": 1},
            "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False"}]},
        },
        "InProgress",
    ),
    (
        {"metadata": {"generation": 1}, "status": {"conditions": [{"type": "SomeCondition", "status": "False"}]}},
        "Current",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), UPSTREAM_CASES)
def test_port_agrees_with_upstream_kstatus(obj: dict[str, Any], expected: str) -> None:
    assert kstatus.compute({"kind": "MyCR", **obj})[0] == expected


@pytest.mark.parametrize("name", list(SAMPLES))
def test_kstatus_reading_of_each_life_stage(name: str) -> None:
    obj, _, expected = SAMPLES[name]
    assert kstatus.compute(obj)[0] == expected


def health_check_exprs() -> dict[str, str]:
    """The `healthCheckExprs` entry for MemoryTuningJob from the Flux example in docs/cluster.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    for block in blocks:
        for document in yaml.safe_load_all(block):
            for entry in (document or {}).get("spec", {}).get("healthCheckExprs", []):
                if entry.get("kind") == "MemoryTuningJob":
                    return {key: entry[key] for key in ("inProgress", "failed", "current")}
    raise AssertionError("docs/cluster.md has no healthCheckExprs entry for MemoryTuningJob")


def cel_verdicts(obj: dict[str, Any]) -> set[str]:
    """Which of Flux's expressions hold for `obj`; the top-level fields are the CEL variables, as in Flux."""
    environment = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    verdicts = set()
    for name, expression in health_check_exprs().items():
        result = environment.program(environment.compile(expression)).evaluate(activation)
        if isinstance(result, celpy.CELEvalError):
            raise AssertionError(f"{name}: {expression!r} fails on {obj.get('status')}: {result}")
        if result:
            verdicts.add(name)
    return verdicts


# With the expressions, Flux reads a finished job as finished: InProgress until Succeeded, Failed when Failed.
CEL_EXPECTED = {
    "pending": "inProgress",
    "queued": "inProgress",
    "running": "inProgress",
    "suspended": "inProgress",
    "succeeded": "current",
    "failed": "failed",
    "stale": "inProgress",
}


@pytest.mark.parametrize("name", list(CEL_EXPECTED))
def test_documented_cel_expressions_give_exactly_one_verdict(name: str) -> None:
    assert cel_verdicts(SAMPLES[name][0]) == {CEL_EXPECTED[name]}
