"""Ranking images for a text query with the captioner itself: how likely is the query given each image?

    score(q, i) = log p(q | i) = sum over the query's words and END of log p(w_t | w_<t, image i)

The query is normalised like every caption (`pipeline.text.normalise`), encoded with the
checkpoint's vocabulary (unknown words become <unk>) and teacher-forced through the decoder in
eval mode from the image's cached features: the same function as `CaptionDecoder.forward` with
dropout off, run through the decoder's start/advance interface so that each image's features are
standardised and projected once for all the queries scored against it, and queries that begin
with the same words share the decoder steps of those words for the same image. Pairs are scored
in blocks of `batch_size`, sorted by image and then by the query's words.

Two corrections of the raw score (combined by `corrected`):
- the query prior, log p(q | context): the query's likelihood given the mean of the gallery's
  features ("mean") or given features at the training mean, i.e. no evidence at all ("blank").
  Subtracting it makes the score a pointwise mutual information (nats the image adds to the
  query). It is a per-query constant: each query's ranking of images stays exactly as it was,
  while scores become comparable across queries (the scores shown, a threshold, ranking
  captions for an image);
- the image prior: the image's mean log-likelihood of a bank of captions (the gallery's own
  generated captions). An image that explains every caption fairly well (a generic picture) has a
  high one; subtracting a weight of it lowers such images for every query.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from pipeline.errors import InputError
from pipeline.model.decoder import CaptionDecoder
from pipeline.text import Vocabulary, normalise, tokenize

FeaturesOf = Callable[[np.ndarray], torch.Tensor]  # image rows (U,) -> features (U, P, E)


class QueryError(InputError):
    """A query that cannot be scored: no words once normalised."""


def encode_queries(queries: Sequence[str], vocabulary: Vocabulary, max_length: int) -> torch.Tensor:
    """Token ids (Q, T) = [START, w1..wn, END, PAD...], at most `max_length` words each."""
    encoded = []
    for query in queries:
        words = tokenize(normalise(query))
        if not words:
            raise QueryError(f"query {query!r} has no words; type some words to search for")
        encoded.append(vocabulary.encode(words, max_length))
    tokens = torch.full((len(encoded), max(map(len, encoded), default=2)), vocabulary.pad, dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, :len(ids)] = torch.tensor(ids)
    return tokens  # (Q, T)


def unknown_words(query: str, vocabulary: Vocabulary) -> list[str]:
    """The query's words that the model has never seen (they are scored as <unk>)."""
    return [word for word in tokenize(normalise(query)) if word not in vocabulary]


@contextlib.contextmanager
def evaluating(model: CaptionDecoder) -> Iterator[None]:
    """Eval mode and no autograd for the block; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def log_likelihood(model: CaptionDecoder, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed log-probabilities (B,) of tokens[:, 1:] (words and END; PAD ignored) given one image.

    features (P, E) of the image; tokens (B, T) = [START, w1..wn, END, PAD...]. Sequences that start
    with the same words share the decoder steps of those words: each distinct prefix is advanced
    once, and the image's standardised features are shared (broadcast), not copied, across rows.
    """
    pad = model.config.pad_index
    start = model.start(features[None])  # 1 row
    h, c = start.h, start.c  # (N, H): one row per distinct prefix decoded so far
    total = torch.zeros(tokens.size(0), device=tokens.device)  # (B,)
    node = torch.zeros(tokens.size(0), dtype=torch.long, device=tokens.device)  # (B,) each sequence's prefix row
    for t in range(1, tokens.size(1)):
        target = tokens[:, t]  # (B,)
        live = (target != pad).nonzero().squeeze(1)  # (L,) sequences with a word (or END) still to score
        if not len(live):
            break
        # the next state depends on the prefix's state and the word fed: compute each distinct pair once
        keys = torch.stack([node[live], tokens[live, t - 1]], dim=1)  # (L, 2)
        unique, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (U, 2), (L,)
        state = dataclasses.replace(start, h=h[unique[:, 0]], c=c[unique[:, 0]])  # one image, U rows of it
        log_probs, _, state = model.advance(state, unique[:, 1])  # (U, V)
        h, c = state.h, state.c
        total[live] += log_probs[inverse, target[live]]
        node[live] = inverse  # finished sequences keep stale rows: they are never live again
    return total


