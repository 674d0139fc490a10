"""Trivial baselines a captioner must beat, scored exactly like `evaluate`.

    python -m pipeline.evaluation.baselines [--candidates 20] [--out metrics/baselines.json]

- most frequent: the training caption that occurs most often, given to every test image;
- best constant: of the `--candidates` most frequent training captions, the one with the highest
  CIDEr on the validation split, given to every test image.
A model whose BLEU is close to these has learnt the caption prior, not the images; CIDEr, which
weighs words by how specific they are to an image, separates them.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence

from pipeline.config import DatasetConfig, EvaluateConfig, load_section
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.evaluation.scoring import coco_scores
from pipeline.files import write_json


def constant_scores(references: dict[str, list[str]], caption: str) -> dict[str, float]:
    """Every metric of one caption given to every image."""
    return coco_scores(references, {name: caption for name in references})


def best_constant(references: dict[str, list[str]], candidates: Sequence[str]) -> tuple[str, float]:
    """The candidate with the highest CIDEr on `references` (the earlier one on a tie), and that CIDEr."""
    scored = [(coco_scores(references, {name: c for name in references}, ("cider",))["cider"], c) for c in candidates]
    cider, caption = max(scored, key=lambda pair: pair[0])
    return caption, cider


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluation.baselines", description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", type=int, default=20, help="most frequent training captions to try")
    parser.add_argument("--out", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    dataset, evaluate = load_section(DatasetConfig), load_section(EvaluateConfig)
    table = read_captions(dataset.table)
    counts = Counter(table[table["split"] == "train"]["caption"])
    if not counts:
        print(f"baselines: {dataset.table} has no training captions", file=sys.stderr)
        return 1
    test = references_by_image(table[table["split"] == evaluate.split])
    val = references_by_image(table[table["split"] == "val"])
    frequent = counts.most_common(1)[0][0]
    chosen, val_cider = best_constant(val, [c for c, _ in counts.most_common(args.candidates)])
    results = {"most_frequent": {"caption": frequent, **constant_scores(test, frequent)},
               "best_constant": {"caption": chosen, "val_cider": val_cider, **constant_scores(test, chosen)}}
    for name, scores in results.items():
        shown = ", ".join(f"{k} {scores[k]:.3f}" for k in ("bleu1", "bleu4", "meteor", "rouge_l", "cider"))
        print(f"{name} ({scores['caption']!r}) on {evaluate.split}: {shown}")
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
