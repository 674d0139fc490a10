"""Caption a split with the trained checkpoint and time it: what `evaluate` does, without Java.

`evaluate` scores with pycocoevalcap, whose METEOR and tokenizer need Java; a machine without it
(the GPU machine of benchmarks/gpu_run.sh) still measures the decoding: batched beam search over
the split's cached features, greedy too, and BLEU-4 (pure Python), with the params of the run.

    PIPELINE_PARAMS=params.yaml python -m benchmarks.caption_split
"""
from __future__ import annotations

import time

import torch

from pipeline.config import DatasetConfig, EncoderConfig, EvaluateConfig, TrainConfig, load_section
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.evaluation.scoring import bleu4
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import load_checkpoint
from pipeline.runtime import resolve_device


def main() -> None:
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    train_config, config = load_section(TrainConfig), load_section(EvaluateConfig)
    device = resolve_device(config.device)
    model, vocabulary, payload = load_checkpoint(train_config.checkpoint, device)
    references = references_by_image(read_captions(dataset.table, config.split))
    names = sorted(references)
    features = FeatureMatrix(FeatureStore(encoder_config.cache), names, device)

    def features_of(chunk: list[str]) -> torch.Tensor:
        return features[features.rows_of(chunk)]

    max_length = model.config.max_caption_length
    for beam_size in (config.beam_size, 1):
        options = search_options(vocabulary, beam_size, max_length, config.length_penalty, config.no_repeat_ngram,
                                 config.allow_unk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        captions = describe_all(model, names, features_of, vocabulary, options, config.batch_size)
        seconds = time.perf_counter() - started
        score = bleu4(references, {name: captions[name].text for name in names})
        print(f"caption_split: {len(names)} {config.split} images, beam {beam_size}, batches of {config.batch_size}: "
              f"{seconds:.1f} s ({len(names) / seconds:.0f} captions/s), BLEU-4 {score:.3f}; "
              f"e.g. {names[0]}: {captions[names[0]].text!r}", flush=True)


if __name__ == "__main__":
    main()
