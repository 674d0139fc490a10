"""Mixed precision: the autocast each `train.amp` value gives, and when gradients need scaling."""
from __future__ import annotations

import pytest
import torch

from pipeline.training import precision
from pipeline.training.precision import autocast_for


def product_dtype(context) -> torch.dtype:
    with context:
        return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype


def test_autocast_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    context, scaled = autocast_for(cpu, "bf16")
    assert product_dtype(context) == torch.bfloat16 and scaled is False
    assert autocast_for(cpu, "fp16")[1] is True  # fp16 needs gradient scaling
    assert product_dtype(autocast_for(cpu, "fp32")[0]) == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert product_dtype(autocast_for(cpu, "auto")[0]) == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert product_dtype(autocast_for(cpu, "auto")[0]) == torch.bfloat16
