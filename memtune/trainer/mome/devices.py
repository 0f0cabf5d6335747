"""Where the engine runs and in which precision: one device for every tensor, CUDA whenever there is one.

    device = resolve_device(None)          # cuda when torch sees a GPU, else cpu (logged as a warning)
    dtype = resolve_dtype(None, device)    # bfloat16 on CUDA (float16 where bf16 is missing), float32 on the CPU

`requested` may be "auto" (or None), "cpu", "cuda", "cuda:N", "mps"; a dtype "auto" (or None), "float32",
"bfloat16", "float16" or a torch.dtype. Anything that cannot run here is a `SpecError` naming `device` or `dtype`,
raised before a model is loaded.

The expert arithmetic stays in float32 (EXPERT_DTYPE) whatever the base model's dtype: an expert's delta is small
next to the MLP output it is added to, and rounding it to bf16 first would cost recall for no measurable speed (the
experts are a rank-k·r matmul pair per layer and token).
"""

from __future__ import annotations

import logging

import torch

from memtune.spec import SpecError

log = logging.getLogger(__name__)

EXPERT_DTYPE = torch.float32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run on; auto picks CUDA when torch sees one and says so when it does not."""
    if requested is None or str(requested) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("no CUDA device visible to torch: the engine runs on the CPU (pass --device to choose)")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise SpecError([("device", f"{requested!r} is not a device ({error})")], "device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError([("device", f"{requested!r}: torch sees no CUDA device on this machine")], "device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise SpecError([("device", f"{requested!r}: this machine has {count} CUDA device(s)")], "device")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SpecError([("device", f"{requested!r}: torch sees no MPS device on this machine")], "device")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SpecError([("device", f"{requested!r}: choose auto, cpu, cuda, cuda:N or mps")], "device")
    return device


def resolve_dtype(requested: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The base model's dtype: auto is bfloat16 on CUDA (float16 without bf16 support), float32 elsewhere."""
    if isinstance(requested, torch.dtype):
        if requested not in DTYPES.values():
            raise SpecError([("dtype", f"{requested}: choose one of {', '.join(DTYPES)}")], "dtype")
        return requested
    if requested is None or requested == "auto":
        if device.type == "cuda":
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
            name = torch.cuda.get_device_name(device)
            log.warning("%s has no bfloat16 support: the base model runs in float16", name)
            return torch.float16
        return torch.float32
    if requested not in DTYPES:
        raise SpecError([("dtype", f"{requested!r}: choose auto or one of {', '.join(DTYPES)}")], "dtype")
    return DTYPES[requested]
