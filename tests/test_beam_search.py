"""Beam search: beam size 1 is greedy decoding, wider beams match a textbook beam search, and scores are
the captions' log-probabilities (its options are in test_beam_options.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.model.decoder import CaptionDecoder
from tests.tiny_models import END, START, E, P, V, generate, make_features, make_model, padded

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only add overhead
# the search only drives start/advance: the tests that compare it with references run for both
# architectures; the others use sat decoders, whose random captions end at many different steps
BOTH = pytest.mark.usefixtures("each_architecture")


@torch.no_grad()
def greedy_reference(model: CaptionDecoder, features: torch.Tensor,
                     max_length: int) -> list[tuple[list[int], float, torch.Tensor]]:
    """Plain argmax decoding over decoder.start/advance, one image and one word at a time."""
    results = []
    for image in features:
        state = model.start(image[None])
        word, words, score, alphas = START, [], 0.0, []
        for _ in range(max_length):
            log_probs, alpha, state = model.advance(state, torch.tensor([word]))
            word = int(log_probs[0].argmax())
            score += float(log_probs[0, word])
            if word == END:
                break
            words.append(word)
            alphas.append(alpha[0])
        results.append((words, score, torch.stack(alphas) if alphas else torch.empty(0, P)))
    return results


@torch.no_grad()
def teacher_forced_log_prob(model: CaptionDecoder, features: torch.Tensor, words: list[int],
                            ended: bool) -> tuple[float, torch.Tensor]:
    """Summed log-prob of `words` (+ END when `ended`) for one image (P, E), and the attention (L, P)."""
    captions = torch.tensor([[START, *words, END]])
    logits, alphas = model(features[None], captions)  # (1, L+1, V), (1, L+1, P)
    log_probs = F.log_softmax(logits[0], dim=1).gather(1, captions[0, 1:, None]).squeeze(1)  # (L+1,)
    if not ended:
        log_probs = log_probs[:-1]
    return float(log_probs.sum()), alphas[0, : len(words)]


# ----------------------------------------------------------------------------------------------
# shapes


def test_search_output_shapes():
    model = make_model(seed=0, end_bias=0.0, sharpness=4.0)
    features = make_features(5, seed=20) * 2
    for beam_size in (1, 3):
        tokens, attention, scores = generate(model, features, beam_size, max_length=7)
        assert len(tokens) == len(attention) == 5
        assert scores.shape == (5,) and (scores <= 0).all()
        assert len({len(words) for words in tokens}) > 1  # captions of different lengths
        for words, alpha in zip(tokens, attention):
            assert all(isinstance(w, int) for w in words)
            assert END not in words
            assert 0 <= len(words) <= 7
            assert alpha.shape == (len(words), P)
            torch.testing.assert_close(alpha.sum(dim=1), torch.ones(len(words)))


# ----------------------------------------------------------------------------------------------
# the search itself, against independent references


# (model seed, END bias): sharp random models whose greedy captions end at many different steps
DECODERS = [(0, None), (1, None), (0, 0.0), (4, 0.0), (2, 0.5), (3, 0.5)]


@pytest.mark.parametrize("seed,end_bias", DECODERS)
def test_beam_size_one_is_greedy_argmax_decoding(seed, end_bias):
    model = make_model(seed=seed, end_bias=end_bias, sharpness=4.0)
    features = make_features(16, seed=seed + 20) * 2
    tokens, attention, scores = generate(model, features, 1, max_length=12)
    reference = greedy_reference(model, features, max_length=12)
    for b, (words, score, alpha) in enumerate(reference):
        assert tokens[b] == words, f"image {b}"
        assert scores[b].item() == pytest.approx(score, abs=1e-4)
        torch.testing.assert_close(attention[b], alpha)
    lengths = [len(words) for words, _, _ in reference]
    assert min(lengths) < 12 and max(lengths) > 0 and len(set(lengths)) > 1  # END both won and lost


@torch.no_grad()
def beam_reference(model: CaptionDecoder, image: torch.Tensor, beam_size: int,
                   max_length: int) -> tuple[list[int], float, torch.Tensor]:
    """Textbook beam search for one image (P, E), hypotheses as Python lists.

    Each step expands every live hypothesis by every word and ranks all candidates; an END among
    the `beam_size` best finishes a hypothesis; the `beam_size` best that did not end live on.
    Stop when the best finished score is at least the best live one (scores only fall) or after
    `max_length` steps, falling back to the best live hypothesis when none finished.
    """
    state = model.start(image[None])
    live = [(0.0, [START], state.h, state.c, [])]  # (score, [START, words...], h, c, [alpha per word])
    best: tuple[float, list[int], list[torch.Tensor]] | None = None
    for _ in range(max_length):
        candidates = []
        for score, words, h, c, alphas in live:
            gates = model.word_gates(model.embedding(torch.tensor(words[-1:])))
            h, c, out, alpha = model.step(state.x, state.projected, gates, h, c)
            log_probs = F.log_softmax(model.read_out(out), dim=1)[0].tolist()
            candidates += [(score + lp, words + [w], h, c, alphas + [alpha[0]]) for w, lp in enumerate(log_probs)]
        candidates.sort(key=lambda candidate: -candidate[0])
        for score, words, _, _, alphas in candidates[:beam_size]:
            if words[-1] == END and (best is None or score > best[0]):
                best = (score, words[1:-1], alphas[:-1])
        live = [candidate for candidate in candidates if candidate[1][-1] != END][:beam_size]
        if best is not None and best[0] >= live[0][0]:
            break
    if best is None:
        best = (live[0][0], live[0][1][1:], live[0][4])
    score, words, alphas = best
    return words, score, torch.stack(alphas) if alphas else torch.empty(0, P)


@BOTH
@pytest.mark.parametrize("seed,end_bias", DECODERS[::2])
@pytest.mark.parametrize("beam_size", [2, 3, 5])
def test_beam_search_equals_a_reference_beam_search(seed, end_bias, beam_size):
    model = make_model(seed=seed, end_bias=end_bias, sharpness=4.0)
    features = make_features(8, seed=seed + 30) * 2
    tokens, attention, scores = generate(model, features, beam_size, max_length=10)
    for b in range(8):
        words, score, alpha = beam_reference(model, features[b], beam_size, max_length=10)
        assert tokens[b] == words, f"image {b}"
        assert scores[b].item() == pytest.approx(score, abs=1e-4)
        torch.testing.assert_close(attention[b], alpha)


def test_search_stops_at_max_length_when_end_cannot_win():
    model = make_model(seed=1, end_bias=-1e9)
    features = make_features(4)
    for beam_size in (1, 3):
        tokens, attention, scores = generate(model, features, beam_size, max_length=6)
        assert [len(words) for words in tokens] == [6] * 4
        assert [tuple(a.shape) for a in attention] == [(6, P)] * 4
        assert torch.isfinite(scores).all()


@BOTH
def test_batched_search_equals_one_image_at_a_time():
    model = make_model(seed=2, end_bias=0.0, sharpness=4.0)
    features = make_features(6, seed=4) * 2
    for beam_size in (1, 3, 5):
        tokens, attention, scores = generate(model, features, beam_size, max_length=8)
        for b in range(6):
            one_tokens, one_attention, one_scores = generate(model, features[b : b + 1], beam_size, max_length=8)
            assert one_tokens[0] == tokens[b]
            torch.testing.assert_close(one_attention[0], attention[b])
            assert one_scores[0].item() == pytest.approx(scores[b].item(), abs=1e-5)


@pytest.mark.parametrize("beam_size", [1, 2, 5])
def test_beams_of_different_images_never_mix(beam_size, each_architecture):
    """Images kept once per image while their beams are rows: a batch of distinct images, in any order,
    gives each image exactly what it gets alone, while images finish (and leave the batch) at different
    steps. A beam attending to another image's features, or an image dropped with the wrong features,
    would change the words, scores or attention of some image."""
    # random decoders whose searches end at different steps for different images
    model = (make_model(seed=0, sharpness=8.0, end_bias=0.5) if each_architecture == "spatial"
             else make_model(seed=4, sharpness=4.0))
    features = make_features(12, seed=1) * 3  # (12, P, E): distinct images
    alone = [generate(model, features[b : b + 1], beam_size, max_length=9) for b in range(12)]
    lengths = {len(tokens[0]) for tokens, _, _ in alone}
    assert len(lengths) >= 3  # searches end at different steps, so images leave the batch one by one
    assert len({tuple(tokens[0]) for tokens, _, _ in alone}) >= 6  # the images are told apart
    for order in (torch.arange(12), torch.randperm(12, generator=torch.Generator().manual_seed(1))):
        tokens, attention, scores = generate(model, features[order], beam_size, max_length=9)
        for position, b in enumerate(order.tolist()):
            one_tokens, one_attention, one_scores = alone[b]
            assert tokens[position] == one_tokens[0], f"image {b} at position {position}"
            # the same up to float rounding: a batch's products may round differently from one image's
            assert scores[position].item() == pytest.approx(one_scores[0].item(), rel=1e-6)
            torch.testing.assert_close(attention[position], one_attention[0])


@pytest.mark.parametrize("seed,end_bias,sharpness", [(0, None, 4.0), (1, None, 4.0), (3, 0.5, 4.0), (0, -1.0, 12.0)])
def test_a_beam_that_holds_every_candidate_finds_the_best_caption(seed, end_bias, sharpness):
    """An exhaustive beam returns the best caption of all, so no narrower beam (greedy included) beats it.

    For narrower beams, a larger beam scoring at least as well as a smaller one is usual but not a
    theorem: the greedy prefix can be pruned (the reference test above pins the algorithm instead).
    Only finished captions compete: one cut off at max_length has no END term in its score.
    """
    model = make_model(seed=seed, end_bias=end_bias, sharpness=sharpness)
    features = make_features(6, seed=seed + 40) * 2
    max_length = 3  # captions of at most 2 words finish within it
    # every caption of 0, 1 or 2 words (any token but END), scored by teacher forcing
    words = [w for w in range(V) if w != END]
    captions = [[]] + [[a] for a in words] + [[a, b] for a in words for b in words]
    rows = padded(captions)  # (N, 4)
    ends = torch.tensor([len(caption) + 1 for caption in captions])  # position of END in rows
    exhaustive = V * (V - 1) ** (max_length - 1)  # candidates at the last step
    tokens, _, scores = generate(model, features, exhaustive, max_length=max_length)
    for b in range(6):
        with torch.no_grad():
            logits, _ = model(features[b].expand(len(captions), P, E), rows)  # (N, 3, V)
        log_probs = F.log_softmax(logits, dim=2).gather(2, rows[:, 1:, None]).squeeze(2)  # (N, 3)
        log_probs = log_probs.masked_fill(torch.arange(1, 4) > ends[:, None], 0.0).sum(dim=1)  # (N,)
        best = int(log_probs.argmax())
        assert tokens[b] == captions[best]
        assert scores[b].item() == pytest.approx(log_probs[best].item(), abs=1e-4)

    beaten = False
    for beam_size in (1, 2, 3):
        narrow_tokens, _, narrow = generate(model, features, beam_size, max_length=max_length)
        finished = torch.tensor([len(caption) < max_length for caption in narrow_tokens])
        assert (narrow[finished] <= scores[finished] + 1e-5).all()
        beaten |= bool((narrow[finished] < scores[finished] - 1e-3).any())
    assert beaten  # the narrow searches do miss the best caption sometimes: the comparison is not vacuous


@pytest.mark.parametrize("beam_size", [1, 3])
def test_scores_are_the_teacher_forced_log_probability_of_the_caption(beam_size, each_architecture):
    # random decoders with both finished and cut-off captions
    model = make_model(seed=3, end_bias=0.5 if each_architecture == "spatial" else 0.0, sharpness=4.0)
    features = make_features(8, seed=5) * 2
    max_length = 6
    tokens, attention, scores = generate(model, features, beam_size, max_length=max_length)
    lengths = [len(words) for words in tokens]
    assert min(lengths) < max_length and max(lengths) == max_length  # both kinds below
    for b, words in enumerate(tokens):
        # END can follow at most max_length - 1 words: a caption of max_length words was cut off
        ended = len(words) < max_length
        score, alpha = teacher_forced_log_prob(model, features[b], words, ended=ended)
        assert scores[b].item() == pytest.approx(score, abs=1e-4)
        torch.testing.assert_close(attention[b], alpha)


def test_unfinished_score_is_the_log_probability_of_the_words_alone():
    model = make_model(seed=4, end_bias=-1e9, sharpness=4.0)
    features = make_features(3)
    tokens, _, scores = generate(model, features, 3, max_length=5)
    for b, words in enumerate(tokens):
        assert scores[b].item() == pytest.approx(teacher_forced_log_prob(model, features[b], words, False)[0],
                                                 abs=1e-4)