class LikelihoodScorer:
    """log p(query | image) for (query, image) pairs, in blocks, from a decoder and image features."""

    def __init__(self, model: CaptionDecoder, vocabulary: Vocabulary, features_of: FeaturesOf,
                 device: torch.device, batch_size: int = 256) -> None:
        self.model, self.vocabulary, self.features_of = model, vocabulary, features_of
        self.device, self.batch_size = device, batch_size

    def tokens(self, queries: Sequence[str]) -> torch.Tensor:
        """Token ids (Q, T) of the queries; QueryError for an empty one."""
        return encode_queries(queries, self.vocabulary, self.model.config.max_caption_length)

    def pairs(self, tokens: torch.Tensor, query_rows: np.ndarray, image_rows: np.ndarray) -> np.ndarray:
        """Scores (M,) of the pairs (tokens[query_rows[m]], image image_rows[m])."""
        query_rows, image_rows = np.asarray(query_rows, dtype=np.int64), np.asarray(image_rows, dtype=np.int64)
        lengths = (tokens != self.vocabulary.pad).sum(dim=1).numpy()  # (Q,)
        # by image, then by the query's words: each image's queries with common prefixes lie together
        order = np.lexsort((*tokens.numpy()[query_rows].T[::-1], image_rows))
        scores = np.empty(len(order), dtype=np.float64)
        images, first = np.unique(image_rows[order], return_index=True)
        bounds = [*first.tolist(), len(order)]
        with evaluating(self.model):
            for group in range(0, len(images), self.batch_size):  # read the features of a few images at once
                chunk = self.features_of(images[group:group + self.batch_size]).to(self.device)  # (G, P, E)
                for offset, features in enumerate(chunk):
                    pairs = order[bounds[group + offset]:bounds[group + offset + 1]]
                    length = int(lengths[query_rows[pairs]].max())
                    image_tokens = tokens[query_rows[pairs], :length].to(self.device)  # (B, T)
                    scores[pairs] = log_likelihood(self.model, features, image_tokens).double().cpu().numpy()
        return scores

    def matrix(self, tokens: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """Scores (Q, C) of each query against its candidate images candidates (Q, C)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        query_rows = np.repeat(np.arange(candidates.shape[0]), candidates.shape[1])
        return self.pairs(tokens, query_rows, candidates.reshape(-1)).reshape(candidates.shape)

    def given(self, tokens: torch.Tensor, features: torch.Tensor) -> np.ndarray:
        """Scores (Q,) of each query given one context's features (P, E)."""
        with evaluating(self.model):
            return log_likelihood(self.model, features.to(self.device), tokens.to(self.device)).double().cpu().numpy()


def blank_features(model: CaptionDecoder, num_regions: int) -> torch.Tensor:
    """Features (P, E) that the decoder standardises to zero: no evidence about the image."""
    return model.feature_mean.detach().float().cpu().expand(num_regions, -1).clone()


def caption_bank(captions: Sequence[str], size: int) -> list[str]:
    """Up to `size` distinct non-empty captions, spread evenly over their sorted list (deterministic)."""
    distinct = sorted({normalise(text) for text in captions} - {""})
    if len(distinct) <= size:
        return distinct
    return [distinct[i] for i in np.linspace(0, len(distinct) - 1, size).round().astype(int)]


def image_prior(scorer: LikelihoodScorer, bank: Sequence[str], images: np.ndarray) -> np.ndarray:
    """Each image's mean log-likelihood (U,) of the bank's captions."""
    images = np.asarray(images, dtype=np.int64)
    if not bank or not len(images):
        return np.zeros(len(images))
    tokens = scorer.tokens(bank)
    query_rows = np.tile(np.arange(len(bank)), len(images))
    image_rows = np.repeat(images, len(bank))
    return scorer.pairs(tokens, query_rows, image_rows).reshape(len(images), len(bank)).mean(axis=1)


def corrected(raw: np.ndarray, query_prior: np.ndarray | None = None, prior_weight: float = 1.0,
              image_prior_: np.ndarray | None = None, image_weight: float = 0.0) -> np.ndarray:
    """raw (Q, C) - prior_weight * query_prior (Q, 1) - image_weight * image_prior (Q, C) of the same images."""
    score = np.asarray(raw, dtype=np.float64).copy()
    if query_prior is not None and prior_weight:
        score -= prior_weight * np.asarray(query_prior, dtype=np.float64).reshape(-1, 1)
    if image_prior_ is not None and image_weight:
        score -= image_weight * np.asarray(image_prior_, dtype=np.float64)
    return score
