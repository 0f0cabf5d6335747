"""`memtune serve`: run the app under uvicorn; a model that cannot be verified or loaded stops the process.

Exit codes follow the trainer's: 1 when the model can never load as given (bad reference, checksum mismatch),
75 when storage failed in a way that a restart may fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from memtune.failures import exit_code
from memtune.redact import redact
from memtune.serving.app import ServeOptions, create_app
from memtune.serving.contract import ENV_API_KEY
from memtune.spec import ModelError, is_remote
from memtune.trainer.mome.base import PACKAGED_MODELS
from memtune.trainer.mome.devices import resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def check_reference(model: str) -> None:
    """Refuse a reference that cannot exist before starting anything (s3 is checked by the first load)."""
    if is_remote(model) or model in PACKAGED_MODELS:
        return
    path = Path(model.removeprefix("file://")).expanduser()
    if not path.exists():
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelError(f"--model {model!r}: no such folder, and not a known base model alias ({known})")


def run_server(
    model: str,
    *,
    host: str,
    port: int,
    name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    **settings: object,
) -> int:
    """Serve until interrupted; returns the process exit code. Raises ModelError or SpecError (a bad --model,
    --device or --dtype) before anything starts."""
    check_reference(model)
    resolve_dtype(dtype, resolve_device(device))  # SpecError now rather than in the background load
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_failure(error: BaseException) -> None:
        failure.append(error)
        if server is not None:
            server.should_exit = True

    api_key = os.environ.get(ENV_API_KEY) or None
    options = ServeOptions(name=name, api_key=api_key, device=device, dtype=dtype, **settings)  # type: ignore[arg-type]
    app = create_app(model, options, on_load_failure)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=30))
    server.run()
    if not failure:
        return 0
    error = failure[0]
    log.error("exiting: the model could not be loaded (%s)", redact(str(error)))
    return exit_code(error)
