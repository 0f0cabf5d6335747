"""Pure pieces of the operator: condition bookkeeping and reading pods (no API server needed)."""

from __future__ import annotations

from memtune.operator.observe import diagnose, final_result, last_progress
from memtune.operator.status import conditions_for


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
