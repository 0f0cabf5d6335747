"""The trainer pod's entrypoint: the spec in, progress on stdout, the result in the termination log, an exit code.

    python -m memtune.trainer --spec /etc/memtune/job.yaml                 # what every trainer pod runs
    torchrun --nproc_per_node=2 -m memtune.trainer --spec job.yaml        # two ranks on this machine

A pod whose controller asks for more than one process (`PET_NNODES` × `PET_NPROC_PER_NODE` > 1: see
`distributed.launch_from_env`) becomes the launcher of its node: it runs torchrun in this process to start every
rank, then exits 1 if any rank exited 1 and `EXIT_RETRYABLE` for any other failure, so the exit code keeps its
meaning (torchrun itself exits 1 for every failure).

Follows docs/trainer-contract.md: rank 0 prints `MEMTUNE_PROGRESS {"step": .., "max_steps": .., "loss": ..}` after
every step and writes `{"artifactsUri": .., "metrics": {"recall": .., "final_loss": .., "steps": .., "unlearned": ..}}`
to the termination log; a failure writes its one-line reason there instead. Exit 1 means the attempt can never succeed
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
    metrics = {
        RECALL_METRIC: summary.recall,
        "final_loss": summary.final_loss,
        "steps": summary.steps,
        "unlearned": summary.unlearned_count,  # on the job's status: kubectl shows at once that facts were missed
    }
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
    # gpuConfig decides: a pod given GPUs trains on this rank's (start() selected it), a CPU pod never looks for one
    device = "cpu"
    if job.spec.gpuConfig.gpus > 0:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            gpus = job.spec.gpuConfig.gpus
            log.error("gpuConfig.gpus is %d but torch sees no CUDA device: training on the CPU", gpus)
    on_step = print_progress if group.is_rank0 else None
    return run_job(job, show_progress=False, on_step=on_step, group=group, device=device)


def launch_node(launch: distributed.NodeLaunch, argv: list[str], termination_log: Path) -> int:
    """Start this node's ranks with torchrun (in this process) and map their failures to the contract's codes."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    log.info("starting %d rank(s) on node %d of %d", launch.nproc_per_node, launch.node_rank, launch.nnodes)
    try:
        torchrun.run(torchrun.parse_args(launch.torchrun_args("memtune.trainer", argv)))
    except ChildFailedError as error:
        failures = sorted(error.failures.items())
        permanent = any(failure.exitcode == EXIT_PERMANENT for _, failure in failures)
        code = EXIT_PERMANENT if permanent else EXIT_RETRYABLE
        rank, first = next(((r, f) for r, f in failures if f.exitcode == EXIT_PERMANENT), failures[0])
        log.error("rank %d exited with code %d; this pod exits %d", rank, first.exitcode, code)
        if launch.node_rank == 0 and not _has_message(termination_log):  # rank 0 may have been stopped first
            write_termination_log(termination_log, f"rank {rank} exited with code {first.exitcode}")
        return code
    return 0


def _has_message(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run one rank of a MemoryTuningJob, or launch this node's ranks; returns the process exit code (0,
    EXIT_PERMANENT or EXIT_RETRYABLE)."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        launch = distributed.launch_from_env()
    except SpecError as error:
        log.error("%s", error)
        write_termination_log(args.termination_log, f"{type(error).__name__}: {error}".replace("\n", " "))
        return EXIT_PERMANENT
    if launch is not None:
        return launch_node(launch, argv, args.termination_log)
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
