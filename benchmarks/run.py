"""Every speed benchmark of the project, one command, one table for this machine.

    python -m benchmarks.run              # ~6 minutes on an idle 2-core CPU, plus retrieval (2 x 5,000 queries)
    python -m benchmarks.run --quick      # a smoke run of a minute or two: tiny sizes, one repeat
    python -m benchmarks.run --prepare    # also the prepare and vocab stages on a Flickr30k-sized file

Rows (each a ratio of two variants timed in turn in this process; the median over repeats, with
the range):
- features: the features stage against the bare encoder forward on pre-decoded tensors, same
  precision and batch size, in steady images/s (benchmarks/features_bench.py), at fp32 and bf16;
- training: our training loop against the tutorial's (benchmarks/tutorial.py), batch 32, in real
  target tokens/s (benchmarks/training_bench.py);
- beam search: beam 5, all images at once against one image at a time with the same search (the
  target's baseline), and against the tutorial's one-image search (caption.py's way, no target: a
  different search), with what batching can gain on this machine (benchmarks/beam_bench.py);
- streaming: our loop with the features streamed from a cache larger than the memory cap the
  benchmark sets, against resident features;
- CIDEr-D: self-critical training's rewards (`pipeline.evaluation.cider`, document frequencies
  computed once) and its corpus mode against pycocoevalcap's Cider on the same 5,000 candidates x 5
  references, flickr30k-like and demo captions, scores asserted equal to 1e-6 (benchmarks/cider_bench.py).
- read check: the features read with the per-row CRC-32 check against the same reads without it,
  the resident load and streamed batches (benchmarks/read_bench.py).
- retrieval: the likelihood re-ranking of a Flickr8k-sized test split (1,000 images, 5,000 queries,
  20 candidates each, V=2,537), grouped by image against one image at a time one image at a time, in ms per
  query, with the answers' ranks compared (benchmarks/retrieval_bench.py).
Targets from the speed issue; benchmarks/README.md records results and docs/speed.md reads them.

OpenMP threads that wait for each other sleep here (OMP_WAIT_POLICY=PASSIVE, unless the environment
sets it): on a machine shared with other jobs, spinning threads wait for a core that another job
holds and a training step takes 5x longer (measured: 11 s instead of 2.3 s); on an idle machine
it costs little. Set OMP_WAIT_POLICY=ACTIVE to measure with spinning. The retrieval section runs in
a child process with OpenMP's default policy instead (unless the environment sets one), as the
retrieval stage runs: its scorer steps through many operations of a few hundred microseconds, and
waking a sleeping thread for each one costs it 30-150% (benchmarks/retrieval_bench.py).
"""
from __future__ import annotations

import os

WAIT_POLICY_GIVEN = os.environ.get("OMP_WAIT_POLICY")  # the environment's, if any
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP, so before importing it

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.beam_bench import bench_beam, measure_ceiling
from benchmarks.cider_bench import bench_all as bench_cider
from benchmarks.common import machine_line, spread
from benchmarks.features_bench import bench_features
from benchmarks.prepare_bench import bench_prepare
from benchmarks.read_bench import bench_read
from benchmarks.scst_bench import bench_scst
from benchmarks.training_bench import bench_training
from benchmarks.tutorial import check_same_maths
from pipeline.runtime import cpu_has_bf16

TARGETS = {"features": 0.9, "training": 3.0, "beam": 10.0, "streaming": 0.8, "cider": 50.0,
           "sat fp32": 3.5, "sat bf16": 5.0}
RETRIEVAL_MS = 20.0  # per query, on an idle 2-core CPU: an absolute target, not a ratio
FULL = {"feature_images": 96, "feature_repeats": 2, "train_images": 400, "train_captions": 128,
        "train_repeats": 2, "read_images": 400, "read_repeats": 3, "beam_images": 40, "beam_repeats": 2,
        "ceiling_rounds": 5, "prepare_images": 31_783, "cider_candidates": 5_000, "cider_repeats": 3,
        "scst_images": 64, "scst_repeats": 2, "retrieval_images": 1000, "retrieval_repeats": 1}
QUICK = {"feature_images": 64, "feature_repeats": 1, "train_images": 100, "train_captions": 32,
         "train_repeats": 1, "read_images": 100, "read_repeats": 1, "beam_images": 8, "beam_repeats": 1,
         "ceiling_rounds": 1, "prepare_images": 2_000, "cider_candidates": 1_000, "cider_repeats": 1,
         "scst_images": 8, "scst_repeats": 1, "retrieval_images": 60, "retrieval_repeats": 1}


