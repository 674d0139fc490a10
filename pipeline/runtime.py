"""The run's environment: the device, seeds, and the processes that torchrun starts."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def cpu_has(*flags: str) -> bool:
    """Whether /proc/cpuinfo lists any of these CPU flags (False where it cannot be read)."""
    try:
        listed = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return not listed.isdisjoint(flags)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 runs faster."""
    return cpu_has("avx512_bf16", "amx_bf16")


def cpu_has_int8_dot() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), where int8 products
    run several times faster than float32 ones (`pipeline.model.int8`)."""
    return cpu_has("avx512_vnni", "avx_vnni")


def cpu_has_fp16() -> bool:
    """Whether this CPU multiplies float16 natively (AVX512-FP16 or AMX-FP16)."""
    return cpu_has("avx512_fp16", "amx_fp16")


NATIVE_ON_CPU = {  # precision -> what a CPU needs to run it natively, and whether this one has it
    "bf16": ("native bf16 (AVX512-BF16 or AMX)", lambda: cpu_has_bf16()),
    "fp16": ("native fp16 (AVX512-FP16 or AMX-FP16)", lambda: cpu_has_fp16()),
    "int8": ("int8 dot products (AVX512-VNNI or AVX-VNNI)", lambda: cpu_has_int8_dot()),
}


def runs_native(precision: str, device: "torch.device") -> bool:
    """Whether `precision` (fp32, bf16, fp16, int8) runs natively on `device`: always on CUDA and for fp32;
    on a CPU only with the instructions it needs, without which it is emulated and runs slower than
    fp32: 8x for a bf16 ResNet50 forward and 27x for int8 decoding products on a 2-core AVX2 CPU
    (`python -m benchmarks.precision_bench`, docs/speed.md)."""
    if device.type != "cpu" or precision not in NATIVE_ON_CPU:
        return True
    return NATIVE_ON_CPU[precision][1]()


def emulation_warning(key: str, precision: str, device: "torch.device") -> str | None:
    """A one-line warning, naming `key`, where the precision it asks for would be emulated on this device
    (`runs_native`); None where it runs natively (and for `auto`, which picks only native ones)."""
    if precision == "auto" or runs_native(precision, device):
        return None
    return (f"{key} is {precision}, but this CPU has no {NATIVE_ON_CPU[precision][0]}: {precision} is emulated "
            f"here and runs several times slower than fp32; set {key}: auto to run at this CPU's full speed")


def resolve_scoring_precision(precision: str, device: "torch.device") -> str:
    """retrieval's `auto` -> bf16 on CUDA; on a CPU, int8 where it has int8 dot products (faster than its
    native bf16 too where both were measured, docs/search.md), else bf16 where native, else fp32;
    other values as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    if device.type == "cpu" and cpu_has_int8_dot():
        return "int8"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_precision(precision: str, device: "torch.device") -> str:
    """`auto` -> bf16 on CUDA and on CPUs with native bf16 arithmetic, else fp32; other values as given."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"


def resolve_device(name: str, key: str | None = None) -> "torch.device":
    """'auto' -> cuda when available else cpu; otherwise the named device, checked (errors name `key`)."""
    import torch  # imported here so that stages without a model start fast

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        from pipeline.errors import ConfigError

        where, what = (f"{key}: ", key) if key else ("", "it")
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}device '{name}' was asked for but CUDA is not available; set {what} to auto "
                              "or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}device '{name}' was asked for but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s), cuda:0 onwards; set {what} to auto or "
                              "an existing device")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_processes(device_name: str, key: str | None = None) -> tuple[int, int, "torch.device"]:
    """(rank, world size, device); joins the process group when started by torchrun.

    On CUDA each process takes the GPU of its LOCAL_RANK; the backend is nccl on GPUs, gloo on CPUs.
    """
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_name, key)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)  # pinned memory and NCCL work stay on this process's GPU
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return rank, world_size, device


def stop_processes(world_size: int) -> None:
    """Leave the process group joined by `start_processes`, if any."""
    import torch.distributed as dist

    if world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


TORCHRUN_ENV = "PIPELINE_TORCHRUN"  # torchrun's options, e.g. "--nproc_per_node 4"; unset: one process


def relaunch_under_torchrun(module: str) -> bool:
    """Run `module` under torchrun with the options in $PIPELINE_TORCHRUN, if set; True when it ran so.

    The stage's command in dvc.yaml stays `python -m pipeline.stages.<stage>` on every machine (so
    its hash does not change with the number of GPUs); the process count comes from the environment.
    Called by a stage's `__main__` before `pipeline.cli.run`: this process is then only the launcher,
    so it shows its one line the way `run` shows a stage's messages.
    """
    import shlex
    import subprocess
    import sys

    from pipeline.cli import configure_logging

    options = os.environ.get(TORCHRUN_ENV, "").strip()
    if not options or "RANK" in os.environ:  # not asked for, or already one of torchrun's processes
        return False
    command = [sys.executable, "-m", "torch.distributed.run", *shlex.split(options), "-m", module]
    configure_logging()
    logger.info(f"{module}: running under torchrun: {' '.join(command[1:])}")
    completed = subprocess.run(command, check=False)
    if completed.returncode:
        raise SystemExit(completed.returncode)
    return True


def follow_rank_zero(value: Any, world_size: int) -> Any:
    """Rank 0's `value` on every process: one decision, even where validation differs across devices."""
    if world_size == 1:
        return value
    box = [value]
    import torch.distributed as dist

    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(items: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The union of every process's dict."""
    if world_size == 1:
        return items
    import torch.distributed as dist

    parts: list[dict[str, Any] | None] = [None] * world_size
    dist.all_gather_object(parts, items)
    return {key: value for part in parts for key, value in (part or {}).items()}


@dataclasses.dataclass(frozen=True)
class Processes:
    """This process's place among torchrun's processes (one process when not under torchrun)."""

    rank: int
    world_size: int
    device: "torch.device"

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that decides, scores and writes every file."""
        return self.rank == 0

    def say(self, message: str) -> None:
        """Log a line for a person, from rank 0 only."""
        if self.main:
            logger.info(message)

    def warn(self, message: str | None) -> None:
        """Log a warning (on stderr) from rank 0 only; None says nothing."""
        if self.main and message:
            logger.warning(message)

    def follow(self, value: Any) -> Any:
        """Rank 0's `value` on every process (`follow_rank_zero`)."""
        return follow_rank_zero(value, self.world_size)

    def gather(self, items: dict[str, Any]) -> dict[str, Any]:
        """The union of every process's dict (`gather`)."""
        return gather(items, self.world_size)

    def sum(self, value: float) -> float:
        """`value` summed over every process."""
        if self.world_size == 1:
            return value
        import torch

        total = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(total)
        return float(total.item())

    def wrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """The module training calls: DistributedDataParallel over the processes, or `model` itself."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)


@contextlib.contextmanager
def processes(device_name: str, key: str | None = None) -> Iterator[Processes]:
    """`start_processes` for the block, `stop_processes` after it, whatever happens."""
    rank, world_size, device = start_processes(device_name, key)
    try:
        yield Processes(rank, world_size, device)
    finally:
        stop_processes(world_size)
