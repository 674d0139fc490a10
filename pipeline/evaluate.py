"""Stage `evaluate`: caption the held-out split and score it.

    data/train/best.pt, data/features/features.h5, data/prepared/captions.csv
        -> metrics/evaluate.json (BLEU-1..4, METEOR, ROUGE-L, CIDEr, attention correctness),
           data/evaluate/predictions.json, data/evaluate/attention/*.png

Batched beam search (`evaluate.beam_size`) over the cached features, scored with pycocoevalcap
against all references of each image (the standard COCO caption evaluation; it needs Java).
Greedy BLEU-4 is reported beside the beam's. For the shapes demo (`evaluate.objects` set), the
attention-correctness score: the fraction of generated colour and shape words whose attention
peak (the centre of the most attended grid cell) lies inside the box of an object of that colour
or shape.

Run: python -m pipeline.evaluate
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from pipeline.config import DatasetConfig, EncoderConfig, EvaluateConfig, TrainConfig, load_section
from pipeline.data import FeatureMatrix, caption_images, references_by_image
from pipeline.feature_store import FeatureStore, features_path
from pipeline.figures import attention_grid, draw_attention
from pipeline.model import BEST_CHECKPOINT, load_checkpoint
from pipeline.prepared import captions_path, read_captions
from pipeline.scoring import bleu4, coco_scores, require_java
from pipeline.text import Vocabulary
from pipeline.utils import atomic_path, resolve_device, write_json

METRICS_FILE = "metrics/evaluate.json"


def peak_point(alpha: torch.Tensor, width: float, height: float) -> tuple[float, float]:
    """Image coordinates (x, y) of the centre of the most attended grid cell. alpha (P,)."""
    grid = attention_grid(alpha)
    g = grid.size(0)
    row, col = divmod(int(grid.argmax()), g)
    return (col + 0.5) * width / g, (row + 0.5) * height / g


def attention_correctness(captions: dict[str, tuple[list[str], torch.Tensor]], objects: dict[str, list[dict]],
                          image_sizes: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Fraction of colour/shape words whose attention peak falls inside an object of that colour/shape."""
    colours = {o["colour"] for boxes in objects.values() for o in boxes}
    shapes = {o["shape"] for boxes in objects.values() for o in boxes}
    hits = {"colour": 0, "shape": 0}
    totals = {"colour": 0, "shape": 0}
    for name, (words, alphas) in captions.items():
        width, height = image_sizes[name]
        for word, alpha in zip(words, alphas):
            kind = "colour" if word in colours else "shape" if word in shapes else None
            if kind is None:
                continue
            x, y = peak_point(alpha, width, height)
            totals[kind] += 1
            hits[kind] += any(o[kind] == word and o["box"][0] <= x < o["box"][2] and o["box"][1] <= y < o["box"][3]
                              for o in objects[name])
    total = sum(totals.values())
    return {"attention_correctness": sum(hits.values()) / total if total else 0.0,
            "attention_correctness_colour": hits["colour"] / max(totals["colour"], 1),
            "attention_correctness_shape": hits["shape"] / max(totals["shape"], 1),
            "attention_words": total}


def load_objects(path: Path, names: Sequence[str]) -> dict[str, list[dict]]:
    """Object boxes of the named images from the shapes demo's objects.json."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: object boxes not found (params.yaml evaluate.objects); "
                                "set evaluate.objects to null for datasets without boxes")
    objects = json.loads(path.read_text(encoding="utf-8"))
    missing = [n for n in names if n not in objects]
    if missing:
        raise KeyError(f"{path} has no boxes for {len(missing)} evaluated images (first: {missing[0]}); "
                       "it does not belong to this dataset: set evaluate.objects to null")
    return {n: objects[n] for n in names}


def main() -> None:
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    train_config, config = load_section(TrainConfig), load_section(EvaluateConfig)
    require_java()  # fail before the slow part, not after it
    device = resolve_device(config.device)
    model, payload = load_checkpoint(Path(train_config.out_dir) / BEST_CHECKPOINT, device)
    vocabulary = Vocabulary(tuple(payload["vocabulary"]))
    table = read_captions(dataset.out_dir, config.split)
    if table.empty:
        raise ValueError(f"no {config.split} captions in {captions_path(dataset.out_dir)}; check evaluate.split")
    references = references_by_image(table)
    names = sorted(references)
    features = FeatureMatrix(FeatureStore(features_path(encoder_config.out_dir)), names, device)

    with torch.no_grad():
        beam = caption_images(model, features, names, vocabulary, config.beam_size, config.max_length, config.batch_size)
        greedy = caption_images(model, features, names, vocabulary, 1, config.max_length, config.batch_size)
    hypotheses = {n: " ".join(beam[n][0]) for n in names}
    metrics = coco_scores(references, hypotheses)
    metrics["greedy_bleu4"] = bleu4(references, {n: " ".join(greedy[n][0]) for n in names})
    metrics.update(images=len(names), beam_size=config.beam_size, checkpoint_epoch=int(payload.get("epoch", 0)))
    images_dir = Path(dataset.images)
    if config.objects:
        objects = load_objects(Path(config.objects), names)
        sizes = {}
        for n in names:
            with Image.open(images_dir / n) as image:
                sizes[n] = image.size  # (width, height): boxes are in the original image's pixels
        metrics.update(attention_correctness(beam, objects, sizes))

    predictions = [{"image": n, "caption": hypotheses[n], "greedy": " ".join(greedy[n][0]),
                    "references": references[n]} for n in names]
    with atomic_path(config.out_dir) as tmp:  # predictions and figures replace the old ones together
        (tmp / "attention").mkdir(parents=True)
        write_json(tmp / "predictions.json", predictions)
        for n in names[:config.num_figures]:
            words, alphas = beam[n]
            draw_attention(images_dir / n, words, alphas, tmp / "attention" / f"{Path(n).stem}.png",
                           title=hypotheses[n])
    write_json(METRICS_FILE, metrics)
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bleu1", "bleu4", "meteor", "rouge_l", "cider")
                      + (("attention_correctness",) if config.objects else ()))
    print(f"evaluate: {len(names)} {config.split} images, beam {config.beam_size}: {shown} -> {METRICS_FILE}")


if __name__ == "__main__":
    main()
