"""The first stage for large collections: BM25 over the images' generated captions.

Each image is a document made of its generated caption's words (normalised like every caption in
the project); a query's words score every image in one sparse product (bm25s). Cheap enough for
any number of images, it picks the candidates that the captioner's likelihood then re-ranks.
Images whose caption shares no word with the query score 0.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np

from pipeline.text import normalise, tokenize

logging.getLogger("bm25s").setLevel(logging.ERROR)  # it warns about query words no caption has


class CaptionIndex:
    """BM25 over one generated caption per image, in image order."""

    def __init__(self, captions: Sequence[str]) -> None:
        self.size = len(captions)
        self._bm25 = bm25s.BM25()
        if self.size:
            # an empty caption still needs a token, or bm25s drops the document and shifts the rows
            self._bm25.index([tokenize(normalise(text)) or ["<empty>"] for text in captions], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score (N,) of every image for one query."""
        words = [word for word in tokenize(normalise(query)) if word in self._bm25.vocab_dict] if self.size else []
        if not words:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(words), dtype=np.float32)  # (N,)

    def score_matrix(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 scores (Q, N) of every image for each query."""
        return np.stack([self.scores(query) for query in queries]) if queries else np.zeros((0, self.size))


def top_candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Columns (Q, C) of the `count` best-scoring images per query, best first; ties keep image order."""
    scores = np.atleast_2d(scores)  # (Q, N)
    count = min(count, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :count]  # (Q, C)
