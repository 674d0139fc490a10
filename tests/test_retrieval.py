"""Ranking images by the captioner's likelihood of a query, its corrections, the caption index and
the retrieval scores, on cases whose answers are known by construction."""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import runtime
from pipeline.config import RetrievalConfig
from pipeline.encoder.feature_cache import FeatureStore, create_layout
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig, DecoderState, caption_loss
from pipeline.retrieval.likelihood import LikelihoodScorer, QueryError, encode_queries
from pipeline.retrieval.metrics import rank_counts, rerank, retrieval_scores
from pipeline.retrieval.ranking import Gallery, RankingOptions, Searcher
from pipeline.retrieval.text_index import CaptionIndex, top_candidates
from pipeline.text import SPECIAL_TOKENS, Vocabulary

WORDS = ("a", "red", "green", "blue", "circle", "square")
VOCAB = Vocabulary(SPECIAL_TOKENS + WORDS)
# image i has caption CAPTIONS[i]; its features say the colour (channels 0-2) and the shape (3-4)
CAPTIONS = ["a red circle", "a green square", "a blue circle", "a red square", "a green circle"]
CPU = torch.device("cpu")


def image_features(caption: str) -> torch.Tensor:
    """Features (P=4, E=8) that determine the caption's words."""
    _, colour, shape = caption.split()
    features = torch.zeros(4, 8)
    features[:, ("red", "green", "blue").index(colour)] = 3.0
    features[:, 3 + ("circle", "square").index(shape)] = 3.0
    return features


@pytest.fixture(scope="module")
def trained(one_thread: None) -> tuple[CaptionDecoder, torch.Tensor]:
    """A small decoder trained until the image's features determine its caption, and those features."""
    torch.manual_seed(0)
    model = build_decoder(DecoderConfig(vocab_size=len(VOCAB), embed_dim=8, encoder_dim=8, attention_dim=8,
                                        decoder_dim=16, dropout=0.2, pad_index=0, max_caption_length=6,
                                        architecture="sat"))
    features = torch.stack([image_features(caption) for caption in CAPTIONS])  # (5, 4, 8)
    tokens = encode_queries(CAPTIONS, VOCAB, 6)  # (5, 5)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        logits, alphas = model(features, tokens)
        loss, _ = caption_loss(logits, tokens[:, 1:], alphas, VOCAB.pad, 0.0)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model, features


def options_with(**changes: object) -> RankingOptions:
    """Ranking options with every value given (no prior, no image prior, every image re-ranked)."""
    values = {"candidates": 0, "prior": "none", "prior_weight": 1.0, "image_weight": 0.0, "bank_size": 32,
              "batch_size": 256, "precision": "fp32"}
    return RankingOptions(**{**values, **changes})


def scorer_of(model: nn.Module, features: torch.Tensor, batch_size: int = 256) -> LikelihoodScorer:
    return LikelihoodScorer(model, VOCAB, lambda rows: features[torch.as_tensor(rows)], CPU, batch_size)


def test_each_caption_ranks_its_own_image_first(trained: tuple[CaptionDecoder, torch.Tensor]) -> None:
    model, features = trained
    scorer = scorer_of(model, features)
    everything = np.tile(np.arange(len(CAPTIONS)), (len(CAPTIONS), 1))  # (Q, N)
    scores = scorer.matrix(scorer.tokens(CAPTIONS), everything)
    assert scores.argmax(axis=1).tolist() == list(range(len(CAPTIONS)))
    # "a red circle" shares two of three words with "a red square" and "a green circle", none of "a green square"
    assert scores[0, 3] > scores[0, 1] and scores[0, 4] > scores[0, 1]


def test_score_is_the_teacher_forced_log_likelihood(trained: tuple[CaptionDecoder, torch.Tensor]) -> None:
    model, features = trained
    model.train()  # dropout on: the scorer must switch it off, and restore the mode after
    # lengths differ, prefixes are shared (decoded once per image), one word is unknown
    queries = ["a red circle", "Red!", "a red square", "a red", "a blue circle a red square", "a purple circle"]
    tokens = encode_queries(queries, VOCAB, 6)
    query_rows = np.repeat(np.arange(len(queries)), 2)
    image_rows = np.tile([0, 3], len(queries))
    scores = scorer_of(model, features, batch_size=5).pairs(tokens, query_rows, image_rows)
    assert model.training
    model.eval()
    with torch.no_grad():
        for query, row, score in zip(query_rows, image_rows, scores):
            length = int((tokens[query] != VOCAB.pad).sum())
            one = tokens[query:query + 1, :length]  # (1, T) without padding
            logits, _ = model(features[row:row + 1], one)
            expected = F.log_softmax(logits, dim=-1)[0].gather(1, one[0, 1:, None]).sum()
            assert score == pytest.approx(float(expected), abs=1e-4)
    model.train()
    assert tokens[1].tolist()[:3] == [VOCAB.start, VOCAB.index("red"), VOCAB.end]  # normalised
    assert tokens[5, 2] == VOCAB.unk


