"""Run folders: write a trained memory under `{output}/runs/{run_id}/`, find and load committed runs.

Layout of a run folder (format_version 1):

    memtune.json              base model id + sha256, dataset id, cache key, layout, index plan, metrics, the bank's
                              count/dtype/bytes per expert, the longest trained answer in tokens
    job.yaml                  the MemoryTuningJob that produced it
    experts/experts-00000-of-00002.safetensors ...   the bank, split by expert ranges (A, B per shard; float32 or
                              bfloat16 as training wrote it)
    keys.safetensors          routing keys (N, d) and each key's expert (N,)
    index.faiss               faiss.serialize_index bytes (never pickle)
    anchors.json              each question's anchor words for the gate (absent when the anchor check is off)
    facts.jsonl               each question (slot order) with its answer and whether training learned it: what a
                              child run diffs its dataset against (tuning/incremental.py)
    calibration.safetensors   the gate calibration's probe keys (tuning/recalibrate.py), so that a child run extends
                              it instead of measuring it again (absent without a calibrated gate)
    loss_curve.json, loss_curve.png
    manifest.json             sha256 of every file above, written last: its presence is the commit

`load_memory` verifies the manifest and the base model's sha256 before deserialising any file; with `lazy=True`
the bank stays in its memory-mapped shards (bank.LazyBank). `resolve_run` turns what a user names (a run folder, a
job output, either on s3) into a verified local run folder.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from safetensors.torch import load_file, save_file

from memtune import storage
from memtune.data import memtune_home
from memtune.manifest import MANIFEST_NAME, IntegrityError, verify_folder, write_manifest
from memtune.spec import is_remote
from memtune.storage import RUN_ID_PATTERN
from memtune.trainer.mome.anchors import ANCHORS_NAME, Anchors
from memtune.trainer.mome.bank import EXPERT_TENSORS, LazyBank, TensorBank
from memtune.trainer.mome.index import IndexPlan, index_from_bytes, index_to_bytes
from memtune.trainer.mome.memory import Memory, MemoryLayout

RUN_FORMAT = 1
META_NAME = "memtune.json"
FACTS_NAME = "facts.jsonl"
CALIBRATION_NAME = "calibration.safetensors"
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
    folder: Path,
    memory: Memory,
    meta: dict[str, Any],
    job_document: dict[str, Any],
    curve: list[dict[str, float]],
    files: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Write every file of a run, then the manifest. `meta` must hold base_model {id, sha256} and cache_key;
    `files`: further files by name (facts.jsonl, calibration.safetensors), covered by the manifest like the rest."""
    folder.mkdir(parents=True, exist_ok=False)
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    count, params = memory.num_experts, memory.params
    bytes_per_expert = memory.bank.bytes_per_expert
    ranges = _shard_ranges(count, bytes_per_expert)
    (folder / "experts").mkdir()
    for number, rows in enumerate(ranges):
        tensors = {name: params[name][rows.start : rows.stop].contiguous().cpu() for name in EXPERT_TENSORS}
        save_file(tensors, folder / "experts" / f"experts-{number:05d}-of-{len(ranges):05d}.safetensors")
    save_file(
        {"keys": memory.keys.contiguous(), "slot_expert": memory.slot_expert.contiguous()}, folder / "keys.safetensors"
    )
    (folder / "index.faiss").write_bytes(index_to_bytes(memory.index))
    if memory.anchors is not None:
        (folder / ANCHORS_NAME).write_text(json.dumps(memory.anchors.to_dict()), encoding="utf-8")
    memory_files = {  # what the memory itself weighs on disk, by part (the rest of a run is a fixed few KiB)
        "experts": sum(path.stat().st_size for path in (folder / "experts").iterdir()),
        "keys": (folder / "keys.safetensors").stat().st_size,
        "index": (folder / "index.faiss").stat().st_size,
        "anchors": (folder / ANCHORS_NAME).stat().st_size if memory.anchors is not None else 0,
    }
    questions = len(memory.keys)
    full_meta = {
        "run_format": RUN_FORMAT,
        **meta,
        "layout": memory.layout.to_dict(),
        "index": memory.plan.to_dict(),
        "experts": {
            "count": count,
            "bytes_per_expert": bytes_per_expert,
            "shards": len(ranges),
            "dtype": str(memory.bank.storage_dtype).removeprefix("torch."),
        },
        "questions": questions,
        "footprint": {
            **meta.get("footprint", {}),
            "disk_bytes": memory_files,
            "disk_bytes_per_fact": round(sum(memory_files.values()) / max(questions, 1)),
        },
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


def load_memory(run: RunInfo, base_sha256: str, *, lazy: bool = False) -> Memory:
    """Deserialise a verified run; refuse it if it was trained on another base model.

    lazy: keep the bank in its memory-mapped shards and read experts as they are routed to (inference); otherwise
    the whole bank is read into RAM (a TensorBank, e.g. to train on)."""
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
    expected = run.meta["experts"].get("dtype")
    bank = LazyBank(shards, int(run.meta["experts"]["count"]))
    if expected is not None and str(bank.storage_dtype).removeprefix("torch.") != expected:
        raise IntegrityError(f"{run.folder}: experts stored as {bank.storage_dtype}, memtune.json says {expected}")
    if not lazy:
        bank = TensorBank(bank.tensors())
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
    return Memory(layout, bank, keys["keys"], keys["slot_expert"], index, plan, anchors)


def fetch_run(uri: str, cache: Path | None = None) -> Path:
    """Download the latest committed run of an s3 job output (or one run) into `cache` (default
    `$MEMTUNE_HOME/runs-cache`).

    `storage.fetch_folder` verifies every checksum before the folder appears, and reuses an identical copy.
    """
    run = storage.latest_committed_run(uri) or uri  # not a job output: a run, which must hold a manifest
    name = f"{PurePosixPath(run.rstrip('/')).name}-{hashlib.sha256(run.encode()).hexdigest()[:12]}"
    target = (cache or memtune_home() / "runs-cache") / name
    storage.fetch_folder(run, target)
    return target


def resolve_run(model_ref: str | Path, cache: Path | None = None) -> Path | None:
    """A run folder, the latest committed run of a job output, or None when `model_ref` is neither; an s3 run is
    fetched into `cache` (fetch_run)."""
    if is_remote(str(model_ref)):
        return fetch_run(str(model_ref), cache)
    path = Path(str(model_ref).removeprefix("file://")).expanduser()
    if (path / MANIFEST_NAME).is_file():
        return path
    if runs_dir(path).is_dir():
        runs = committed_runs(path)
        if not runs:
            raise IntegrityError(f"{path}: no committed run under runs/ (every run lacks {MANIFEST_NAME})")
        return runs[-1]
    return None
