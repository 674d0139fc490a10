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
  size, the next batches announced with `prefetch`) and resident; the cache has its row checksums,
  so both paths check every row they read, as in training.

Each ratio is of wall seconds (the table's) and, beside it, of CPU seconds: on a machine shared with
other jobs the CPU-seconds ratio moves less. Tokens are real targets (words + END).
Run alone: python -m benchmarks.training_bench
Where an epoch's CPU time goes (torch.profiler): python -m benchmarks.training_bench --profile sat [--amp auto]
How fast sat's step product runs at the batch's rows and at all steps' rows: ... --products [--batch-size 64]
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import torch

from benchmarks.common import Timings, time_variants
from benchmarks.tutorial import END, PAD, START, E, H, P, TutorialCaptions, make_pair, tutorial_epoch
from pipeline.config import TrainConfig, load_section
from pipeline.encoder.feature_cache import FeatureStore, create_checksums, create_layout, row_checksums
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig
from pipeline.training.batches import EncodedCaptions, bucket_batches
from pipeline.training.loop import make_optimisers, run_epoch

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORDS = (8, 16)  # words per caption, uniform
FLICKR30K_TRAIN_TOKENS = 29_000 * 5 * 13  # train captions x (mean words + END): one Flickr30k epoch


def make_cache(path: Path, num_images: int, seed: int = 0) -> list[str]:
    """A feature cache of random float16 features with their row checksums, as the features stage writes it;
    returns its image names (sorted, as rows)."""
    names = [f"img{i:06d}.jpg" for i in range(num_images)]
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as file:
        features = create_layout(file, names, P, E, "float16", {"weights": "synthetic"})
        checksums = create_checksums(file, num_images)
        for start in range(0, num_images, 256):
            stop = min(num_images, start + 256)
            block = rng.standard_normal((stop - start, P, E), dtype=np.float32).astype(np.float16)  # (B, P, E)
            features[start:stop], checksums[start:stop] = block, row_checksums(block)
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


def part_of_step(name: str, shapes: list[list[int]], config: DecoderConfig, batch_size: int,
                 parameter_shapes: set[tuple[int, ...]]) -> str:
    """The part of a training step an operator's time belongs to, from its name and input shapes."""
    A, H, D = config.attention_dim, config.decoder_dim, config.embed_dim
    shapes = [tuple(shape) for shape in shapes if shape]
    dims = {d for shape in shapes for d in shape}
    if name in ("aten::_fused_adam_", "aten::linalg_vector_norm") or (name == "aten::mul_" and shapes
                                                                         and shapes[0] in parameter_shapes):
        return "Adam and gradient clipping"
    if config.vocab_size in dims or "log_softmax" in name or "nll_loss" in name:
        return "output layer and loss (once per batch)"
    if name in ("aten::mm", "aten::addmm"):
        rows = dims - {E, A, H, 4 * H, A + E, E + H, D}  # what is not a layer's size: batch rows, or 1
        if 1 in rows or not rows:
            return "attention, per step"  # the score vector
        if D in dims:
            return "word gates (once per batch)"
        if any(d % P == 0 for d in rows):
            return "encoder-side attention projection (once per image)"
        if min(rows) <= batch_size:
            return "products with the batch's rows (per step; the initial state)"
        return "products over all steps at once (the step's weight gradients; spatial's read-out)"
    if name == "aten::bmm" or any(len(shape) == 4 or (len(shape) == 3 and P in shape[1:] and shape[-1] != E)
                                  for shape in shapes):
        return "attention, per step"
    if any(len(shape) == 3 and shape[1:] == (P, E) for shape in shapes):
        return "features (standardised, mean)"
    return "the rest: LSTM cell and other small ops, autograd, Python"


def profile_epoch(architecture: str, amp: str, num_images: int, num_captions: int, vocab_size: int,
                  batch_size: int) -> dict[str, float]:
    """Where one training epoch's CPU time goes (torch.profiler, self time): each part's share."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "features.h5"
        names = make_cache(cache, num_images)
        features = FeatureMatrix(FeatureStore(cache), names, CPU, announce=False)
        captions = make_captions(num_captions, num_images, vocab_size)
        model = build_decoder(dataclasses.replace(make_pair(vocab_size, seed=0)[0].config, architecture=architecture))
        config = train_config(batch_size, amp)
        optimizer = make_optimisers(model, config.lr, config.weight_decay, config.lr_step_epochs, config.lr_gamma, CPU,
                                    config.amp)[0]
        ours_epoch(model, optimizer, features, make_captions(batch_size, num_images, vocab_size, seed=2), config, 0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profiler:
            ours_epoch(model, optimizer, features, captions, config, 0)
    parameter_shapes = {tuple(parameter.shape) for parameter in model.parameters()}
    parts: collections.Counter[str] = collections.Counter()
    for event in profiler.key_averages(group_by_input_shape=True):
        parts[part_of_step(event.key, event.input_shapes, model.config, batch_size, parameter_shapes)] += (
            event.self_cpu_time_total)
    total = sum(parts.values())
    return {part: time / total for part, time in parts.most_common()}


def measure_products(batch_size: int, steps: int, rounds: int = 20) -> dict[str, float]:
    """GFLOP/s (CPU seconds) of sat's per-step product [context; h] -> gates (E + H -> 4H): forward x W^T and
    input gradient g W at `batch_size` rows, and its weight gradient at `batch_size` rows (per step, as
    autograd computes it, with the sum over steps) and at `batch_size` x `steps` rows (once, as
    pipeline.model.step_products computes it)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4 * H, E + H, generator=generator)  # (4H, E + H)
    x, grad = torch.randn(batch_size * steps, E + H, generator=generator), torch.randn(batch_size * steps, 4 * H,
                                                                                       generator=generator)
    x_step, grad_step, total = x[:batch_size], grad[:batch_size], torch.zeros_like(weight)
    flop = 2 * batch_size * (E + H) * 4 * H  # one product of one step
    kernels = {"forward x W^T": (lambda: x_step @ weight.t(), flop),
               "input gradient g W": (lambda: grad_step @ weight, flop),
               "weight gradient per step, summed": (lambda: total.add_(grad_step.t() @ x_step), flop),
               "weight gradient once for all steps": (lambda: grad.t() @ x, flop * steps)}
    rates = {}
    for name, (kernel, flops) in kernels.items():
        kernel()
        seconds = []
        for _ in range(rounds):
            started = time.process_time()
            kernel()
            seconds.append(time.process_time() - started)
        rates[name] = flops / statistics.median(seconds) / 1e9
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--captions", type=int, default=192)
    parser.add_argument("--vocab", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", choices=("sat", "spatial"), help="instead: where an epoch's CPU time goes")
    parser.add_argument("--amp", default="fp32", help="the precision profiled (train.amp)")
    parser.add_argument("--products", action="store_true", help="instead: GFLOP/s of sat's step product")
    args = parser.parse_args()
    if args.products:
        for name, rate in measure_products(args.batch_size, steps=14).items():
            print(f"{rate:6.1f} GFLOP/s  {name}")
        return
    if args.profile:
        shares = profile_epoch(args.profile, args.amp, args.images, args.captions, args.vocab, args.batch_size)
        for part, share in shares.items():
            print(f"{share:6.1%}  {part}")
        return
    rows, streaming = bench_training(args.images, args.captions, args.vocab, args.batch_size, args.repeats)
    for row in rows:
        print(row)
    print(streaming)


if __name__ == "__main__":
    main()
