"""Training speed: our path against the tutorial's, and streamed features against resident ones.

Data: a synthetic feature cache (N images x 49 regions x 2048, float16, written with the cache's own
layout) and M random captions of 8-16 words + END over a 10,000-word vocabulary (Flickr30k's
captions have ~12 words on average and ~7,000-10,000 words occur 5 times or more).

- ours: `pipeline.training.loop.run_epoch` (length-bucketed batches, features from FeatureMatrix,
  one attention projection per image) with the optimiser train makes (`make_optimisers`, params.yaml's
  learning rate and weight decay), at fp32 and at `train.amp: auto` (bf16 where the CPU has it), for
  `sat`, the seed's decoder (the tutorial's maths, same weights), and `spatial` (same sizes, attention
  after the LSTM, a 5x smaller per-step recurrent product);
- tutorial: benchmarks/tutorial.py (projection per step, fp32, per-item HDF5 reads through a
  Dataset, its own Adam); same batch size, same weights and maths;
- streaming vs resident: sat (amp auto) with the features streamed (a memory cap below the cache's
  size, the next batches announced with `prefetch`) and resident.

Each ratio is of wall seconds (the table's) and, beside it, of CPU seconds: on a machine shared with
other jobs the CPU-seconds ratio moves less. Tokens are real targets (words + END).
Run alone: python -m benchmarks.training_bench
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import tempfile
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.common import Timings, time_variants
from benchmarks.tutorial import END, PAD, START, E, P, TutorialCaptions, make_pair, tutorial_epoch
from pipeline.config import TrainConfig, load_section
from pipeline.encoder.feature_cache import FeatureStore, create_layout
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder
from pipeline.training.batches import EncodedCaptions, bucket_batches
from pipeline.training.loop import make_optimisers, run_epoch

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORDS = (8, 16)  # words per caption, uniform
FLICKR30K_TRAIN_TOKENS = 29_000 * 5 * 13  # train captions x (mean words + END): one Flickr30k epoch


def make_cache(path: Path, num_images: int, seed: int = 0) -> list[str]:
    """A feature cache of random float16 features; returns its image names (sorted, as rows)."""
    names = [f"img{i:06d}.jpg" for i in range(num_images)]
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as file:
        features = create_layout(file, names, P, E, "float16", {"weights": "synthetic"})
        for start in range(0, num_images, 256):
            stop = min(num_images, start + 256)
            features[start:stop] = rng.standard_normal((stop - start, P, E), dtype=np.float32).astype(np.float16)
    return names


def make_captions(num_captions: int, num_images: int, vocab_size: int, seed: int = 1) -> EncodedCaptions:
    """Random captions [START, words, END, PAD...] of images chosen at random."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(WORDS[0], WORDS[1] + 1, (num_captions,), generator=generator)
    tokens = torch.full((num_captions, WORDS[1] + 2), PAD)
    for row, n in enumerate(words.tolist()):
        tokens[row, 0], tokens[row, n + 1] = START, END
        tokens[row, 1:n + 1] = torch.randint(3, vocab_size, (n,), generator=generator)
    rows = torch.randint(0, num_images, (num_captions,), generator=generator)
    return EncodedCaptions(tokens, words + 2, rows)


def train_config(batch_size: int, amp: str) -> TrainConfig:
    """The repository's train params with this batch size and precision."""
    return load_section(TrainConfig, ROOT / "params.yaml").model_copy(update={"batch_size": batch_size, "amp": amp})


def ours_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, features: FeatureMatrix,
               captions: EncodedCaptions, config: TrainConfig, seed: int) -> int:
    """One epoch of our training loop; returns the real target tokens seen."""
    batches = bucket_batches(captions.lengths, config.batch_size, torch.Generator().manual_seed(seed))
    features.prefetch([captions.image_rows[batch] for batch in batches])  # a no-op when resident
    run_epoch(model, features, captions, batches, config, CPU, optimizer)
    return int((captions.lengths - 1).sum())


