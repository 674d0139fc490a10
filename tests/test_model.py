"""Tests for the decoder: shapes, the fused LSTM cell, the loss, overfitting, beam search, checkpoints."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import CaptionDecoder, DecoderConfig, caption_loss, checkpoint_payload, load_checkpoint

# tiny dimensions: V vocab, D embedding, E encoder, A attention, H hidden, P regions
V, D, E, A, H, P = 12, 8, 16, 8, 16, 4
PAD, START, END = 0, 1, 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only add overhead


def make_model(seed: int = 0, dropout: float = 0.0, end_bias: float | None = None,
               sharpness: float = 1.0) -> CaptionDecoder:
    """A tiny decoder in eval mode.

    `sharpness` scales the output weights: a fresh model's next-word distribution is nearly
    uniform, so beam search and greedy decoding would agree trivially; peaked distributions make
    them differ. `end_bias` sets the output bias of END (to make END likelier, or impossible).
    """
    torch.manual_seed(seed)
    model = CaptionDecoder(DecoderConfig(vocab_size=V, embed_dim=D, encoder_dim=E, attention_dim=A,
                                         decoder_dim=H, dropout=dropout, pad_index=PAD))
    with torch.no_grad():
        model.output.weight.mul_(sharpness)
        if end_bias is not None:
            model.output.bias[END] = end_bias
    return model.eval()


def make_features(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, P, E, generator=torch.Generator().manual_seed(seed))  # (B, P, E)


def padded(captions: list[list[int]]) -> torch.Tensor:
    """[START, words, END, PAD...] rows as a (B, T) tensor."""
    rows = [[START, *c, END] for c in captions]
    T = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (T - len(r)) for r in rows])


@torch.no_grad()
def greedy_reference(model: CaptionDecoder, features: torch.Tensor,
                     max_length: int) -> list[tuple[list[int], float, torch.Tensor]]:
    """Plain argmax decoding, one image and one step at a time: (words, summed log-prob, attention)."""
    results = []
    for image in features:
        x, projected, h, c = model.prepare_features(image[None])
        word, words, score, alphas = START, [], 0.0, []
        for _ in range(max_length):
            h, c, alpha = model.step(x, projected, model.word_gates(model.embedding(torch.tensor([word]))), h, c)
            log_probs = F.log_softmax(model.output(h), dim=1)[0]  # (V,)
            word = int(log_probs.argmax())
            score += float(log_probs[word])
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


def test_forward_shapes_and_attention_is_a_distribution():
    model = make_model()
    captions = padded([[4, 5, 6], [7], [8, 9, 10, 11, 4]])  # (3, 7)
    logits, alphas = model(make_features(3), captions)
    assert logits.shape == (3, captions.size(1) - 1, V)
    assert alphas.shape == (3, captions.size(1) - 1, P)
    assert (alphas >= 0).all()
    torch.testing.assert_close(alphas.sum(dim=2), torch.ones(3, captions.size(1) - 1))


def test_prepare_features_shapes_and_standardisation():
    model = make_model()
    mean, std = torch.linspace(-1, 1, E), torch.linspace(0.5, 2, E)
    model.set_feature_statistics(mean, std)
    features = make_features(2).half()  # cached features are float16
    x, projected, h, c = model.prepare_features(features)
    assert x.shape == (2, P, E) and x.dtype == torch.float32
    assert projected.shape == (2, P, A)
    assert h.shape == (2, H) and c.shape == (2, H)
    torch.testing.assert_close(x, (features.float() - mean) / std)
    torch.testing.assert_close(projected, model.encoder_projection(x))
    torch.testing.assert_close(h, torch.tanh(model.init_h(x.mean(dim=1))))


def test_feature_std_is_clamped_away_from_zero():
    model = make_model()
    model.set_feature_statistics(torch.zeros(E), torch.zeros(E))
    assert (model.feature_std > 0).all()
    x, *_ = model.prepare_features(make_features(1))
    assert torch.isfinite(x).all()


def test_generate_shapes():
    model = make_model(seed=0, end_bias=0.0, sharpness=4.0)
    features = make_features(5, seed=20) * 2
    for beam_size in (1, 3):
        tokens, attention, scores = model.generate(features, START, END, beam_size=beam_size, max_length=7)
        assert len(tokens) == len(attention) == 5
        assert scores.shape == (5,) and (scores <= 0).all()
        assert len({len(words) for words in tokens}) > 1  # captions of different lengths
        for words, alpha in zip(tokens, attention):
            assert all(isinstance(w, int) for w in words)
            assert END not in words
            assert 0 <= len(words) <= 7
            assert alpha.shape == (len(words), P)
            torch.testing.assert_close(alpha.sum(dim=1), torch.ones(len(words)))


def test_forward_is_causal():
    """Logits at step t depend only on the words up to t (teacher forcing, no peeking)."""
    model = make_model()
    features = make_features(2)
    captions = padded([[4, 5, 6, 7], [8, 9, 10, 11]])
    changed = captions.clone()
    changed[:, 3:] = 5
    logits, alphas = model(features, captions)
    changed_logits, changed_alphas = model(features, changed)
    torch.testing.assert_close(logits[:, :3], changed_logits[:, :3])
    torch.testing.assert_close(alphas[:, :4], changed_alphas[:, :4])  # alpha at t uses h before word t
    assert not torch.allclose(logits[:, 3:], changed_logits[:, 3:])


# ----------------------------------------------------------------------------------------------
# the fused LSTM cell is nn.LSTMCell(D + E, H) on [embedding; gated context]


def test_step_equals_lstm_cell_on_embedding_and_gated_context():
    model = make_model()
    torch.manual_seed(5)
    cell = torch.nn.LSTMCell(D + E, H)
    with torch.no_grad():
        cell.bias_hh.normal_()  # make both biases matter
        model.word_gates.weight.copy_(cell.weight_ih[:, :D])
        model.word_gates.bias.copy_(cell.bias_ih + cell.bias_hh)
        model.recurrent_gates.weight.copy_(torch.cat([cell.weight_ih[:, D:], cell.weight_hh], dim=1))

    features = make_features(3)
    embedded = torch.randn(3, D)
    with torch.no_grad():
        x, projected, h, c = model.prepare_features(features)
        h = h + torch.randn_like(h)  # a state away from the initial one
        c = torch.randn_like(c)
        new_h, new_c, alpha = model.step(x, projected, model.word_gates(embedded), h, c)

        hidden = model.hidden_projection(h)  # (B, A + E)
        context, reference_alpha = model.attention(x, projected, hidden[:, :A])
        gated = torch.sigmoid(hidden[:, A:]) * context  # (B, E)
        reference_h, reference_c = cell(torch.cat([embedded, gated], dim=1), (h, c))

    torch.testing.assert_close(new_h, reference_h)
    torch.testing.assert_close(new_c, reference_c)
    torch.testing.assert_close(alpha, reference_alpha)
    # the attention context is the alpha-weighted sum of the (standardised) region features
    torch.testing.assert_close(context, (reference_alpha.unsqueeze(2) * x).sum(dim=1))


# ----------------------------------------------------------------------------------------------
# the loss


def loss_inputs():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, V, generator=generator)  # (B, T, V)
    targets = torch.tensor([[4, 5, 6, END, PAD], [7, END, PAD, PAD, PAD], [8, 9, 10, 11, END]])  # (B, T)
    alphas = torch.rand(3, 5, P, generator=generator).softmax(dim=2)  # (B, T, P)
    return logits, targets, alphas


def test_caption_loss_equals_cross_entropy_over_non_pad_targets():
    logits, targets, alphas = loss_inputs()
    _, cross_entropy = caption_loss(logits, targets, alphas, PAD, attention_penalty=0.0)
    log_probs = F.log_softmax(logits, dim=2)
    terms = [-log_probs[b, t, targets[b, t]] for b in range(3) for t in range(5) if targets[b, t] != PAD]
    assert len(terms) == 4 + 2 + 5
    torch.testing.assert_close(cross_entropy, torch.stack(terms).mean())


def test_caption_loss_ignores_pad_positions():
    logits, targets, alphas = loss_inputs()
    total, cross_entropy = caption_loss(logits, targets, alphas, PAD, attention_penalty=1.0)
    is_pad = targets == PAD
    changed_logits, changed_alphas = logits.clone(), alphas.clone()
    changed_logits[is_pad] = torch.randn(int(is_pad.sum()), V) * 10
    changed_alphas[is_pad] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    changed_total, changed_cross_entropy = caption_loss(changed_logits, targets, changed_alphas, PAD, 1.0)
    torch.testing.assert_close(changed_cross_entropy, cross_entropy)
    torch.testing.assert_close(changed_total, total)
    # a change at a real position does change it
    changed_logits[0, 0, 4] -= 5.0
    assert caption_loss(changed_logits, targets, alphas, PAD, 1.0)[1] > cross_entropy


def test_attention_penalty_term():
    logits, targets, alphas = loss_inputs()
    mask = (targets != PAD).float().unsqueeze(2)  # (B, T, 1)
    penalty = ((1.0 - (alphas * mask).sum(dim=1)) ** 2).mean()
    assert penalty > 0.01
    total, cross_entropy = caption_loss(logits, targets, alphas, PAD, attention_penalty=0.7)
    torch.testing.assert_close(total, cross_entropy + 0.7 * penalty)
    total, cross_entropy = caption_loss(logits, targets, alphas, PAD, attention_penalty=0.0)
    torch.testing.assert_close(total, cross_entropy)


# ----------------------------------------------------------------------------------------------
# a batch overfits and greedy decoding then reproduces it


def test_overfits_a_batch_and_greedy_reproduces_the_captions():
    model = make_model(seed=0, dropout=0.1).train()
    features = make_features(4, seed=7) * 2
    training = [[4, 5, 6], [7, 8], [9, 10, 11, 4, 5], [6]]
    captions = padded(training)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        logits, alphas = model(features, captions)
        loss, cross_entropy = caption_loss(logits, captions[:, 1:], alphas, PAD, attention_penalty=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    logits, alphas = model(features, captions)
    assert caption_loss(logits, captions[:, 1:], alphas, PAD, 1.0)[1] < 0.05
    for beam_size in (1, 3):
        tokens, _, _ = model.generate(features, START, END, beam_size=beam_size, max_length=10)
        assert tokens == training


# ----------------------------------------------------------------------------------------------
# beam search


# (model seed, END bias): sharp random models whose greedy captions end at many different steps
DECODERS = [(0, None), (1, None), (0, 0.0), (4, 0.0), (2, 0.5), (3, 0.5)]


@pytest.mark.parametrize("seed,end_bias", DECODERS)
def test_beam_size_one_is_greedy_argmax_decoding(seed, end_bias):
    model = make_model(seed=seed, end_bias=end_bias, sharpness=4.0)
    features = make_features(16, seed=seed + 20) * 2
    tokens, attention, scores = model.generate(features, START, END, beam_size=1, max_length=12)
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
    x, projected, h, c = model.prepare_features(image[None])
    live = [(0.0, [START], h, c, [])]  # (score, [START, words...], h, c, [alpha per word])
    best: tuple[float, list[int], list[torch.Tensor]] | None = None
    for _ in range(max_length):
        candidates = []
        for score, words, h, c, alphas in live:
            h, c, alpha = model.step(x, projected, model.word_gates(model.embedding(torch.tensor(words[-1:]))), h, c)
            log_probs = F.log_softmax(model.output(h), dim=1)[0].tolist()
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


@pytest.mark.parametrize("seed,end_bias", DECODERS[::2])
@pytest.mark.parametrize("beam_size", [2, 3, 5])
def test_beam_search_equals_a_reference_beam_search(seed, end_bias, beam_size):
    model = make_model(seed=seed, end_bias=end_bias, sharpness=4.0)
    features = make_features(8, seed=seed + 30) * 2
    tokens, attention, scores = model.generate(features, START, END, beam_size=beam_size, max_length=10)
    for b in range(8):
        words, score, alpha = beam_reference(model, features[b], beam_size, max_length=10)
        assert tokens[b] == words, f"image {b}"
        assert scores[b].item() == pytest.approx(score, abs=1e-4)
        torch.testing.assert_close(attention[b], alpha)


def test_search_stops_at_max_length_when_end_cannot_win():
    model = make_model(seed=1, end_bias=-1e9)
    features = make_features(4)
    for beam_size in (1, 3):
        tokens, attention, scores = model.generate(features, START, END, beam_size=beam_size, max_length=6)
        assert [len(words) for words in tokens] == [6] * 4
        assert [tuple(a.shape) for a in attention] == [(6, P)] * 4
        assert torch.isfinite(scores).all()


def test_batched_search_equals_one_image_at_a_time():
    model = make_model(seed=2, end_bias=0.0, sharpness=4.0)
    features = make_features(6, seed=4) * 2
    for beam_size in (1, 3, 5):
        tokens, attention, scores = model.generate(features, START, END, beam_size=beam_size, max_length=8)
        for b in range(6):
            one_tokens, one_attention, one_scores = model.generate(features[b : b + 1], START, END,
                                                                   beam_size=beam_size, max_length=8)
            assert one_tokens[0] == tokens[b]
            torch.testing.assert_close(one_attention[0], attention[b])
            assert one_scores[0].item() == pytest.approx(scores[b].item(), abs=1e-5)


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
    tokens, _, scores = model.generate(features, START, END, beam_size=exhaustive, max_length=max_length)
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
        narrow_tokens, _, narrow = model.generate(features, START, END, beam_size=beam_size, max_length=max_length)
        finished = torch.tensor([len(caption) < max_length for caption in narrow_tokens])
        assert (narrow[finished] <= scores[finished] + 1e-5).all()
        beaten |= bool((narrow[finished] < scores[finished] - 1e-3).any())
    assert beaten  # the narrow searches do miss the best caption sometimes: the comparison is not vacuous


@pytest.mark.parametrize("beam_size", [1, 3])
def test_scores_are_the_teacher_forced_log_probability_of_the_caption(beam_size):
    model = make_model(seed=3, end_bias=0.0, sharpness=4.0)
    features = make_features(8, seed=5) * 2
    max_length = 6
    tokens, attention, scores = model.generate(features, START, END, beam_size=beam_size, max_length=max_length)
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
    tokens, _, scores = model.generate(features, START, END, beam_size=3, max_length=5)
    for b, words in enumerate(tokens):
        assert scores[b].item() == pytest.approx(teacher_forced_log_prob(model, features[b], words, False)[0],
                                                 abs=1e-4)


# ----------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = make_model(seed=6, dropout=0.3, end_bias=0.0, sharpness=4.0)
    model.set_feature_statistics(torch.linspace(-0.5, 0.5, E), torch.linspace(0.5, 1.5, E))
    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))]
    encoder = {"architecture": "resnet50", "weights": "none", "image_size": 64}
    payload = checkpoint_payload(model, vocabulary, encoder, epoch=3, best_bleu4=0.25)
    path = tmp_path / "model.pt"
    torch.save(payload, path)

    loaded, loaded_payload = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded_payload["vocabulary"] == vocabulary
    assert loaded_payload["encoder"] == encoder
    assert loaded_payload["epoch"] == 3 and loaded_payload["best_bleu4"] == 0.25
    assert loaded_payload["model_config"] == dataclasses.asdict(model.config)
    torch.testing.assert_close(loaded.feature_mean, model.feature_mean)
    torch.testing.assert_close(loaded.feature_std, model.feature_std)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    features = make_features(6) * 3 + 1
    captions = padded([[4, 5], [6, 7, 8], [9], [4], [5, 6], [7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, captions), model(features, captions))
    expected = model.generate(features, START, END, beam_size=3, max_length=8)
    actual = loaded.generate(features, START, END, beam_size=3, max_length=8)
    assert actual[0] == expected[0] and any(expected[0])
    torch.testing.assert_close(actual[2], expected[2])


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
