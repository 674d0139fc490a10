"""The dataset's own images as a search gallery: features from the feature cache (no second
extraction), captions generated once per checkpoint and kept in `retrieval.captions`.

The caption file is a cache: {"checkpoint_sha256", "options": beam search settings, "captions":
{image: caption}}; captions made by another checkpoint or other settings are made again.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import DatasetConfig, EncoderConfig, EvaluateConfig, RetrievalConfig, load_section
from pipeline.datasets.table import read_captions
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.resnet import file_sha256
from pipeline.files import write_json
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import check_features
from pipeline.model.decoder import CaptionDecoder
from pipeline.retrieval.ranking import Gallery
from pipeline.text import Vocabulary

logger = logging.getLogger(__name__)


def read_cache(path: Path) -> dict:
    """The caption cache, or {} when there is none or it cannot be read (said: its captions are made again)."""
    if not path.is_file():
        return {}
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # cut off, not JSON, not UTF-8
        logger.info(f"search: {path} is unreadable ({error}); making it again")
        return {}
    captions = cached.get("captions") if isinstance(cached, dict) else None
    if not isinstance(captions, dict) or not all(isinstance(text, str) for text in captions.values()):
        logger.info(f"search: {path} is not a caption cache; making it again")
        return {}
    return cached


def dataset_gallery(model: CaptionDecoder, vocabulary: Vocabulary, checkpoint: Path, encoder: Mapping[str, Any],
                    device: torch.device) -> Gallery:
    """Every image of the prepared table, all splits, with its cached features and generated caption.

    `encoder` is the checkpoint's record of its features' encoder: a cache made otherwise is refused."""
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    evaluate_config, config = load_section(EvaluateConfig), load_section(RetrievalConfig)
    names = sorted(set(read_captions(dataset.table)["image"]))
    store = FeatureStore(encoder_config.cache)
    check_features(model, encoder, store.path, store.attrs, store.feature_dim)
    rows = np.array(store.rows_of(names), dtype=np.int64)
    options = search_options(vocabulary, evaluate_config.beam_size, model.config.max_caption_length,
                             evaluate_config.length_penalty, evaluate_config.no_repeat_ngram, evaluate_config.allow_unk)
    key = {"checkpoint_sha256": file_sha256(Path(checkpoint)),
           "options": [options.beam_size, options.length_penalty, options.no_repeat_ngram, list(options.banned)]}
    path = Path(config.captions)
    cached = read_cache(path)
    captions: dict[str, str] = cached.get("captions", {}) if {k: cached.get(k) for k in key} == key else {}
    todo = [name for name in names if name not in captions]
    if todo:
        logger.info(f"search: captioning {len(todo)} images once (kept in {path})")

        def features_of(chunk: list[str]) -> torch.Tensor:
            return store[rows[np.searchsorted(names, chunk)]].to(device)

        found = describe_all(model, todo, features_of, vocabulary, options, evaluate_config.batch_size)
        captions.update((name, caption.text) for name, caption in found.items())
        write_json(path, {**key, "captions": captions})
    images = Path(dataset.images)
    return Gallery(names, [images / name for name in names], [captions[name] for name in names], store, rows)
