"""Beam search of this checkout against the `generate` of an earlier git revision, side by side.

Runs `CaptionDecoder.generate` of the working tree and of `pipeline/model.py` at `--against`
(read with `git show`) on the same model and features (bench_decoder's beam model: V=10,000,
captions of 4-20 words), checks that both return the same captions, and prints images/s and the
median paired ratio. Run from the project root:

    python -m benchmarks.bench_generate --against cb331c4
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_decoder import END, START, E, P, beam_model, ratio, time_variants


def model_module_at(revision: str):
    """`pipeline/model.py` as it was at `revision`, imported as a separate module."""
    source = subprocess.run(["git", "show", f"{revision}:pipeline/model.py"], check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"model_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", required=True, help="git revision whose generate() to compare with")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    earlier = model_module_at(args.against)
    model, _ = beam_model(10_000)
    features = torch.randn(args.images, P, E, generator=torch.Generator().manual_seed(4))
    print(f"| beams | {args.against} images/s | this checkout images/s | ratio | mean words |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for beam_size in (3, 5):
        variants = {
            "earlier": lambda k=beam_size: earlier.CaptionDecoder.generate(model, features, START, END, k,
                                                                           args.max_length),
            "now": lambda k=beam_size: model.generate(features, START, END, k, args.max_length),
        }
        seconds, results = time_variants(variants, args.repeats)
        if results["earlier"][0] != results["now"][0]:
            raise SystemExit(f"beam {beam_size}: the two versions return different captions")
        words = statistics.mean(len(c) for c in results["now"][0])
        rates = {name: args.images / statistics.median(s) for name, s in seconds.items()}
        print(f"| {beam_size} | {rates['earlier']:.1f} | {rates['now']:.1f} | "
              f"{ratio(seconds['earlier'], seconds['now']):.2f}x | {words:.1f} |")


if __name__ == "__main__":
    main()
