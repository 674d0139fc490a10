"""Beam search: all images of a batch at once against one image at a time, same captions.

Both run `pipeline.model.beam_search` on the same decoder and features: ours with the whole batch
(as `describe_all` does, `evaluate.batch_size` images at a time), the baseline in a loop with one
image per call. The decoder (V=10,000, the seed model's sizes) is made to decode like a trained one:
a fresh decoder's END is equally likely at every step, so every search would end at once or never;
here the output layer is sharpened (about -2 nats per word) and one hidden unit counts the steps and
alone drives END, so captions end after 4-20 words (mean about 12, as in Flickr30k).

Run alone: python -m benchmarks.beam_bench [--images 50] [--beam 5] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.common import Timings, time_variants
from benchmarks.tutorial import END, START, E, H, P, copy_weights, make_pair
from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import CaptionDecoder

MAX_LENGTH = 20
END_BIAS = -15.0  # at V=10,000: captions of about 12 words (quartiles about 9 and 14)


def beam_model(vocab_size: int = 10_000) -> CaptionDecoder:
    """An eval-mode decoder whose captions end after 4-20 words, as a trained one's do.

    Hidden unit 0 counts: its input and forget gates are held open and its cell grows by 0.1 per
    step from a start that varies with the image, and only that unit drives END's logit.
    """
    ours, tutorial = make_pair(vocab_size, seed=3)
    cell, counter = tutorial.decode_step, torch.arange(4) * H  # unit 0 of the gates i, f, g, o
    with torch.no_grad():
        cell.weight_ih[counter], cell.weight_hh[counter], cell.bias_hh[counter] = 0.0, 0.0, 0.0
        cell.bias_ih[counter] = torch.tensor([10.0, 10.0, 0.1, 10.0])  # c += tanh(0.1) per step
        tutorial.init_c.weight[0] *= 4.0  # start values spread over about +-0.3
        tutorial.init_c.bias[0] = 0.0
        tutorial.fc.weight.mul_(40.0)
        tutorial.fc.weight[END] = 0.0
        tutorial.fc.weight[END, 0] = 30.0
        tutorial.fc.bias[END] = END_BIAS
    copy_weights(tutorial, ours)
    return ours.eval()


def bench_beam(num_images: int, beam_size: int, repeats: int, vocab_size: int = 10_000) -> dict[str, object]:
    """Captions/s batched and one image at a time, their ratio, and the captions' mean length."""
    model = beam_model(vocab_size)
    features = torch.randn(num_images, P, E, generator=torch.Generator().manual_seed(4))
    options = SearchOptions(beam_size=beam_size, max_length=MAX_LENGTH)

    def batched() -> list[list[int]]:
        return [found.tokens for found in beam_search(model, features, START, END, options)]

    def one_at_a_time() -> list[list[int]]:
        return [beam_search(model, features[i:i + 1], START, END, options)[0].tokens for i in range(num_images)]

    beam_search(model, features[:2], START, END, options)  # warm-up
    timings: Timings = time_variants({"batched": batched, "one at a time": one_at_a_time}, repeats)
    captions = timings.results["batched"]
    different = sum(a != b for a, b in zip(captions, timings.results["one at a time"]))
    assert different == 0, f"beam {beam_size}: {different} of {num_images} captions differ between the two ways"
    return {"images": num_images, "beam": beam_size,
            "batched": num_images / timings.median("batched"),
            "one at a time": num_images / timings.median("one at a time"),
            "ratio": timings.ratio("one at a time", "batched"),
            "mean words": statistics.mean(len(caption) for caption in captions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(bench_beam(args.images, args.beam, args.repeats))


if __name__ == "__main__":
    main()
