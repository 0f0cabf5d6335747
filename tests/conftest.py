"""Suite-wide environment, set before any test module is imported.

kopf, the kubernetes client and memtune.operator read these once, at import; tests/chart imports memtune.operator
(its samples use the operator's own conditions) before tests/operator is collected, so tests/operator cannot set
them itself.
"""

import os
import socket
import tempfile
from pathlib import Path

# Never the user's own kubeconfig: tests/operator writes the emulated API server's address into this file.
os.environ["KUBECONFIG"] = str(Path(tempfile.mkdtemp(prefix="memtune-kmock-")) / "kubeconfig")
os.environ["MEMTUNE_RESYNC_SECONDS"] = "0.2"  # the operator's timer interval, fixed when its handlers register
os.environ["MEMTUNE_TRAINER_IMAGE"] = "registry.local/memtune-trainer:test"
os.environ["MEMTUNE_ALLOWED_SERVICE_ACCOUNTS"] = "trainer"  # the one tests/operator's jobs name
os.environ["MEMTUNE_ALLOWED_IMAGES"] = "registry.local/*"
with socket.socket() as _probe:  # the operator's /metrics port: free now, reused by each operator a test starts
    _probe.bind(("127.0.0.1", 0))
    os.environ["MEMTUNE_METRICS_PORT"] = str(_probe.getsockname()[1])
