"""The grouped likelihood scorer against a plain teacher-forced reference, for both architectures.

The reference is `CaptionDecoder.forward` on one (query, image) pair at a time in eval mode, then
log_softmax and the targets' log-probabilities summed: an independent computation (no start/advance,
no grouping, no shared prefixes, no padding rows)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.model.decoder import CaptionDecoder
from pipeline.model.int8 import Int8Linear
from pipeline.retrieval.likelihood import LikelihoodScorer, image_groups
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.tiny_models import PAD, V, make_features, make_model, padded

BOTH = pytest.mark.usefixtures("each_architecture", "one_thread")
VOCAB = Vocabulary(SPECIAL_TOKENS + tuple(f"w{i}" for i in range(V - len(SPECIAL_TOKENS))))
CPU = torch.device("cpu")
# lengths 1 to 9 words; shared prefixes of several lengths; one query twice; one a prefix of another
QUERIES = padded([[4, 5, 6], [4, 5, 7, 8], [4, 5, 6], [9], [4, 9, 10, 11, 5, 6, 7, 8, 4], [4, 5], [11, 10],
                  [4, 5, 7, 8, 9, 9], [6, 6, 6, 6]])


def reference(model: CaptionDecoder, features: torch.Tensor, tokens: torch.Tensor, query: int, image: int) -> float:
    """log p(query | image), one pair through the teacher-forced forward."""
    length = int((tokens[query] != PAD).sum())
    one = tokens[query:query + 1, :length]  # (1, T) without padding
    with torch.no_grad():
        logits, _ = model(features[image:image + 1], one)  # (1, T-1, V)
    return float(F.log_softmax(logits.double(), dim=-1)[0].gather(1, one[0, 1:, None]).sum())


class CountingStarts:
    """Features by row, counting how often each image is read (each read is one `start` of it)."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features, self.reads = features, np.zeros(len(features), dtype=int)

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        np.add.at(self.reads, np.asarray(rows), 1)
        return self.features[torch.as_tensor(rows)]


def check_pairs(model: CaptionDecoder, features: torch.Tensor, query_rows: np.ndarray, image_rows: np.ndarray,
                batch_size: int) -> CountingStarts:
    """Asserts the scorer's pairs equal the reference one by one; returns the feature reads."""
    reads = CountingStarts(features)
    scores = LikelihoodScorer(model, VOCAB, reads, CPU, batch_size).pairs(QUERIES, query_rows, image_rows)
    expected = [reference(model, features, QUERIES, q, i) for q, i in zip(query_rows, image_rows)]
    assert scores == pytest.approx(expected, abs=1e-4)
    return reads


@BOTH
@pytest.mark.parametrize("batch_size", [1, 4, 7, 20, 1000])
def test_every_pair_of_many_images_is_its_teacher_forced_log_likelihood(batch_size: int) -> None:
    model, features = make_model(seed=2, sharpness=4.0), make_features(5, seed=3)
    rng = np.random.default_rng(batch_size)
    # every query against every image, some pairs twice, shuffled; image 4 has many more pairs than the rest
    query_rows = np.concatenate([np.repeat(np.arange(len(QUERIES)), 4), np.tile(np.arange(len(QUERIES)), 2), [0, 4, 4]])
    image_rows = np.concatenate([np.tile(np.arange(4), len(QUERIES)), np.full(2 * len(QUERIES), 4), [1, 2, 2]])
    shuffle = rng.permutation(len(query_rows))
    reads = check_pairs(model, features, query_rows[shuffle], image_rows[shuffle], batch_size)
    # each image's features read, standardised and projected once, however its pairs are split into blocks
    assert reads.reads.tolist() == [1, 1, 1, 1, 1]


@BOTH
@pytest.mark.parametrize("batch_size", [2, 1000])
def test_one_image(batch_size: int) -> None:
    model, features = make_model(seed=4, sharpness=4.0), make_features(3, seed=5)
    query_rows = np.arange(len(QUERIES))
    reads = check_pairs(model, features, query_rows, np.full(len(QUERIES), 2), batch_size)
    assert reads.reads.tolist() == [0, 0, 1]


@BOTH
def test_one_pair_per_image_and_images_with_no_pair() -> None:
    model, features = make_model(seed=6, sharpness=4.0), make_features(12, seed=7)
    image_rows = np.array([11, 0, 5, 3, 9, 1, 7, 2, 10])  # images 4, 6 and 8 have none
    check_pairs(model, features, np.arange(len(QUERIES)), image_rows, batch_size=3)


@BOTH
def test_the_query_prior_context_in_blocks() -> None:
    model, features = make_model(seed=8, sharpness=4.0), make_features(1, seed=9)
    scores = LikelihoodScorer(model, VOCAB, None, CPU, batch_size=2).given(QUERIES, features[0])
    expected = [reference(model, features, QUERIES, q, 0) for q in range(len(QUERIES))]
    assert scores == pytest.approx(expected, abs=1e-4)


@BOTH
def test_bf16_runs_the_decoder_in_bf16_and_stays_close() -> None:
    model, features = make_model(seed=10, sharpness=4.0), make_features(4, seed=11)
    query_rows = np.repeat(np.arange(len(QUERIES)), 4)
    image_rows = np.tile(np.arange(4), len(QUERIES))
    full, half = (LikelihoodScorer(model, VOCAB, lambda rows: features[torch.as_tensor(rows)], CPU, 8, precision)
                  .pairs(QUERIES, query_rows, image_rows) for precision in ("fp32", "bf16"))
    assert not np.array_equal(full, half)  # bf16 arithmetic happened
    assert half == pytest.approx(full, abs=0.1)  # 8 bits of mantissa: a few hundredths of a nat per word


@BOTH
def test_int8_scores_with_a_quantised_copy_and_stays_close() -> None:
    model, features = make_model(seed=10, sharpness=4.0), make_features(4, seed=11)
    query_rows = np.repeat(np.arange(len(QUERIES)), 4)
    image_rows = np.tile(np.arange(4), len(QUERIES))
    scorers = {precision: LikelihoodScorer(model, VOCAB, lambda rows: features[torch.as_tensor(rows)], CPU, 8,
                                           precision) for precision in ("fp32", "int8")}
    assert scorers["fp32"].model is model
    assert any(isinstance(module, Int8Linear) for module in scorers["int8"].model.modules())
    assert not any(isinstance(module, Int8Linear) for module in model.modules())  # the model itself unchanged
    full, int8 = (scorer.pairs(QUERIES, query_rows, image_rows) for scorer in scorers.values())
    assert not np.array_equal(full, int8)  # int8 arithmetic happened
    assert int8 == pytest.approx(full, abs=0.1)  # inputs rounded to 1/254 of their row's largest: hundredths


def test_image_groups_hold_at_most_a_batch_of_pairs() -> None:
    assert image_groups(np.array([9, 5, 3, 3, 1, 1]), batch_size=6) == [(0, 1), (1, 2), (2, 4), (4, 6)]
    assert image_groups(np.array([2, 2, 2, 2, 2]), batch_size=100, max_images=2) == [(0, 2), (2, 4), (4, 5)]
    assert image_groups(np.array([], dtype=int), batch_size=4) == []


def test_scores_are_shown_as_progress(capsys: pytest.CaptureFixture) -> None:
    model, features = make_model(seed=0), make_features(2)
    scorer = LikelihoodScorer(model, VOCAB, lambda rows: features[torch.as_tensor(rows)], CPU, 4, progress="ranking")
    scorer.pairs(QUERIES, np.arange(len(QUERIES)), np.arange(len(QUERIES)) % 2)
    assert "ranking" in capsys.readouterr().err
