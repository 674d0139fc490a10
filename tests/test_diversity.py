"""Caption diversity on a case with a known answer."""
from __future__ import annotations

import pytest

from pipeline.evaluation.diversity import caption_diversity


def test_diversity_counts() -> None:
    captions = {"a.jpg": "a dog runs", "b.jpg": "a dog runs", "c.jpg": "a cat sleeps", "d.jpg": "two dogs play"}
    training = ["a dog runs", "a bird sings"]
    result = caption_diversity(captions, training)
    assert result["distinct_captions"] == 3
    assert result["distinct_caption_fraction"] == 0.75
    assert result["vocabulary_used"] == 8  # a dog runs cat sleeps two dogs play
    assert result["most_repeated_caption_count"] == 2
    assert result["novel_caption_fraction"] == 0.5  # c and d are not training captions


def test_a_constant_caption_has_no_diversity() -> None:
    result = caption_diversity({f"{i}.jpg": "a man" for i in range(10)}, ["a man"])
    assert result["distinct_captions"] == 1 and result["novel_caption_fraction"] == 0.0
    with pytest.raises(ValueError):
        caption_diversity({}, [])



def test_distinct_descriptions_count_what_is_said_not_how() -> None:
    from pipeline.evaluation.diversity import distinct_descriptions

    words = {"red", "blue", "circle", "square"}
    captions = ["there is a red circle", "one shape a red circle", "a red circle",  # one thing, three phrasings
                "a blue square and a red circle", "a red circle and a blue square",  # order is part of it
                "there is a blue square and a red circle"]
    assert distinct_descriptions(captions, words) == 3
    assert distinct_descriptions(["a dog", "the cat"], words) == 1  # no object word: both say nothing of them
