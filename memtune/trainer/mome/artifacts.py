"""Run folders: write a trained memory under `{output}/runs/{run_id}/`, find and load committed runs.

Layout of a run folder (format_version 1):

    memtune.json              base model id + sha256, dataset id, cache key, layout, index plan, metrics
    job.yaml                  the MemoryTuningJob that produced it
    experts/experts-00000-of-00002.safetensors ...   the bank, split by expert ranges (A, B per shard)
    keys.safetensors          routing keys (N, d) and each key's expert (N,)
    index.faiss               faiss.serialize_index bytes (never pickle)
    anchors.json              each question's anchor words for the gate (absent when the anchor check is off)
    loss_curve.json, loss_curve.png
    manifest.json             sha256 of every file above, written last: its presence is the commit

`load_memory` verifies the manifest and the base model's sha256 before deserialising any file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from memtune.manifest import MANIFEST_NAME, IntegrityError, verify_folder, write_manifest
from memtune.storage import RUN_ID_PATTERN
from memtune.trainer.mome.anchors import ANCHORS_NAME, Anchors
from memtune.trainer.mome.index import IndexPlan, index_from_bytes, index_to_bytes
from memtune.trainer.mome.memory import Memory, MemoryLayout

RUN_FORMAT = 1
META_NAME = "memtune.json"
# Experts per shard file: bounded files for object storage, any bank size.
SHARD_BYTES = 256 * 1024 * 1024


@dataclass
class RunInfo:
    """What a committed run says about itself (from memtune.json, after verification)."""

    folder: Path
    meta: dict[str, Any]
    files: list[str]
    """Files the manifest vouches for: the only ones ever read."""

    @property
    def base_model(self) -> str:
        return self.meta["base_model"]["id"]

    @property
    def base_sha256(self) -> str:
        return self.meta["base_model"]["sha256"]


def runs_dir(output: str | Path) -> Path:
    return Path(str(output).removeprefix("file://")).expanduser() / "runs"


def committed_runs(output: str | Path) -> list[Path]:
    """Committed run folders of a job output, oldest first (run ids sort by time).

    Only folders named like a run id count, as in `storage.committed_runs`: `runs/old-backup` is never a run."""
    root = runs_dir(output)
    if not root.is_dir():
        return []
    return sorted(
        path for path in root.iterdir() if RUN_ID_PATTERN.match(path.name) and (path / MANIFEST_NAME).is_file()
    )


def _shard_ranges(count: int, bytes_per_expert: int) -> list[range]:
    per_shard = max(1, SHARD_BYTES // max(bytes_per_expert, 1))
    shards = max(1, math.ceil(count / per_shard))
    return [range(i * per_shard, min(count, (i + 1) * per_shard)) for i in range(shards)]


def save_run(
    folder: Path, memory: Memory, meta: dict[str, Any], job_document: dict[str, Any], curve: list[dict[str, float]]
) -> dict[str, Any]:
    """Write every file of a run, then the manifest. `meta` must hold base_model {id, sha256} and cache_key."""
    folder.mkdir(parents=True, exist_ok=False)
    count = memory.num_experts
    bytes_per_expert = sum(t[0].numel() * t.element_size() for t in memory.params.values())
    ranges = _shard_ranges(count, bytes_per_expert)
    (folder / "experts").mkdir()
    for number, rows in enumerate(ranges):
        tensors = {name: t[rows.start : rows.stop].contiguous() for name, t in memory.params.items()}
        save_file(tensors, folder / "experts" / f"experts-{number:05d}-of-{len(ranges):05d}.safetensors")
    save_file(
        {"keys": memory.keys.contiguous(), "slot_expert": memory.slot_expert.contiguous()}, folder / "keys.safetensors"
    )
    (folder / "index.faiss").write_bytes(index_to_bytes(memory.index))
    if memory.anchors is not None:
        (folder / ANCHORS_NAME).write_text(json.dumps(memory.anchors.to_dict()), encoding="utf-8")
    full_meta = {
        "run_format": RUN_FORMAT,
        **meta,
        "layout": memory.layout.to_dict(),
        "index": memory.plan.to_dict(),
        "experts": {"count": count, "bytes_per_expert": bytes_per_expert, "shards": len(ranges)},
        "questions": len(memory.keys),
    }
    (folder / META_NAME).write_text(json.dumps(full_meta, indent=2, sort_keys=True), encoding="utf-8")
    (folder / "job.yaml").write_text(yaml.safe_dump(job_document, sort_keys=False), encoding="utf-8")
    (folder / "loss_curve.json").write_text(json.dumps(curve), encoding="utf-8")
    _plot_curve(curve, folder / "loss_curve.png")
    return write_manifest(folder, {"run_id": folder.name, "base_model_sha256": meta["base_model"]["sha256"]})


def _plot_curve(curve: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([p["step"] for p in curve], [p["loss"] for p in curve])
    axis.set(xlabel="step", ylabel="answer loss (working set)", yscale="log", title="memory tuning loss")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def read_run(folder: str | Path) -> RunInfo:
    """Verify every checksum of a run folder, then read its metadata (plain JSON)."""
    folder = Path(folder)
    manifest = verify_folder(folder)
    if META_NAME not in manifest["files"]:
        raise IntegrityError(f"{folder}: the manifest does not list {META_NAME}")
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise IntegrityError(f"{folder}: unreadable {META_NAME} ({error})") from None
    if meta.get("run_format") != RUN_FORMAT:
        raise IntegrityError(f"{folder}: run_format {meta.get('run_format')!r}, this memtune reads {RUN_FORMAT}")
    return RunInfo(folder, meta, sorted(manifest["files"]))


def load_memory(run: RunInfo, base_sha256: str) -> Memory:
    """Deserialise a verified run; refuse it if it was trained on another base model."""
    if base_sha256 != run.base_sha256:
        raise IntegrityError(
            f"{run.folder}: trained on base model {run.base_model!r} with sha256 {run.base_sha256[:12]}…, "
            f"but the loaded base model has sha256 {base_sha256[:12]}…"
        )
    shards = [run.folder / name for name in run.files if name.startswith("experts/experts-")]
    if len(shards) != run.meta["experts"]["shards"]:
        raise IntegrityError(
            f"{run.folder}: expected {run.meta['experts']['shards']} expert shards, found {len(shards)}"
        )
    parts = [load_file(shard) for shard in shards]
    params = {name: torch.cat([part[name] for part in parts]) for name in ("A", "B")}
    for name in ("keys.safetensors", "index.faiss"):
        if name not in run.files:
            raise IntegrityError(f"{run.folder}: the manifest does not list {name}")
    keys = load_file(run.folder / "keys.safetensors")
    plan = IndexPlan(**run.meta["index"])
    index = index_from_bytes((run.folder / "index.faiss").read_bytes(), plan)
    layout = MemoryLayout(**run.meta["layout"])
    anchors = None
    if ANCHORS_NAME in run.files:
        anchors = Anchors.from_dict(json.loads((run.folder / ANCHORS_NAME).read_text(encoding="utf-8")))
        if len(anchors.slots) != len(keys["keys"]):
            raise IntegrityError(
                f"{run.folder}: {ANCHORS_NAME} holds {len(anchors.slots)} questions, the keys {len(keys['keys'])}"
            )
    return Memory(layout, params, keys["keys"], keys["slot_expert"], index, plan, anchors)
