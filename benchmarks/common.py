"""What every benchmark shares: paired timing in alternating order, ratios, and the machine's description.

On a shared machine the speed of one run says little; the ratio of two variants timed in turn,
alternating which goes first, says much more. Every comparison here is such a ratio: the median of
the per-repeat ratios, with the range over repeats.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Timings:
    """Wall seconds and CPU seconds (this process and its finished children) per repeat, per variant."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """Median wall seconds of a variant."""
        return statistics.median(self.wall[name])

    def ratio(self, slow: str, fast: str) -> tuple[float, float, float]:
        """Median, min and max over repeats of wall(slow) / wall(fast)."""
        ratios = [s / f for s, f in zip(self.wall[slow], self.wall[fast])]
        return statistics.median(ratios), min(ratios), max(ratios)

    def cpu_ratio(self, slow: str, fast: str) -> float:
        """Median over repeats of cpu(slow) / cpu(fast): the extra work, whatever else the machine runs."""
        return statistics.median(s / f for s, f in zip(self.cpu[slow], self.cpu[fast]))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def time_variants(variants: dict[str, Callable[[], object]], repeats: int) -> Timings:
    """Call each variant `repeats` times, in turn, reversing the order every other round."""
    timings = Timings({name: [] for name in variants}, {name: [] for name in variants})
    names = list(variants)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            cpu, wall = cpu_seconds(), time.perf_counter()
            timings.results[name] = variants[name]()
            timings.wall[name].append(time.perf_counter() - wall)
            timings.cpu[name].append(cpu_seconds() - cpu)
    return timings


def cpu_model() -> str:
    """The CPU's model name, whether it multiplies bf16 natively (AVX512-BF16, AMX) and has int8 dot products."""
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    listed = set(flags.split())
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in listed]
    int8 = [flag for flag in ("avx512_vnni", "avx_vnni") if flag in listed]
    return (f"{name}, {os.cpu_count()} cores, bf16: {', '.join(native) or 'no native support'}, "
            f"int8 dot products: {', '.join(int8) or 'none'}")


def machine_line() -> str:
    """One line naming the machine, the date, the library versions and the load when it starts."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}; {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"Python {platform.python_version()}; {datetime.date.today()}; "
            f"load average {os.getloadavg()[0]:.1f} at the start")


def spread(median: float, low: float, high: float) -> str:
    """A ratio with its range over repeats: 0.93x (0.88-0.97)."""
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"
