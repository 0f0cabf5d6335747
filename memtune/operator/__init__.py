"""The memtune operator: turns MemoryTuningJobs into Kubeflow PyTorchJobs (or batch/v1 Jobs) and reports back;
serves MemoryModels (a Deployment and a Service running `memtune serve`, memtune/operator/serving.py).

    kopf run -m memtune.operator --standalone --liveness=http://0.0.0.0:8080/healthz --all-namespaces

Importing this package registers the kopf handlers. It never imports torch, transformers or faiss; the trainer
contract it shares with the training pods is `memtune.contract` (documented in docs/trainer-contract.md).
"""

from memtune.operator import handlers, serving

__all__ = ["handlers", "serving"]
