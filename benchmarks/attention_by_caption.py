"""Where a model looks while saying given captions: attention correctness, teacher-forced, on the demo.

    python -m benchmarks.attention_by_caption [--checkpoints data/train/best.pt data/scst/best.pt]

evaluate scores attention correctness on each model's own captions (pipeline/evaluation/attention.py),
so when two models differ it mixes two things: where they look, and what they say. Here every
checkpoint is teacher-forced on the same captions (reading each word and looking before saying the
next, as when it decodes them) and its attention at each colour and shape word is scored alike:
on the cross-entropy model's and the final model's test captions (evaluate's predictions.json), and
on the test references grouped by how they open ("there is ...", "one shape ...", "a ..."). The
same model scored on two caption sets shows what the captions change; two models on one set show
what the training changed. Reads params.yaml (dataset, encoder, evaluate) like the stages.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from pipeline.config import DatasetConfig, EncoderConfig, EvaluateConfig, load_section
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.evaluation.attention import attention_correctness
from pipeline.model.captioner import Caption
from pipeline.model.checkpoint import load_checkpoint
from pipeline.model.decoder import CaptionDecoder
from pipeline.retrieval.likelihood import encode_queries
from pipeline.stages.evaluate import object_boxes
from pipeline.text import Vocabulary


def teacher_forced(model: CaptionDecoder, vocabulary: Vocabulary, features: torch.Tensor,
                   captions: list[list[str]]) -> list[Caption]:
    """The captions with the model's attention (L, P) at the step that says each word; features (B, P, E)."""
    tokens = encode_queries([" ".join(words) for words in captions], vocabulary, max(map(len, captions)))
    with torch.no_grad():
        _, alphas = model(features, tokens)  # (B, T-1, P): step i says word i
    return [Caption(words, alphas[row, :len(words)], 0.0) for row, words in enumerate(captions)]


def opening(words: list[str]) -> str:
    """How a caption opens: its first two words, or `a ...` for the captions that start with the object."""
    return "a ..." if words[0] == "a" else " ".join(words[:2]) + " ..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=Path, nargs="+", default=[Path("data/train/best.pt"),
                                                                         Path("data/scst/best.pt")])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset, encoder, config = load_section(DatasetConfig), load_section(EncoderConfig), load_section(EvaluateConfig)
    references = references_by_image(read_captions(dataset.table, config.split))
    names = sorted(references)
    boxes = object_boxes(config, names, Path(dataset.images))
    if boxes is None:
        raise SystemExit("evaluate.objects is null: attention correctness needs the demo's object boxes")
    objects, sizes, words = boxes
    predictions = json.loads((Path(config.out_dir) / "predictions.json").read_text(encoding="utf-8"))
    sets: dict[str, dict[str, list[str]]] = {}  # caption set -> {key: words}, key "image#n"
    for key, label in (("cross_entropy", "the cross-entropy model's captions"), ("caption", "the final captions")):
        if key in predictions[0]:
            sets[label] = {f"{p['image']}#0": p[key].split() for p in predictions}
    by_opening: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for name in names:
        for n, reference in enumerate(references[name]):
            by_opening[f"references opening {opening(reference.split())}"][f"{name}#{n}"] = reference.split()
    sets.update(sorted(by_opening.items(), key=lambda item: -len(item[1])))
    store = FeatureStore(encoder.cache)
    features = FeatureMatrix(store, names, torch.device("cpu"))
    print(f"attention correctness (colour / shape words), teacher-forced; {len(names)} {config.split} images")
    for checkpoint in args.checkpoints:
        model, vocabulary, _ = load_checkpoint(checkpoint, torch.device("cpu"))
        model.eval()
        print(f"{checkpoint}:")
        for label, captions in sets.items():
            image = {key: key.split("#")[0] for key in captions}
            forced = dict(zip(captions, teacher_forced(model, vocabulary, features[features.rows_of(list(
                image.values()))], list(captions.values()))))
            scores = attention_correctness(forced, {k: objects[image[k]] for k in captions},
                                           {k: sizes[image[k]] for k in captions}, words)
            print(f"  on {label} ({len(captions)}): {scores['attention_correctness']:.3f} "
                  f"({scores['attention_correctness_colour']:.3f} / {scores['attention_correctness_shape']:.3f})")


if __name__ == "__main__":
    main()
