"""Beam search: all images of a batch at once against one image at a time, ours and the tutorial's.

Three ways to caption the same images with the same weights, beam 5:
- batched: `pipeline.model.beam_search` with the whole batch (as `describe_all` does,
  `evaluate.batch_size` images at a time);
- one at a time: the same search, one image per call. Same captions asserted: the ratio is what
  batching gains, and the issue's target (>= 10x) is measured against it;
- tutorial: caption.py's one-image beam search (`benchmarks.tutorial.tutorial_beam_search`: the
  projection redone every step, the features re-indexed every step, the beam narrowing as beams
  end) on `TutorialDecoder` with the same weights. It is a different search (its beam narrows; ours
  keeps K live beams and stops once no live beam can win), so captions may differ; those that
  differ are counted, with which search found the likelier caption.

The decoder (V=10,000, the seed model's sizes) is made to decode like a trained one: a fresh
decoder's END is equally likely at every step, so every search would end at once or never; here the
output layer is sharpened (about -2 nats per word) and one hidden unit counts the steps and alone
drives END, so captions end after 4-20 words (mean about 12, as in Flickr30k).

`measure_ceiling` times the decoder's four weight products (V=10,000 output layer, [context; h] ->
gates, h -> [attention; gate], embedding -> gates: ~12.3 M multiply-adds and ~49 MB of fp32 weights
per row) at the batched search's 200 rows, at one image's 5 rows and at 1 row, and one whole
decoder step (`advance`) at 200 and 5 rows, in turn in this process: what batching can gain here.

Run alone: python -m benchmarks.beam_bench [--images 40] [--beam 5] [--repeats 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks.run: read when torch loads OpenMP

import torch
import torch.nn.functional as F

from benchmarks.common import Timings, machine_line, time_variants
from benchmarks.tutorial import END, START, E, H, P, TutorialDecoder, copy_weights, make_pair, tutorial_beam_search
from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import CaptionDecoder

MAX_LENGTH = 20
END_BIAS = -15.0  # at V=10,000: captions of about 12 words (quartiles about 9 and 14)
SAME_SCORE = 1e-4  # two searches' scores of one caption agree to ~1e-5 (float rounding)


def beam_models(vocab_size: int = 10_000) -> tuple[CaptionDecoder, TutorialDecoder]:
    """Our decoder and the tutorial's, same weights, eval mode, whose captions end after 4-20 words.

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
    return ours.eval(), tutorial.eval()


def compare_with_tutorial(ours: list, theirs: list[tuple[list[int], float, torch.Tensor]]) -> dict[str, object]:
    """Same captions, and for the others which search found the likelier one; asserts that where the
    captions agree, the scores and attention agree too."""
    same, ours_better, tutorial_better, ties = 0, 0, 0, 0
    for hypothesis, (words, score, attention) in zip(ours, theirs):
        if hypothesis.tokens == words:
            same += 1
            assert abs(hypothesis.score - score) < SAME_SCORE, f"same caption, scores {hypothesis.score} and {score}"
            torch.testing.assert_close(hypothesis.attention, attention, rtol=0, atol=1e-5)
        elif abs(hypothesis.score - score) < SAME_SCORE:
            ties += 1  # equally likely captions: either may win
        elif hypothesis.score > score:
            ours_better += 1  # the tutorial's narrowing beam dropped the path to it
        else:
            tutorial_better += 1  # ours pruned it: a wider beam keeps different paths
    return {"same": same, "ours likelier": ours_better, "tutorial likelier": tutorial_better, "ties": ties}


