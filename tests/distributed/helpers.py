"""Running the trainer entrypoint as the operator does (a subprocess) and reading what it reports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from memtune.contract import PROGRESS_PREFIX


@dataclass
class Outcome:
    code: int
    progress: list[dict]
    """Every `MEMTUNE_PROGRESS` payload printed on stdout, in order."""
    message: str
    """What the termination log holds ("" when nothing was written)."""
    stderr: str

    @property
    def result(self) -> dict:
        return json.loads(self.message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_trainer(spec: Path, env: dict[str, str], termination_log: Path, ranks: int = 1) -> Outcome:
    """`python -m memtune.trainer`, or under `torchrun --nproc_per_node=ranks` (gloo, 127.0.0.1)."""
    launcher = [sys.executable]
    if ranks > 1:
        launcher += [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={ranks}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
        ]
    command = [*launcher, "-m", "memtune.trainer", "--spec", str(spec), "--termination-log", str(termination_log)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    progress = [
        json.loads(line.removeprefix(PROGRESS_PREFIX))
        for line in done.stdout.splitlines()
        if line.startswith(f"{PROGRESS_PREFIX} ")
    ]
    message = termination_log.read_text() if termination_log.exists() else ""
    return Outcome(done.returncode, progress, message, done.stderr)


def kill_when(spec: Path, env: dict[str, str], ranks: int, pattern: Path, timeout_s: float = 120) -> None:
    """Start the trainer under torchrun and SIGKILL its whole process group once a file matches `pattern`."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={ranks}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "memtune.trainer",
        "--spec",
        str(spec),
        "--termination-log",
        str(spec.with_suffix(".killed.log")),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    try:
        while not any(Path(pattern.anchor).glob(str(pattern.relative_to(pattern.anchor)))):
            if process.poll() is not None:
                raise AssertionError(f"the trainer exited ({process.returncode}) before {pattern} appeared")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern} did not appear within {timeout_s}s")
            time.sleep(0.05)
    finally:
        # As a deleted pod: torchrun and every rank at once (torchrun puts each rank in a session of its own).
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()


def _descendants(pid: int) -> list[int]:
    children = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(child) for child in (task / "children").read_text().split()]
    return [found for child in children for found in (child, *_descendants(child))]
