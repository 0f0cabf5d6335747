"""Pure pieces of the operator: condition bookkeeping and reading pods (no API server needed)."""

from __future__ import annotations

from memtune.operator.observe import diagnose, final_result, last_progress, pending_pod
from memtune.operator.status import conditions_for
from tests.chart import kstatus


def _by_type(conditions: list[dict]) -> dict[str, dict]:
    return {condition["type"]: condition for condition in conditions}


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    queued = conditions_for(None, "Queued", "Created", "", 1, "t1")
    running = conditions_for(queued, "Running", "Training", "", 1, "t2")
    still = _by_type(conditions_for(running, "Running", "Training", "step 5", 2, "t3"))
    assert still["Running"]["lastTransitionTime"] == "t2"  # True since t2
    assert still["Queued"]["lastTransitionTime"] == "t2"  # False since t2
    assert still["Succeeded"]["lastTransitionTime"] == "t1"  # False all along
    assert still["Running"]["observedGeneration"] == 2
    assert [kind for kind, c in still.items() if c["status"] == "True"] == ["Running"]
    assert still["Ready"] | {"lastTransitionTime": None} == {
        "type": "Ready", "status": "False", "reason": "Training", "message": "step 5",
        "lastTransitionTime": None, "observedGeneration": 2,
    }  # fmt: skip


def test_ready_is_true_only_once_succeeded() -> None:
    done = _by_type(conditions_for(None, "Succeeded", "Succeeded", "artifacts at s3://x", 1, "t"))
    assert done["Ready"]["status"] == "True" and done["Ready"]["reason"] == "Succeeded"
    failed = _by_type(conditions_for(None, "Failed", "OOMKilled", "out of memory", 1, "t"))
    assert failed["Ready"]["status"] == "False" and failed["Ready"]["reason"] == "OOMKilled"


def test_stalled_follows_failed_and_makes_kstatus_report_failure() -> None:
    running = conditions_for(None, "Running", "Training", "step 5", 1, "t1")
    assert _by_type(running)["Stalled"] | {"lastTransitionTime": None} == {
        "type": "Stalled", "status": "False", "reason": "NotStalled", "message": "",
        "lastTransitionTime": None, "observedGeneration": 1,
    }  # fmt: skip
    failed = _by_type(conditions_for(running, "Failed", "TrainerError", "pod m-0 exited with code 1", 1, "t2"))
    assert failed["Stalled"] == failed["Failed"] | {"type": "Stalled"}
    assert failed["Stalled"]["lastTransitionTime"] == "t2"
    job = {"kind": "MemoryTuningJob", "metadata": {"generation": 1}}
    status = {"observedGeneration": 1, "conditions": list(failed.values())}
    assert kstatus.compute({**job, "status": status}) == ("Failed", "pod m-0 exited with code 1")
    status["conditions"] = running
    assert kstatus.compute({**job, "status": status})[0] == "InProgress"


def _pod(name: str, state: dict) -> dict:
    return {"metadata": {"name": name}, "status": {"containerStatuses": [{"name": "pytorch", "state": state}]}}


def test_permanent_failures_win_over_retryable_ones() -> None:
    oom = _pod("w-1", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    bad_data = _pod("m-0", {"terminated": {"exitCode": 1, "reason": "Error", "message": "line 3: no output"}})
    failure = diagnose([oom, bad_data])
    assert (failure.reason, failure.permanent) == ("TrainerError", True)
    assert failure.message == "pod m-0 exited with code 1: line 3: no output"
    assert diagnose([oom]).permanent is False
    assert diagnose([_pod("m-0", {"running": {}}), _pod("m-1", {"terminated": {"exitCode": 0}})]) is None


def test_progress_is_the_last_well_formed_line() -> None:
    log = 'MEMTUNE_PROGRESS {"step": 1}\nMEMTUNE_PROGRESS {"step": 2, "max_steps": 9}\nnoise\nMEMTUNE_PROGRESS {"ste'
    assert last_progress(log) == {"step": 2, "max_steps": 9}
    assert last_progress('MEMTUNE_PROGRESS [1]\nMEMTUNE_PROGRESS {"step": "two"}') is None


def test_final_result_ignores_non_json_messages() -> None:
    assert final_result(_pod("m", {"terminated": {"exitCode": 0, "message": '{"artifactsUri": "s3://r"}'}})) == {
        "artifactsUri": "s3://r"
    }
    assert final_result(_pod("m", {"terminated": {"exitCode": 0, "message": "done"}})) == {}


def test_pending_pod_says_why_it_waits() -> None:
    unschedulable = {
        "metadata": {"name": "w-1"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes: no GPU"}
            ],
        },
    }
    creating = _pod("m-0", {"waiting": {"reason": "ContainerCreating"}})
    creating["status"]["phase"] = "Pending"
    running = _pod("m-0", {"running": {}})
    running["status"]["phase"] = "Running"
    assert pending_pod([running, unschedulable]) == "pod w-1 is Pending (Unschedulable: 0/4 nodes: no GPU)"
    assert pending_pod([creating]) == "pod m-0 is Pending (ContainerCreating)"
    assert pending_pod([{"metadata": {"name": "m-0"}, "status": {"phase": "Pending"}}]) == "pod m-0 is Pending"
    assert pending_pod([running]) is None
