"""The trivial baselines are chosen and scored by evaluate's scorer."""
from __future__ import annotations

from pipeline.evaluation.baselines import best_constant, constant_scores


def test_best_constant_picks_the_caption_the_references_share() -> None:
    # a caption equal to an image's reference has tf-idf cosine 1 there for n = 1..3 and nothing for n = 4
    # (three words have no 4-gram): CIDEr-D = 10 x mean over n (3/4) x images matched (2 of 3) = 5
    references = {"a": ["a dog runs"], "b": ["a cat sleeps"], "c": ["a dog runs"]}
    caption, cider = best_constant(references, ["two people walk", "a cat sleeps", "a dog runs"])
    assert caption == "a dog runs"
    assert abs(cider - 10 * 3 / 4 * 2 / 3) < 1e-6


def test_constant_scores_match_for_a_perfect_constant() -> None:
    references = {"a": ["a dog runs"], "b": ["a dog runs"]}
    scores = constant_scores(references, "a dog runs")
    assert abs(scores["bleu1"] - 1.0) < 1e-6 and abs(scores["rouge_l"] - 1.0) < 1e-6
