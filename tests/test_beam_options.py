"""Beam search options on hand-built decoders: banned tokens (PAD, START, UNK unless allowed), the length
penalty, and blocking repeated n-grams."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from pipeline.model.beam_search import SearchOptions, beam_search, repeated_ngram_mask
from pipeline.model.captioner import describe, search_options
from pipeline.model.decoder import CaptionDecoder
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.tiny_models import END, PAD, START, UNK, V, make_features, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------
# banned tokens: PAD and START never, UNK unless allowed


VOCABULARY = Vocabulary((*SPECIAL_TOKENS, *(f"w{i}" for i in range(V - len(SPECIAL_TOKENS)))))


def favouring(*tokens: int) -> CaptionDecoder:
    """A tiny decoder whose output layer strongly prefers `tokens` (bias +12) at every step."""
    model = make_model(seed=5)
    with torch.no_grad():
        model.output.weight.mul_(0.1)
        for token in tokens:
            model.output.bias[token] = 12.0
        model.output.bias[END] = 0.0
    return model


@pytest.mark.parametrize("beam_size", [1, 3])
def test_search_never_emits_pad_start_or_unk(beam_size):
    model = favouring(PAD, START, UNK)
    features = make_features(6)
    unconstrained = beam_search(model, features, START, END, SearchOptions(beam_size=beam_size, max_length=6))
    assert all({PAD, START, UNK} & set(h.tokens) for h in unconstrained)  # the bias does push them

    options = search_options(VOCABULARY, beam_size, max_length=6)
    assert set(options.banned) == {PAD, START, UNK}
    for hypothesis in beam_search(model, features, START, END, options):
        assert not {PAD, START, UNK} & set(hypothesis.tokens), hypothesis.tokens
    for caption in describe(model, features, VOCABULARY, options):
        assert not {"<pad>", "<start>", "<unk>"} & set(caption.words)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_unk_is_emitted_only_when_allowed(beam_size):
    model = favouring(UNK)
    features = make_features(4)
    allowed = search_options(VOCABULARY, beam_size, max_length=5, allow_unk=True)
    assert set(allowed.banned) == {PAD, START}
    assert all(h.tokens == [UNK] * 5 for h in beam_search(model, features, START, END, allowed))
    banned = search_options(VOCABULARY, beam_size, max_length=5)
    assert all(UNK not in h.tokens for h in beam_search(model, features, START, END, banned))


# ----------------------------------------------------------------------------------------------
# hand-built decoders: the next word's probabilities are a table of the words so far


@dataclasses.dataclass
class Prefixes:
    """Decoder state: the words so far of each row."""

    rows: list[tuple[int, ...]]

    def select_beams(self, rows: torch.Tensor, images: torch.Tensor | None = None) -> Prefixes:
        return Prefixes([self.rows[int(i)] for i in rows])  # one row per caption: no per-image part


class TableDecoder:
    """The next-word distribution after each prefix from `table(prefix) -> {word: probability}`; the
    probability left over is shared by the words not named, so every word stays possible."""

    def __init__(self, table, vocab_size: int = 8) -> None:
        self.table, self.vocab_size = table, vocab_size

    def start(self, features: torch.Tensor) -> Prefixes:
        return Prefixes([()] * features.size(0))

    def advance(self, state: Prefixes, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Prefixes]:
        rows = [prefix + (int(w),) if int(w) != START else prefix for prefix, w in zip(state.rows, words)]
        probs = torch.zeros(len(rows), self.vocab_size, dtype=torch.float64)
        for i, prefix in enumerate(rows):
            named = self.table(prefix)
            rest = [w for w in range(self.vocab_size) if w not in named]
            for w in rest:
                probs[i, w] = (1.0 - sum(named.values())) / len(rest)
            for w, p in named.items():
                probs[i, w] = p
        attention = torch.full((len(rows), 4), 0.25)  # (R, P)
        return probs.clamp_min(1e-12).log().float(), attention, Prefixes(rows)


W4, W5, W6 = 4, 5, 6  # ordinary words


def two_captions(prefix: tuple[int, ...]) -> dict[int, float]:
    """A short caption "w4" (p .55 * .5) and a long one "w5 w5" (p .45 * .6 * .999): the short one is likelier."""
    return {(): {W4: 0.55, W5: 0.45}, (W4,): {END: 0.5}, (W5,): {W5: 0.6}, (W5, W5): {END: 0.999}}.get(
        prefix, {})


def test_length_penalty_changes_which_caption_wins():
    decoder, features = TableDecoder(two_captions), torch.zeros(1, 4, 2)
    short = math.log(0.55) + math.log(0.5)  # -1.2910
    long = math.log(0.45) + math.log(0.6) + math.log(0.999)  # -1.3103
    (plain,) = beam_search(decoder, features, START, END, SearchOptions(beam_size=2, max_length=5))
    assert plain.tokens == [W4] and plain.score == pytest.approx(short, abs=1e-5)
    # alpha 1 divides by (5 + L) / 6, L counting END: 7/6 for the short one, 8/6 for the long one
    (penalised,) = beam_search(decoder, features, START, END,
                               SearchOptions(beam_size=2, max_length=5, length_penalty=1.0))
    assert short / (7 / 6) < long / (8 / 6)
    assert penalised.tokens == [W5, W5] and penalised.score == pytest.approx(long / (8 / 6), abs=1e-5)


def looping(prefix: tuple[int, ...]) -> dict[int, float]:
    """w4 -> w5 -> w4 -> ... is always the argmax; END (.15 after w5) and w6 (.15 after w4) never win on their own."""
    last = prefix[-1] if prefix else None
    return {None: {W4: 0.9}, W4: {W5: 0.8, W6: 0.15}, W5: {W4: 0.8, END: 0.15}, W6: {END: 0.9}}.get(last, {})


def test_no_repeat_ngram_blocks_the_loop():
    decoder, features = TableDecoder(looping), torch.zeros(1, 4, 2)
    (free,) = beam_search(decoder, features, START, END, SearchOptions(beam_size=1, max_length=6))
    assert free.tokens == [W4, W5, W4, W5, W4, W5]
    # no bigram twice: after w4 w5 w4, w5 would repeat "w4 w5", so w6 then END
    (bigrams,) = beam_search(decoder, features, START, END,
                             SearchOptions(beam_size=1, max_length=6, no_repeat_ngram=2))
    assert bigrams.tokens == [W4, W5, W4, W6]
    assert bigrams.score == pytest.approx(math.log(0.9 * 0.8 * 0.8 * 0.15 * 0.9), abs=1e-5)
    # no word twice: after w4 w5, w4 is blocked, and END is the likeliest of the rest
    (words,) = beam_search(decoder, features, START, END,
                           SearchOptions(beam_size=1, max_length=6, no_repeat_ngram=1))
    assert words.tokens == [W4, W5]


def bigrams_repeat(tokens: list[int]) -> bool:
    pairs = list(itertools.pairwise(tokens))
    return len(pairs) != len(set(pairs))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_no_repeat_ngram_holds_for_every_caption_of_a_wider_search(beam_size):
    model = make_model(seed=1, end_bias=-1e9, sharpness=4.0)  # never ends: 10 words from 11 tokens
    features = make_features(8, seed=9) * 2
    free = beam_search(model, features, START, END, SearchOptions(beam_size=beam_size, max_length=10))
    assert any(bigrams_repeat(h.tokens) for h in free)  # without the option, captions do loop
    blocked = beam_search(model, features, START, END,
                          SearchOptions(beam_size=beam_size, max_length=10, no_repeat_ngram=2))
    assert [len(h.tokens) for h in blocked] == [10] * 8
    assert not any(bigrams_repeat(h.tokens) for h in blocked)


def test_repeated_ngram_mask_on_hand_written_sequences():
    sequences = torch.tensor([[4, 5, 4, 6, 4, 5],
                              [1, 2, 3, 2, 5, 2]])  # (R, t)
    def marked(n: int) -> list[list[int]]:
        mask = repeated_ngram_mask(sequences, n, vocab_size=8)  # (R, V)
        assert mask.shape == (2, 8)
        return [torch.nonzero(row).flatten().tolist() for row in mask]

    assert marked(1) == [[4, 5, 6], [1, 2, 3, 5]]  # every word already used
    assert marked(2) == [[4], [3, 5]]  # row 0 ends in 5: "5 4" seen; row 1 ends in 2: "2 3" and "2 5" seen
    assert marked(3) == [[4], []]  # row 0 ends in "4 5": "4 5 4" seen; row 1's "5 2" was never continued
    assert marked(0) == [[], []]
    short = repeated_ngram_mask(torch.tensor([[4, 5]]), 3, vocab_size=8)
    assert not short.any()  # fewer words than n: nothing to repeat
