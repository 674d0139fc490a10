"""Captions as tensors over the cached features, batching, feature statistics, batched captioning.

Shared by train and evaluate. Dimension names as in `pipeline.model` (M captions, N images).
"""
from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from pipeline.feature_store import FeatureStore
from pipeline.text import Vocabulary, tokenize

if TYPE_CHECKING:
    from pipeline.model import CaptionDecoder

BUCKET_BATCHES = 50  # captions are sorted by length within windows of this many batches


@dataclasses.dataclass
class EncodedCaptions:
    """Captions of one split as padded index tensors."""

    tokens: torch.Tensor  # (M, T) [START, w1..wn, END, PAD...]
    lengths: torch.Tensor  # (M,) tokens including START and END
    image_rows: torch.Tensor  # (M,) row of each caption's image in the feature matrix

    def __len__(self) -> int:
        return int(self.lengths.numel())


def encode_captions(captions: pd.DataFrame, vocabulary: Vocabulary, image_rows: dict[str, int],
                    max_words: int) -> EncodedCaptions:
    """Encode a captions table (image, caption) with the vocabulary, at most `max_words` words each."""
    missing = sorted(set(captions["image"]) - set(image_rows))
    if missing:
        raise KeyError(f"{len(missing)} captioned images have no cached features (first: {missing[:3]}); "
                       "the features file is out of date: run `dvc repro features`")
    encoded = [vocabulary.encode(tokenize(c), max_words) for c in captions["caption"]]
    lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
    tokens = torch.full((len(encoded), int(lengths.max()) if encoded else 2), vocabulary.pad, dtype=torch.long)
    for i, sequence in enumerate(encoded):
        tokens[i, : len(sequence)] = torch.tensor(sequence)
    rows = torch.tensor([image_rows[name] for name in captions["image"]], dtype=torch.long)
    return EncodedCaptions(tokens, lengths, rows)


def bucket_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of caption indices whose lengths are close, so few steps are padding."""
    order = torch.randperm(len(lengths), generator=generator)
    batches: list[torch.Tensor] = []
    for window in order.split(batch_size * BUCKET_BATCHES):
        window = window[lengths[window].argsort(stable=True)]
        batches.extend(window.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def references_by_image(captions: pd.DataFrame) -> dict[str, list[str]]:
    """{image: [its normalised captions]} in file order."""
    return {name: list(group) for name, group in captions.groupby("image", sort=True)["caption"]}


def available_memory(device: torch.device) -> int:
    """Bytes free on the device (GPU memory, or the host RAM available for a CPU run)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class FeatureMatrix:
    """The features of a set of images, resident on the device when they fit, else read per batch."""

    def __init__(self, store: FeatureStore, names: Sequence[str], device: torch.device,
                 memory_fraction: float = 0.5) -> None:
        self.store, self.device = store, device
        self.names = sorted(set(names))
        self.rows = {name: i for i, name in enumerate(self.names)}  # local row of each image
        self._store_rows = np.array(store.rows_of(self.names))
        self.resident = store.fits_in_memory(int(memory_fraction * available_memory(device)), len(self.names))
        self._data = store.load(self._store_rows).to(device) if self.resident else None  # (N, P, E)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        """Features (B, P, E) of local rows, on the device, in their stored dtype."""
        if self._data is not None:
            return self._data[rows.to(self.device)]
        wanted = self._store_rows[rows.cpu().numpy()]
        return self.store[wanted].to(self.device, non_blocking=True)

    def statistics(self, rows: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (E,) over all regions of the given images, in float64."""
        total = torch.zeros(self.store.feature_dim, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        count = 0
        for part in rows.unique().split(chunk):
            x = self[part].double().flatten(0, 1)  # (B*P, E)
            total += x.sum(0)
            squares += (x * x).sum(0)
            count += x.size(0)
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), std.float()


def caption_images(model: "CaptionDecoder", features: FeatureMatrix, names: Sequence[str], vocabulary: Vocabulary,
                   beam_size: int, max_length: int, batch_size: int) -> dict[str, tuple[list[str], torch.Tensor]]:
    """{image: (words, attention (L, P))} by batched beam search (greedy with beam_size 1)."""
    model.eval()
    results = {}
    for start in range(0, len(names), batch_size):
        chunk = list(names[start:start + batch_size])
        rows = torch.tensor([features.rows[n] for n in chunk])
        tokens, alphas, _ = model.generate(features[rows], vocabulary.start, vocabulary.end, beam_size, max_length)
        for name, sequence, alpha in zip(chunk, tokens, alphas):
            results[name] = ([vocabulary.words[i] for i in sequence], alpha)
    return results
