"""The operator image stays light and the layers stay apart: no torch, transformers, faiss or trainer code."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "transformers", "faiss", "peft", "memtune.trainer")


def test_operator_and_cluster_client_import_no_trainer_code() -> None:
    probe = (
        "import sys, memtune.operator, memtune.cluster, memtune.crd, memtune.contract; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m.startswith('memtune.trainer')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"
