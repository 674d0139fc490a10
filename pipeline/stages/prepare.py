"""Prepare: turn a captions file and an image folder into one clean (image, split, caption) table.

Reads `dataset.captions` in one of the formats below (`dataset.format: auto` detects it) and
`dataset.images`, and writes `dataset.table` and `dataset.report`, both or neither:

- `captions.csv`: columns `image,split,caption`; `image` is the path relative to the image folder,
  `split` is train, val or test, `caption` is normalised by `text.normalise`. Rows are ordered by
  split (train, val, test), then image, then the captions' order in the source file.
- `report.json`: the detected format, where the splits came from, images and captions per split,
  and every caption dropped (and why), every line fixed and every oddity kept, each with counts and
  the first few examples (line numbers, image names) so that the source can be fixed.

Formats: Flickr token files, CSV with a header, Flickr30k's pipe-separated `results.csv`, and the
Karpathy split JSON (the list, with examples, is in pipeline/datasets/formats.py).

Splits are by image, never by caption: from the split lists in `dataset.split_dir` (train.txt,
val.txt, test.txt; the folder is a dep in dvc.yaml, so editing a list reruns the stage) when it
holds them, else from the Karpathy JSON, else a seeded random split of the images with
`dataset.split_ratios`. When the dropped captions exceed `dataset.max_dropped_fraction` of the
caption lines read, none of the images the captions name is in the image folder, or the train or
val split (or the `evaluate.split` one) is left without captions, the stage fails and writes
nothing. With `dataset.check_images`, every image is decoded by the encoder's rule
(pipeline/encoder/images.py `check_image`), so an image that would stop `features` is dropped here
instead and counted as `unreadable_image`.

Run: `python -m pipeline.stages.prepare` (reads params.yaml, or the file named by $PIPELINE_PARAMS).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cli import run
from pipeline.config import SPLITS, DatasetConfig, EvaluateConfig, load_section
from pipeline.datasets.cleaning import (
    clean_captions,
    count_captions,
    drop_images,
    resolve_splits,
)
from pipeline.datasets.formats import decode_text, detect_format, parse_captions
from pipeline.datasets.report import (
    DatasetError,
    Problems,
    build_report,
    check_dropped,
    check_splits,
    no_images_found,
    summary,
)
from pipeline.datasets.splits import random_split, read_split_lists, split_lists
from pipeline.datasets.table import write_captions
from pipeline.encoder.images import unreadable_images
from pipeline.files import atomic_paths, json_text, list_files


@dataclass(frozen=True)
class Prepared:
    """The output table, as (image, split, caption) rows in output order, and the report."""

    rows: list[tuple[str, str, str]]
    report: dict[str, Any]


def check_inputs(config: DatasetConfig) -> tuple[Path, Path]:
    """The captions file and image folder, or FileNotFoundError naming the path and the params key."""
    captions, images = Path(config.captions), Path(config.images)
    if not captions.is_file():
        problem = "is a folder, not a file" if captions.is_dir() else "not found"
        raise FileNotFoundError(f"dataset.captions: captions file '{captions}' {problem}; "
                                f"fix the path in params.yaml (relative to the project root)")
    if not images.is_dir():
        problem = "is a file, not a folder" if images.exists() else "not found"
        raise FileNotFoundError(f"dataset.images: image folder '{images}' {problem}; "
                                f"fix the path in params.yaml (relative to the project root)")
    return captions, images

def prepare(config: DatasetConfig) -> Prepared:
    """Read, check, clean and split the dataset; raise DatasetError when too much is dropped."""
    captions_path, images_dir = check_inputs(config)
    lists = split_lists(config.split_dir)
    problems = Problems()
    try:
        text = decode_text(captions_path.read_bytes())
        fmt = detect_format(captions_path.name, text.lines) if config.format == "auto" else config.format
        records = parse_captions(text, fmt, problems)
    except DatasetError as error:
        raise DatasetError(f"dataset.captions '{captions_path}': {error}") from error
    lines_read = len(records) + problems.counts["malformed_line"]

    available = list_files(images_dir)
    named = sorted({r.image for r in records})
    if named and not available.intersection(named):
        raise no_images_found(config.captions, config.images, named, available)
    records = drop_images(records, {r.image: None for r in records if r.image not in available},
                          "missing_image", problems)
    split_of = read_split_lists(lists) if lists else None
    split_source = "split_lists" if split_of is not None else "karpathy" if fmt == "karpathy" else "random"
    if split_source != "random":
        records = resolve_splits(records, split_of, problems)
    if config.check_images:
        records = drop_images(records, unreadable_images(images_dir, sorted({r.image for r in records})),
                              "unreadable_image", problems)
    records = clean_captions(records, problems)
    if split_source == "random":
        split_of = random_split((r.image for r in records), config.split_ratios, config.seed)
        records = [record._replace(split=split_of[record.image]) for record in records]

    histogram = count_captions(records, config.captions_per_image, problems)
    order = {split: index for index, split in enumerate(SPLITS)}
    records.sort(key=lambda r: (order[r.split], r.image))  # stable: captions keep their file order
    rows = [(r.image, r.split, r.text) for r in records]
    report = build_report(config, fmt, split_source, lines_read, rows, histogram, problems)
    check_dropped(report)
    check_splits(report)
    return Prepared(rows, report)

def write_outputs(config: DatasetConfig, prepared: Prepared) -> None:
    """Write the table and the report; each appears only once both are written (checked writes)."""
    with atomic_paths((config.table, "dataset.table"), (config.report, "dataset.report")) as (table, report):
        write_captions(table, prepared.rows)
        report.write_text(json_text(prepared.report), encoding="utf-8")

def check_evaluated_split(report: dict[str, Any], split: str) -> None:
    """DatasetError when `evaluate.split` is left without captions: evaluate and retrieval would find nothing
    to score, after the features and the training (train and val are checked by `check_splits`).

    Not a param of the stage in dvc.yaml: the outputs do not depend on it, and when it changes later,
    evaluate (which reruns) says the same before its slow part."""
    if report["splits"][split]["captions"]:
        return
    counts = ", ".join(f"{name} {item['images']}" for name, item in report["splits"].items())
    raise DatasetError(f"prepare left the {split} split without captions (images per split: {counts}) but "
                       f"evaluate.split is {split}: evaluate and retrieval would have nothing to score; give the "
                       f"{split} split images (dataset.split_ratios, dataset.split_files) or set evaluate.split to "
                       f"val. Nothing was written.")

def main() -> None:
    """Run the stage with the params file's `dataset` section (and `evaluate.split`, which must get captions)."""
    config = load_section(DatasetConfig)
    evaluated = load_section(EvaluateConfig).split
    prepared = prepare(config)
    check_evaluated_split(prepared.report, evaluated)
    write_outputs(config, prepared)
    print(summary(prepared.report))


if __name__ == "__main__":
    run(main, "prepare")
