"""Attention correctness on the shapes demo: does the attention peak of a colour or shape word fall
inside the box of an object of that colour or shape? And how often does a caption name a colour or
shape that is not in the image?"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.evaluation.figures import attention_grid
from pipeline.model.captioner import Caption


def peak_point(alpha: torch.Tensor, width: float, height: float) -> tuple[float, float]:
    """Image coordinates (x, y) of the centre of the most attended grid cell. alpha (P,)."""
    grid = attention_grid(alpha)
    g = grid.size(0)
    row, col = divmod(int(grid.argmax()), g)
    return (col + 0.5) * width / g, (row + 0.5) * height / g


def attention_correctness(captions: dict[str, Caption], objects: dict[str, list[dict]],
                          image_sizes: dict[str, tuple[int, int]],
                          words: tuple[set[str], set[str]] | None = None) -> dict[str, float]:
    """Of the colour and shape words that name an object in the image, the fraction whose attention peak
    falls inside the box of an object of that colour or shape.

    A colour or shape word that no object in the image has (`a red square` over a red circle) names
    nothing, so there is no right place for its attention: as in the attention-correctness literature
    (Liu et al., 2017, score only words with a ground-truth region), it is left out of the score and
    counted instead as a hallucinated word (the share of such words is CHAIR-i, Rohrbach et al., 2018).
    Wrong words are already what BLEU and CIDEr measure; the two figures together say both how often
    the decoder names what is there and whether it looks at what it names. `words` is the
    (colours, shapes) vocabulary of the whole dataset (`object_words`); by default, those of `objects`.
    """
    colours, shapes = words or object_words(objects)
    hits = {"colour": 0, "shape": 0}
    totals = {"colour": 0, "shape": 0}
    hallucinated = {"colour": 0, "shape": 0}
    per_image = np.zeros((len(captions), 2))  # (images, [hits, scored words])
    for i, (name, caption) in enumerate(captions.items()):
        width, height = image_sizes[name]
        for word, alpha in zip(caption.words, caption.attention):
            kind = "colour" if word in colours else "shape" if word in shapes else None
            if kind is None:
                continue
            named = [o for o in objects[name] if o[kind] == word]
            if not named:
                hallucinated[kind] += 1
                continue
            x, y = peak_point(alpha, width, height)
            hit = any(o["box"][0] <= x < o["box"][2] and o["box"][1] <= y < o["box"][3] for o in named)
            totals[kind] += 1
            hits[kind] += hit
            per_image[i] += (hit, 1)
    total, wrong = sum(totals.values()), sum(hallucinated.values())
    return {"attention_correctness": sum(hits.values()) / total if total else 0.0,
            "attention_correctness_std": bootstrap_std(per_image),
            "attention_correctness_colour": hits["colour"] / max(totals["colour"], 1),
            "attention_correctness_shape": hits["shape"] / max(totals["shape"], 1),
            "attention_words": total,
            "hallucinated_words": wrong,
            "hallucination_rate": wrong / max(total + wrong, 1),
            "hallucination_rate_colour": hallucinated["colour"] / max(totals["colour"] + hallucinated["colour"], 1),
            "hallucination_rate_shape": hallucinated["shape"] / max(totals["shape"] + hallucinated["shape"], 1)}


def object_words(objects: dict[str, list[dict]]) -> tuple[set[str], set[str]]:
    """The colour words and the shape words of all these objects."""
    return ({o["colour"] for boxes in objects.values() for o in boxes},
            {o["shape"] for boxes in objects.values() for o in boxes})


def bootstrap_std(per_image: np.ndarray, resamples: int = 1000, seed: int = 0) -> float:
    """Spread of the pooled hit rate over test sets like this one: std over images resampled with replacement.

    per_image (N, 2) holds each image's hits and scored words.
    """
    if len(per_image) == 0 or per_image[:, 1].sum() == 0:
        return 0.0
    rows = np.random.default_rng(seed).integers(0, len(per_image), size=(resamples, len(per_image)))
    sums = per_image[rows].sum(axis=1)  # (resamples, 2)
    rates = sums[:, 0] / np.maximum(sums[:, 1], 1)
    return float(rates.std())


def is_object(item: object) -> bool:
    """Whether `item` is one object of objects.json: {"colour": str, "shape": str, "box": [x0, y0, x1, y1]}."""
    return (isinstance(item, dict) and isinstance(item.get("colour"), str) and isinstance(item.get("shape"), str)
            and isinstance(item.get("box"), list) and len(item["box"]) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item["box"]))


def load_objects(path: Path, names: Sequence[str]) -> tuple[dict[str, list[dict]], tuple[set[str], set[str]]]:
    """Object boxes of the named images from the shapes demo's objects.json, and the colour and shape
    words of the whole file (a word that no evaluated image has is still a colour or shape word)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: object boxes not found (params.yaml evaluate.objects); "
                                "set evaluate.objects to null for datasets without boxes")
    try:
        objects = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # not JSON, or not UTF-8
        raise InputError(f"{path} is not valid JSON ({error}); redraw it with `dvc repro shapes` "
                         "or set evaluate.objects to null") from error
    if not isinstance(objects, dict) or not all(isinstance(boxes, list) and all(map(is_object, boxes))
                                                for boxes in objects.values()):
        raise InputError(f"{path} is not an object-box file ({{image: [{{colour, shape, box: [x0, y0, x1, y1]}}]}}); "
                         "redraw it with `dvc repro shapes` or set evaluate.objects to null")
    missing = [n for n in names if n not in objects]
    if missing:
        raise InputError(f"{path} has no boxes for {len(missing)} evaluated images (first: {missing[0]}); "
                         "it does not belong to this dataset: set evaluate.objects to null")
    return {n: objects[n] for n in names}, object_words(objects)
