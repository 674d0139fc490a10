"""The beam benchmark's baseline: caption.py's one-image beam search (benchmarks/tutorial.py) on the
tutorial's decoder finds what our search finds where the two searches must agree."""
from __future__ import annotations

import pytest
import torch

from benchmarks.beam_bench import beam_models, compare_with_tutorial
from benchmarks.tutorial import END, START, E, P, tutorial_beam_search
from pipeline.model.beam_search import SearchOptions, beam_search

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models_and_features():
    ours, tutorial = beam_models(vocab_size=300)
    return ours, tutorial, torch.randn(6, P, E, generator=torch.Generator().manual_seed(4))


def test_at_beam_one_the_tutorial_search_is_our_greedy_search(models_and_features):
    ours, tutorial, features = models_and_features
    found = beam_search(ours, features, START, END, SearchOptions(beam_size=1, max_length=12))
    for hypothesis, image in zip(found, features):
        words, score, attention = tutorial_beam_search(tutorial, image, 1, max_length=12)
        assert words == hypothesis.tokens and len(words) > 0
        assert score == pytest.approx(hypothesis.score, abs=1e-4)
        torch.testing.assert_close(attention, hypothesis.attention, rtol=0, atol=1e-5)
        assert attention.shape == (len(words), P)


def test_at_beam_five_the_captions_are_compared_and_agree_where_they_are_the_same(models_and_features):
    ours, tutorial, features = models_and_features
    found = beam_search(ours, features, START, END, SearchOptions(beam_size=5, max_length=12))
    theirs = [tutorial_beam_search(tutorial, image, 5, max_length=12) for image in features]
    counts = compare_with_tutorial(found, theirs)  # asserts equal scores and attention where the words agree
    assert sum(counts.values()) == len(features)
    assert counts["same"] >= 5


def test_differing_captions_are_counted_by_which_search_found_the_likelier_one(models_and_features):
    ours, tutorial, features = models_and_features
    found = beam_search(ours, features[:1], START, END, SearchOptions(beam_size=3, max_length=12))
    words, score, attention = tutorial_beam_search(tutorial, features[0], 3, max_length=12)
    assert compare_with_tutorial(found, [(words, score, attention)])["same"] == 1
    other = words[:-1]
    assert compare_with_tutorial(found, [(other, score - 1.0, attention)])["ours likelier"] == 1
    assert compare_with_tutorial(found, [(other, score + 1.0, attention)])["tutorial likelier"] == 1
    assert compare_with_tutorial(found, [(other, score, attention)])["ties"] == 1
    with pytest.raises(AssertionError, match="same caption"):
        compare_with_tutorial(found, [(words, score - 1.0, attention)])
