"""Mixed precision: which autocast a device runs fastest and still trains well."""
from __future__ import annotations

import contextlib

import torch

from pipeline.runtime import resolve_precision


def autocast_for(device: torch.device, amp: str) -> tuple[contextlib.AbstractContextManager, bool]:
    """The autocast context for `train.amp`, and whether fp16 gradient scaling is needed.

    `auto` is bf16 on CUDA and on CPUs with native bf16 arithmetic, else full precision.
    """
    amp = resolve_precision(amp, device)
    if amp == "fp32":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), amp == "fp16"
