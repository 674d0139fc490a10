"""Stage `evaluate`: caption the held-out split and score it.

    data/scst/best.pt (the final model: scst.checkpoint), data/features/features.h5, data/prepared/captions.csv
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

import pandas as pd
import torch
from PIL import Image

from pipeline.cli import run
from pipeline.config import (
    DatasetConfig,
    EncoderConfig,
    EvaluateConfig,
    ScstConfig,
    TrainConfig,
    load_section,
)
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.encoder.resnet import file_sha256
from pipeline.errors import InputError
from pipeline.evaluation.attention import attention_correctness, load_objects
from pipeline.evaluation.coco_format import coco_annotations, coco_results, image_ids
from pipeline.evaluation.diversity import caption_diversity, distinct_descriptions
from pipeline.evaluation.figures import draw_attention
from pipeline.evaluation.scoring import coco_scores, require_java
from pipeline.files import atomic_paths, json_text, write_json
from pipeline.model.captioner import Caption, describe_all, search_options
from pipeline.model.checkpoint import check_features, load_checkpoint
from pipeline.model.decoder import CaptionDecoder
from pipeline.runtime import resolve_device
from pipeline.text import Vocabulary


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


Decoded = dict[str, Caption]
Boxes = tuple[dict, dict[str, tuple[int, int]], tuple]  # (objects, image sizes, words): attention correctness


def score(model: CaptionDecoder, vocabulary: Vocabulary, features: FeatureMatrix, references: dict[str, list[str]],
          config: EvaluateConfig, training_captions: pd.Series, boxes: Boxes | None) -> tuple[dict, Decoded, Decoded]:
    """A model's beam and greedy captions of the split's images, their scores, diversity and, with the
    object boxes, attention correctness."""
    names = sorted(references)

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
    metrics.update(caption_diversity(hypotheses, training_captions))
    if boxes is not None:
        metrics.update(attention_correctness(beam, *boxes))
        metrics["distinct_object_descriptions"] = distinct_descriptions(hypotheses.values(), set().union(*boxes[2]))
    return metrics, beam, greedy


def object_boxes(config: EvaluateConfig, names: list[str], images: Path) -> Boxes | None:
    """The demo's object boxes and image sizes for attention correctness (evaluate.objects), or None."""
    if not config.objects:
        return None
    objects, words = load_objects(Path(config.objects), names)
    return objects, {n: image_size(images / n) for n in names}, words


def write_outputs(config: EvaluateConfig, images: Path, references: dict[str, list[str]], beam: Decoded,
                  greedy: Decoded, metrics: dict, cross_entropy: Decoded | None = None) -> None:
    """Predictions (with the cross-entropy model's caption beside the final one's when self-critical
    training changed the model), attention figures and scores, replacing the old ones together."""
    names = sorted(references)
    hypotheses = {n: beam[n].text for n in names}
    predictions = [{"image": n, "caption": hypotheses[n], "greedy": greedy[n].text,
                    **({"cross_entropy": cross_entropy[n].text} if cross_entropy else {}),
                    "references": references[n]} for n in names]
    with atomic_paths((config.out_dir, "evaluate.out_dir"), (config.metrics, "evaluate.metrics")) as (tmp, scores):
        (tmp / "attention").mkdir(parents=True)
        write_json(tmp / "predictions.json", predictions)
        ids = image_ids(names)  # the COCO formats (pipeline/evaluation/coco_format.py)
        write_json(tmp / "coco_results.json", coco_results(hypotheses, ids))
        write_json(tmp / "coco_image_ids.json", ids)
        write_json(tmp / "coco_annotations.json", coco_annotations(references, ids))
        for n in names[:config.num_figures]:
            draw_attention(images / n, beam[n].words, beam[n].attention, tmp / "attention" / f"{Path(n).stem}.png",
                           title=hypotheses[n])
        scores.write_text(json_text(metrics), encoding="utf-8")


def main() -> None:
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    train, scst, config = load_section(TrainConfig), load_section(ScstConfig), load_section(EvaluateConfig)
    require_java()  # fail before the slow part, not after it
    device = resolve_device(config.device, "evaluate.device")
    model, vocabulary, payload = load_checkpoint(scst.checkpoint, device)
    table = read_captions(dataset.table, config.split)
    if table.empty:
        raise InputError(f"no {config.split} captions in {dataset.table}; check evaluate.split and "
                         "dataset.split_ratios / split_dir")
    references = references_by_image(table)
    names = sorted(references)
    boxes = object_boxes(config, names, Path(dataset.images))  # read before the slow part, not after it
    store = FeatureStore(encoder_config.cache)
    check_features(model, payload["encoder"], store.path, store.attrs, store.feature_dim)
    features = FeatureMatrix(store, names, device)
    training_captions = read_captions(dataset.table, "train")["caption"]
    metrics, beam, greedy = score(model, vocabulary, features, references, config,
                                  training_captions, boxes)
    metrics.update(images=len(names), beam_size=config.beam_size, checkpoint_epoch=int(payload.get("epoch", 0)))
    before_beam = None
    if file_sha256(Path(scst.checkpoint)) != file_sha256(Path(train.checkpoint)):  # self-critical training ran
        before, before_vocabulary, before_payload = load_checkpoint(train.checkpoint, device)
        check_features(before, before_payload["encoder"], store.path, store.attrs, store.feature_dim)
        metrics["cross_entropy"], before_beam, _ = score(before, before_vocabulary, features,
                                                         references, config, training_captions, boxes)
        metrics["cross_entropy"]["checkpoint_epoch"] = int(before_payload.get("epoch", 0))
    write_outputs(config, Path(dataset.images), references, beam, greedy, metrics, before_beam)
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("bleu1", "bleu4", "meteor", "rouge_l", "cider")
                      + (("attention_correctness",) if boxes else ()))
    if "cross_entropy" in metrics:
        shown += f" (the cross-entropy model's CIDEr: {metrics['cross_entropy']['cider']:.3f})"
    print(f"evaluate: {len(names)} {config.split} images, beam {config.beam_size}: {shown} -> {config.metrics}")


if __name__ == "__main__":
    run(main, "evaluate")
