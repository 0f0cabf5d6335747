"""The SDK without a model: job building, Lamini's train arguments, argument checks, local job status."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from memtune import MemoryTuner, data
from memtune.client import _job_name
from memtune.jobs import JobError
from memtune.spec import SpecError

RECORDS = [{"input": "Who won the 2031 Tellurian Chess Open?", "output": "Anneke Voss"}]


def test_train_arguments_become_a_valid_job(tmp_path):
    tuner = MemoryTuner(store=str(tmp_path / "store"), output_root=str(tmp_path / "jobs"))
    job = tuner.build_job(RECORDS, {"max_steps": 7, "index_method": "IndexFlatL2"}, {"gpus": 0})
    identifier = data.dataset_id(data.parse_records(json.dumps(RECORDS), "x"))
    assert job.spec.dataset.id == identifier
    assert (tmp_path / "store" / "datasets" / f"{identifier}.jsonl").is_file()
    assert job.spec.finetuneArgs.max_steps == 7
    assert job.spec.gpuConfig.gpus == 0
    assert job.spec.output.uri == str(tmp_path / "jobs" / job.metadata.name)
    # The same dataset id given directly builds the same job.
    again = tuner.build_job(identifier, {"max_steps": 7, "index_method": "IndexFlatL2"}, {"gpus": 0})
    assert again == job


def test_bad_train_arguments_name_the_field(tmp_path):
    tuner = MemoryTuner(store=str(tmp_path))
    with pytest.raises(SpecError, match=r"finetune_args\.learning_rat"):
        tuner.build_job(RECORDS, {"learning_rat": 1e-3})
    with pytest.raises(SpecError, match=r"gpu_config\.nodes"):
        tuner.build_job(RECORDS, gpu_config={"nodes": 0})
    with pytest.raises(data.DatasetError, match="record 1: missing key 'output'"):
        tuner.upload_data([{"input": "q"}])


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        MemoryTuner(backend="slurm")  # type: ignore[arg-type]


def test_lamini_train_arguments_are_honoured_or_refused(tmp_path):
    tuner = MemoryTuner(store=str(tmp_path / "store"), output_root=str(tmp_path / "jobs"))
    with pytest.raises(SpecError, match=r"is_public: memtune is self-hosted and has no public model hub"):
        tuner.train(RECORDS, is_public=True)
    with pytest.raises(SpecError, match=r"custom_model_name: it names the MemoryTuningJob, so it must be a DNS-1035"):
        tuner.train(RECORDS, custom_model_name="My Model")
    with pytest.raises(SpecError, match=r"custom_model_name: differs from job_name"):
        tuner.train(RECORDS, custom_model_name="facts-a", job_name="facts-b")
    assert not (tmp_path / "jobs").exists()  # refused before any work
    assert _job_name(None, "facts-v1", False) == "facts-v1"


def test_generate_checks_its_arguments_before_loading_a_model(tmp_path):
    tuner = MemoryTuner(model_name=str(tmp_path / "no-such-model"))
    with pytest.raises(SpecError, match=r"output_type\.moons: type must be one of"):
        tuner.generate("q", output_type={"moons": "integer"})
    with pytest.raises(SpecError, match=r"max_new_tokens: must be a positive integer"):
        tuner.generate("q", max_new_tokens=0)
    assert tuner._generators == {}
    remote = MemoryTuner(api_url="http://127.0.0.1:9")  # nothing listens: the refusal comes before any request
    with pytest.raises(SpecError, match=r"max_tokens: counts the prompt's tokens.*give max_new_tokens"):
        remote.generate("q", max_tokens=64)


def _journal(jobs_root, name, **fields):
    folder = jobs_root / name
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps(fields))


def test_local_job_status_follows_the_journal_and_the_process(tmp_path):
    root = tmp_path / "jobs"
    tuner = MemoryTuner(output_root=str(root))
    with pytest.raises(JobError, match="no local job 'missing'"):
        tuner.check_job_status("missing")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = psutil.Process(sleeper.pid).create_time()
        host = socket.gethostname()
        _journal(root, "live", status="RUNNING", pid=sleeper.pid, process_start=started, host=host, start_time=2.0)
        # the same pid with another start time is another process: never taken for the job's
        _journal(root, "reused", status="RUNNING", pid=sleeper.pid, process_start=started - 5, host=host, start_time=1)
        assert tuner.check_job_status("live")["status"] == "RUNNING"
        gone = tuner.check_job_status("reused")
        assert gone["status"] == "FAILED" and "resume" in gone["error"]
        assert [job["job_id"] for job in tuner.get_jobs()] == ["live", "reused"]
        assert tuner.cancel_job("reused")["status"] == "FAILED"  # not running: nothing is signalled
        assert tuner.cancel_job("live")["status"] == "CANCELLED"
        assert sleeper.wait(timeout=30) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()
    with pytest.raises(JobError, match=r"train\(\) again"):
        tuner.resume_job("live")
