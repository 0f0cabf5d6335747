"""The cluster side of the CLI and SDK (`memtune submit/status/wait/logs`, `KubernetesBackend`) against the
emulated API server, with the test acting as the operator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from memtune import MemoryTuner
from memtune.cluster import ClusterClient, ClusterError, KubernetesBackend, register_commands
from memtune.operator.status import conditions_for
from memtune.spec import SpecError, parse_job

from .mtj_cluster import MTJ, NAMESPACE, PODS, Cluster

pytestmark = pytest.mark.asyncio

JOB = {
    "apiVersion": "memtune.dev/v1alpha1",
    "kind": "MemoryTuningJob",
    "metadata": {"name": "nba"},
    "spec": {"dataset": {"uri": "s3://data/facts.jsonl"}, "output": {"uri": "s3://runs/nba"}},
}


def _finish(cluster: Cluster, phase: str, reason: str, message: str, **extra: object) -> None:
    """Act as the operator: write a final status the way it does."""
    conditions = conditions_for(None, phase, reason, message, 1, "2026-01-01T00:00:00Z")
    cluster.emulator.objects[MTJ, NAMESPACE, "nba"].patch(
        {"status": {"phase": phase, "conditions": conditions, **extra}}
    )


async def test_submit_creates_the_job_in_the_kubeconfig_namespace(cluster: Cluster) -> None:
    created = await asyncio.to_thread(ClusterClient().submit, parse_job(JOB))
    assert created["metadata"]["namespace"] == NAMESPACE
    stored = cluster.get(MTJ, "nba")
    assert stored["spec"]["dataset"] == {"uri": "s3://data/facts.jsonl", "inputKey": "input", "outputKey": "output"}
    with pytest.raises(ClusterError, match=r"new metadata\.name"):
        await asyncio.to_thread(ClusterClient().submit, parse_job(JOB))


async def test_submit_refuses_local_paths(cluster: Cluster) -> None:
    job = parse_job({**JOB, "spec": {**JOB["spec"], "dataset": {"uri": "facts.jsonl"}}})
    with pytest.raises(SpecError, match=r"spec.dataset.uri: 'facts.jsonl' is a local path"):
        await asyncio.to_thread(ClusterClient().submit, job)
    assert cluster.get(MTJ, "nba") is None


async def test_backend_waits_and_returns_the_artifacts(cluster: Cluster) -> None:
    backend = KubernetesBackend(poll_seconds=0.05)
    training = asyncio.create_task(asyncio.to_thread(backend.train, parse_job(JOB)))
    await until_created(cluster)
    await asyncio.sleep(0.2)
    assert not training.done()
    _finish(cluster, "Succeeded", "Succeeded", "done", artifactsUri="s3://runs/nba/runs/r1", metrics={"recall": 1.0})
    result = await asyncio.wait_for(training, timeout=10)
    assert result == {
        "job_name": "nba", "model_name": "s3://runs/nba/runs/r1", "status": "COMPLETED", "metrics": {"recall": 1.0}
    }  # fmt: skip


async def test_backend_raises_with_the_failure_reason(cluster: Cluster) -> None:
    training = asyncio.create_task(asyncio.to_thread(KubernetesBackend(poll_seconds=0.05).train, parse_job(JOB)))
    await until_created(cluster)
    _finish(cluster, "Failed", "OOMKilled", "pod nba-0-master-0 ran out of memory")
    with pytest.raises(ClusterError, match="OOMKilled: pod nba-0-master-0 ran out of memory"):
        await asyncio.wait_for(training, timeout=10)


async def test_sdk_job_calls_map_to_the_cluster(cluster: Cluster) -> None:
    """Lamini's get_jobs / check_job_status / cancel_job / resume_job on MemoryTuningJobs."""
    tuner = MemoryTuner(backend="kubernetes", store="s3://data", output_root="s3://runs")
    await asyncio.to_thread(ClusterClient().submit, parse_job(JOB))
    assert await asyncio.to_thread(tuner.check_job_status, "nba") == {
        "job_id": "nba",
        "status": "SCHEDULED",
        "phase": None,
    }
    cancelled = await asyncio.to_thread(tuner.cancel_job, "nba")
    assert (cancelled["status"], cancelled["phase"]) == ("CANCELLED", "Suspended")
    assert cluster.get(MTJ, "nba")["spec"]["suspend"] is True
    resumed = await asyncio.to_thread(tuner.resume_job, "nba")
    assert resumed["status"] == "SCHEDULED" and cluster.get(MTJ, "nba")["spec"]["suspend"] is False
    _finish(cluster, "Succeeded", "Succeeded", "done", artifactsUri="s3://runs/nba/runs/r1", metrics={"recall": 1.0})
    [job] = await asyncio.to_thread(tuner.get_jobs)
    assert (job["job_id"], job["status"], job["model_name"], job["metrics"]) == (
        "nba", "COMPLETED", "s3://runs/nba/runs/r1", {"recall": 1.0}
    )  # fmt: skip
    assert (await asyncio.to_thread(tuner.cancel_job, "nba"))["status"] == "COMPLETED"  # finished stays finished
    with pytest.raises(ClusterError, match="no MemoryTuningJob 'missing'"):
        await asyncio.to_thread(tuner.cancel_job, "missing")


async def until_created(cluster: Cluster) -> None:
    while cluster.get(MTJ, "nba") is None:
        await asyncio.sleep(0.02)


def _cli() -> typer.Typer:
    app = typer.Typer()
    register_commands(app)
    return app


async def _run(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(CliRunner().invoke, _cli(), list(args))
    return result.exit_code, result.output


async def test_cli_submit_status_wait_logs(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(JOB))
    code, output = await _run("submit", str(manifest))
    assert code == 0 and "memorytuningjob.memtune.dev/nba created in namespace ml" in output

    _finish(cluster, "Failed", "TrainerError", "exit code 1: dataset line 3", attempt=0)
    code, output = await _run("status", "nba", "-n", NAMESPACE)
    assert code == 0 and "nba: Failed" in output and "TrainerError" in output
    code, output = await _run("wait", "nba", "--poll", "0.05")
    assert code == 1 and "dataset line 3" in output

    labels = {"memtune.dev/job": "nba", "memtune.dev/attempt": "0", "memtune.dev/role": "master"}
    pod = {"metadata": {"name": "nba-0-master-0", "namespace": NAMESPACE, "labels": labels}}
    cluster.emulator.objects[PODS, NAMESPACE, "nba-0-master-0"] = pod
    cluster.serve_log('loading model\nMEMTUNE_PROGRESS {"step": 1}\n')
    code, output = await _run("logs", "nba")
    assert code == 0 and output == 'loading model\nMEMTUNE_PROGRESS {"step": 1}\n'

    code, output = await _run("status", "missing")
    assert code == 1 and "no MemoryTuningJob 'missing' in namespace 'ml'" in output


async def test_status_shows_progress_eta_loss_and_backend(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(JOB))
    await _run("submit", str(manifest))
    progress = {"step": 40, "maxSteps": 100, "percentage": 40, "estimatedRemainingSeconds": 150, "loss": 0.5}
    _finish(cluster, "Running", "Training", "nba-1 is training", attempt=1, backend="TrainJob", progress=progress)
    code, output = await _run("status", "nba")
    assert code == 0 and "nba: Running attempt 1 step 40/100 (40%) ETA 2m30s loss 0.5 on TrainJob" in output