Variants = dict[str, Callable[[], int]]


def our_variants(models: dict[str, CaptionDecoder], configs: dict[str, TrainConfig], resident: FeatureMatrix,
                 streamed: FeatureMatrix, captions: EncodedCaptions, warm: EncodedCaptions) -> Variants:
    """An epoch of each architecture at each precision (and sat's streamed), each model with the optimiser
    train makes for it; one warm-up batch each (Adam's state, the kernels' first calls)."""
    variants = {}
    for name, model in models.items():
        config = configs["fp32"]
        optimizer = make_optimisers(model, config.lr, config.weight_decay, config.lr_step_epochs, config.lr_gamma, CPU,
                                    config.amp)[0]
        for amp in configs:
            ours_epoch(model, optimizer, resident, warm, configs[amp], 0)
            variants[f"{name} {amp}"] = functools.partial(ours_epoch, model, optimizer, resident, captions,
                                                          configs[amp], 0)
        if name == "sat":
            variants["sat auto, streamed"] = functools.partial(ours_epoch, model, optimizer, streamed, captions,
                                                               configs["auto"], 0)
    return variants


def bench_training(num_images: int, num_captions: int, vocab_size: int, batch_size: int, repeats: int,
                   stream_cap: float = 0.5) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Rows for sat and spatial (fp32, auto) and the tutorial, and the streaming-vs-resident comparison."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "features.h5"
        names = make_cache(cache, num_images)
        store = FeatureStore(cache)
        captions = make_captions(num_captions, num_images, vocab_size)
        warm = make_captions(batch_size, num_images, vocab_size, seed=2)
        resident = FeatureMatrix(store, names, CPU, announce=False)
        cap = int(stream_cap * store.nbytes)
        streamed = FeatureMatrix(store, names, CPU, memory_budget_bytes=cap, announce=False)
        assert resident.resident and not streamed.resident

        sat, tutorial = make_pair(vocab_size, seed=0)
        models = {"sat": sat, "spatial": build_decoder(dataclasses.replace(sat.config, architecture="spatial"))}
        configs = {amp: train_config(batch_size, amp) for amp in ("fp32", "auto")}
        variants = our_variants(models, configs, resident, streamed, captions, warm)
        optimizer = torch.optim.Adam(tutorial.parameters())  # the tutorial's
        data = TutorialCaptions(str(cache), captions.image_rows, captions.tokens, captions.lengths)
        variants["tutorial"] = lambda: tutorial_epoch(tutorial, optimizer, data, batch_size, 0)
        tutorial_epoch(tutorial, optimizer, TutorialCaptions(str(cache), warm.image_rows, warm.tokens, warm.lengths),
                       batch_size, 0)
        timings: Timings = time_variants(variants, repeats)
        streamed.close()
    tokens = int((captions.lengths - 1).sum())
    rows = []
    for name in ("sat fp32", "sat auto", "spatial fp32", "spatial auto", "tutorial"):
        rate = tokens / timings.median(name)
        rows.append({"variant": name, "tokens/s": rate, "epoch s": timings.median(name),
                     "flickr30k epoch min": FLICKR30K_TRAIN_TOKENS / rate / 60,
                     "vs tutorial": timings.ratio("tutorial", name),
                     "vs tutorial, CPU seconds": timings.cpu_ratio("tutorial", name)})
    streaming = {"cache MB": store.nbytes / 1e6, "cap MB": cap / 1e6,
                 "resident tokens/s": tokens / timings.median("sat auto"),
                 "streamed tokens/s": tokens / timings.median("sat auto, streamed"),
                 "ratio": timings.ratio("sat auto", "sat auto, streamed")}
    return rows, streaming


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--captions", type=int, default=192)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows, streaming = bench_training(args.images, args.captions, args.vocab, args.batch_size, args.repeats)
    for row in rows:
        print(row)
    print(streaming)


if __name__ == "__main__":
    main()
