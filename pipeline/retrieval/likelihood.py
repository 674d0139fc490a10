"""Ranking images for a text query with the captioner itself: how likely is the query given each image?

    score(q, i) = log p(q | i) = sum over the query's words and END of log p(w_t | w_<t, image i)

The query is normalised like every caption (`pipeline.text.normalise`), encoded with the
checkpoint's vocabulary (unknown words become <unk>) and teacher-forced through the decoder in
eval mode from the image's cached features: the same function as `CaptionDecoder.forward` with
dropout off, run through the decoder's start/advance interface (`teacher_forced`). Pairs are
grouped by image, about `batch_size` to a group: each image's features are standardised and
projected once for all the queries scored against it, every decoder step advances all the pairs
of the group in one batch laid out (images, K) as `DecoderState` defines it (the output layer and
its log-softmax one product for them all), and queries that begin with the same words share the
decoder steps of those words for the same image.

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
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from pipeline.errors import InputError
from pipeline.model.decoder import CaptionDecoder, DecoderState
from pipeline.model.int8 import quantised
from pipeline.text import Vocabulary, normalise, tokenize

MAX_IMAGES = 256  # images whose features are held at once: (G, P, E) float32, 100 MB at seed sizes
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


def _layout(unique: torch.Tensor, vocab_size: int, beams: int, pad: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """Where the step's distinct (prefix row, word) keys go: the next state laid out (images, K).

    unique (U,) sorted keys row * V + word over the current state's caption rows (laid out with
    `beams` rows per image). Each image that still has keys gets K = the most keys of one image;
    the rows it does not fill repeat its first key's row and feed `pad` (computed, never read).
    Returns rows (N'K,) to select, words (N'K,) to feed, each key's new row (U,), the images kept
    (None: all) and N'.
    """
    rows, words = unique // vocab_size, unique % vocab_size  # (U,), (U,)
    image = rows // beams  # (U,) in the current state; sorted, since the keys are
    kept, counts = torch.unique_consecutive(image, return_counts=True)  # (N',), (N',)
    K = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts  # (N',) each kept image's first key
    which = torch.repeat_interleave(torch.arange(len(kept), device=unique.device), counts)  # (U,)
    placed = which * K + torch.arange(len(unique), device=unique.device) - starts[which]  # (U,)
    selected = rows[starts].repeat_interleave(K)  # (N'K,) filler: a row of the same image
    selected[placed] = rows
    fed = torch.full_like(selected, pad)
    fed[placed] = words
    return selected, fed, placed, kept, len(kept)


def teacher_forced(model: CaptionDecoder, state: DecoderState, images: torch.Tensor, tokens: torch.Tensor,
                   gate_table: torch.Tensor | None = None) -> torch.Tensor:
    """Summed log-probabilities (B,) of tokens[:, 1:] (words and END; PAD ignored), float64.

    state: from `model.start` (one caption row per image); images (B,) each sequence's image row in
    it; tokens (B, T) = [START, w1..wn, END, PAD...]. Every step advances the distinct (image,
    prefix) states of all the images at once, as one batch laid out (images, K): sequences that
    start with the same words on the same image share those steps, and the images' features are
    shared by their rows, never copied per row. gate_table: the model's `word_gate_table()`, if the
    caller keeps one.
    """
    pad, vocab_size = model.config.pad_index, model.config.vocab_size
    total = torch.zeros(tokens.size(0), dtype=torch.float64, device=tokens.device)  # (B,)
    node = images.to(tokens.device).clone()  # (B,) each sequence's caption row in `state`
    beams = 1  # K, the state's caption rows per image row
    for t in range(1, tokens.size(1)):
        target = tokens[:, t]  # (B,)
        live = (target != pad).nonzero().squeeze(1)  # (L,) sequences with a word (or END) still to score
        if not len(live):
            break
        # the next state depends on the prefix's state and the word fed: compute each distinct pair once
        keys = node[live] * vocab_size + tokens[live, t - 1]  # (L,)
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)  # (U,), (L,)
        rows, words, placed, kept, count = _layout(unique, vocab_size, beams, pad)
        state = state.select_beams(rows, None if count * beams == state.h.size(0) else kept)  # all images kept: shared
        log_probs, _, state = model.advance(state, words, gate_table)  # (N'K, V)
        beams = len(rows) // count
        node[live] = placed[inverse]  # finished sequences keep stale rows: they are never live again
        total[live] += log_probs[node[live], target[live]].double()
    return total


def image_groups(counts: np.ndarray, batch_size: int, max_images: int = MAX_IMAGES) -> list[tuple[int, int]]:
    """Consecutive [first, last) runs of images with at most `batch_size` pairs in all (counts (U,) per
    image) and at most `max_images` images; an image with more pairs is a run of its own."""
    groups, first, total = [], 0, 0
    for image, count in enumerate(counts.tolist()):
        if image > first and (total + count > batch_size or image - first == max_images):
            groups.append((first, image))
            first, total = image, 0
        total += count
    if len(counts):
        groups.append((first, len(counts)))
    return groups


class LikelihoodScorer:
    """log p(query | image) for (query, image) pairs from a decoder and image features.

    Pairs are grouped by image, about `batch_size` pairs (and at most MAX_IMAGES images) to a group:
    each image's features are read, standardised and projected once, and all the pairs of a group
    advance together, one decoder step for all of them (an image with more pairs than `batch_size`
    is a group of its own, its pairs scored `batch_size` at a time from the one projection). With
    `precision` bf16, the decoder runs under bf16 autocast; with int8, a copy of it with int8 products
    (`pipeline.model.int8`); log-probabilities stay float32 (docs/search.md says what each changes).
    With `progress`, a progress bar of that name over the pairs.
    The model's weights are read as they are at the first scoring: every word's part of the LSTM
    gates is computed then, once, for all the scorer's steps (`CaptionDecoder.word_gate_table`).
    """

    def __init__(self, model: CaptionDecoder, vocabulary: Vocabulary, features_of: FeaturesOf,
                 device: torch.device, batch_size: int, precision: str = "fp32", progress: str | None = None) -> None:
        self.model = quantised(model) if precision == "int8" else model
        self.vocabulary, self.features_of = vocabulary, features_of
        self.device, self.batch_size, self.precision, self.progress = device, batch_size, precision, progress
        self._gate_table: torch.Tensor | None = None

    def gate_table(self) -> torch.Tensor:
        """The model's `word_gate_table()` (V, 4H), in the scorer's precision, computed at the first call."""
        if self._gate_table is None:
            with evaluating(self.model), self._autocast():
                self._gate_table = self.model.word_gate_table()
        return self._gate_table

    def _autocast(self) -> torch.autocast:
        """bf16 autocast for `precision` bf16, else a context that changes nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def tokens(self, queries: Sequence[str]) -> torch.Tensor:
        """Token ids (Q, T) of the queries; QueryError for an empty one."""
        return encode_queries(queries, self.vocabulary, self.model.config.max_caption_length)

    def _blocks(self, state: DecoderState, images: np.ndarray, tokens: torch.Tensor, bar: tqdm) -> np.ndarray:
        """Scores (B,) of sequences tokens (B, T) on rows `images` (B,) of `state`, `batch_size` at a time."""
        scores = np.empty(len(tokens), dtype=np.float64)
        for start in range(0, len(tokens), self.batch_size):
            block = slice(start, start + self.batch_size)
            length = int((tokens[block] != self.vocabulary.pad).sum(dim=1).max())
            with self._autocast():
                scores[block] = teacher_forced(self.model, state, torch.as_tensor(images[block], device=self.device),
                                               tokens[block, :length].to(self.device), self.gate_table()).cpu().numpy()
            bar.update(len(scores[block]))
        return scores

    def _bar(self, total: int) -> tqdm:
        """A progress bar over `total` pairs when the scorer has a `progress` name, else a silent one."""
        return tqdm(total=total, disable=self.progress is None, desc=self.progress, unit="pair", unit_scale=True,
                    mininterval=1.0, leave=False)

    def pairs(self, tokens: torch.Tensor, query_rows: np.ndarray, image_rows: np.ndarray) -> np.ndarray:
        """Scores (M,) of the pairs (tokens[query_rows[m]], image image_rows[m])."""
        query_rows, image_rows = np.asarray(query_rows, dtype=np.int64), np.asarray(image_rows, dtype=np.int64)
        scores = np.empty(len(query_rows), dtype=np.float64)
        images, of_pair, counts = np.unique(image_rows, return_inverse=True, return_counts=True)  # (U,), (M,), (U,)
        # images with about as many pairs side by side: a step pads each image to its group's most rows
        by_count = np.argsort(-counts, kind="stable")  # (U,)
        place = np.empty_like(by_count)
        place[by_count] = np.arange(len(by_count))  # (U,) each image's place in that order
        order = np.argsort(place[of_pair], kind="stable")  # (M,) the pairs, image after image
        bounds = np.concatenate([[0], np.cumsum(counts[by_count])])  # (U + 1,) each image's pairs in `order`
        with evaluating(self.model), self._bar(len(order)) as bar:
            for first, last in image_groups(counts[by_count], self.batch_size):
                features = self.features_of(images[by_count[first:last]]).to(self.device)  # (G, P, E)
                with self._autocast():
                    state = self.model.start(features)  # each image standardised and projected once
                group = order[bounds[first]:bounds[last]]  # (n,) its pairs
                scores[group] = self._blocks(state, place[of_pair[group]] - first, tokens[query_rows[group]], bar)
        return scores

    def matrix(self, tokens: torch.Tensor, candidates: np.ndarray) -> np.ndarray:
        """Scores (Q, C) of each query against its candidate images candidates (Q, C)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        query_rows = np.repeat(np.arange(candidates.shape[0]), candidates.shape[1])
        return self.pairs(tokens, query_rows, candidates.reshape(-1)).reshape(candidates.shape)

    def given(self, tokens: torch.Tensor, features: torch.Tensor) -> np.ndarray:
        """Scores (Q,) of each query given one context's features (P, E)."""
        with evaluating(self.model), self._bar(len(tokens)) as bar:
            with self._autocast():
                state = self.model.start(features[None].to(self.device))  # 1 image
            return self._blocks(state, np.zeros(len(tokens), dtype=np.int64), tokens, bar)


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
