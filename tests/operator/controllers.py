"""What the Kubeflow controllers do to the objects the operator sends, modelled from their source, so tests can
see the pods a real cluster would run:

- Kubeflow Training Operator v1.9 (PyTorchJob): `pkg/controller.v1/pytorch/envvar.go` and `master.go` add
  PYTHONUNBUFFERED, MASTER_PORT, MASTER_ADDR, WORLD_SIZE (= replicas × nprocPerNode), RANK (the node's rank),
  PET_NPROC_PER_NODE, PET_NODE_RANK and PET_NNODES to every container; the defaulter gives the `pytorch`
  container the port `pytorchjob-port` 23456.
- Kubeflow Trainer v2.3 (TrainJob): the TrainJob's runtimePatches are applied to the ClusterTrainingRuntime's
  pod template (volumes, volumeMounts and env upserted by name, labels merged, placement fields set), its
  `trainer` sets the `node` container's image, command, resources and env, and the torch plugin
  (`pkg/runtime/framework/plugins/torch/torch.go`) upserts PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK (from
  the pod's completion index), PET_MASTER_ADDR `{name}-node-0-0.{name}` and PET_MASTER_PORT 29400.
"""

from __future__ import annotations

import copy
from typing import Any

Manifest = dict[str, Any]
KUBEFLOW_V1_PORT = 23456
TRAINER_V2_PORT = 29400
COMPLETION_INDEX_PATH = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _upsert(items: list[Manifest], new: list[Manifest], key: str = "name") -> list[Manifest]:
    """Replace items with the same key in place, append the others (Trainer's apply.Upsert*)."""
    result = [copy.deepcopy(item) for item in items]
    for item in new:
        for index, old in enumerate(result):
            if old.get(key) == item.get(key):
                result[index] = copy.deepcopy(item)
                break
        else:
            result.append(copy.deepcopy(item))
    return result


def pytorchjob_pod(job: Manifest, replica_type: str, index: int) -> Manifest:
    """The pod template of replica `replica_type` #`index` as Kubeflow v1.9 creates it (env appended)."""
    spec = job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    template = copy.deepcopy(replicas[replica_type]["template"])
    total = sum(replica["replicas"] for replica in replicas.values())
    nproc = spec.get("nprocPerNode") or "1"
    world = total * (int(nproc) if nproc.isdigit() else 1)
    rank = index + 1 if replica_type == "Worker" else index
    added = [
        {"name": "PYTHONUNBUFFERED", "value": "0"},
        {"name": "MASTER_PORT", "value": str(KUBEFLOW_V1_PORT)},
        {"name": "MASTER_ADDR", "value": f"{job['metadata']['name']}-master-0"},
        {"name": "WORLD_SIZE", "value": str(world)},
        {"name": "RANK", "value": str(rank)},
        {"name": "PET_NPROC_PER_NODE", "value": nproc},
        {"name": "PET_NODE_RANK", "value": str(rank)},
        {"name": "PET_NNODES", "value": str(total)},
    ]
    for container in template["spec"]["containers"]:
        container["env"] = [*(container.get("env") or []), *added]
        if container["name"] == "pytorch":
            container.setdefault("ports", []).append({"name": "pytorchjob-port", "containerPort": KUBEFLOW_V1_PORT})
    return template


def trainjob_pod(trainjob: Manifest, runtime: Manifest) -> Manifest:
    """The pod template of a TrainJob's trainer pods (one per node) as Trainer v2.3 builds it from `runtime`."""
    (replicated,) = [job for job in runtime["spec"]["template"]["spec"]["replicatedJobs"] if job["name"] == "node"]
    template = copy.deepcopy(replicated["template"]["spec"]["template"])
    pod = template["spec"]
    for patch in trainjob["spec"].get("runtimePatches") or []:
        for job_patch in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
            if job_patch["name"] != "node":
                continue
            pod_patch = job_patch["template"]["spec"]["template"]
            labels = (pod_patch.get("metadata") or {}).get("labels") or {}
            template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
            changes = dict(pod_patch.get("spec") or {})
            pod["volumes"] = _upsert(pod.get("volumes") or [], changes.pop("volumes", []))
            for container_patch in changes.pop("containers", []):
                (container,) = [c for c in pod["containers"] if c["name"] == container_patch["name"]]
                mounts = container_patch.get("volumeMounts", [])
                container["volumeMounts"] = _upsert(container.get("volumeMounts") or [], mounts)
                container["env"] = _upsert(container.get("env") or [], container_patch.get("env", []))
            pod.update(copy.deepcopy(changes))
    trainer = trainjob["spec"].get("trainer") or {}
    (node,) = [c for c in pod["containers"] if c["name"] == "node"]
    for field in ("image", "command", "args"):
        if field in trainer:
            node[field] = list(trainer[field]) if isinstance(trainer[field], list) else trainer[field]
    if "resourcesPerNode" in trainer:
        node["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    name = trainjob["metadata"]["name"]
    node["env"] = _upsert(node.get("env") or [], trainer.get("env") or [])
    node["env"] = _upsert(
        node["env"],
        [
            {"name": "PET_NNODES", "value": str(trainer.get("numNodes", 1))},
            {"name": "PET_NPROC_PER_NODE", "value": str(trainer.get("numProcPerNode", "auto"))},
            {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_PATH}}},
            {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
            {"name": "PET_MASTER_PORT", "value": str(TRAINER_V2_PORT)},
        ],
    )
    node["ports"] = _upsert(node.get("ports") or [], [{"containerPort": TRAINER_V2_PORT}], key="containerPort")
    return template
