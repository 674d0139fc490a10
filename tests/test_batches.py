"""Captions as padded index tensors, and length-bucketed batches of them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.text import SPECIAL_TOKENS, Vocabulary
from pipeline.training.batches import bucket_batches, encode_captions


def test_bucket_batches_cover_every_caption_once_with_similar_lengths() -> None:
    lengths = torch.randint(3, 20, (1000,), generator=torch.Generator().manual_seed(0))
    batches = bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    # within a batch, lengths span far less than over random batches of the same size
    spread = np.mean([int(lengths[b].max() - lengths[b].min()) for b in batches])
    assert spread < 3
    again = bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_encode_captions_pads_and_maps_images() -> None:
    vocabulary = Vocabulary((*SPECIAL_TOKENS, "a", "red", "circle"))
    table = pd.DataFrame({"image": ["x.png", "y.png"], "caption": ["a red circle", "a blue circle"]})
    encoded = encode_captions(table, vocabulary, {"x.png": 5, "y.png": 7}, max_words=30)
    assert encoded.tokens.tolist() == [[1, 4, 5, 6, 2], [1, 4, 3, 6, 2]]  # blue -> UNK
    assert encoded.lengths.tolist() == [5, 5]
    assert encoded.image_rows.tolist() == [5, 7]
    assert len(encoded) == 2
    short = encode_captions(table, vocabulary, {"x.png": 0, "y.png": 1}, max_words=2)
    assert short.tokens[0].tolist() == [1, 4, 5, 2]
    mixed = encode_captions(pd.DataFrame({"image": ["x.png", "y.png"], "caption": ["a", "a red circle"]}),
                            vocabulary, {"x.png": 0, "y.png": 1}, max_words=30)
    assert mixed.tokens.tolist() == [[1, 4, 2, 0, 0], [1, 4, 5, 6, 2]]  # padded with PAD (0)
    assert mixed.lengths.tolist() == [3, 5]
