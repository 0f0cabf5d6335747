"""The expert bank: every memory expert's low-rank factors, in RAM (training) or read lazily from a run (inference).

Two tensors, EXPERT_TENSORS: "A" (E, L, d, r) and "B" (E, L, r, d), E experts over L expert layers, width d, rank r
(see experts.py for what they compute). A run stores them in safetensors shards of consecutive experts
(artifacts.py), in float32 or bfloat16 (the run's `experts.dtype`).

- `TensorBank`: the tensors in memory. Training updates them in place; `gather` indexes them.
- `LazyBank`: the run's shards, of which only the safetensors headers are read when it opens. `gather` reads just
  the requested experts' rows (one positioned read per expert and tensor), converts them to the compute dtype on the
  engine's device and keeps the most recently used there, in an LRU bounded in bytes. RAM and VRAM hold the routed
  experts only, so loading a run costs the same for 10 experts or 10 million. (Not mmap: a mapped file's pages,
  read ahead around every expert touched, would count in the process's resident set and stay there.)

Both answer `gather(experts (U,) int64, device, dtype) -> {"A": (U, L, d, r), "B": (U, L, r, d)}`.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from memtune.manifest import IntegrityError

EXPERT_TENSORS = ("A", "B")
# Hot experts kept on the device by a LazyBank: 512 MiB holds ~900 rank-16 experts of the 135M model (576 KiB each in
# float32) or 32 rank-64 experts at Llama-3.1-8B's width (16 MiB each).
DEFAULT_CACHE_BYTES = 512 * 1024 * 1024


class ExpertBank:
    """What generation needs from a bank: its size and the tensors of chosen experts."""

    count: int
    """E: the number of experts."""
    storage_dtype: torch.dtype
    """How the factors are stored (float32 or bfloat16)."""

    @property
    def bytes_per_expert(self) -> int:
        """Storage bytes of one expert (A and B)."""
        raise NotImplementedError

    def gather(self, experts: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """experts (U,) int64 -> {"A": (U, L, d, r), "B": (U, L, r, d)} on `device` in `dtype`."""
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every expert in RAM: {"A": (E, L, d, r), "B": (E, L, r, d)} in the storage dtype."""
        raise NotImplementedError

    def close(self) -> None:
        """Release open files (a no-op for banks in memory)."""


