"""What a model must beat: the trivial baselines of pipeline/evaluation/baselines.py on the prepared table.

    python -m pipeline.commands.baselines [--candidates 20] [--out data/baselines.json]

Reads `dataset.table` and `evaluate.split` from params.yaml (or $PIPELINE_PARAMS) and prints one line
per baseline: its caption and its BLEU-1, BLEU-4, METEOR, ROUGE-L and CIDEr on that split, scored by
evaluate's scorer. `--out` also writes them as JSON. That file is no DVC output and no metric (a
command outside the graph made it): keep it under data/, which git ignores, as the example does.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.cli import exit_status
from pipeline.config import DatasetConfig, EvaluateConfig, load_section
from pipeline.datasets.table import read_captions
from pipeline.evaluation.baselines import trivial_baselines
from pipeline.files import write_json

SHOWN = ("bleu1", "bleu4", "meteor", "rouge_l", "cider")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.commands.baselines",
                                     description="Score the trivial baselines a captioner must beat.")
    parser.add_argument("--candidates", type=int, default=20, help="most frequent training captions to try")
    parser.add_argument("--out", help="also write the scores to this JSON file (e.g. data/baselines.json)")
    args = parser.parse_args(argv)
    if args.candidates < 1:
        parser.error("--candidates must be at least 1")
    return args


def baselines(argv: Sequence[str] | None = None) -> None:
    """Score and print the baselines; write them to --out when given."""
    args = parse_args(argv)
    dataset, evaluate = load_section(DatasetConfig), load_section(EvaluateConfig)
    results = trivial_baselines(read_captions(dataset.table), evaluate.split, args.candidates, dataset.table)
    for name, scores in results.items():
        shown = ", ".join(f"{key} {scores[key]:.3f}" for key in SHOWN)
        print(f"{name} ({scores['caption']!r}) on {evaluate.split}: {shown}")
    if args.out:
        write_json(args.out, results, "--out")


def main(argv: Sequence[str] | None = None) -> int:
    """The command: its exit status (an expected error is one line on stderr and status 2)."""
    return exit_status(lambda: baselines(argv), "baselines")


if __name__ == "__main__":
    sys.exit(main())
