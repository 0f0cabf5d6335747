"""The expert bank: every memory expert's low-rank factors, in RAM (training) or read lazily from a run (inference).

Two tensors, EXPERT_TENSORS: "A" (E, L, d, r) and "B" (E, L, r, d), E experts over L expert layers, width d, rank r
(see experts.py for what they compute). A run stores them in safetensors shards of consecutive experts
(artifacts.py), in float32 or bfloat16 (the run's `experts.dtype`).

- `TensorBank`: the tensors in memory. Training updates them in place; `gather` indexes them.
- `LazyBank`: the run's shards opened with safetensors' `safe_open` (memory-mapped; only the headers are read when
  it opens). `gather` reads just the requested experts' rows, converts them to the compute dtype on the engine's
  device and keeps the most recently used there, in an LRU bounded in bytes. RAM and VRAM hold the routed experts
  only, so loading a run costs the same for 10 experts or 10 million.

Both answer `gather(experts (U,) int64, device, dtype) -> {"A": (U, L, d, r), "B": (U, L, r, d)}`.
"""

from __future__ import annotations

import bisect
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
    """A run's expert shards, memory-mapped; experts are read on demand and the hot ones cached on the device."""

    def __init__(self, shards: Sequence[Path], count: int, *, cache_bytes: int = DEFAULT_CACHE_BYTES):
        """shards: the run's expert files in expert order; count: E from the run's memtune.json (checked)."""
        self._handles = [safe_open(str(path), framework="pt") for path in shards]
        self._starts: list[int] = []
        shapes: dict[str, list[int]] = {}
        total = 0
        for path, handle in zip(shards, self._handles, strict=True):
            self._starts.append(total)
            rows, names = None, set(handle.keys())
            for name in EXPERT_TENSORS:
                if name not in names:
                    raise IntegrityError(f"{path}: no tensor {name!r} in this expert shard")
                shape = handle.get_slice(name).get_shape()
                if shapes.setdefault(name, shape[1:]) != shape[1:] or rows not in (None, shape[0]):
                    raise IntegrityError(f"{path}: tensor {name!r} of shape {shape} does not match the other shards")
                rows = shape[0]
            total += int(rows or 0)
        if total != count:
            raise IntegrityError(f"{shards[0].parent}: the shards hold {total} experts, the run says {count}")
        self.count = count
        self._shapes = {name: tuple(shape) for name, shape in shapes.items()}
        dtypes = {str(h.get_slice(name).get_dtype()) for h in self._handles for name in EXPERT_TENSORS}
        if len(dtypes) != 1:
            raise IntegrityError(f"{shards[0].parent}: expert shards mix dtypes {sorted(dtypes)}")
        stored = dtypes.pop()
        if stored not in _SAFETENSORS_DTYPES:
            raise IntegrityError(f"{shards[0].parent}: experts stored as {stored}, not float32, bfloat16 or float16")
        self.storage_dtype = _SAFETENSORS_DTYPES[stored]
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._cached_bytes = 0
        self._placement: tuple[torch.device, torch.dtype] | None = None
        self.reads = 0
        """Experts read from the shards so far (cache misses): what tests and benchmarks look at."""

    @property
    def bytes_per_expert(self) -> int:
        size = torch.tensor([], dtype=self.storage_dtype).element_size()
        return sum(_numel(shape) * size for shape in self._shapes.values())

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
        shard = bisect.bisect_right(self._starts, expert) - 1
        row = expert - self._starts[shard]
        handle = self._handles[shard]
        tensors = {
            name: handle.get_slice(name)[row : row + 1][0].to(device=device, dtype=dtype) for name in EXPERT_TENSORS
        }
        self.reads += 1
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        self._cache[expert] = tensors
        self._cached_bytes += size
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= sum(t.numel() * t.element_size() for t in evicted.values())
        return tensors

    def tensors(self) -> dict[str, torch.Tensor]:
        """The whole bank in RAM, shard by shard into one preallocated tensor each (peak: the bank plus no copy)."""
        out = {name: torch.empty(self.count, *self._shapes[name], dtype=self.storage_dtype) for name in EXPERT_TENSORS}
        ends = [*self._starts[1:], self.count]
        for handle, start, end in zip(self._handles, self._starts, ends, strict=True):
            for name in EXPERT_TENSORS:
                out[name][start:end] = handle.get_tensor(name)
        return out

    def close(self) -> None:
        self._cache.clear()
        self._cached_bytes = 0
        self._handles = []


_SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def _numel(shape: Sequence[int]) -> int:
    total = 1
    for size in shape:
        total *= int(size)
    return total
