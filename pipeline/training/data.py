"""What the training stages read: the vocabulary, the features of the train and val images, and their
captions encoded, with the validation references. Shared by `train` and `scst`.

    data = load_training_data(Path(dataset.table), vocabulary, Path(encoder.cache), max_words, device)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import torch

from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.errors import ConfigError, InputError
from pipeline.text import Vocabulary, tokenize
from pipeline.training.batches import EncodedCaptions, encode_captions


@dataclasses.dataclass
class TrainingData:
    """The training and validation split, ready for the epoch loop."""

    vocabulary: Vocabulary
    store: FeatureStore  # the cache file, for its attrs and feature size
    features: FeatureMatrix  # the train and val images' features, resident or streamed
    train_set: EncodedCaptions
    val_set: EncodedCaptions
    train_references: dict[str, list[str]]  # {image: its normalised training captions}
    val_references: dict[str, list[str]]
    cut: int  # training captions longer than the model's max_caption_length, cut there

    @property
    def val_names(self) -> list[str]:
        """The validation images, sorted."""
        return sorted(self.val_references)

    def samples(self, hypotheses: dict[str, str], count: int) -> list[str]:
        """The first `count` validation images' captions beside a reference, for the epoch's log."""
        return [f"{n}: {hypotheses[n]}  (ref: {self.val_references[n][0]})" for n in self.val_names[:count]]



def captions_cut(captions: pd.Series, max_words: int) -> int:
    """How many captions have more than `max_words` words; ConfigError when that is most of them (the model
    would learn to stop mid-caption), naming the length that keeps 95% of them whole."""
    words = captions.map(lambda caption: len(tokenize(caption)))
    cut = int((words > max_words).sum())
    if 2 * cut > len(words):
        whole = int(words.quantile(0.95, interpolation="higher"))
        raise ConfigError(f"model.max_caption_length is {max_words} but {cut:,} of {len(words):,} training captions "
                          f"are longer and would be cut: the model would learn to stop mid-caption; set it to at "
                          f"least {whole} (95% of the captions fit)")
    return cut


def load_training_data(table: Path, vocabulary: Vocabulary, cache: Path, max_words: int,
                       device: torch.device) -> TrainingData:
    """Read the train and val captions, encoded with `vocabulary`, and their images' features (one line errors)."""
    store = FeatureStore(cache)
    captions = read_captions(table)
    train, val = captions[captions["split"] == "train"], captions[captions["split"] == "val"]
    if train.empty or val.empty:
        raise InputError(f"{table} needs train and val captions (early stopping uses val); "
                         "check dataset.split_ratios / split_dir")
    cut = captions_cut(train["caption"], max_words)  # before the features load
    features = FeatureMatrix(store, pd.concat([train, val])["image"], device)
    return TrainingData(vocabulary, store, features, encode_captions(train, vocabulary, features.rows, max_words),
                        encode_captions(val, vocabulary, features.rows, max_words), references_by_image(train),
                        references_by_image(val), cut)
