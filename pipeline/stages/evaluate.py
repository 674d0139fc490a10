"""Stage `evaluate`: caption the held-out split and score it.

    data/train/best.pt, data/features/features.h5, data/prepared/captions.csv
        -> metrics/evaluate.json (BLEU-1..4, METEOR, ROUGE-L, CIDEr, attention correctness),
           data/evaluate/predictions.json, data/evaluate/attention/*.png, and the predictions and
           references in the COCO formats (coco_results.json, coco_image_ids.json,
           coco_annotations.json: pipeline/evaluation/coco_format.py)

Batched beam search (`evaluate.beam_size`) over the cached features, scored with pycocoevalcap
against all references of each image (the standard COCO caption evaluation; it needs Java).
Greedy BLEU-4 and CIDEr are reported beside the beam's, and the beam captions' diversity (distinct
captions, words used, share not copied from the training captions). For the shapes demo (`evaluate.objects` set), the
attention-correctness score: the fraction of generated colour and shape words whose attention
peak (the centre of the most attended grid cell) lies inside the box of an object of that colour
or shape.

Run: python -m pipeline.stages.evaluate
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from pipeline.cli import run
from pipeline.config import (
    DatasetConfig,
    EncoderConfig,
    EvaluateConfig,
    TrainConfig,
    load_section,
)
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.errors import InputError
from pipeline.evaluation.attention import attention_correctness, load_objects
from pipeline.evaluation.coco_format import coco_annotations, coco_results, image_ids
from pipeline.evaluation.diversity import caption_diversity
from pipeline.evaluation.figures import draw_attention
from pipeline.evaluation.scoring import coco_scores, require_java
from pipeline.files import atomic_paths, json_text, write_json
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import check_features, load_checkpoint
from pipeline.runtime import resolve_device


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image: the object boxes are in the original image's pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as error:  # PIL's UnidentifiedImageError among them
        raise InputError(f"{path}: cannot read the image's size for attention correctness ({error}); "
                         "rerun `dvc repro prepare` or set evaluate.objects to null") from error


def main() -> None:
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    train_config, config = load_section(TrainConfig), load_section(EvaluateConfig)
    require_java()  # fail before the slow part, not after it
    device = resolve_device(config.device, "evaluate.device")
    model, vocabulary, payload = load_checkpoint(train_config.checkpoint, device)
    table = read_captions(dataset.table, config.split)
    if table.empty:
        raise InputError(f"no {config.split} captions in {dataset.table}; check evaluate.split and "
                         "dataset.split_ratios / split_files")
    references = references_by_image(table)
    names = sorted(references)
    images_dir = Path(dataset.images)
    if config.objects:  # read before the slow part, not after it
        objects, words = load_objects(Path(config.objects), names)
        sizes = {n: image_size(images_dir / n) for n in names}
    store = FeatureStore(encoder_config.cache)
    check_features(model, payload["encoder"], store.path, store.attrs, store.feature_dim)
    features = FeatureMatrix(store, names, device)

    def features_of(chunk: list[str]) -> torch.Tensor:
        return features[features.rows_of(chunk)]

    max_length = model.config.max_caption_length
    options = search_options(vocabulary, config.beam_size, max_length, config.length_penalty, config.no_repeat_ngram,
                             config.allow_unk)
    beam = describe_all(model, names, features_of, vocabulary, options, config.batch_size)
    greedy = describe_all(model, names, features_of, vocabulary,
                          search_options(vocabulary, 1, max_length, allow_unk=config.allow_unk), config.batch_size)
    hypotheses = {n: beam[n].text for n in names}
    metrics = coco_scores(references, hypotheses)
    greedy_scores = coco_scores(references, {n: greedy[n].text for n in names}, ("bleu4", "cider"))
    metrics.update({f"greedy_{k}": v for k, v in greedy_scores.items()})
    metrics.update(caption_diversity(hypotheses, read_captions(dataset.table, "train")["caption"]))
    metrics.update(images=len(names), beam_size=config.beam_size, checkpoint_epoch=int(payload.get("epoch", 0)))
    if config.objects:
        metrics.update(attention_correctness(beam, objects, sizes, words))

    predictions = [{"image": n, "caption": hypotheses[n], "greedy": greedy[n].text,
                    "references": references[n]} for n in names]
    # predictions, figures and scores replace the old ones together
    with atomic_paths((config.out_dir, "evaluate.out_dir"), (config.metrics, "evaluate.metrics")) as (tmp, scores):
        (tmp / "attention").mkdir(parents=True)
        write_json(tmp / "predictions.json", predictions)
        ids = image_ids(names)  # the COCO formats (pipeline/evaluation/coco_format.py)
        write_json(tmp / "coco_results.json", coco_results(hypotheses, ids))
        write_json(tmp / "coco_image_ids.json", ids)
        write_json(tmp / "coco_annotations.json", coco_annotations(references, ids))
        for n in names[:config.num_figures]:
            draw_attention(images_dir / n, beam[n].words, beam[n].attention, tmp / "attention" / f"{Path(n).stem}.png",
                           title=hypotheses[n])
        scores.write_text(json_text(metrics), encoding="utf-8")
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bleu1", "bleu4", "meteor", "rouge_l", "cider")
                      + (("attention_correctness",) if config.objects else ()))
    print(f"evaluate: {len(names)} {config.split} images, beam {config.beam_size}: {shown} -> {config.metrics}")


if __name__ == "__main__":
    run(main, "evaluate")
