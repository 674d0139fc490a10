"""Mixed precision: the autocast each `train.amp` value gives, when gradients need scaling, and the warning
where the CPU would emulate the precision asked for."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from pipeline import runtime
from pipeline.training.precision import autocast_for
from tests.full_disk import project_params, small_table


def product_dtype(context) -> torch.dtype:
    with context:
        return torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype


def test_autocast_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    context, scaled = autocast_for(cpu, "bf16")
    assert product_dtype(context) == torch.bfloat16 and scaled is False
    assert autocast_for(cpu, "fp16")[1] is True  # fp16 needs gradient scaling
    assert product_dtype(autocast_for(cpu, "fp32")[0]) == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert product_dtype(autocast_for(cpu, "auto")[0]) == torch.float32
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert product_dtype(autocast_for(cpu, "auto")[0]) == torch.bfloat16


def test_train_and_scst_warn_in_one_line_when_their_amp_would_be_emulated(
        tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.stages import scst, train

    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    models = {section: {"checkpoint": str(tmp_path / section / "best.pt"),
                        "last_checkpoint": str(tmp_path / section / "last.pt"),
                        "log_dir": str(tmp_path / section / "tb"), "metrics_dir": str(tmp_path / section / "m"),
                        "epochs": 1, "amp": "bf16"} for section in ("train", "scst")}
    project_params(monkeypatch, tmp_path, tiny_project, dataset={"table": str(small_table(tiny_project, tmp_path))},
                   **models)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        train.main()
        scst.main()
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert [warning.split(",")[0] for warning in warnings] == ["train.amp is bf16", "scst.amp is bf16"]
    assert all("no native bf16" in warning and ": auto" in warning for warning in warnings)
    assert (tmp_path / "scst/best.pt").is_file()  # warned, then trained as asked
