"""From features to words: describe spells each hypothesis through the vocabulary, keeps the model's mode,
and describe_all gives the same captions whatever the batch size."""
from __future__ import annotations

import pytest
import torch

from pipeline.model.beam_search import beam_search
from pipeline.model.captioner import Caption, describe, describe_all, search_options
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.tiny_models import END, START, P, V, make_features, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

VOCABULARY = Vocabulary((*SPECIAL_TOKENS, *(f"w{i}" for i in range(V - len(SPECIAL_TOKENS)))))


def test_describe_spells_the_search_result():
    model = make_model(seed=2, end_bias=0.0, sharpness=4.0)
    features = make_features(5, seed=3) * 2
    options = search_options(VOCABULARY, beam_size=3, max_length=7, length_penalty=0.5)
    found = beam_search(model, features, START, END, options)
    captions = describe(model, features, VOCABULARY, options)
    assert len({len(c.words) for c in captions}) > 1  # captions of different lengths
    for hypothesis, caption in zip(found, captions):
        assert caption.words == [f"w{t - len(SPECIAL_TOKENS)}" for t in hypothesis.tokens]
        assert caption.text == " ".join(caption.words)
        assert caption.attention.shape == (len(caption.words), P)
        torch.testing.assert_close(caption.attention, hypothesis.attention)
        assert caption.score == hypothesis.score


def test_describe_runs_in_eval_mode_and_restores_the_mode():
    model = make_model(seed=2, dropout=0.5, sharpness=4.0).train()
    features = make_features(3)
    options = search_options(VOCABULARY, beam_size=2, max_length=6)
    first = describe(model, features, VOCABULARY, options)
    assert model.training  # restored
    second = describe(model, features, VOCABULARY, options)
    assert [c.words for c in first] == [c.words for c in second]  # no dropout while decoding


def test_describe_all_is_independent_of_the_batch_size():
    model = make_model(seed=4, end_bias=0.0, sharpness=4.0)
    features = make_features(7, seed=5) * 2
    names = [f"img{i}" for i in range(7)]
    rows = {name: i for i, name in enumerate(names)}
    asked: list[list[str]] = []

    def features_of(chunk):
        asked.append(list(chunk))
        return features[[rows[n] for n in chunk]]

    options = search_options(VOCABULARY, beam_size=3, max_length=6)
    whole = describe_all(model, names, features_of, VOCABULARY, options, batch_size=7)
    in_threes = describe_all(model, names, features_of, VOCABULARY, options, batch_size=3)
    assert asked[1:] == [names[0:3], names[3:6], names[6:]]
    assert list(in_threes) == names
    assert all(isinstance(c, Caption) for c in whole.values())
    assert {n: c.words for n, c in whole.items()} == {n: c.words for n, c in in_threes.items()}
