"""Batched beam search over images and beams; beam size 1 is greedy decoding.

Drives any decoder with the `start(features) -> state` / `advance(state, words) -> (log-probs,
attention, state)` interface of `pipeline.model.decoder.CaptionDecoder`, whose state reorders its
rows with `state.select_beams(rows, images)` (see `DecoderState.select_beams`). Every image of a batch
is searched at once, K beams each, and images leave the batch once their search is over.

Layout, with n images still searching (n <= B), k live beams each (1 before the first word, when
all K beams would be the same, then K), t words decoded so far:

    decoder state rows   n*k            image i's beams are rows i*k .. i*k + k-1; the decoder keeps
                                        each image's features once, shared by its beams (DecoderState)
    scores               (n, k)         summed log-probabilities of the live beams
    sequences            (n, k, t)      word ids (no START)
    attention            (n, k, t, P)   the attention that produced each word
    candidates           (n, k*V)       beam j extended by word w sits in column j*V + w

A hypothesis that emits END among the K best candidates of a step is set aside (an END ranked
below them would not have won a beam, and with K = 1 only the argmax may end, so beam size 1 is
exactly greedy decoding). The search for an image ends when no live beam can still beat its best
finished caption, or after `max_length` words, when an image with no finished caption takes its
best live beam.

Options, off by default: a length penalty (finished captions ranked by score / ((5 + L) / 6) **
alpha, Wu et al. 2016, L words plus END), blocking any word that would repeat an n-gram already in
the caption, and banned tokens (PAD and START always; UNK unless allowed).
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import torch


class Decoder(Protocol):
    """What beam search needs of a decoder: `start` and `advance`, and a state with `select_beams`."""

    def start(self, features: torch.Tensor): ...  # noqa: ANN201 - the decoder's own state type

    def advance(self, state, words: torch.Tensor) -> tuple:  # noqa: ANN001
        ...


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """How to search: beams, length limit, and the optional constraints."""

    beam_size: int = 3
    max_length: int = 30  # words, END not counted
    length_penalty: float = 0.0  # alpha; 0 ranks by the summed log-probability
    no_repeat_ngram: int = 0  # n; 0 allows repeats
    banned: tuple[int, ...] = ()  # token ids never emitted


@dataclasses.dataclass
class Hypothesis:
    """One image's caption: word ids (no START or END), attention (L, P) and ranking score."""

    tokens: list[int]
    attention: torch.Tensor
    score: float


