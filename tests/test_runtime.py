"""The run's environment: which device and precision `auto` means, and a clear error for a missing GPU."""
from __future__ import annotations

import pytest
import torch

from pipeline import runtime
from pipeline.errors import ConfigError


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.resolve_precision("fp32", cuda) == "fp32" and runtime.resolve_precision("bf16", cpu) == "bf16"
    assert runtime.resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.resolve_precision("auto", cpu) == "bf16"


def test_scoring_auto_is_int8_where_the_cpu_has_int8_dot_products_else_bf16_where_native(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: True)
    assert runtime.resolve_scoring_precision("auto", cpu) == "int8"
    assert runtime.resolve_scoring_precision("auto", cuda) == "bf16"
    assert runtime.resolve_scoring_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert runtime.resolve_scoring_precision("auto", cpu) == "int8"  # faster than native bf16 (docs/search.md)
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: False)
    assert runtime.resolve_scoring_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert runtime.resolve_scoring_precision("auto", cpu) == "fp32"


def test_a_precision_the_cpu_would_emulate_gets_a_warning_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_fp16", lambda: False)
    for key, precision in (("train.amp", "bf16"), ("scst.amp", "fp16"), ("retrieval.precision", "int8")):
        warning = runtime.emulation_warning(key, precision, cpu)
        assert warning.startswith(f"{key} is {precision}, but this CPU has no ")
        assert f"set {key}: auto" in warning and "\n" not in warning
        assert runtime.emulation_warning(key, precision, cuda) is None  # CUDA runs them natively
    for precision in ("auto", "fp32"):
        assert runtime.emulation_warning("train.amp", precision, cpu) is None
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: True)
    assert runtime.emulation_warning("encoder.precision", "bf16", cpu) is None
    assert runtime.emulation_warning("retrieval.precision", "int8", cpu) is None
    assert "AVX512-FP16" in runtime.emulation_warning("train.amp", "fp16", cpu)
    assert runtime.runs_native("bf16", cpu) and not runtime.runs_native("fp16", cpu)


def test_cpu_flags_are_read_from_proc_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    real_path = runtime.Path
    monkeypatch.setattr(runtime, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else real_path(name))
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert runtime.cpu_has_int8_dot() and not runtime.cpu_has_bf16()
    cpuinfo.write_text("flags\t\t: fpu avx2 avx_vnni amx_bf16\n")
    assert runtime.cpu_has_int8_dot() and runtime.cpu_has_bf16()
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not runtime.cpu_has_int8_dot() and not runtime.cpu_has_bf16()
    cpuinfo.unlink()
    assert not runtime.cpu_has_int8_dot()


def test_auto_device_and_a_missing_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device .cuda:1. was asked for but CUDA is not available"):
        runtime.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")


def test_seed_everything_repeats_the_random_streams() -> None:
    runtime.seed_everything(3)
    first = torch.rand(2)
    runtime.seed_everything(3)
    assert torch.equal(torch.rand(2), first)


def test_a_missing_gpu_names_the_setting_and_a_gpu_past_the_last_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^evaluate\.device: device 'cuda' was asked for but CUDA is not available; "
                                          r"set evaluate\.device to auto or cpu$"):
        runtime.resolve_device("cuda", "evaluate.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("cuda:1", "train.device") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"^train\.device: device 'cuda:2' was asked for but this machine has 2 CUDA "
                                          r"device\(s\), cuda:0 onwards"):
        runtime.resolve_device("cuda:2", "train.device")
