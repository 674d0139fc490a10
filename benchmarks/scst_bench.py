"""Self-critical training's throughput beside cross-entropy's, on the same model, images and captions.

Data: a synthetic feature cache (benchmarks/training_bench.py's), 5 random references of 8-16 words
per image over a 10,000-word vocabulary, the `sat` decoder at the seed's sizes (E=2048, A=H=512,
D=300) with END's output bias set so that sampled captions have about 13 tokens, as real ones do
(a fresh decoder would otherwise run every sample to the length limit).

- cross-entropy: `pipeline.training.loop.run_epoch` over the images' 5 captions each;
- self-critical: `pipeline.training.scst.run_scst_epoch` over the same images, 5 samples each, the
  greedy baseline (one more greedy decode per image), CIDEr-D rewards with END.
Both at fp32 and at `amp: auto`, with the batch sizes of the repository's params.yaml (train.batch_size
captions a cross-entropy step, scst.batch_size images a self-critical one). Reported: images/s and
tokens/s (cross-entropy: real target tokens; self-critical: the sampled tokens the policy gradient runs
through).

Run alone: python -m benchmarks.scst_bench
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.common import time_variants
from benchmarks.training_bench import make_cache, make_captions, train_config
from benchmarks.tutorial import END, PAD, START
from pipeline.config import ScstConfig, TrainConfig, load_section
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import DecoderConfig
from pipeline.runtime import Processes
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from pipeline.training.batches import EncodedCaptions, bucket_batches
from pipeline.training.data import TrainingData
from pipeline.training.loop import make_optimisers, run_epoch
from pipeline.training.scst import Rewards, ScstSettings, image_batches, run_scst_epoch

CPU = torch.device("cpu")
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the repository's, wherever this runs from
VOCAB = 10_000
SAMPLES = 5
MEAN_TOKENS = 13  # words + END of a sampled caption, as Flickr30k's captions


def decoder(vocab_size: int) -> torch.nn.Module:
    """The sat decoder at the seed's sizes; END likely enough that samples end after ~MEAN_TOKENS tokens."""
    torch.manual_seed(0)
    model = build_decoder(DecoderConfig(vocab_size=vocab_size, embed_dim=300, encoder_dim=2048, attention_dim=512,
                                        decoder_dim=512, dropout=0.5, pad_index=PAD, max_caption_length=30,
                                        architecture="sat"))
    with torch.no_grad():
        model.output.bias[END] = math.log((vocab_size - 1) / (MEAN_TOKENS - 1))
    return model


def compare(data: TrainingData, rewards: Rewards, amp: str, repeats: int, xe_batch: int, scst_batch: int) -> dict:
    """Cross-entropy and self-critical epochs over the same images at precision `amp`, timed in turn."""
    model, captions, images = decoder(VOCAB), data.train_set, len(rewards.names)
    config = train_config(xe_batch, amp)
    optimizer, _, scaler = make_optimisers(model, 5e-5, 0.0, 10, 1.0, CPU, amp)
    settings = ScstSettings(samples=SAMPLES, baseline="greedy", batch_size=scst_batch, grad_clip=5.0, amp=amp,
                            xe_weight=0.0, attention_penalty=0.0, kl_weight=0.0)
    banned = (PAD, START, data.vocabulary.unk)
    sampled: list[float] = []

    def cross_entropy() -> None:
        batches = bucket_batches(captions.lengths, xe_batch, torch.Generator().manual_seed(0))
        run_epoch(model, data.features, captions, batches, config, CPU, optimizer, scaler)

    def self_critical() -> None:
        batches = image_batches(images, scst_batch, torch.Generator().manual_seed(0))
        stats = run_scst_epoch(model, data, rewards, batches, settings, optimizer, scaler, Processes(0, 1, CPU), banned)
        sampled.append(stats["sampled_tokens_per_s"])

    timings = time_variants({"cross-entropy": cross_entropy, "self-critical": self_critical}, repeats)
    xe, sc = timings.median("cross-entropy"), timings.median("self-critical")
    return {"amp": amp, "images": images, "xe batch": xe_batch, "scst batch": scst_batch, "xe images/s": images / xe,
            "xe tokens/s": float((captions.lengths - 1).sum()) / xe, "scst images/s": images / sc,
            "scst sampled tokens/s": statistics.median(sampled), "scst samples/s": images * SAMPLES / sc,
            "ratio": timings.ratio("self-critical", "cross-entropy")}


def bench_scst(num_images: int, repeats: int) -> list[dict]:
    """`compare` at fp32 and at amp auto, on a synthetic cache and random references, with the repository's
    params.yaml batch sizes (train.batch_size captions, scst.batch_size images a step)."""
    xe_batch, scst_batch = load_section(TrainConfig, PARAMS).batch_size, load_section(ScstConfig, PARAMS).batch_size
    vocabulary = Vocabulary(tuple(SPECIAL_TOKENS) + tuple(f"w{i}" for i in range(VOCAB - len(SPECIAL_TOKENS))))
    assert (vocabulary.start, vocabulary.end, vocabulary.pad) == (START, END, PAD)
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "features.h5"
        names = make_cache(cache, num_images)
        store = FeatureStore(cache)
        captions = make_captions(num_images * 5, num_images, VOCAB)
        # five references for every image (make_captions draws the images at random)
        captions = EncodedCaptions(captions.tokens, captions.lengths, torch.arange(num_images * 5) % num_images)
        references: dict[str, list[str]] = {name: [] for name in names}
        for row, image in zip(captions.tokens.tolist(), captions.image_rows.tolist()):
            references[names[image]].append(" ".join(vocabulary.words[t] for t in row[1:row.index(END)]))
        data = TrainingData(vocabulary, store, FeatureMatrix(store, names, CPU, announce=False), captions, captions,
                            references, references, 0)
        rewards = Rewards(references, vocabulary)
        return [compare(data, rewards, amp, repeats, xe_batch, scst_batch) for amp in ("fp32", "auto")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for result in bench_scst(args.images, args.repeats):
        slow, low, high = result["ratio"]
        print(f"amp {result['amp']}: cross-entropy {result['xe images/s']:.1f} images/s ({result['xe tokens/s']:.0f} "
              f"tokens/s, 5 captions each); self-critical {result['scst images/s']:.1f} images/s "
              f"({result['scst samples/s']:.0f} samples/s, {result['scst sampled tokens/s']:.0f} sampled tokens/s, "
              f"{SAMPLES} samples and a greedy caption each); an epoch takes {slow:.2f}x ({low:.2f}-{high:.2f}) "
              f"cross-entropy's")


if __name__ == "__main__":
    main()
