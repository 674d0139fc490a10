"""The features stage against the bare encoder forward, at the same precision and batch size.

In a temporary project, the shapes demo draws N images (224 px PNGs) and prepare lists them. Then,
in this one process and in turn (alternating which goes first):

- stage: `python -m pipeline.stages.features`'s main() (workers decode, the encoder runs, a writer
  thread stores, the partial file becomes features.h5);
- bare: `encode()` over the same images, decoded beforehand into one uint8 tensor, batch by batch.

Both are clocked at the end of each batch's encoding; the ratio is of the steady rates, from the
first batch's end to the last one's (what a long run sees). The stage's costs paid once per run
are reported apart: the seconds its own clock counts beyond the steady rate (worker start, first
batch, last write, renaming the file) and, before that, building the encoder and reading the table.

Also measures the relative error of bf16 against fp32 features, ||bf16 - fp32|| / ||fp32||, on the
first batch. Run alone: python -m benchmarks.features_bench [--images 64] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks.common import Timings, cpu_seconds, time_variants
from pipeline.config import PARAMS_ENV, DatasetConfig, EncoderConfig, load_section
from pipeline.datasets.table import read_captions
from pipeline.encoder import extraction
from pipeline.encoder.images import load_image
from pipeline.encoder.resnet import build_encoder, encode
from pipeline.stages import features, prepare, shapes

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@contextlib.contextmanager
def in_project(root: Path):
    """Run with `root` as the working directory and its params.yaml as the params file, quietly."""
    previous, saved = Path.cwd(), os.environ.get(PARAMS_ENV)
    os.chdir(root)
    os.environ[PARAMS_ENV] = str(root / "params.yaml")
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            yield out
    finally:
        os.chdir(previous)
        if saved is None:
            os.environ.pop(PARAMS_ENV, None)
        else:
            os.environ[PARAMS_ENV] = saved


def make_project(root: Path, num_images: int, image_size: int, batch_size: int, num_workers: int) -> None:
    """params.yaml (the repository's, resized) and the outputs of shapes and prepare under `root`."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["shapes"].update(num_images=num_images, image_size=image_size)
    params["encoder"].update(image_size=image_size, batch_size=batch_size, num_workers=num_workers, device="cpu")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    (root / params["dataset"]["split_dir"]).mkdir(parents=True, exist_ok=True)  # no lists: the ratio split
    with in_project(root):
        shapes.main()
        prepare.main()


def set_precision(root: Path, precision: str) -> None:
    """Set encoder.precision in the project's params.yaml."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["encoder"]["precision"] = precision
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


Stamps = list[tuple[float, int]]  # (time.perf_counter() when a batch's features were ready, images in it)


@contextlib.contextmanager
def clocked_stage(stamps: Stamps):
    """Record when each of the stage's batches is encoded (extract's `encode`, wrapped; nothing else changes)."""
    plain = extraction.encode

    def encode_and_stamp(encoder: torch.nn.Module, images: torch.Tensor, *args: object) -> torch.Tensor:
        features_ = plain(encoder, images, *args)
        stamps.append((time.perf_counter(), len(images)))
        return features_

    extraction.encode = encode_and_stamp
    try:
        yield
    finally:
        extraction.encode = plain


def steady_rate(stamps: Stamps) -> float:
    """Images/s between the first batch's end and the last one's: the rate once the pipeline is full."""
    return sum(count for _, count in stamps[1:]) / (stamps[-1][0] - stamps[0][0])


def run_stage(root: Path) -> tuple[float, float, Stamps]:
    """Run the features stage afresh in `root`: (seconds it reports for encoding, seconds of main() in all,
    when each batch was encoded)."""
    stamps: Stamps = []
    with in_project(root) as out, clocked_stage(stamps):
        Path(load_section(EncoderConfig).cache).unlink(missing_ok=True)
        started = time.perf_counter()
        features.main()
        total = time.perf_counter() - started
    reported = re.search(r"encoded in ([\d.]+) s", out.getvalue())
    if reported is None:
        raise RuntimeError(f"the features stage did not report its time; it printed: {out.getvalue()[-300:]}")
    return float(reported.group(1)), total, stamps


def decoded_images(root: Path) -> torch.Tensor:
    """The project's images as the stage sees them, decoded once: (N, 3, S, S) uint8."""
    with in_project(root):
        dataset, encoder = load_section(DatasetConfig), load_section(EncoderConfig)
        names = sorted(set(read_captions(dataset.table)["image"]))
        return torch.stack([load_image(Path(dataset.images) / name, encoder.image_size) for name in names])


