"""The prepare and vocab stages on a Flickr30k-sized token file (158,915 lines, 31,783 images).

Captions from benchmarks/flickr30k_like.py (Flickr30k's lengths and vocabulary), one 8x8 PNG per
image (prepare lists and, with check_images, opens every image; the pixels do not matter), written
in a temporary folder. Times `prepare()` with check_images false and true, the vocabulary built from
the prepared training captions, and, as a baseline for the listing, one `os.path.isfile` per line.

Run alone: python -m benchmarks.prepare_bench [--images 31783] [--repeats 1]
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from benchmarks.flickr30k_like import captions
from pipeline.config import DatasetConfig
from pipeline.stages.prepare import prepare
from pipeline.stages.vocab import build_vocabulary

FLICKR30K_IMAGES = 31_783


def timed(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall seconds of `repeats` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def write_dataset(root: Path, num_images: int) -> Path:
    """images/ (one tiny PNG per image, named as the captions name them) and the token file."""
    images = root / "images"
    images.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 40)).save(buffer, format="PNG")
    lines = captions(num_images, seed=0)
    for name in sorted({line.split("#", 1)[0] for line in lines}):
        (images / name).write_bytes(buffer.getvalue())  # PNG bytes: PIL reads the content, not the suffix
    token = root / "results_20130124.token"
    token.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return token


def bench_prepare(num_images: int, repeats: int) -> list[tuple[str, float]]:
    """(what, seconds) rows."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        token = write_dataset(root, num_images)
        (root / "no_lists").mkdir()
        config = DatasetConfig(captions=str(token), images=str(root / "images"), format="auto",
                               split_dir=str(root / "no_lists"),
                               split_ratios={"train": 0.9, "val": 0.05, "test": 0.05}, seed=0,
                               captions_per_image=5, max_dropped_fraction=0.05, check_images=False,
                               table=str(root / "captions.csv"), report=str(root / "report.json"))
        lines = token.read_text(encoding="utf-8").splitlines()
        paths = [str(root / "images" / line.split("#", 1)[0]) for line in lines]
        rows = [(f"baseline: os.path.isfile per caption line ({len(lines):,})",
                 timed(lambda: [os.path.isfile(path) for path in paths], repeats)[0])]
        seconds, prepared = timed(lambda: prepare(config), repeats)
        rows.append(("prepare(), check_images false", seconds))
        checked = config.model_copy(update={"check_images": True})
        rows.append(("prepare(), check_images true", timed(lambda: prepare(checked), repeats)[0]))
        train = [caption for _, split, caption in prepared.rows if split == "train"]
        rows.append((f"vocab: build_vocabulary on {len(train):,} train captions, min_count 5",
                     timed(lambda: build_vocabulary(train, min_count=5), repeats)[0]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=FLICKR30K_IMAGES)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    for what, seconds in bench_prepare(args.images, args.repeats):
        print(f"{what}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
