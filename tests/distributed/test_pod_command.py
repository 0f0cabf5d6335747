"""Issue 13, case 11: a pod asked for 2 processes must start 2 ranks. The EXACT container command, with the EXACT
environment each controller gives it, run as the pod would run it, on CPU/gloo with a tiny model:

- Kubeflow v1 PyTorchJob: the operator's Master template plus what Training Operator v1.9 appends
  (WORLD_SIZE = replicas × nprocPerNode = 2, RANK = 0, PET_* ...: `tests/operator/controllers.py`);
- Kubeflow Trainer v2 TrainJob: the chart's ClusterTrainingRuntime with the TrainJob's patches and the torch
  plugin's PET_* variables;
- a batch/v1 Job: the operator's own template (no controller sets anything).

How it is run: the image's ENV lines (Dockerfile, trainer stage), then the container's env in order with
`valueFrom` resolved (the storage Secret's keys, the pod's completion index), then `envFrom`; in a private mount
namespace (root, `unshare`) the spec ConfigMap is mounted read-only at /etc/memtune, emptyDirs at /tmp and
/scratch, a file at /dev/termination-log, as the kubelet would. The one substitution: the image's /opt/venv is
this checkout's virtual environment. Mount points that do not exist (/etc/memtune, /scratch,
/dev/termination-log) are created empty on this machine and left there, as every container has them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from memtune import contract
from memtune.operator import pods
from memtune.operator.backends import BACKENDS
from memtune.operator.settings import OperatorSettings
from memtune.spec import parse_job
from tests.operator.controllers import pytorchjob_pod, trainjob_pod
from tests.operator.mtj_schemas import chart_runtime

from .conftest import FACTS, ROOT

OWNER = {"apiVersion": "memtune.dev/v1alpha1", "kind": "MemoryTuningJob", "metadata": {"name": "nba", "uid": "u1"}}
MOUNTS = """set -e
mkdir -p /etc/memtune /scratch
[ -e /dev/termination-log ] || touch /dev/termination-log
mount --bind "$1" /etc/memtune && mount -o remount,bind,ro /etc/memtune
mount --bind "$2" /scratch
mount --bind "$3" /dev/termination-log
for name in $5; do mkdir -p "$4/$name" && mount --bind "/tmp/$name" "$4/$name"; done
mount --rbind "$4" /tmp
shift 5
exec "$@"
"""


def kept_under_tmp() -> str:
    """The top-level /tmp entries holding this checkout or its venv (a CI copy lives in /tmp): the pod's /tmp emptyDir
    covers /tmp, so they are bound into it first, or the pod's `python` and the code would vanish."""
    venv = Path(sys.executable).parent.parent  # as image_env puts it on PATH, and where it really is
    places = (ROOT, ROOT.resolve(), venv, venv.resolve())
    return " ".join(
        sorted({place.parts[2] for place in places if place.parts[:3][:2] == ("/", "tmp") and len(place.parts) > 2})
    )


def image_env() -> dict[str, str]:
    """The trainer image's ENV (Dockerfile, trainer stage), /opt/venv being this checkout's venv."""
    text = (ROOT / "Dockerfile").read_text().split(" AS trainer", 1)[1].replace("\\\n", " ")
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[key] = value.replace("${PATH}", env.get("PATH", ""))
    venv = str(Path(sys.executable).parent.parent)
    return {key: value.replace("/opt/venv", venv) for key, value in env.items()}


def resolve(container: dict[str, Any], secret: dict[str, str], annotations: dict[str, str]) -> dict[str, str]:
    """The process environment Kubernetes builds from a container spec (later names win, envFrom first)."""
    env = image_env()
    for source in container.get("envFrom") or []:
        env.update(secret)  # the only Secret in play: the storage Secret
        assert source["secretRef"]["name"] == "s3"
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert ref["name"] == "s3"
            if ref["key"] in secret:
                env[item["name"]] = secret[ref["key"]]
            else:
                assert ref.get("optional"), f"required key {ref['key']} missing"
        else:
            path = source["fieldRef"]["fieldPath"]
            key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", path).group(1)
            env[item["name"]] = annotations[key]
    return env


