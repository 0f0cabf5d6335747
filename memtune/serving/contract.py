"""What a serving pod runs, shared by the server and whatever deploys it (chart, operator). Torch-free.

The container runs `memtune serve --model <output uri> --host 0.0.0.0 --port 8000 --reload-interval <s>`; the
object-storage credentials come as environment from a Secret (as for trainer pods), the optional API key as
MEMTUNE_API_KEY from a Secret key. Readiness is GET /readyz: 200 once the memory is verified and loaded.
"""

from __future__ import annotations

ENV_API_KEY = "MEMTUNE_API_KEY"
PORT = 8000
PORT_NAME = "http"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
CONTAINER_NAME = "server"
DEFAULT_RELOAD_INTERVAL_S = 30


def serve_command(
    model_uri: str,
    *,
    name: str,
    port: int = PORT,
    reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
    max_batch: int = 16,
) -> list[str]:
    """The container command of a serving pod (a Deployment's `command`)."""
    return [
        "memtune", "serve",
        "--model", model_uri,
        "--served-model-name", name,
        "--host", "0.0.0.0",  # noqa: S104 - a pod listens on its own network namespace
        "--port", str(port),
        "--reload-interval", f"{reload_interval_s:g}",
        "--max-batch", str(max_batch),
    ]  # fmt: skip
