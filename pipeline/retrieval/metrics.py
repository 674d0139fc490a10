"""Retrieval scores from a query x image score matrix: where each query's answer ranks, Recall@K
and the median rank (rank 1 = best).

Ties are broken at random, in expectation: an answer with `better` images scoring above it and
`tied` others scoring the same has expected rank better + 1 + tied / 2, and lies in the top K with
probability clip((K - better) / (tied + 1), 0, 1). So a ranking that cannot tell images apart
(generated captions that are word for word the same, a constant score) scores exactly chance.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def rank_counts(scores: np.ndarray, answers: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(better, tied) per query: images scoring above its answer, and others scoring the same.

    scores (Q, N), higher is better; answers (Q,) the answer's column for each query.
    """
    scores = np.asarray(scores, dtype=np.float64)  # (Q, N)
    answers = np.asarray(answers, dtype=np.int64)  # (Q,)
    if scores.ndim != 2 or len(answers) != scores.shape[0]:
        raise ValueError(f"need a (queries, images) score matrix and one answer per query, "
                         f"got shape {scores.shape} and {len(answers)} answers")
    answer_scores = scores[np.arange(len(answers)), answers][:, None]  # (Q, 1)
    better = (scores > answer_scores).sum(axis=1)  # (Q,)
    tied = (scores == answer_scores).sum(axis=1) - 1  # (Q,), the answer itself left out
    return better, tied


def expected_ranks(better: np.ndarray, tied: np.ndarray) -> np.ndarray:
    """Expected rank (Q,) of each answer when ties are broken at random."""
    return np.asarray(better) + 1 + np.asarray(tied) / 2


def recall_at(better: np.ndarray, tied: np.ndarray, k: int) -> float:
    """Percentage of queries whose answer is in the top k (expected over random tie-breaking)."""
    better, tied = np.asarray(better, dtype=np.float64), np.asarray(tied, dtype=np.float64)
    return 100.0 * float(np.mean(np.clip((k - better) / (tied + 1), 0.0, 1.0)))


def retrieval_scores(better: np.ndarray, tied: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """{"r1", "r5", "r10": percentages, "median_rank", "mean_rank"} from rank_counts."""
    if np.asarray(better).size == 0:
        raise ValueError("no queries to score")
    ranks = expected_ranks(better, tied)
    scores = {f"r{k}": recall_at(better, tied, k) for k in ks}
    scores.update(median_rank=float(np.median(ranks)), mean_rank=float(np.mean(ranks)))
    return scores


def rerank(first: np.ndarray, candidates: np.ndarray, rescored: np.ndarray) -> np.ndarray:
    """A (Q, N) score matrix ordering each query's candidates by `rescored`, then the rest by `first`.

    first (Q, N) first-stage scores; candidates (Q, C) columns; rescored (Q, C) their new scores.
    """
    first = np.asarray(first, dtype=np.float64)
    rescored = np.asarray(rescored, dtype=np.float64)
    rows = np.arange(first.shape[0])[:, None]  # (Q, 1)
    # every other image below every candidate, keeping the first stage's order among them
    floor = rescored.min(axis=1, keepdims=True) - 1.0  # (Q, 1)
    combined = floor - (first.max(axis=1, keepdims=True) - first)  # (Q, N)
    combined[rows, candidates] = rescored
    return combined