def bench_beam(num_images: int, beam_size: int, repeats: int, vocab_size: int = 10_000) -> dict[str, object]:
    """Captions/s batched, one at a time and the tutorial's way; the ratios; how the captions compare."""
    ours, tutorial = beam_models(vocab_size)
    features = torch.randn(num_images, P, E, generator=torch.Generator().manual_seed(4))
    options = SearchOptions(beam_size=beam_size, max_length=MAX_LENGTH)

    def batched() -> list:
        return beam_search(ours, features, START, END, options)

    def one_at_a_time() -> list:
        return [beam_search(ours, features[i:i + 1], START, END, options)[0] for i in range(num_images)]

    def tutorial_way() -> list:
        return [tutorial_beam_search(tutorial, image, beam_size, MAX_LENGTH) for image in features]

    beam_search(ours, features[:2], START, END, options)  # warm-up
    tutorial_beam_search(tutorial, features[0], beam_size, MAX_LENGTH)
    timings: Timings = time_variants({"batched": batched, "one at a time": one_at_a_time,
                                      "tutorial": tutorial_way}, repeats)
    found = timings.results["batched"]
    different = sum(a.tokens != b.tokens for a, b in zip(found, timings.results["one at a time"]))
    assert different == 0, f"beam {beam_size}: {different} of {num_images} captions differ between the two ways"
    return {"images": num_images, "beam": beam_size,
            "batched": num_images / timings.median("batched"),
            "one at a time": num_images / timings.median("one at a time"),
            "tutorial": num_images / timings.median("tutorial"),
            "ratio": timings.ratio("one at a time", "batched"),
            "vs tutorial": timings.ratio("tutorial", "batched"),
            "captions vs tutorial": compare_with_tutorial(found, timings.results["tutorial"]),
            "mean words": statistics.mean(len(hypothesis.tokens) for hypothesis in found)}


def _median_seconds(function, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def measure_ceiling(rounds: int = 5, vocab_size: int = 10_000) -> dict[str, float]:
    """What batching can gain on this machine: the decoder's weight products and one whole decoder
    step at the batched search's rows (40 images x 5 beams) against one image's (5 rows), timed in
    turn, `rounds` times (medians).

    Returns GFLOP/s at 200 rows, the weights' read rate at 1 row (matrix-vector products, the least
    a step can read) and at 5 rows, and the ceilings: per-row cost at 5 rows over per-row cost at 200
    rows, for the products as torch runs them, for the products if one image read its weights at the
    1-row rate, and for whole decoder steps.
    """
    ours, _ = beam_models(vocab_size)
    layers = (ours.output, ours.recurrent_gates, ours.hidden_projection, ours.word_gates)
    macs = sum(layer.weight.numel() for layer in layers)  # per row: each weight is one multiply-add
    weight_bytes = sum(p.numel() * p.element_size() for layer in layers for p in layer.parameters())
    generator = torch.Generator().manual_seed(5)
    inputs = {rows: [torch.randn(rows, layer.in_features, generator=generator) for layer in layers]
              for rows in (200, 5, 1)}
    features = torch.randn(40, P, E, generator=generator)
    states = {40: ours.start(features), 1: ours.start(features[:1])}
    states = {n: state.select_beams(torch.arange(n).repeat_interleave(5)) for n, state in states.items()}
    words = {n: torch.randint(3, vocab_size, (n * 5,), generator=generator) for n in states}

    def products(rows: int) -> None:
        for layer, x in zip(layers, inputs[rows]):
            F.linear(x, layer.weight, layer.bias)

    def step(images: int) -> None:
        log_probs, _, _ = ours.advance(states[images], words[images])
        log_probs.view(images, -1).topk(10, dim=1)

    cases = {"products 200": (lambda: products(200), 5), "products 5": (lambda: products(5), 40),
             "products 1": (lambda: products(1), 40), "step 200": (lambda: step(40), 5),
             "step 5": (lambda: step(1), 40)}
    for function, _ in cases.values():
        function()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (function, repeats) in cases.items():
            seconds[name].append(_median_seconds(function, repeats))
    t = {name: statistics.median(values) for name, values in seconds.items()}
    per_row_batched = t["products 200"] / 200
    return {"GFLOP/s at 200 rows": 2 * macs * 200 / t["products 200"] / 1e9,
            "weights MB": weight_bytes / 1e6, "MFLOP per row": 2 * macs / 1e6,
            "GB/s at 1 row": weight_bytes / t["products 1"] / 1e9,
            "GB/s at 5 rows": weight_bytes / t["products 5"] / 1e9,
            "ms products 200 rows": t["products 200"] * 1e3, "ms products 5 rows": t["products 5"] * 1e3,
            "ms products 1 row": t["products 1"] * 1e3,
            "ceiling, products": (t["products 5"] / 5) / per_row_batched,
            "ceiling, products at the 1-row read rate": (t["products 1"] / 5) / per_row_batched,
            "ms step 200 rows": t["step 200"] * 1e3, "ms step 5 rows": t["step 5"] * 1e3,
            "ceiling, decoder steps": (t["step 5"] / 5) / (t["step 200"] / 200)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    print(bench_beam(args.images, args.beam, args.repeats), flush=True)
    print(measure_ceiling())


if __name__ == "__main__":
    main()