def row(what: str, ours: str, baseline: str, ratio: tuple[float, float, float], target: float | None) -> str:
    """One markdown row; the ratio with its range, and whether the median meets the target (none: "-")."""
    if target is None:
        return f"| {what} | {ours} | {baseline} | {spread(*ratio)} | - | - |"
    met = "yes" if ratio[0] >= target else "no"
    return f"| {what} | {ours} | {baseline} | {spread(*ratio)} | >= {target:g}x | {met} |"


def training_target(variant: str) -> float:
    """The target of a training row: the seed's decoder (sat) >= 3.5x the tutorial in fp32 and >= 5x in bf16
    (`auto` is bf16 where the CPU multiplies it natively, else fp32); the other architecture >= 3x."""
    if not variant.startswith("sat"):
        return TARGETS["training"]
    return TARGETS["sat bf16"] if variant.endswith("auto") and cpu_has_bf16() else TARGETS["sat fp32"]


def inverse(ratio: tuple[float, float, float]) -> tuple[float, float, float]:
    """1 / a ratio (median, low, high): the median and range of baseline / ours."""
    median, low, high = ratio
    return 1 / median, 1 / high, 1 / low


def cider_rows(candidates: int, repeats: int) -> tuple[list[str], list[str]]:
    """The CIDEr-D rows (rewards and corpus mode against pycocoevalcap, both caption sets) and notes."""
    lines, notes = [], []
    for result in bench_cider(candidates, repeats):
        shape = f"{result['set']}, {result['candidates']:,} candidates x {result['references']} references"
        lines.append(row(f"CIDEr-D rewards (df once) vs pycocoevalcap, {shape}, candidates/s",
                         f"{result['rewards/s']:.0f}", f"{result['pycocoevalcap/s']:.0f}", result["rewards ratio"],
                         TARGETS["cider"]))
        lines.append(row(f"CIDEr-D corpus mode (df from these references) vs pycocoevalcap, {shape}, candidates/s",
                         f"{result['corpus/s']:.0f}", f"{result['pycocoevalcap/s']:.0f}", result["corpus ratio"], None))
        notes.append(f"CIDEr-D {result['set']}: V={result['vocabulary']:,}, {result['mean words']:.1f} words per "
                     f"reference, END appended; mean CIDEr-D {result['mean CIDEr-D']:.3f}, ours and pycocoevalcap "
                     f"agree to {result['max difference']:.1e}; pycocoevalcap {result['pycocoevalcap s']:.2f} s, "
                     f"rewards {result['rewards s'] * 1e3:.1f} ms, corpus mode {result['corpus s'] * 1e3:.0f} ms")
    return lines, notes
def read_check_rows(read: dict[str, object]) -> tuple[list[str], str]:
    """The table rows and the note of `bench_read`'s results: the features read with and without the CRC check."""
    lines = []
    for path, what, unit in (("resident", f"resident load of {read['cache MB']:.0f} MB", "GB/s"),
                             ("streamed", f"{read['batches']} streamed batches of {read['batch']} rows", "GB/s"),
                             ("epoch", f"training epoch on streamed features, {read['captions']} captions",
                              "tokens/s")):
        digits = 2 if unit == "GB/s" else 0
        lines.append(row(f"features read with vs without the CRC check, {what}, {unit}",
                         f"{read[f'{path} {unit}']:.{digits}f}", f"{read[f'{path} unchecked {unit}']:.{digits}f}",
                         read[f"{path} ratio"], None))
    note = (f"read check: CRC-32 alone {read['crc GB/s']:.1f} GB/s on one core; the check adds "
            f"{1 / read['resident ratio'][0] - 1:.0%} to the time of the resident load and "
            f"{1 / read['streamed ratio'][0] - 1:.0%} to streamed reads (page-cache reads, no read-ahead), "
            f"{1 / read['epoch ratio'][0] - 1:.0%} to a training epoch on streamed features")
    return lines, note


def features_rows(images: int, repeats: int) -> tuple[list[str], list[str]]:
    """The features stage against the bare encoder forward, fp32 and bf16, and notes."""
    lines, notes = [], []
    features, error = bench_features(images, ("fp32", "bf16"), repeats)
    for result in features:
        lines.append(row(f"features stage vs bare forward, {result['precision']}, batch 32, steady images/s",
                         f"{result['stage']:.2f}", f"{result['bare']:.2f}", result["ratio"], TARGETS["features"]))
        notes.append(f"features {result['precision']}: {result['images']} demo images (224 px PNG); end to end "
                     f"(the stage's own clock against the bare loop) {result['end_to_end']:.2f}x, CPU seconds "
                     f"{result['cpu_ratio']:.2f}x; the stage spends {result['once']:.1f} s once per run beyond its "
                     f"steady rate (workers' start, first batch, last write, rename), and {result['startup']:.1f} s "
                     f"before its clock starts (encoder build, table)")
    notes.append(f"features bf16 vs fp32: relative error ||bf16 - fp32|| / ||fp32|| = {error:.4f} (first batch)")
    return lines, notes


