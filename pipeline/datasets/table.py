"""The prepared captions table (`dataset.table`, captions.csv): prepare writes it, every later stage reads it.

Columns: `image` (path under `dataset.images`), `split` (train, val or test) and `caption`
(normalised by `pipeline.text.normalise`). One row per caption.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.errors import InputError

COLUMNS = ("image", "split", "caption")


def write_captions(path: Path, rows: Iterable[tuple[str, str, str]]) -> None:
    """Write (image, split, caption) rows with a header."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def read_captions(path: str | Path, split: str | None = None) -> pd.DataFrame:
    """The table (image, split, caption) as strings, optionally one split only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prepared captions not found; run `dvc repro prepare` first")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)  # a caption "nan" stays a word
    missing = [column for column in COLUMNS if column not in table.columns]
    if missing:
        raise InputError(f"{path} has no {', '.join(missing)} column (header: {list(table.columns)}); "
                         "rerun `dvc repro prepare`")
    return table if split is None else table[table["split"] == split].reset_index(drop=True)


def references_by_image(captions: pd.DataFrame) -> dict[str, list[str]]:
    """{image: [its normalised captions]} in file order."""
    return {name: list(group) for name, group in captions.groupby("image", sort=True)["caption"]}
