"""The trainer pod's entrypoint: the spec in, progress on stdout, the result in the termination log, an exit code.

    python -m memtune.trainer --spec /etc/memtune/job.yaml                 # what the operator runs (one rank)
    torchrun --nproc_per_node=2 -m memtune.trainer --spec job.yaml        # what PyTorchJob runs per node

Follows docs/trainer-contract.md: rank 0 prints `MEMTUNE_PROGRESS {"step": .., "max_steps": .., "loss": ..}` after
every step and writes `{"artifactsUri": .., "metrics": {"recall": .., "final_loss": .., "steps": ..}}` to the
termination log; a failure writes its one-line reason there instead. Exit 1 means the attempt can never succeed
(bad spec or data, missing base model, a corrupt run or checkpoint, a missing bucket or rejected credentials);
`EXIT_RETRYABLE` means another attempt may (storage still failing after its retries, a lost peer, ...), and a
restarted attempt resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from memtune import storage
from memtune.contract import (
    EXIT_PERMANENT,
    EXIT_RETRYABLE,
    PROGRESS_PREFIX,
    RECALL_METRIC,
    SPEC_PATH,
    TERMINATION_LOG,
)
from memtune.data import DatasetError
from memtune.manifest import IntegrityError
from memtune.redact import redact
from memtune.spec import ModelError, SpecError, load_job_file, resolve_local_paths
from memtune.trainer.tuning import distributed
from memtune.trainer.tuning.job import RunSummary, run_job
from memtune.trainer.tuning.train import StepReport

log = logging.getLogger("memtune.trainer")

# Kubernetes keeps at most 4 KiB of the termination message.
MESSAGE_LIMIT = 4096
_PERMANENT = (SpecError, DatasetError, ModelError, IntegrityError)


def is_permanent(error: BaseException) -> bool:
    """Would the same attempt fail again? StorageError is permanent unless it gave up on a transient failure."""
    if isinstance(error, storage.StorageError):
        return not error.transient
    return isinstance(error, _PERMANENT)


def print_progress(report: StepReport) -> None:
    """One contract line per step on stdout (the operator reads the last well-formed one)."""
    payload = {"step": report.step, "max_steps": report.max_steps, "loss": report.loss}
    print(f"{PROGRESS_PREFIX} {json.dumps(payload)}", flush=True)


def result_message(summary: RunSummary) -> str:
    metrics = {RECALL_METRIC: summary.recall, "final_loss": summary.final_loss, "steps": summary.steps}
    return json.dumps({"artifactsUri": summary.run_dir, "metrics": metrics})


def write_termination_log(path: Path, message: str) -> None:
    """Best effort: outside Kubernetes /dev/termination-log usually cannot be created, and that must not fail a run."""
    data = message.encode()[:MESSAGE_LIMIT]
    try:
        path.write_bytes(data)
    except OSError as error:
        log.warning("cannot write the termination log %s: %s", path, error)


class RedactingFormatter(logging.Formatter):
    """Log lines, tracebacks included, with credentials hidden (`memtune.redact`): pod logs are widely readable."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m memtune.trainer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=Path(SPEC_PATH), help="MemoryTuningJob manifest (YAML).")
    parser.add_argument(
        "--termination-log", type=Path, default=Path(TERMINATION_LOG), help="Where rank 0 writes the result."
    )
    return parser


def train(spec: Path, group: distributed.RankGroup) -> RunSummary:
    job = resolve_local_paths(load_job_file(spec), spec.parent)
    # Training itself draws no random numbers per rank; this keeps any library sampling distinct across ranks.
    torch.manual_seed(job.spec.memory.seed + group.rank)
    distributed.start(group)
    return run_job(job, show_progress=False, on_step=print_progress if group.is_rank0 else None, group=group)


def main(argv: list[str] | None = None) -> int:
    """Run one rank of a MemoryTuningJob; returns the process exit code (0, EXIT_PERMANENT or EXIT_RETRYABLE)."""
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    group = distributed.SINGLE
    try:
        group = distributed.group_from_env()
        summary = train(args.spec, group)
    except Exception as error:
        code = EXIT_PERMANENT if is_permanent(error) else EXIT_RETRYABLE
        kind = "permanent" if code == EXIT_PERMANENT else "retryable"
        log.error("rank %d failed (%s, exit %d): %s", group.rank, kind, code, error, exc_info=code != EXIT_PERMANENT)
        if group.is_rank0:
            reason = redact(f"{type(error).__name__}: {error}").replace("\n", " ")
            write_termination_log(args.termination_log, reason)
        return code
    finally:
        distributed.stop()
    if group.is_rank0:
        write_termination_log(args.termination_log, result_message(summary))
        log.info("done: %s", result_message(summary))
    return 0
