"""The frozen pass's results on disk: a working set reads back its questions; RAM holds none of them.

Each encoded question carries its prefix cache (keys/values of every expert layer over the prompt: about 0.5 MB for
the default model and a 40-token prompt), so holding all of them costs RAM in proportion to the dataset (5 GB at
10,000 facts). The store appends each example's tensors to one scratch file and keeps only offsets; `store[i]`
reads one example back with `os.pread` (the OS page cache keeps hot rows fast), so resident memory stays flat in the
number of facts while the scratch file grows by the same 0.5 MB a fact.

    store = EncodedStore(count, scratch)   # scratch None: the system's temp dir
    store.add(i, encoded)                  # during the frozen pass
    store[i]                               # Encoded, or None for a question this rank does not own
    store.close()                          # deletes the scratch file
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from memtune.trainer.tuning.encode import Encoded

_TENSORS = tuple(f.name for f in fields(Encoded))


@dataclass(frozen=True)
class _Slot:
    offset: int
    layout: tuple[tuple[str, tuple[int, ...], torch.dtype, int], ...]
    """(field, shape, dtype, bytes) per tensor, in file order."""


class EncodedStore:
    def __init__(self, count: int, folder: Path | str | None = None):
        """count: questions in the job; folder: where the scratch file goes (None: the system's temp dir)."""
        self.count = count
        self._slots: dict[int, _Slot] = {}
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
        self._fd, name = tempfile.mkstemp(prefix="memtune-encoded-", suffix=".bin", dir=folder)
        self._path: Path | None = Path(name)
        self._size = 0

    def __len__(self) -> int:
        return self.count

    @property
    def disk_bytes(self) -> int:
        """Bytes written to the scratch file so far."""
        return self._size

    def add(self, index: int, example: Encoded) -> None:
        layout = []
        chunks = []
        for name in _TENSORS:
            tensor = getattr(example, name).detach().contiguous()
            data = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
            layout.append((name, tuple(tensor.shape), tensor.dtype, len(data)))
            chunks.append(data)
        blob = b"".join(chunks)
        os.pwrite(self._fd, blob, self._size)
        self._slots[index] = _Slot(self._size, tuple(layout))
        self._size += len(blob)

    def __getitem__(self, index: int) -> Encoded | None:
        slot = self._slots.get(index)
        if slot is None:
            return None
        blob = os.pread(self._fd, sum(size for *_, size in slot.layout), slot.offset)
        values: dict[str, torch.Tensor] = {}
        start = 0
        for name, shape, dtype, size in slot.layout:
            raw = torch.frombuffer(bytearray(blob[start : start + size]), dtype=torch.uint8) if size else None
            values[name] = raw.view(dtype).reshape(shape) if raw is not None else torch.empty(shape, dtype=dtype)
            start += size
        return Encoded(**values)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def __enter__(self) -> EncodedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
