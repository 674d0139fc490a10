"""From features to words: batched beam search, then token ids to words through the vocabulary.

The one decode path used by evaluate, train's validation, the caption command, search and the web
page, so every caption in the project is made and spelt the same way.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import CaptionDecoder
from pipeline.text import Vocabulary


@dataclasses.dataclass
class Caption:
    """A generated caption: its words, the attention (L, P) behind each word, and its score."""

    words: list[str]
    attention: torch.Tensor
    score: float

    @property
    def text(self) -> str:
        return " ".join(self.words)


def search_options(vocabulary: Vocabulary, beam_size: int, max_length: int, length_penalty: float = 0.0,
                   no_repeat_ngram: int = 0, allow_unk: bool = False) -> SearchOptions:
    """Beam search options that never emit PAD or START, nor UNK unless `allow_unk`."""
    banned = (vocabulary.pad, vocabulary.start) + (() if allow_unk else (vocabulary.unk,))
    return SearchOptions(beam_size, max_length, length_penalty, no_repeat_ngram, banned)


def describe(model: CaptionDecoder, features: torch.Tensor, vocabulary: Vocabulary,
             options: SearchOptions) -> list[Caption]:
    """Captions of a batch of features (B, P, E), in eval mode (the model's mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        found = beam_search(model, features, vocabulary.start, vocabulary.end, options)
    finally:
        model.train(was_training)
    captions = []
    for hypothesis in found:
        kept = [i for i, token in enumerate(hypothesis.tokens) if token not in (vocabulary.start, vocabulary.pad)]
        captions.append(Caption(vocabulary.decode(hypothesis.tokens), hypothesis.attention[kept], hypothesis.score))
    return captions


def describe_all(model: CaptionDecoder, names: Sequence[str], features_of: Callable[[Sequence[str]], torch.Tensor],
                 vocabulary: Vocabulary, options: SearchOptions, batch_size: int) -> dict[str, Caption]:
    """{name: caption} for many images, `batch_size` at a time; features_of(names) -> (B, P, E)."""
    captions: dict[str, Caption] = {}
    for start in range(0, len(names), batch_size):
        chunk = list(names[start:start + batch_size])
        captions.update(zip(chunk, describe(model, features_of(chunk), vocabulary, options)))
    return captions
