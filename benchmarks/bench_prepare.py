"""Benchmark the prepare stage on a Flickr30k-sized token file (158,915 lines, 31,783 images).

Generates, in a temporary folder, a `results_20130124.token`-style file with five captions per
image and one tiny 8x8 PNG per image, then times `prepare` with `check_images` false and true, its
phases, the command line end to end, and the vocabulary built from the prepared training captions.
As a baseline for the existence check it also times one `os.path.isfile` per caption line.

Run from the project root: python -m benchmarks.bench_prepare [--images 31783] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from pipeline import prepare as prep
from pipeline.config import PARAMS_ENV, DatasetConfig

FLICKR30K_IMAGES = 31_783
CAPTIONS_PER_IMAGE = 5
WORDS = ("a man woman child dog girl boy people group two three young old little black white red blue green "
         "shirt hat jacket is are in on at with of the and while standing sitting running walking playing "
         "holding looking street grass water beach snow field park building crowd ball bike car table front "
         "near next to under over down up into wearing smiling jumping riding climbing").split()


def tiny_png() -> bytes:
    """The bytes of an 8x8 PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 80, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(root: Path, num_images: int, seed: int = 0) -> Path:
    """Write images/ (one tiny PNG per image) and results_20130124.token; return the token file."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    png = tiny_png()
    lines = []
    for i in range(num_images):
        name = f"{1000000000 + 7919 * i}.jpg"  # PNG bytes: PIL reads the content, not the suffix
        (images / name).write_bytes(png)
        for n in range(CAPTIONS_PER_IMAGE):
            words = rng.choice(len(WORDS), size=int(rng.integers(8, 19)))
            caption = " ".join(WORDS[w] for w in words).capitalize()
            lines.append(f"{name}#{n}\t{caption} .")
    token = root / "results_20130124.token"
    token.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return token


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this process)


def timed(function: Callable[[], object], repeats: int) -> tuple[Timing, object]:
    """Median wall and CPU time of `repeats` calls, and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), result


def time_cli(config: DatasetConfig, workdir: Path) -> tuple[Timing, float]:
    """Wall and CPU seconds and peak RSS (MiB) of `python -m pipeline.prepare` in a fresh interpreter."""
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": vars(config)}), encoding="utf-8")
    env = {**os.environ, PARAMS_ENV: str(params),
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.prepare"], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return (wall, cpu), after.ru_maxrss / 1024


def run(num_images: int, repeats: int) -> list[tuple[str, Timing]]:
    """Generate the dataset and return (what, (wall, CPU) seconds) rows."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        timing, token = timed(lambda: write_dataset(root, num_images), 1)
        rows = [(f"generate {num_images * CAPTIONS_PER_IMAGE:,} lines + {num_images:,} 8x8 PNGs", timing)]
        config = DatasetConfig(captions=str(token), images=str(root / "images"), format="auto", split_files=None,
                               split_ratios={"train": 0.9, "val": 0.05, "test": 0.05}, seed=0,
                               captions_per_image=CAPTIONS_PER_IMAGE, max_dropped_fraction=0.05,
                               check_images=False, out_dir=str(root / "prepared"))
        checked = replace(config, check_images=True)

        # phases, each on the previous phase's output
        timing, text_file = timed(lambda: prep.decode_text(token.read_bytes()), repeats)
        rows.append(("  phase: read + decode the token file", timing))
        timing, records = timed(lambda: prep.parse_captions(text_file, "flickr_token", prep.Problems()), repeats)
        rows.append(("  phase: parse token lines", timing))
        rows.append(("  phase: list_images (one directory walk)",
                     timed(lambda: prep.list_images(root / "images"), repeats)[0]))
        caption_paths = [str(root / "images" / r.image) for r in records]
        rows.append(("  baseline: os.path.isfile per caption line",
                     timed(lambda: [os.path.isfile(path) for path in caption_paths], repeats)[0]))
        unique = sorted({r.image for r in records})
        rows.append(("  phase: PIL verify each unique image",
                     timed(lambda: prep.unreadable_images(root / "images", unique), repeats)[0]))
        rows.append(("  phase: normalise + de-duplicate captions",
                     timed(lambda: prep.clean_captions(records, prep.Problems()), repeats)[0]))

        timing, prepared = timed(lambda: prep.prepare(config), repeats)
        rows.append(("prepare(), check_images false", timing))
        timing, prepared = timed(lambda: prep.prepare(checked), repeats)
        rows.append(("prepare(), check_images true", timing))
        rows.append(("write_outputs() (captions.csv + report.json)",
                     timed(lambda: prep.write_outputs(Path(checked.out_dir), prepared), repeats)[0]))
        timing, peak_mib = time_cli(checked, root)
        rows.append((f"python -m pipeline.prepare, check_images true (peak RSS {peak_mib:.0f} MiB)", timing))

        rows.extend(time_vocabulary(Path(checked.out_dir), repeats))
    return rows


def time_vocabulary(prepared_dir: Path, repeats: int) -> list[tuple[str, Timing]]:
    """Time the vocabulary built from the prepared training captions, when pipeline.vocab provides it."""
    try:
        from pipeline import vocab
    except ImportError:
        return [("vocab: pipeline.vocab not found (not timed)", (float("nan"), float("nan")))]
    if not hasattr(vocab, "build_vocabulary"):
        return [("vocab: pipeline.vocab.build_vocabulary not found (not timed)", (float("nan"), float("nan")))]
    table = pd.read_csv(prepared_dir / prep.CAPTIONS_FILE, dtype=str, keep_default_na=False)
    train = table.loc[table["split"] == "train", "caption"]
    return [(f"vocab.build_vocabulary on {len(train):,} train captions",
             timed(lambda: vocab.build_vocabulary(train, min_count=5), repeats)[0])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=FLICKR30K_IMAGES)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the median of this many runs")
    args = parser.parse_args()
    rows = run(args.images, args.repeats)
    width = max(len(what) for what, _ in rows)
    print(f"{'what':<{width}}  wall s   CPU s")
    for what, (wall, cpu) in rows:
        print(f"{what:<{width}}  {wall:6.2f}  {cpu:6.2f}")


if __name__ == "__main__":
    main()