def bare_forward(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int, precision: str,
                 stamps: Stamps | None = None) -> torch.Tensor:
    """encode() over pre-decoded images, batch by batch; returns the first batch's features as float32."""
    first = None
    for batch in images.split(batch_size):
        features_ = encode(encoder, batch, CPU, torch.float16, precision)  # (B, P, E), stored as the stage does
        if stamps is not None:
            stamps.append((time.perf_counter(), len(batch)))
        first = features_.float() if first is None else first
    return first


def bench_precision(root: Path, images: torch.Tensor, precision: str, batch_size: int,
                    repeats: int) -> tuple[dict[str, object], torch.Tensor]:
    """The stage and the bare forward at one precision, in turn: a row, and the bare first batch's features.

    The ratio is of the steady rates (from the first batch's end to the last one's), where decoding,
    copying and writing either hide behind the encoder or show; what the stage spends once per run
    (building the encoder, the workers' start, the first batch's wait, the final write) is reported apart.
    """
    set_precision(root, precision)
    cpu = cpu_seconds()
    encoder = build_encoder("none").to_device(CPU, precision)
    build_cpu = cpu_seconds() - cpu  # part of the stage's start-up, left out of its CPU time below
    bare_forward(encoder, images[:batch_size], batch_size, precision)  # warm-up: oneDNN's kernels
    runs: list[tuple[float, float, Stamps]] = []
    bare_stamps: list[Stamps] = []

    def bare() -> torch.Tensor:
        bare_stamps.append([])
        return bare_forward(encoder, images, batch_size, precision, bare_stamps[-1])

    timings: Timings = time_variants({"stage": lambda: runs.append(run_stage(root)), "bare": bare}, repeats)
    stage_rates = [steady_rate(stamps) for _, _, stamps in runs]
    bare_rates = [steady_rate(stamps) for stamps in bare_stamps]
    ratios = [stage / bare for stage, bare in zip(stage_rates, bare_rates)]
    end_to_end = [wall / reported for wall, (reported, _, _) in zip(timings.wall["bare"], runs)]
    cpu_ratios = [bare / (stage - build_cpu) for bare, stage in zip(timings.cpu["bare"], timings.cpu["stage"])]
    once = [reported - len(images) / rate for (reported, _, _), rate in zip(runs, stage_rates)]
    row = {"precision": precision, "images": len(images), "stage": statistics.median(stage_rates),
           "bare": statistics.median(bare_rates), "ratio": (statistics.median(ratios), min(ratios), max(ratios)),
           "end_to_end": statistics.median(end_to_end), "cpu_ratio": statistics.median(cpu_ratios),
           "once": statistics.median(once), "startup": min(total - reported for reported, total, _ in runs)}
    return row, timings.results["bare"]


def bench_features(num_images: int, precisions: tuple[str, ...], repeats: int, batch_size: int = 32,
                   num_workers: int = 2, image_size: int = 224) -> tuple[list[dict[str, object]], float]:
    """Rows (precision, images/s of stage and bare, ratios) and the bf16-vs-fp32 relative error."""
    rows, first_batches = [], {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        make_project(root, num_images, image_size, batch_size, num_workers)
        images = decoded_images(root)
        for precision in precisions:
            row, first_batches[precision] = bench_precision(root, images, precision, batch_size, repeats)
            rows.append(row)
    error = float("nan")
    if {"fp32", "bf16"} <= set(first_batches):
        fp32, bf16 = first_batches["fp32"], first_batches["bf16"]
        error = float((bf16 - fp32).norm() / fp32.norm())
    return rows, error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows, error = bench_features(args.images, ("fp32", "bf16"), args.repeats, num_workers=args.workers)
    for row in rows:
        print(row)
    print(f"bf16 vs fp32 features: relative error {error:.4f}")


if __name__ == "__main__":
    main()
