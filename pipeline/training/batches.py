"""Captions as padded index tensors, and length-bucketed batches of them.

Dimension names as in `pipeline.model.decoder` (M captions, T tokens).
"""
from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from pipeline.text import Vocabulary, tokenize

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
    """Encode a captions table (image, caption) with the vocabulary, at most `max_words` words each.

    `image_rows` holds every captioned image: the feature matrix it comes from refused any without features."""
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
