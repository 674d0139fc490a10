"""What each precision costs on this machine's CPU against fp32, and whether the runtime calls it native.

    python -m benchmarks.precision_bench [--repeats 3] [--threads N]

Three products the project runs, each timed in fp32 and in the lower precision, in turn:
- the encoder's forward (ResNet50, 4 images at 224 px; `encoder.precision`, and the Captioner's photos)
  in fp32 and under bf16 autocast;
- a decoder-sized linear layer (640 rows x 2048 -> 2048: a training step's product; `train.amp`,
  `scst.amp`) in fp32 and under bf16 autocast;
- a decoding step's product in int8 (`pipeline.model.int8.Int8Linear`, 400 rows x 512 -> 2048;
  `retrieval.precision: int8`) against the same nn.Linear in fp32.
Where the CPU lacks the instructions (`pipeline.runtime.runs_native`), the lower precision is emulated
and slower than fp32; `auto` then picks fp32, and a precision forced by a param gets a warning.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import machine_line, spread, time_variants
from pipeline.encoder.resnet import build_encoder, encode
from pipeline.model.int8 import Int8Linear
from pipeline.runtime import runs_native

CPU = torch.device("cpu")


def repeated(call: Callable[[], object], times: int) -> Callable[[], object]:
    """`call` made `times` times in a row: one timed variant long enough to measure."""
    def run() -> object:
        for _ in range(times):
            result = call()
        return result
    return run


def products(seed: int = 0) -> dict[str, tuple[str, dict[str, Callable[[], object]]]]:
    """Each product's name -> (the lower precision, {variant name: call}), fp32 first."""
    generator = torch.Generator().manual_seed(seed)
    encoder = build_encoder("none").to_device(CPU)
    pixels = torch.randint(0, 256, (4, 3, 224, 224), dtype=torch.uint8, generator=generator)
    linear = nn.Linear(2048, 2048)
    rows = torch.randn(640, 2048, generator=generator)
    step = nn.Linear(512, 2048)
    step_rows = torch.randn(400, 512, generator=generator)
    int8_step = Int8Linear(step)

    def autocast_linear() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return linear(rows)

    return {
        "encoder forward, ResNet50, 4 images at 224 px": ("bf16", {
            "fp32": lambda: encode(encoder, pixels, CPU, precision="fp32"),
            "bf16": lambda: encode(encoder, pixels, CPU, precision="bf16")}),
        "linear 640 x 2048 -> 2048, x10": ("bf16", {
            "fp32": repeated(lambda: linear(rows), 10), "bf16": repeated(autocast_linear, 10)}),
        "decoding step's product 400 x 512 -> 2048, x10": ("int8", {
            "fp32": repeated(lambda: step(step_rows), 10), "int8": repeated(lambda: int8_step(step_rows), 10)}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    print("| product | fp32 s | lower precision s | lower / fp32 (range) | native here (`runs_native`) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, (lower, variants) in products().items():
        with torch.inference_mode():
            for call in variants.values():
                call()  # warm-up: oneDNN's kernels are chosen at the first call
            timings = time_variants(variants, args.repeats)
        print(f"| {name} | {timings.median('fp32'):.3f} | {lower} {timings.median(lower):.3f} | "
              f"{spread(*timings.ratio(lower, 'fp32'))} | {'yes' if runs_native(lower, CPU) else 'no'} |",
              flush=True)


if __name__ == "__main__":
    main()