def scst_rows(images: int, repeats: int) -> tuple[list[str], list[str]]:
    """Self-critical epochs against cross-entropy ones on the same images (fp32 and amp auto), and notes."""
    lines, notes = [], []
    for result in bench_scst(images, repeats):
        steps = f"{result['scst batch']} images vs {result['xe batch']} captions a step"
        lines.append(row(f"self-critical vs cross-entropy epoch, {steps}, amp {result['amp']}, V=10,000, images/s",
                         f"{result['scst images/s']:.1f}",
                         f"{result['xe images/s']:.1f}", inverse(result["ratio"]), None))
        notes.append(f"self-critical amp {result['amp']}: {result['scst samples/s']:.0f} sampled captions/s, "
                     f"{result['scst sampled tokens/s']:.0f} sampled tokens/s (5 samples and a greedy caption per "
                     f"image, CIDEr-D rewards); cross-entropy {result['xe tokens/s']:.0f} tokens/s over 5 captions "
                     f"per image ({result['images']} images)")
    return lines, notes


def retrieval_in_child(images: int, repeats: int) -> dict:
    """benchmarks.retrieval_bench's result, run in a child process under the environment's OpenMP wait policy or
    else OpenMP's default (the retrieval stage's), with this process's thread count."""
    environment = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    if WAIT_POLICY_GIVEN:
        environment["OMP_WAIT_POLICY"] = WAIT_POLICY_GIVEN
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "retrieval.json"
        command = [sys.executable, "-m", "benchmarks.retrieval_bench", "--images", str(images), "--queries",
                   str(5 * images), "--repeats", str(repeats), "--threads", str(torch.get_num_threads()),
                   "--json", str(result)]
        subprocess.run(command, env=environment, cwd=Path(__file__).resolve().parents[1], check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())


def retrieval_rows(images: int, repeats: int) -> tuple[list[str], list[str]]:
    """The grouped likelihood re-ranking against one image at a time (fp32, bf16 where native, int8 where the CPU
    has int8 dot products), and notes."""
    lines, notes = [], []
    retrieval = retrieval_in_child(images, repeats)
    for name in ("grouped fp32", "grouped bf16", "grouped int8"):
        if name in retrieval:
            ours, old = retrieval[name], retrieval["one at a time"]
            lines.append(row(f"retrieval re-ranking, {name}, {retrieval['images']} images x {retrieval['queries']} "
                             "queries x 20 candidates, V=2,537, queries/s", f"{1000 / ours['ms/query']:.1f}",
                             f"{1000 / old['ms/query']:.1f}", ours["ratio"], None))
            met = "met" if ours["ms/query"] <= RETRIEVAL_MS else "not met"
            notes.append(f"retrieval {name}: {ours['ms/query']:.1f} ms per query against one image at a time "
                         f"{old['ms/query']:.1f} (target <= {RETRIEVAL_MS:g} ms: {met}); the answer ranks as "
                         f"the old scorer's for {ours['same rank']} of {retrieval['queries']} queries; R@1/5/10 "
                         f"{ours['r1']:.2f}/{ours['r5']:.2f}/{ours['r10']:.2f} against one image at a time "
                         f"{old['r1']:.2f}/{old['r5']:.2f}/{old['r10']:.2f}")
    return lines, notes


def training_rows(size: dict[str, int]) -> tuple[list[str], list[str]]:
    """Our training loop (sat, spatial; fp32, amp auto) against the tutorial's, streaming, and notes."""
    lines, notes = [], []
    gap = check_same_maths(10_000)
    notes.append(f"training: ours and the tutorial's fp32 losses agree to {gap:.1e} on the same weights and batch")
    training, streaming = bench_training(size["train_images"], size["train_captions"], 10_000, 32,
                                         size["train_repeats"])
    tutorial = next(result for result in training if result["variant"] == "tutorial")
    for result in training:
        if result["variant"] != "tutorial":
            lines.append(row(f"training, {result['variant']}, batch 32, V=10,000, tokens/s",
                             f"{result['tokens/s']:.0f}", f"{tutorial['tokens/s']:.0f}", result["vs tutorial"],
                             training_target(result["variant"])))
        notes.append(f"training {result['variant']}: {result['epoch s']:.1f} s per {size['train_captions']}-caption "
                     f"epoch; a Flickr30k epoch (145,000 captions) would take {result['flickr30k epoch min']:.0f} min")
    lines.append(row(f"streamed vs resident features, amp auto, cache {streaming['cache MB']:.0f} MB > cap "
                     f"{streaming['cap MB']:.0f} MB, tokens/s", f"{streaming['streamed tokens/s']:.0f}",
                     f"{streaming['resident tokens/s']:.0f}", streaming["ratio"], TARGETS["streaming"]))
    return lines, notes


