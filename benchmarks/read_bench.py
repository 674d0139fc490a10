"""Reading features with and without the per-row CRC-32 check: what the check costs the readers.

Data: a synthetic feature cache (N images x 49 regions x 2048, float16, with its `row_crc32`
dataset, written by `benchmarks.training_bench.make_cache`), read from the page cache (a warm-up
read first), so the read itself is as fast as it gets and the check's share is the largest.

- resident load: `FeatureMatrix` loading every row into RAM, as train and evaluate do when the
  features fit (checked: each row once, as it is loaded);
- streamed batches: `FeatureMatrix` under a memory cap of 0, every batch of B random rows read
  on the spot (no read-ahead thread, so nothing hides the check), as train does when the cache
  does not fit (checked: each batch's distinct rows);
- a training epoch on streamed features: our loop (`benchmarks.training_bench.ours_epoch`, amp
  auto, batch 32, V=10,000, M random captions), the next batches read ahead by the prefetch thread,
  so the check runs beside the training step: what it costs training when the cache does not fit;
- unchecked: the same reads through a `FeatureStore` whose checksums are dropped (`checksums =
  None`, what a cache made before checksums existed gets);
- the CRC-32 alone (`row_checksums` over the rows in memory), in GB/s.

Ratios: checked / unchecked speed (1.0 is free), the median over repeats timed in turn.
Run alone: python -m benchmarks.read_bench [--images 400] [--batch-size 64] [--captions 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import machine_line, time_variants
from benchmarks.training_bench import make_cache, make_captions, ours_epoch, train_config
from benchmarks.tutorial import make_pair
from pipeline.encoder.feature_cache import FeatureStore, row_checksums
from pipeline.encoder.feature_matrix import FeatureMatrix

CPU = torch.device("cpu")
VOCABULARY = 10_000  # words, as the training benchmark


def read_batches(matrix: FeatureMatrix, batches: list[torch.Tensor]) -> int:
    """Read every batch through the matrix; returns the bytes read."""
    return sum(int(matrix[rows].numpy().nbytes) for rows in batches)


def crc_rate(store: FeatureStore, repeats: int) -> float:
    """GB/s of `row_checksums` over the whole cache held in memory (best of `repeats`)."""
    features = store.load().numpy()  # (N, P, E)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        row_checksums(features)
        best = min(best, time.perf_counter() - started)
    return features.nbytes / best / 1e9


def bench_read(num_images: int, batch_size: int, num_captions: int, repeats: int) -> dict[str, object]:
    """Seconds and checked / unchecked ratios for the resident load, the streamed batches and a streamed epoch."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "features.h5"
        names = make_cache(cache, num_images)
        checked, unchecked = FeatureStore(cache), FeatureStore(cache)
        unchecked.checksums = None  # the same reads, without the check
        generator = torch.Generator().manual_seed(0)
        batches = [torch.randint(0, num_images, (batch_size,), generator=generator)
                   for _ in range(max(1, num_images // batch_size))]
        streamed = {name: FeatureMatrix(store, names, CPU, memory_budget_bytes=0, announce=False)
                    for name, store in (("checked", checked), ("unchecked", unchecked))}
        model, _ = make_pair(VOCABULARY, seed=0)
        optimizer, config = torch.optim.Adam(model.parameters()), train_config(32, "auto")
        captions = make_captions(num_captions, num_images, VOCABULARY)
        variants = {
            "resident, checked": lambda: FeatureMatrix(checked, names, CPU, announce=False),
            "resident, unchecked": lambda: FeatureMatrix(unchecked, names, CPU, announce=False),
            "streamed, checked": lambda: read_batches(streamed["checked"], batches),
            "streamed, unchecked": lambda: read_batches(streamed["unchecked"], batches),
            "epoch, checked": lambda: ours_epoch(model, optimizer, streamed["checked"], captions, config, 0),
            "epoch, unchecked": lambda: ours_epoch(model, optimizer, streamed["unchecked"], captions, config, 0),
        }
        for name, variant in variants.items():  # warm-up: the page cache, the handles, Adam's state, the kernels
            if not name.startswith("epoch"):
                variant()
        ours_epoch(model, optimizer, streamed["checked"], make_captions(32, num_images, VOCABULARY, seed=2), config, 0)
        timings = time_variants(variants, repeats)
        rate = crc_rate(checked, repeats)
        streamed_bytes = timings.results["streamed, checked"]
    resident_bytes = checked.nbytes
    return {
        "cache MB": resident_bytes / 1e6, "batch": batch_size, "batches": len(batches), "crc GB/s": rate,
        "captions": num_captions, "epoch ratio": timings.ratio("epoch, unchecked", "epoch, checked"),
        "epoch tokens/s": timings.results["epoch, checked"] / timings.median("epoch, checked"),
        "epoch unchecked tokens/s": timings.results["epoch, unchecked"] / timings.median("epoch, unchecked"),
        "resident GB/s": resident_bytes / timings.median("resident, checked") / 1e9,
        "resident unchecked GB/s": resident_bytes / timings.median("resident, unchecked") / 1e9,
        "resident ratio": timings.ratio("resident, unchecked", "resident, checked"),
        "streamed GB/s": streamed_bytes / timings.median("streamed, checked") / 1e9,
        "streamed unchecked GB/s": streamed_bytes / timings.median("streamed, unchecked") / 1e9,
        "streamed ratio": timings.ratio("streamed, unchecked", "streamed, checked"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captions", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    print(bench_read(args.images, args.batch_size, args.captions, args.repeats))


if __name__ == "__main__":
    main()
