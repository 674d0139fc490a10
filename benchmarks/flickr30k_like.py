"""A synthetic dataset the size and shape of Flickr30k, for timing the real stages offline.

    python -m benchmarks.flickr30k_like OUT [--images 31783] [--workers N] [--seed 0]

writes OUT/images/NNNNNNNNNN.jpg and OUT/results_20130124.token (Flickr30k's token format: five
lines `NAME#k<TAB>caption` per image), using every core.

- Images: JPEG (quality 90) of Flickr's sizes (500 px on the long side: 500x375, 500x333, 375x500,
  333x500, 500x500 and a few smaller), photo-like: a smooth colour gradient and 3-8 filled shapes
  (ellipses, boxes, triangles) drawn at half size and enlarged (soft edges), plus grain; ~100 KB
  each, as Flickr's are.
- Captions: word counts from a gamma distribution (mean ~12, 95th percentile ~22, at least 3), words
  drawn from a fixed list of 20,000 pseudo-words with Zipf frequencies (rank^-1.3), so that ~18,000
  distinct words occur and ~7,000 of them 5 times or more, as in Flickr30k.
- One thing in each picture is named: a large shape of one of 8 named colours and 3 kinds, drawn on top
  of the others (its subject), and every caption of the picture says it ("purple triangle") at a random
  place among the Zipf words.

It exists to give every stage real work of the real size (decoding and resizing 500 px JPEGs, a
20,000-word vocabulary, captions of realistic lengths). The subject is the only thing a model can
learn from the picture: enough for validation CIDEr to mean something in training and in
self-critical fine-tuning (docs/scst.md), while the rest of each caption is noise no model can predict.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FLICKR30K_IMAGES = 31_783
CAPTIONS_PER_IMAGE = 5
VOCABULARY = 20_000
ZIPF_EXPONENT = 1.3
LENGTH_SHAPE, LENGTH_SCALE, MIN_WORDS = 5.0, 2.4, 3  # gamma: mean 12, 95th percentile ~22
SIZES = [(500, 375)] * 10 + [(500, 333)] * 5 + [(375, 500)] * 4 + [(333, 500)] * 2 + [(500, 500), (400, 300)]
GRAIN = 20  # uniform noise of +-GRAIN levels: sensor grain, and JPEGs of Flickr's file sizes
FIRST_NAME = 1_000_092_795  # Flickr30k's names are Flickr photo ids
CONSONANTS, VOWELS = "bcdfghklmnprstvwz", "aeiouy"
SUBJECT_COLOURS = {"red": (200, 30, 30), "green": (40, 150, 40), "blue": (30, 60, 200), "yellow": (235, 215, 40),
                   "orange": (240, 130, 20), "purple": (130, 40, 160), "pink": (245, 150, 190), "brown": (120, 70, 30)}
SUBJECT_KINDS = ("circle", "square", "triangle")
SUBJECT_JITTER = 15  # levels each channel of a subject's colour may stray from its name's
COMMON = ["a", "the", "of", "in", "on", "and", "with", "is", "are", "two", "man", "woman", "people", "dog", "his",
          "her", "at", "while", "to", "an", "shirt", "boy", "girl", "young", "group", "standing", "street", "blue",
          "red", "white", "black", "front"]


def words(count: int = VOCABULARY) -> list[str]:
    """`count` distinct words: common English ones first (the most frequent ranks), then pseudo-words."""
    syllables = [c + v for c, v in itertools.product(CONSONANTS, VOWELS)]
    made = ("".join(parts) for n in (2, 3) for parts in itertools.product(syllables, repeat=n))
    return (COMMON + [word for word in made if word not in COMMON])[:count]


def subject(index: int, seed: int) -> tuple[str, str]:
    """The colour and kind of the shape picture `index` shows on top, which all its captions name."""
    rng = np.random.default_rng([seed, index, 1])
    return list(SUBJECT_COLOURS)[rng.integers(len(SUBJECT_COLOURS))], SUBJECT_KINDS[rng.integers(len(SUBJECT_KINDS))]


def captions(num_images: int, seed: int) -> list[str]:
    """The token file's lines, CAPTIONS_PER_IMAGE per image: Zipf words with the subject's two words
    at a random place (counted in the caption's length)."""
    rng = np.random.default_rng(seed)
    vocabulary = np.array(words())
    ranks = np.arange(1, len(vocabulary) + 1, dtype=np.float64)
    probabilities = ranks ** -ZIPF_EXPONENT / (ranks ** -ZIPF_EXPONENT).sum()
    count = num_images * CAPTIONS_PER_IMAGE
    lengths = np.maximum(MIN_WORDS, np.rint(rng.gamma(LENGTH_SHAPE, LENGTH_SCALE, count))).astype(int) - 2
    drawn = vocabulary[rng.choice(len(vocabulary), size=int(lengths.sum()), p=probabilities)]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    places = rng.integers(0, lengths + 1)  # where the subject goes among each caption's Zipf words
    subjects = [list(subject(image, seed)) for image in range(num_images)]
    lines = []
    for i in range(count):
        image, k = divmod(i, CAPTIONS_PER_IMAGE)
        filler = list(drawn[bounds[i]:bounds[i + 1]])
        text = " ".join(filler[:places[i]] + subjects[image] + filler[places[i]:])
        lines.append(f"{FIRST_NAME + image}.jpg#{k}\t{text.capitalize()} .")
    return lines


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill: tuple[int, ...]) -> None:
    """A filled circle (ellipse), square (box) or triangle (apex at the top middle) in `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) // 2, y0)], fill=fill)


def draw_image(index: int, seed: int) -> Image.Image:
    """A photo-like picture: gradient and shapes drawn at half size and enlarged (soft edges), then grain."""
    rng = np.random.default_rng([seed, index])
    width, height = SIZES[rng.integers(len(SIZES))]
    w, h = width // 2, height // 2
    corners = rng.uniform(0, 255, (3, 3))  # base, right-hand and bottom colours
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    pixels = corners[0] + (corners[1] - corners[0]) * x + (corners[2] - corners[0]) * y  # (h, w, 3)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        x1, y1 = x0 + rng.integers(10, w // 2), y0 + rng.integers(10, h // 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw_shape(draw, SUBJECT_KINDS[rng.integers(3)], (x0, y0, x1, y1), colour)
    colour, kind = subject(index, seed)  # on top, large: what every caption names
    size = rng.integers(min(w, h) // 3, min(w, h) // 2 + 1)
    x0, y0 = rng.integers(0, w - size), rng.integers(0, h - size)
    fill = tuple(int(np.clip(v + rng.integers(-SUBJECT_JITTER, SUBJECT_JITTER + 1), 0, 255))
                 for v in SUBJECT_COLOURS[colour])
    draw_shape(draw, kind, (x0, y0, x0 + size, y0 + size), fill)
    image = image.resize((width, height), Image.BILINEAR)
    grain = rng.integers(-GRAIN, GRAIN + 1, (height, width, 3), dtype=np.int16)  # (H, W, 3)
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8))


def write_images(job: tuple[Path, range, int]) -> int:
    """Draw and save the images of one share; returns how many."""
    folder, indices, seed = job
    for index in indices:
        draw_image(index, seed).save(folder / f"{FIRST_NAME + index}.jpg", quality=90)
    return len(indices)


def generate(out: Path, num_images: int = FLICKR30K_IMAGES, workers: int | None = None, seed: int = 0) -> Path:
    """Write the images and the token file under `out`; returns the token file."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    step = max(1, min(500, num_images // (4 * workers) or 1))
    jobs = [(images, range(start, min(num_images, start + step)), seed) for start in range(0, num_images, step)]
    with Pool(workers) as pool:
        pending = pool.map_async(write_images, jobs)
        token = out / "results_20130124.token"
        token.write_text("\n".join(captions(num_images, seed)) + "\n", encoding="utf-8")
        pending.get()
    return token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=FLICKR30K_IMAGES)
    parser.add_argument("--workers", type=int, default=None, help="processes drawing images (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    token = generate(args.out, args.images, args.workers, args.seed)
    print(f"flickr30k_like: {args.images:,} images and {args.images * CAPTIONS_PER_IMAGE:,} captions -> "
          f"{args.out} ({token.name}) in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
