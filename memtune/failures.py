"""How a memtune command ends on an error: one redacted message on stderr and the exit code of the trainer contract.

Exit 1 (`EXIT_PERMANENT`): the input is wrong and the same command will fail again (bad spec, data, model, a
corrupt artifact, a read-only output). Exit 75 (`EXIT_RETRYABLE`): storage kept failing after its retries, and the
same command may succeed later. Click itself exits 2 when the command line is malformed (an unknown option).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from memtune.contract import EXIT_PERMANENT, EXIT_RETRYABLE
from memtune.redact import redact
from memtune.storage import StorageError

console = Console(stderr=True)


def exit_code(error: BaseException) -> int:
    return EXIT_RETRYABLE if isinstance(error, StorageError) and error.transient else EXIT_PERMANENT


def fail(error: BaseException) -> typer.Exit:
    """Print `error` (credentials hidden, brackets shown as written) and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(redact(str(error)))}", highlight=False)
    return typer.Exit(code=exit_code(error))