def length_norm(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """The length penalty's divisor ((5 + L) / 6) ** alpha; 1 when alpha is 0."""
    return ((5.0 + length) / 6.0) ** alpha


def repeated_ngram_mask(sequences: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(R, V) True for each word that would complete an n-gram already in its row of sequences (R, t)."""
    rows, t = sequences.shape
    mask = torch.zeros(rows, vocab_size, dtype=torch.bool, device=sequences.device)
    if n <= 0 or t < n:  # no complete n-gram yet
        return mask
    if n == 1:
        return mask.scatter_(1, sequences, True)
    windows = sequences.unfold(1, n, 1)  # (R, t-n+1, n): every n-gram so far
    prefix = sequences[:, t - (n - 1):]  # (R, n-1): what the next word would extend
    match = (windows[:, :, : n - 1] == prefix.unsqueeze(1)).all(dim=2)  # (R, t-n+1)
    row, position = torch.nonzero(match, as_tuple=True)
    mask[row, windows[row, position, n - 1]] = True
    return mask


def best_candidates(candidates: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2K best scores and columns of candidates (n, k*V), at least K of them: missing ones (a
    vocabulary smaller than K, the first word) are padded with -inf, so they never take a beam."""
    n, columns = candidates.shape
    top_scores, top_index = candidates.topk(min(2 * K, columns), dim=1)  # (n, c)
    if top_scores.size(1) < K:
        missing = K - top_scores.size(1)
        top_scores = torch.cat([top_scores, top_scores.new_full((n, missing), float("-inf"))], dim=1)
        top_index = torch.cat([top_index, top_index.new_zeros(n, missing)], dim=1)
    return top_scores, top_index


@torch.no_grad()
def beam_search(decoder: Decoder, features: torch.Tensor, start: int, end: int,
                options: SearchOptions = SearchOptions()) -> list[Hypothesis]:
    """The best caption of each image of features (B, P, E)."""
    B, K = features.size(0), options.beam_size
    device = features.device
    state = decoder.start(features)  # one row per image: all K beams start identical, so expand only one
    k = 1  # live beams per image in the state: 1 before the first word, K after
    active = torch.arange(B, device=device)  # (n,) the images still searching
    scores = torch.zeros(B, 1, device=device)  # (n, k)
    words = torch.full((B,), start, dtype=torch.long, device=device)  # (n*k,)
    sequences = torch.empty(B, 1, 0, dtype=torch.long, device=device)  # (n, k, t)
    attention = torch.empty(B, 1, 0, features.size(1), device=device)  # (n, k, t, P)
    best_scores = torch.full((B,), float("-inf"), device=device)  # ranking score of the best finished
    best: list[Hypothesis | None] = [None] * B
    banned = torch.tensor(options.banned, dtype=torch.long, device=device)
    live_bound = float(length_norm(options.max_length + 1, options.length_penalty))
    beam_offsets = torch.arange(K, device=device)  # (K,)

    for t in range(options.max_length):
        n = active.numel()
        log_probs, alpha, state = decoder.advance(state, words)  # (n*k, V), (n*k, P)
        V, P = log_probs.size(1), alpha.size(1)
        if banned.numel():
            log_probs[:, banned] = float("-inf")
        if options.no_repeat_ngram:
            log_probs = log_probs.masked_fill(
                repeated_ngram_mask(sequences.view(n * k, t), options.no_repeat_ngram, V), float("-inf"))
        candidates = log_probs.view(n, k, V).add_(scores.unsqueeze(2)).view(n, k * V)  # in place: no new (n, k*V)
        top_scores, top_index = best_candidates(candidates, K)  # (n, c)
        source, word = top_index // V, top_index % V  # (n, c) the beam each came from, its word
        is_end = word == end
        in_beam = torch.arange(top_scores.size(1), device=device) < K  # (c,) candidates that take a beam

        # finished hypotheses: keep each image's best by its (length-normalised) score
        ranked = top_scores / float(length_norm(t + 1, options.length_penalty))
        end_scores, end_position = ranked.masked_fill(~(is_end & in_beam), float("-inf")).max(dim=1)  # (n,)
        for i in torch.nonzero(end_scores > best_scores[active]).flatten().tolist():
            b, j = int(active[i]), int(source[i, end_position[i]])
            best_scores[b] = end_scores[i]
            best[b] = Hypothesis(sequences[i, j].tolist(),  # the END step's attention left out
                                 attention[i, j].to("cpu", copy=True), float(end_scores[i]))

        # live beams: the K best candidates that did not end
        scores, order = top_scores.masked_fill(is_end, float("-inf")).topk(K, dim=1)  # (n, K)
        source, word = source.gather(1, order), word.gather(1, order)  # (n, K)
        previous = (torch.arange(n, device=device).unsqueeze(1) * k + source).view(-1)  # (n*K,) rows of the state
        state, words = state.select_beams(previous), word.view(-1)
        sequences = torch.cat([sequences.view(n * k, t)[previous].view(n, K, t), word.unsqueeze(2)], dim=2)
        attention = torch.cat([attention.view(n * k, t, P)[previous].view(n, K, t, P),
                               alpha.view(n * k, 1, P)[previous].view(n, K, 1, P)], dim=2)
        k = K

        # an image is done once no live beam can beat its best finished caption
        searching = best_scores[active] < scores[:, 0] / live_bound  # (n,)
        if not bool(searching.any()):
            break
        if int(searching.sum()) <= 3 * n // 4:  # drop finished images, in steps worth a copy
            keep = torch.nonzero(searching).flatten()  # (n',)
            beam_rows = (keep.unsqueeze(1) * K + beam_offsets).view(-1)  # (n'*K,)
            state, words = state.select_beams(beam_rows, keep), words[beam_rows]
            active, scores, sequences, attention = active[keep], scores[keep], sequences[keep], attention[keep]

    for i, b in enumerate(active.tolist()):
        if best[b] is None:  # no beam ever emitted END: its best live one, max_length words
            best[b] = Hypothesis(sequences[i, 0].tolist(), attention[i, 0].to("cpu", copy=True), float(scores[i, 0]))
    return best  # type: ignore[return-value]
