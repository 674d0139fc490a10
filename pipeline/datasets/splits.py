"""Splits by image: the official split lists, or a seeded random split with the configured ratios."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.config import SPLITS
from pipeline.datasets.formats import decode_text
from pipeline.datasets.report import DatasetError


def read_split_lists(split_files: dict[str, str]) -> dict[str, str]:
    """Map each image named in the split list files to its split; an image in two lists is an error."""
    split_of: dict[str, str] = {}
    for split, path in split_files.items():
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"dataset.split_files.{split}: '{file}' not found; fix the path in params.yaml "
                                    f"or set dataset.split_files to null for a random split")
        try:
            lines = decode_text(file.read_bytes()).lines
        except DatasetError as error:
            raise DatasetError(f"dataset.split_files.{split} '{file}': {error}") from error
        for line in lines:
            image = line.strip()
            if not image:
                continue
            if split_of.setdefault(image, split) != split:
                raise DatasetError(f"image '{image}' is in both the {split_of[image]} and the {split} lists of "
                                   f"dataset.split_files; an image belongs to one split")
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
