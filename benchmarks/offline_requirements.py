"""Print the lock (requirements.txt) less torch, torchvision and the CUDA packages they bring, for a GPU
machine that has its own torch: what benchmarks/gpu_run.sh installs from a folder of wheels.

    python -m benchmarks.offline_requirements > /tmp/req.txt
    pip download --no-deps -r /tmp/req.txt -d .whl --only-binary=:all:      # on a machine with PyPI
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

LOCK = Path(__file__).resolve().parents[1] / "requirements.txt"
MACHINE_OWN = re.compile(r"(torch|torchvision|triton|nvidia-[a-z0-9-]+)==")


def without_torch(lock: str) -> str:
    """The lock's requirement blocks (a pin and its hash lines) less the ones MACHINE_OWN names."""
    blocks = re.split(r"\n(?=\S)", lock)
    return "\n".join(block for block in blocks if not block.startswith("#") and not MACHINE_OWN.match(block)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(without_torch(LOCK.read_text(encoding="utf-8")))
