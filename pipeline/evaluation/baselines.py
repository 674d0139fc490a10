"""Trivial baselines a captioner must beat, scored exactly like `evaluate` (the command that prints them:
`python -m pipeline.commands.baselines`).

- most frequent: the training caption that occurs most often, given to every evaluated image;
- best constant: of the `candidates` most frequent training captions, the one with the highest
  CIDEr on the validation split, given to every evaluated image.
A model whose BLEU is close to these has learnt the caption prior, not the images; CIDEr, which
weighs words by how specific they are to an image, separates them.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.datasets.table import references_by_image
from pipeline.errors import InputError
from pipeline.evaluation.scoring import coco_scores


def constant_scores(references: dict[str, list[str]], caption: str) -> dict[str, float]:
    """Every metric of one caption given to every image."""
    return coco_scores(references, {name: caption for name in references})


def best_constant(references: dict[str, list[str]], candidates: Sequence[str]) -> tuple[str, float]:
    """The candidate with the highest CIDEr on `references` (the earlier one on a tie), and that CIDEr."""
    scored = [(coco_scores(references, {name: c for name in references}, ("cider",))["cider"], c) for c in candidates]
    cider, caption = max(scored, key=lambda pair: pair[0])
    return caption, cider


def trivial_baselines(table: pd.DataFrame, split: str, candidates: int,
                      source: str | Path) -> dict[str, dict[str, Any]]:
    """{"most_frequent": {caption, metrics...}, "best_constant": {caption, val_cider, metrics...}} on `split`
    of the prepared table (read from `source`, named in errors)."""
    counts = Counter(table[table["split"] == "train"]["caption"])
    for split_name, present in (("train", bool(counts)), ("val", (table["split"] == "val").any()),
                                (split, (table["split"] == split).any())):
        if not present:
            raise InputError(f"{source} has no {split_name} captions; check the prepare stage's report "
                             f"(dataset.report) and rerun `dvc repro prepare`")
    evaluated = references_by_image(table[table["split"] == split])
    val = references_by_image(table[table["split"] == "val"])
    frequent = counts.most_common(1)[0][0]
    chosen, val_cider = best_constant(val, [caption for caption, _ in counts.most_common(candidates)])
    return {"most_frequent": {"caption": frequent, **constant_scores(evaluated, frequent)},
            "best_constant": {"caption": chosen, "val_cider": val_cider, **constant_scores(evaluated, chosen)}}
