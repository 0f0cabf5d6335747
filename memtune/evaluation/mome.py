"""The `mome` rung's extras on top of the engine's MemoryModel: its loss curve.

Generation and teacher forcing are the engine's own (`memtune.trainer.mome.model.MemoryModel.generate` and
`.predict_tokens`): the experts act exactly where they act when the model answers, with the same router.
"""

from __future__ import annotations

import json
from pathlib import Path

LOSS_CURVE_NAME = "loss_curve.json"  # written by memtune.trainer.mome.artifacts.save_run


def read_loss_curve(run_dir: str | Path) -> list[float]:
    """The run's answer loss per optimizer step (index i is step i + 1)."""
    points = json.loads((Path(run_dir) / LOSS_CURVE_NAME).read_text(encoding="utf-8"))
    return [float(point["loss"]) for point in sorted(points, key=lambda point: point["step"])]
