"""CIDEr-D on token ids, in the process and vectorised: the reward of self-critical training.

    scorer = CiderD(references)              # references[i]: image i's captions, each a token-id sequence
    rewards = scorer.score(candidates, images)  # (C,) float64: candidates[c] against references[images[c]]
    corpus_cider(candidates, references)     # one candidate per image, pycocoevalcap's way

It equals pycocoevalcap's `Cider` (1.2, `cider/cider_scorer.py`, which is CIDEr-D: clipped tf-idf and
a length penalty) on the same captions written as words joined by spaces, to rounding:
- n-grams of orders 1..n, term frequency = count in the caption;
- document frequency df(g) = the number of images whose references hold g (several references of one
  image count once); idf(g) = log(number of images) - log(max(1, df(g))), so an n-gram no reference
  holds gets the full log(number of images);
- per order, the clipped cosine sum_g min(h_g, r_g) r_g / (|h| |r|), with h, r the tf-idf vectors of
  the candidate and of one reference; pycocoevalcap divides only when both norms are non-zero (when
  one is zero the sum is zero too);
- a Gaussian length penalty exp(-(l_h - l_r)^2 / (2 sigma^2)), where pycocoevalcap's "length" of a
  caption is its number of bigrams (words - 1, 0 for an empty caption; always 0 when n = 1);
- the score: 10 x the mean over orders of the sum over the image's references, divided by their number
  (orders a caption is too short for count as 0).
pycocoevalcap 1.2 counts n-grams up to 4 whatever its `n`; for n != 4 this is its computation with
its counting taken to n.

Document frequencies come from the references the scorer is built with, once. Built from the
training references, it gives self-critical training's rewards; built from the references of exactly
the images being scored (`corpus_cider`), it is what pycocoevalcap computes for that set.

The end token: the scorer counts whatever ids it is given; the caller decides. Self-critical training
strips START and padding and appends the END id to every candidate and every reference (to the
references once, when the scorer is built). Without END, a fragment that stops mid-phrase ("a dog
runs in the") holds only n-grams the references hold too and loses little, so a model learns that
trailing off in "a", "the" or "with" costs nothing: such fragments gain up to +4.1 CIDEr-D (Hu et
al., "A request for clarity over the End of Sequence token in the Self-Critical Sequence Training",
2023). With END, the n-grams across a premature end ("the <end>", "in the <end>") match no reference,
and those that end a reference ("grass <end>") reward a finished sentence.

How it is fast: every n-gram of ids is packed into one int64 (63 // n bits per token, ids + 1, so an
n-gram's order is read from its magnitude); each image's distinct reference n-grams are one row of
a table holding their term frequency in each of the image's references (a column per reference),
with the reference norms and lengths beside it. Scoring looks each candidate n-gram up in that
table (two sorted searches) and does the clipped products for all references of its image at once.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from pipeline.errors import ConfigError

Captions = Sequence[Sequence[int]]


class VocabularyTooLargeError(ConfigError):
    """A token id does not fit the n-gram packing (63 // n bits per token)."""


def max_token_id(n: int) -> int:
    """The largest token id that n-grams of orders up to `n` can pack into one int64."""
    return (1 << (63 // n)) - 2  # ids are stored + 1, so that 0 marks "no token"


def flatten(captions: Captions, n: int) -> tuple[np.ndarray, np.ndarray]:
    """All captions' ids end to end (T,) int64, and each caption's length (C,) int64; ids checked."""
    lengths = np.fromiter(map(len, captions), dtype=np.int64, count=len(captions))
    tokens = np.fromiter(itertools.chain.from_iterable(captions), dtype=np.int64, count=int(lengths.sum()))
    if tokens.size and tokens.min() < 0:
        raise ValueError(f"token ids must be >= 0, got {tokens.min()}")
    if tokens.size and tokens.max() > max_token_id(n):
        raise VocabularyTooLargeError(
            f"token id {tokens.max()} is too large for CIDEr-D with n={n}: n-grams are packed "
            f"{63 // n} bits per token, so ids must be <= {max_token_id(n)}; use a smaller vocabulary "
            "(raise vocab.min_count in params.yaml)")
    return tokens, lengths


def ngrams(tokens: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every n-gram occurrence of orders 1..n: its caption's index and its packed key, both (G,) int64."""
    bits = 63 // n
    caption = np.repeat(np.arange(lengths.size), lengths)  # (T,) which caption each token belongs to
    room = np.repeat(np.cumsum(lengths), lengths) - np.arange(tokens.size)  # (T,) tokens left from here
    owners, keys = [], []
    key = np.zeros(tokens.size, dtype=np.int64)
    for order in range(1, n + 1):
        # the n-gram of this order starting at each position: the previous order's plus the next token
        key = key[: max(tokens.size - order + 1, 0)] | ((tokens[order - 1:] + 1) << (bits * (order - 1)))
        whole = room[: key.size] >= order  # (T - order + 1,) the n-gram ends inside its caption
        owners.append(caption[: key.size][whole])
        keys.append(key[whole])
    return np.concatenate(owners), np.concatenate(keys)


def orders(keys: np.ndarray, n: int) -> np.ndarray:
    """The order (1..n) of packed n-gram keys: one more for each filled token field above the first."""
    bits = 63 // n
    order = np.ones(keys.shape, dtype=np.int64)
    for k in range(1, n):
        order += keys >= (1 << (bits * k))
    return order


def distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values sorted, and how often each occurs (np.unique's answer, by sorting: faster)."""
    ordered = np.sort(values)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1]))) if values.size else values
    return ordered[starts], np.diff(np.append(starts, values.size))


def positions(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values sorted, and where each value lies among them (np.unique's inverse)."""
    order = np.argsort(values)
    ordered = values[order]
    new = np.concatenate(([True], ordered[1:] != ordered[:-1])) if values.size else ordered.astype(bool)
    index = np.empty(values.size, dtype=np.int64)
    index[order] = np.cumsum(new) - 1
    return ordered[new], index


def term_frequencies(owners: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct n-grams (D,) sorted, and the distinct (owner, n-gram) pairs sorted by owner then
    n-gram: owner (E,), index into the distinct n-grams (E,), count (E,)."""
    types, type_index = positions(keys)
    size = max(types.size, 1)
    pairs, counts = distinct(owners * size + type_index)
    return types, pairs // size, pairs % size, counts


def lookup(table: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each query lies in a sorted, non-empty array (clipped to a valid index), and whether it is there."""
    index = np.minimum(np.searchsorted(table, queries), table.size - 1)
    return index, table[index] == queries


def bigram_lengths(lengths: np.ndarray, n: int) -> np.ndarray:
    """pycocoevalcap's caption "length": its number of bigrams (0 for every caption when n = 1)."""
    return np.maximum(lengths - 1, 0) if n >= 2 else np.zeros_like(lengths)


class CiderD:
    """CIDEr-D of candidates against their image's references, with document frequencies computed once.

    Holds, per image, a table of its distinct reference n-grams (rows) by its references (columns,
    padded to the largest number of references of an image) of term frequencies, and per reference
    the norm of its tf-idf vector at each order and its length.
    """

    def __init__(self, references: Sequence[Captions], n: int = 4, sigma: float = 6.0):
        if n < 1 or sigma <= 0:
            raise ValueError(f"CIDEr-D needs n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
        counts = np.fromiter((len(refs) for refs in references), dtype=np.int64, count=len(references))
        if counts.size == 0 or counts.min() == 0:
            empty = "no images" if counts.size == 0 else f"image {int(np.argmin(counts))} has no references"
            raise ValueError(f"CIDEr-D needs at least one reference per image: {empty}")
        self.n, self.sigma = n, sigma
        self.num_images, self.reference_counts = counts.size, counts  # (I,)
        width = int(counts.max())  # K: columns of the table
        image_of = np.repeat(np.arange(counts.size), counts)  # (R,)
        column_of = np.arange(image_of.size) - np.repeat(np.cumsum(counts) - counts, counts)  # (R,)
        tokens, lengths = flatten([ref for refs in references for ref in refs], n)
        # the distinct n-grams of all references (D,), and each reference's (E,): type index, count
        self.types, reference, type_of, tf = term_frequencies(*ngrams(tokens, lengths, n))

        # idf: df counts images, not references
        self.rows, row_of = positions(image_of[reference] * self.types.size + type_of)  # (M,) image * D + type, (E,)
        document_frequency = np.bincount(self.rows % self.types.size, minlength=self.types.size)  # (D,)
        self.log_images = np.log(float(counts.size))
        self.idf = self.log_images - np.log(np.maximum(1.0, document_frequency))  # (D,)

        # the table: one row per (image, n-gram), one column per reference of the image
        self.table = np.zeros((self.rows.size, width), dtype=np.min_scalar_type(int(tf.max(initial=0))))
        self.table[row_of, column_of[reference]] = tf  # (M, K)
        self.row_idf = self.idf[self.rows % self.types.size]  # (M,)

        weights = (tf * self.idf[type_of]) ** 2
        norms = np.bincount(reference * n + orders(self.types[type_of], n) - 1, weights, minlength=image_of.size * n)
        self.reference_norms = np.zeros((counts.size, width, n))  # (I, K, n), 0 in padding
        self.reference_norms[image_of, column_of] = np.sqrt(norms).reshape(-1, n)
        self.reference_lengths = np.zeros((counts.size, width), dtype=np.int64)  # (I, K)
        self.reference_lengths[image_of, column_of] = bigram_lengths(lengths, n)

    def score(self, candidates: Captions, images: Sequence[int] | np.ndarray) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image: (C,) float64."""
        images = np.asarray(images, dtype=np.int64).reshape(-1)
        if images.size != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {images.size} image indices")
        if images.size and (images.min() < 0 or images.max() >= self.num_images):
            raise ValueError(f"image indices must lie in [0, {self.num_images}), got {images.min()}..{images.max()}")
        tokens, lengths = flatten(candidates, self.n)
        if self.types.size == 0:  # no reference has a word: every reference norm is 0, so is every score
            return np.zeros(images.size)
        types, candidate, type_index, tf = term_frequencies(*ngrams(tokens, lengths, self.n))  # (E,) each
        type_of, known = lookup(self.types, types)  # (D',) each: some reference holds it
        # idf; an n-gram no reference holds has df 0 and log(max(1, 0)) = 0
        hypothesis = tf * np.where(known, self.idf[type_of], self.log_images)[type_index]  # (E,) tf-idf
        slot = candidate * self.n + orders(types, self.n)[type_index] - 1  # (E,) the (candidate, order) it adds to
        norms = np.bincount(slot, hypothesis ** 2, minlength=images.size * self.n).astype(np.float64)
        norms = np.sqrt(norms).reshape(-1, 1, self.n)  # (C, 1, n)
        mine = known[type_index]
        products = self.products(images, candidate[mine], type_of[type_index[mine]], hypothesis[mine], slot[mine])

        reference_norms = self.reference_norms[images]  # (C, K, n)
        # pycocoevalcap divides only when both norms are non-zero (the product is 0 otherwise)
        divide = (norms != 0) & (reference_norms != 0)
        cosines = np.divide(products, norms * reference_norms, out=products.copy(), where=divide)  # (C, K, n)
        delta = bigram_lengths(lengths, self.n)[:, None] - self.reference_lengths[images]  # (C, K)
        penalty = np.exp(-(delta.astype(np.float64) ** 2) / (2 * self.sigma ** 2))  # (C, K)
        summed = (cosines * penalty[:, :, None]).sum(axis=1)  # (C, n) padding columns add 0
        return summed.mean(axis=1) / self.reference_counts[images] * 10.0

    def products(self, images: np.ndarray, candidate: np.ndarray, type_of: np.ndarray, hypothesis: np.ndarray,
                 slot: np.ndarray) -> np.ndarray:
        """sum_g min(h_g, r_g) r_g per (candidate, reference, order): (C, K, n), from the candidates'
        n-grams that some reference holds (their candidate, type, tf-idf and slot, each (E',))."""
        row, held = lookup(self.rows, images[candidate] * self.types.size + type_of)  # (E',) its image's row
        row, h, slot = row[held], hypothesis[held, None], slot[held]  # (H,), (H, 1), (H,)
        r = self.table[row] * self.row_idf[row, None]  # (H, K) the references' tf-idf
        clipped = np.minimum(h, r) * r  # (H, K)
        width = self.table.shape[1]
        products = np.zeros((images.size * self.n, width))  # (C * n, K)
        for k in range(width):
            products[:, k] = np.bincount(slot, clipped[:, k], minlength=images.size * self.n)
        return products.reshape(images.size, self.n, width).transpose(0, 2, 1)  # (C, K, n)


def corpus_cider(candidates: Captions, references: Sequence[Captions], n: int = 4,
                 sigma: float = 6.0) -> np.ndarray:
    """pycocoevalcap's per-image scores: candidate i against references[i], df from these references."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} images: one per image")
    return CiderD(references, n, sigma).score(candidates, np.arange(len(references)))