def beam_rows(size: dict[str, int]) -> tuple[list[str], list[str]]:
    """The read check, batched beam search against one image at a time, what batching can gain, and notes."""
    lines, notes = [], []
    read_lines, read_note = read_check_rows(bench_read(size["read_images"], 64, size["train_captions"],
                                                       size["read_repeats"]))
    lines += read_lines
    notes.append(read_note)

    beam = bench_beam(size["beam_images"], 5, size["beam_repeats"])
    lines.append(row(f"beam 5, {beam['images']} images at once vs one at a time, same search (target's baseline), "
                     "captions/s", f"{beam['batched']:.1f}", f"{beam['one at a time']:.1f}", beam["ratio"],
                     TARGETS["beam"]))
    lines.append(row(f"beam 5, {beam['images']} images at once vs the tutorial's caption.py one at a time, captions/s",
                     f"{beam['batched']:.1f}", f"{beam['tutorial']:.1f}", beam["vs tutorial"], None))
    compared = beam["captions vs tutorial"]
    notes.append(f"beam: V=10,000, max 20 words, mean caption {beam['mean words']:.1f} words; same captions batched "
                 f"and one at a time; the tutorial's search gives the same caption for {compared['same']} of "
                 f"{beam['images']} images (differing: ours likelier {compared['ours likelier']}, the tutorial's "
                 f"likelier {compared['tutorial likelier']}, equally likely {compared['ties']})")
    ceiling = measure_ceiling(rounds=size["ceiling_rounds"])
    notes.append(f"beam, what batching can gain here: the decoder's weight products ({ceiling['MFLOP per row']:.1f} "
                 f"MFLOP, {ceiling['weights MB']:.1f} MB of fp32 weights per row) run at "
                 f"{ceiling['GFLOP/s at 200 rows']:.0f} GFLOP/s at 200 rows ({ceiling['ms products 200 rows']:.1f} ms) "
                 f"and read the weights at {ceiling['GB/s at 5 rows']:.1f} GB/s at one image's 5 rows "
                 f"({ceiling['ms products 5 rows']:.2f} ms), {ceiling['GB/s at 1 row']:.1f} GB/s at 1 row "
                 f"({ceiling['ms products 1 row']:.2f} ms); per row, 5 rows cost "
                 f"{ceiling['ceiling, products']:.1f}x what 200 rows do (products), "
                 f"{ceiling['ceiling, products at the 1-row read rate']:.1f}x if one image read its weights at the "
                 f"1-row rate, {ceiling['ceiling, decoder steps']:.1f}x for whole decoder steps "
                 f"({ceiling['ms step 5 rows']:.2f} ms against {ceiling['ms step 200 rows']:.1f} ms): the ceiling "
                 "on the batched / one-at-a-time ratio")
    return lines, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat: checks that it all runs")
    parser.add_argument("--prepare", action="store_true", help="also time prepare and vocab (Flickr30k-sized)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    size = QUICK if args.quick else FULL
    started = time.perf_counter()
    print(f"{machine_line()}; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}", flush=True)
    lines = ["| what | ours | baseline | ours / baseline (range) | target | met |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    notes = []
    sections = {
        "features": lambda: features_rows(size["feature_images"], size["feature_repeats"]),
        "training": lambda: training_rows(size),
        "read check and beam search": lambda: beam_rows(size),
        "self-critical": lambda: scst_rows(size["scst_images"], size["scst_repeats"]),
        "CIDEr-D": lambda: cider_rows(size["cider_candidates"], size["cider_repeats"]),
        "retrieval": lambda: retrieval_rows(size["retrieval_images"], size["retrieval_repeats"]),
    }
    for name, section in sections.items():
        section_lines, section_notes = section()
        lines += section_lines
        notes += section_notes
        print(f"{name} done ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.prepare:
        for what, seconds in bench_prepare(size["prepare_images"], 1):
            notes.append(f"prepare: {what}: {seconds:.2f} s")
    print("\n" + "\n".join(lines) + "\n")
    for note in notes:
        print(f"- {note}")
    print(f"\nbenchmarks.run: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