def test_empty_query_is_refused() -> None:
    with pytest.raises(QueryError, match="no words"):
        encode_queries(["a red circle", " ?! "], VOCAB, 6)


class ImageOnlyDecoder(nn.Module):
    """A decoder whose next-word distribution depends only on the image: features[:, 0] are log-probabilities."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.config = DecoderConfig(vocab_size=vocab_size, embed_dim=1, encoder_dim=vocab_size, attention_dim=1, decoder_dim=1,
                                    dropout=0.0, pad_index=0, max_caption_length=6, architecture="sat")
        self.register_buffer("feature_mean", torch.zeros(vocab_size))

    def start(self, features: torch.Tensor) -> DecoderState:
        x = features.float()
        zeros = torch.zeros(x.size(0), 1)
        return DecoderState(x, x, zeros, zeros)

    def word_gate_table(self) -> torch.Tensor:
        return torch.zeros(self.config.vocab_size, 0)  # no word changes anything here

    def advance(self, state: DecoderState, words: torch.Tensor, gate_table: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, DecoderState]:
        # K caption rows per image row (rows laid out (images, beams)), as DecoderState defines them
        rows = state.x.repeat_interleave(state.beams, dim=0)
        return F.log_softmax(rows[:, 0], dim=1), rows[:, :, 0], state


def distribution(**probabilities: float) -> list[float]:
    """Log-probabilities over VOCAB from {word: p} (END as `end`); the rest share nothing."""
    p = np.full(len(VOCAB), 1e-9)
    for word, value in probabilities.items():
        p[VOCAB.end if word == "end" else VOCAB.index(word)] = value
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-6)
    return np.log(p).tolist()


@pytest.fixture
def generic_gallery(tmp_path: Path) -> Gallery:
    """Four images; `generic` spreads its probability evenly and wins "red circle" on raw likelihood."""
    images = {  # name: (next-word distribution, generated caption)
        "red_circle": (distribution(red=0.5, circle=0.15, end=0.1, blue=0.1, square=0.05, a=0.1), "red circle"),
        "generic": (distribution(red=0.2, blue=0.2, circle=0.2, square=0.2, end=0.2), "blue circle"),
        "red_square": (distribution(red=0.5, square=0.15, end=0.1, blue=0.1, circle=0.05, a=0.1), "red square"),
        "blue_square": (distribution(blue=0.5, square=0.15, end=0.1, red=0.1, circle=0.05, a=0.1), "blue square"),
    }
    path = tmp_path / "gallery.h5"
    with h5py.File(path, "w") as file:
        create_layout(file, list(images), 1, len(VOCAB), "float32", {})[...] = \
            np.array([[log_p] for log_p, _ in images.values()])
    return Gallery(list(images), [Path(name) for name in images], [caption for _, caption in images.values()],
                   FeatureStore(path), np.arange(len(images)))


def test_the_image_prior_stops_a_generic_image_winning(generic_gallery: Gallery) -> None:
    def ranking(**options: object) -> tuple[list[str], list[float]]:
        searcher = Searcher(ImageOnlyDecoder(len(VOCAB)), VOCAB, generic_gallery, CPU, options_with(**options))
        hits = searcher.search("red circle", top=4)
        return [hit.name for hit in hits], [hit.score for hit in hits]

    raw, raw_scores = ranking(prior="none")
    assert raw == ["generic", "red_circle", "red_square", "blue_square"]
    assert raw_scores[0] == pytest.approx(3 * math.log(0.2), abs=1e-4)
    corrected, _ = ranking(prior="none", image_weight=1.0)
    assert corrected[0] == "red_circle"
    # red circle: log(.5 * .15 * .1) minus its mean over the bank (all four generated captions)
    bank = [math.log(0.5 * 0.15 * 0.1), math.log(0.1 * 0.15 * 0.1), math.log(0.1 * 0.05 * 0.1),
            math.log(0.5 * 0.05 * 0.1)]
    _, scores = ranking(prior="none", image_weight=1.0)
    assert scores[0] == pytest.approx(math.log(0.5 * 0.15 * 0.1) - sum(bank) / 4, abs=1e-4)


def test_the_query_prior_shifts_every_score_of_a_query_alike(generic_gallery: Gallery) -> None:
    searcher = Searcher(ImageOnlyDecoder(len(VOCAB)), VOCAB, generic_gallery, CPU, options_with(prior="mean"))
    hits = searcher.search("red circle", top=4)
    assert [hit.name for hit in hits] == ["generic", "red_circle", "red_square", "blue_square"]
    shifts = {round(hit.log_likelihood - hit.score, 6) for hit in hits}
    # the query's log-likelihood under the gallery's mean features (mean log-probabilities, renormalised)
    mean = torch.tensor([[distribution(red=0.5, circle=0.15, end=0.1, blue=0.1, square=0.05, a=0.1)],
                         [distribution(red=0.2, blue=0.2, circle=0.2, square=0.2, end=0.2)],
                         [distribution(red=0.5, square=0.15, end=0.1, blue=0.1, circle=0.05, a=0.1)],
                         [distribution(blue=0.5, square=0.15, end=0.1, red=0.1, circle=0.05, a=0.1)]]).mean(0)[0]
    log_p = F.log_softmax(mean, dim=0)
    expected = float(log_p[VOCAB.index("red")] + log_p[VOCAB.index("circle")] + log_p[VOCAB.end])
    assert len(shifts) == 1 and shifts.pop() == pytest.approx(expected, abs=1e-4)


def test_a_precision_this_cpu_would_emulate_is_warned_about_once_and_still_ranks(
        generic_gallery: Gallery, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        searcher = Searcher(ImageOnlyDecoder(len(VOCAB)), VOCAB, generic_gallery, CPU,
                            options_with(prior="none", precision="bf16"))
        hits = searcher.search("red circle", top=4)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("retrieval.precision is bf16, but this CPU has no native bf16")
    assert [hit.name for hit in hits][0] == "generic"  # ranked as asked, under bf16 (raw likelihood: see above)
    caplog.clear()
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        Searcher(ImageOnlyDecoder(len(VOCAB)), VOCAB, generic_gallery, CPU, options_with(precision="bf16"))
    assert not caplog.records


def test_candidates_come_from_the_caption_index(generic_gallery: Gallery) -> None:
    searcher = Searcher(ImageOnlyDecoder(len(VOCAB)), VOCAB, generic_gallery, CPU, options_with(candidates=2))
    # BM25: "red circle" matches the caption "red circle" on both words, then "red square" or "blue circle"
    candidates, _, _ = searcher.rank(["red circle"])
    assert candidates[0, 0] == generic_gallery.names.index("red_circle") and candidates.shape == (1, 2)


def test_caption_index_scores_shared_words() -> None:
    index = CaptionIndex(["a red circle", "a green square", "", "a red square and a red circle"])
    scores = index.score_matrix(["green", "red circle", "zebra", "A RED circle!"])
    assert scores[0].argmax() == 1 and (scores[0][[0, 2, 3]] == 0).all()
    assert scores[1][0] > scores[1][3] > scores[1][1] == 0  # the shorter caption with both words first
    assert (scores[2] == 0).all()
    assert np.allclose(scores[3][[0, 3]], index.scores("a red circle")[[0, 3]])
    assert top_candidates(np.array([[0.0, 2.0, 2.0, 1.0]]), 3).tolist() == [[1, 2, 3]]  # ties keep image order


def test_recall_and_median_rank_on_hand_made_scores() -> None:
    scores = np.array([[0.9, 0.1, 0.5],   # answer 0 first
                       [0.2, 0.2, 0.7],   # answer 1: one above, one tied -> rank 2 or 3
                       [0.3, 0.3, 0.3]])  # answer 2: all tied -> rank 1, 2 or 3
    better, tied = rank_counts(scores, [0, 1, 2])
    assert better.tolist() == [0, 1, 0] and tied.tolist() == [0, 1, 2]
    result = retrieval_scores(better, tied, ks=(1, 2, 3))
    assert result["r1"] == pytest.approx(100 * (1 + 0 + 1 / 3) / 3)
    assert result["r2"] == pytest.approx(100 * (1 + 1 / 2 + 2 / 3) / 3)
    assert result["r3"] == pytest.approx(100.0)
    assert result["median_rank"] == 2.0 and result["mean_rank"] == pytest.approx((1 + 2.5 + 2) / 3)


def test_rerank_puts_candidates_first_then_the_first_stage_order() -> None:
    first = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    combined = rerank(first, np.array([[0, 1]]), np.array([[-9.0, -3.0]]))  # re-scoring swaps the two
    assert np.argsort(-combined[0]).tolist() == [1, 0, 2, 3, 4]


def test_ranking_options_have_one_source_the_retrieval_section() -> None:
    assert all(field.default is dataclasses.MISSING for field in dataclasses.fields(RankingOptions))  # no 2nd defaults
    section = {"candidates": 7, "prior": "blank", "prior_weight": 0.5, "image_weight": 0.25, "bank_size": 9,
               "batch_size": 33, "precision": "bf16", "device": "cpu", "captions": "c.json", "metrics": "m.json"}
    options = RankingOptions.from_config(RetrievalConfig.model_validate(section))
    assert dataclasses.asdict(options) == {key: section[key] for key in dataclasses.asdict(options)}
    assert set(dataclasses.asdict(options)) == set(section) - {"device", "captions", "metrics"}