class TensorBank(ExpertBank):
    """A bank held in memory: the dict training updates in place."""

    def __init__(self, params: dict[str, torch.Tensor]):
        missing = [name for name in EXPERT_TENSORS if name not in params]
        if missing:
            raise ValueError(f"expert bank without tensor(s) {missing}")
        self.params = params
        self.count = int(params["A"].shape[0])
        self.storage_dtype = params["A"].dtype

    @property
    def bytes_per_expert(self) -> int:
        return sum(t[0].numel() * t.element_size() for t in self.params.values())

    def gather(self, experts: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        index = experts.to(self.params["A"].device)
        return {name: self.params[name][index].to(device=device, dtype=dtype) for name in EXPERT_TENSORS}

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.params


class LazyBank(ExpertBank):
    """A run's expert shards, read one expert at a time as routing asks; the hot experts cached on the device."""

    def __init__(self, shards: Sequence[Path], count: int, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        """shards: the run's expert files in expert order; count: E from the run's memtune.json (checked)."""
        self._shards = [_Shard(path) for path in shards]
        self._starts: list[int] = []
        total = 0
        for shard in self._shards:
            self._starts.append(total)
            total += shard.rows
        first = self._shards[0]
        for shard in self._shards[1:]:
            if shard.shapes != first.shapes or shard.dtype != first.dtype:
                raise IntegrityError(f"{shard.path}: its experts' shapes or dtype differ from {first.path.name}'s")
        if total != count:
            raise IntegrityError(f"{first.path.parent}: the shards hold {total} experts, the run says {count}")
        self.count = count
        self.storage_dtype = first.dtype
        self._shapes = first.shapes
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._cached_bytes = 0
        self._placement: tuple[torch.device, torch.dtype] | None = None
        self.reads = 0
        """Experts read from the shards so far (cache misses): what tests and benchmarks look at."""

    @property
    def bytes_per_expert(self) -> int:
        return sum(self._shards[0].row_bytes(name) for name in EXPERT_TENSORS)

    def gather(self, experts: torch.Tensor, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if self._placement != (device, dtype):  # one engine, one device: a new placement starts a new cache
            self._cache.clear()
            self._cached_bytes, self._placement = 0, (device, dtype)
        rows = [self._expert(int(e), device, dtype) for e in experts.tolist()]
        if not rows:
            return {name: torch.empty(0, *self._shapes[name], device=device, dtype=dtype) for name in EXPERT_TENSORS}
        return {name: torch.stack([row[name] for row in rows]) for name in EXPERT_TENSORS}

    def _expert(self, expert: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if not 0 <= expert < self.count:
            raise IndexError(f"expert {expert} outside the bank (0..{self.count - 1})")
        hit = self._cache.get(expert)
        if hit is not None:
            self._cache.move_to_end(expert)
            return hit
        number = bisect.bisect_right(self._starts, expert) - 1
        shard = self._shards[number]
        row = expert - self._starts[number]
        tensors = {name: shard.read_row(name, row).to(device=device, dtype=dtype) for name in EXPERT_TENSORS}
        self.reads += 1
        self._cache[expert] = tensors
        self._cached_bytes += _nbytes(tensors)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= _nbytes(evicted)
        return tensors

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole bank in RAM, shard by shard into one preallocated tensor each (peak: the bank and one shard)."""
        out = {name: torch.empty(self.count, *self._shapes[name], dtype=self.storage_dtype) for name in EXPERT_TENSORS}
        for shard, start in zip(self._shards, self._starts, strict=True):
            with safe_open(str(shard.path), framework="pt") as handle:
                for name in EXPERT_TENSORS:
                    out[name][start : start + shard.rows] = handle.get_tensor(name)
        return out

    def close(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0


class _Shard:
    """One safetensors file of experts, read row by row with positioned reads (no mmap).

    The format: 8 bytes little-endian header length n, a JSON header {name: {dtype, shape, data_offsets}}, then the
    data from byte 8 + n (https://github.com/huggingface/safetensors#format). Expert `row` of a tensor is the
    contiguous row_bytes at data_offsets[0] + row * row_bytes. A positioned read copies exactly those bytes: the
    process never maps the file, so its resident set grows with the experts read, not with the pages around them.
    """

    def __init__(self, path: Path):
        self.path = path
        with path.open("rb") as file:
            length = int.from_bytes(file.read(8), "little")
            try:
                header = json.loads(file.read(length))
            except ValueError as error:
                raise IntegrityError(f"{path}: unreadable safetensors header ({error})") from None
        self._data = 8 + length
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._offsets: dict[str, int] = {}
        dtypes = set()
        for name in EXPERT_TENSORS:
            entry = header.get(name)
            if not isinstance(entry, dict):
                raise IntegrityError(f"{path}: no tensor {name!r} in this expert shard")
            dtypes.add(entry["dtype"])
            shape = tuple(int(size) for size in entry["shape"])
            begin, end = entry["data_offsets"]
            self.shapes[name], self._offsets[name] = shape[1:], int(begin)
            if entry["dtype"] in _SAFETENSORS_DTYPES and end - begin != _numel(shape) * _itemsize(entry["dtype"]):
                raise IntegrityError(f"{path}: tensor {name!r} holds {end - begin} bytes, its shape {shape} needs more")
            self.rows = shape[0]
        if len(dtypes) != 1 or not dtypes <= set(_SAFETENSORS_DTYPES):
            raise IntegrityError(f"{path}: experts stored as {sorted(dtypes)}, not float32, bfloat16 or float16")
        if len({header[name]["shape"][0] for name in EXPERT_TENSORS}) != 1:
            raise IntegrityError(f"{path}: tensors A and B hold different numbers of experts")
        self.dtype = _SAFETENSORS_DTYPES[dtypes.pop()]

    def row_bytes(self, name: str) -> int:
        return _numel(self.shapes[name]) * torch.tensor([], dtype=self.dtype).element_size()

    def read_row(self, name: str, row: int) -> torch.Tensor:
        size = self.row_bytes(name)
        buffer = bytearray(size)
        with self.path.open("rb", buffering=0) as file:
            got = os.preadv(file.fileno(), [buffer], self._data + self._offsets[name] + row * size)
        if got != size:
            raise IntegrityError(f"{self.path}: expert row {row} of {name!r} is cut short ({got} of {size} bytes)")
        return torch.frombuffer(buffer, dtype=self.dtype).reshape(self.shapes[name])


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _itemsize(name: str) -> int:
    return torch.tensor([], dtype=_SAFETENSORS_DTYPES[name]).element_size()


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _numel(shape: Sequence[int]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
