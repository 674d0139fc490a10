"""Splits by image: the split lists in `dataset.split_dir`, or a seeded random split with the configured ratios."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.config import SPLITS
from pipeline.datasets.formats import decode_text
from pipeline.datasets.report import DatasetError

LIST_SUFFIX = ".txt"  # a split list is <split>.txt in dataset.split_dir


def split_lists(split_dir: str | Path) -> dict[str, Path]:
    """The split lists in `split_dir`: {split: path} of its train.txt, val.txt and test.txt ({} for none).

    Another `.txt` file there is an error (a list under its download name would otherwise be ignored
    and the split silently made at random), as are lists without both train.txt and val.txt.
    """
    folder = Path(split_dir)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "not found"
        raise FileNotFoundError(f"dataset.split_dir: split list folder '{folder}' {problem}; fix the path in "
                                f"params.yaml (relative to the project root), or set it to splits (no lists)")
    wanted = {f"{split}{LIST_SUFFIX}": split for split in SPLITS}
    texts = sorted(entry.name for entry in folder.iterdir() if entry.suffix == LIST_SUFFIX and entry.is_file())
    others = [name for name in texts if name not in wanted]
    if others:
        raise DatasetError(f"dataset.split_dir '{folder}' holds '{others[0]}'"
                           f"{f' (and {len(others) - 1} more)' if len(others) > 1 else ''}: split lists there are "
                           f"named train.txt, val.txt and test.txt; rename it to one of them or move it out")
    lists = {wanted[name]: folder / name for name in texts}
    if lists and not {"train", "val"} <= set(lists):
        missing = " and ".join(f"{split}{LIST_SUFFIX}" for split in ("train", "val") if split not in lists)
        raise DatasetError(f"dataset.split_dir '{folder}' holds {', '.join(sorted(n.name for n in lists.values()))} "
                           f"but no {missing}: training needs train and val lists (test.txt is optional)")
    return lists


def read_split_lists(lists: dict[str, Path]) -> dict[str, str]:
    """Map each image named in the split lists ({split: file}) to its split; an image in two lists is an error."""
    split_of: dict[str, str] = {}
    for split, file in lists.items():
        try:
            lines = decode_text(file.read_bytes()).lines
        except DatasetError as error:
            raise DatasetError(f"dataset.split_dir list '{file}': {error}") from error
        for line in lines:
            image = line.strip()
            if not image:
                continue
            if split_of.setdefault(image, split) != split:
                raise DatasetError(f"image '{image}' is in both the {split_of[image]} and the {split} lists of "
                                   f"dataset.split_dir ({file.parent}); an image belongs to one split")
    return split_of

def split_sizes(num_images: int, ratios: dict[str, float]) -> dict[str, int]:
    """Images per split: largest remainders, and at least one for every non-zero ratio when possible."""
    named = [split for split in SPLITS if ratios.get(split, 0.0) > 0.0]
    exact = {split: num_images * ratios[split] for split in named}
    sizes = {split: int(exact[split]) for split in SPLITS if split in exact}
    by_remainder = sorted(named, key=lambda split: (-(exact[split] - sizes[split]), SPLITS.index(split)))
    for split in by_remainder[: num_images - sum(sizes.values())]:
        sizes[split] += 1
    if num_images >= len(named):
        for split in named:
            if sizes[split] == 0:
                donor = max(named, key=lambda other: sizes[other])
                sizes[donor] -= 1
                sizes[split] += 1
    return {split: sizes.get(split, 0) for split in SPLITS}

def random_split(images: Iterable[str], ratios: dict[str, float], seed: int) -> dict[str, str]:
    """Assign each image a split: the sorted images shuffled by numpy default_rng(seed), cut by ratio."""
    ordered = sorted(set(images))
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    split_of, start = {}, 0
    for split, size in split_sizes(len(ordered), ratios).items():
        split_of.update((image, split) for image in shuffled[start:start + size])
        start += size
    return split_of