@pytest.fixture(scope="module")
def bucket(tiny_model: Path, s3_server) -> str:
    from memtune.trainer.mome.base import publish_model

    uri = s3_server.make_bucket()
    with mock.patch.dict(os.environ, s3_server.env()):
        publish_model(str(tiny_model), f"{uri}/models/tiny")  # as `memtune push-model` does
    s3_server.filesystem().put(str(FACTS), f"{uri[5:]}/data/facts.jsonl")
    return uri


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare (and root)")
@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob", "job"])
def test_a_two_process_pod_starts_both_ranks(backend: str, bucket: str, s3_server, tmp_path: Path) -> None:
    spec = {
        "baseModel": f"{bucket}/models/tiny",
        "dataset": {"uri": f"{bucket}/data/facts.jsonl"},
        "finetuneArgs": {
            "max_steps": 40,
            "learning_rate": 0.1,
            "index_method": "IndexFlatL2",
            "r_value": 8,
            "save_steps": 20,
            "max_length": 256,
        },
        "memory": {"numExpertLayers": 1, "keyLayer": 0, "batchSize": 2, "gate": "always"},
        "gpuConfig": {"gpus": 2, "nodes": 1},
        "output": {"uri": f"{bucket}/out-{backend}"},
        "storage": {"secretRef": {"name": "s3"}},
        "backend": backend,
    }
    job = parse_job({"metadata": {"name": "nba", "namespace": "ml"}, "spec": spec})
    settings = OperatorSettings()
    child = BACKENDS[backend].build(job, 0, OWNER, settings)
    annotations: dict[str, str] = {}
    if backend == "pytorchjob":
        template = pytorchjob_pod(child, "Master", 0)
    elif backend == "trainjob":
        template = trainjob_pod(child, chart_runtime())
        annotations = {contract.COMPLETION_INDEX: "0"}
    else:
        template = child["spec"]["template"]
    (container,) = template["spec"]["containers"]
    env = resolve(container, s3_server.env(), annotations)
    if backend == "pytorchjob":
        assert env["WORLD_SIZE"] == "2" and env["RANK"] == "0"  # what made the old pod wait for a second rank

    config_map = pods.spec_config_map(job, 0, OWNER, child["kind"])
    spec_dir, scratch, tmp = (tmp_path / name for name in ("spec", "scratch", "tmp"))
    for folder in (spec_dir, scratch, tmp):
        folder.mkdir()
    (spec_dir / contract.SPEC_FILE_NAME).write_text(config_map["data"][contract.SPEC_FILE_NAME])
    termination = tmp_path / "termination-log"
    termination.touch()
    env["OMP_NUM_THREADS"] = "1"  # two ranks on a shared 2-core machine (not the pod's: a test machine's need)
    mounts = [str(spec_dir), str(scratch), str(termination), str(tmp), kept_under_tmp()]
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", MOUNTS, "sh", *mounts,
               *container["command"], *(container.get("args") or [])]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "starting 2 rank(s) on node 0 of 1" in done.stderr
    steps = [json.loads(line.split(" ", 1)[1])["step"] for line in done.stdout.splitlines()
             if line.startswith(contract.PROGRESS_PREFIX)]  # fmt: skip
    result = json.loads(termination.read_text())
    assert steps == list(range(1, result["metrics"]["steps"] + 1))  # rank 0 alone reports, once per step
    assert result["artifactsUri"].startswith(f"{bucket}/out-{backend}/runs/")
    assert result["metrics"][contract.RECALL_METRIC] == 1.0
    assert yaml.safe_load((spec_dir / contract.SPEC_FILE_NAME).read_text())["spec"]["gpuConfig"]["gpus"] == 2


def test_launch_from_env_reads_each_controllers_variables() -> None:
    from memtune.spec import SpecError
    from memtune.trainer.tuning.distributed import NodeLaunch, launch_from_env

    kubeflow_v1 = {"WORLD_SIZE": "8", "RANK": "1", "MASTER_ADDR": "nba-0-master-0", "MASTER_PORT": "23456",
                   "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1", "PET_NNODES": "2"}  # fmt: skip
    assert launch_from_env(kubeflow_v1) == NodeLaunch(2, 4, 1, "nba-0-master-0", 23456)
    trainer_v2 = {"PET_NNODES": "4", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "3",
                  "PET_MASTER_ADDR": "nba-0-node-0-0.nba-0", "PET_MASTER_PORT": "29400"}  # fmt: skip
    assert launch_from_env(trainer_v2) == NodeLaunch(4, 1, 3, "nba-0-node-0-0.nba-0", 29400)
    assert launch_from_env({"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2"}) == NodeLaunch(1, 2, 0, "127.0.0.1", 29500)
    # One process: this process is the rank (a laptop, a one-GPU pod); under torchrun: always a rank.
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0", "PET_NNODES": "1", "PET_NPROC_PER_NODE": "1"}) is None
    assert launch_from_env({**kubeflow_v1, "TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "8", "RANK": "5"}) is None
    with pytest.raises(SpecError) as error:
        launch_from_env({**kubeflow_v1, "WORLD_SIZE": "2"})
    assert [field for field, _ in error.value.problems] == ["WORLD_SIZE"]
    with pytest.raises(SpecError) as error:
        launch_from_env({"PET_NNODES": "2", "PET_NPROC_PER_NODE": "auto", "PET_NODE_RANK": "0"})
    assert [field for field, _ in error.value.problems] == ["PET_NPROC_PER_NODE"]
    with pytest.raises(SpecError) as error:
        launch_from_env({"PET_NNODES": "2", "PET_NODE_RANK": "2"})
    assert {field for field, _ in error.value.problems} == {"PET_NODE_RANK", "PET_MASTER_ADDR"}
