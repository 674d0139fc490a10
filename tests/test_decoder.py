"""The decoder: shapes, standardisation, the fused LSTM cell, the start/advance decoding interface, the loss,
and overfitting a batch."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import decoder as decoder_module
from pipeline.model.decoder import caption_loss
from tests.tiny_models import END, PAD, A, D, E, H, P, V, generate, make_features, make_model, padded

# tiny tensors: extra threads only add overhead
pytestmark = pytest.mark.usefixtures("one_thread")
per_architecture = pytest.mark.usefixtures("each_architecture")  # once per decoder architecture


# ----------------------------------------------------------------------------------------------
# shapes and the teacher-forced pass


@per_architecture
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
    state = model.start(features)
    x, projected, h, c = state.x, state.projected, state.h, state.c
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
    assert torch.isfinite(model.start(make_features(1)).x).all()


@per_architecture
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
    # sat's attention at step t is queried with h before input word t; spatial's with h after it
    unchanged = 3 if model.config.architecture == "spatial" else 4
    torch.testing.assert_close(alphas[:, :unchanged], changed_alphas[:, :unchanged])
    assert not torch.allclose(alphas[:, unchanged:], changed_alphas[:, unchanged:])
    assert not torch.allclose(logits[:, 3:], changed_logits[:, 3:])


# ----------------------------------------------------------------------------------------------
# start/advance, the interface beam search drives, is the teacher-forced pass one word at a time


@per_architecture
def test_advance_step_by_step_equals_the_teacher_forced_pass():
    model = make_model(seed=3, sharpness=4.0)
    features = make_features(3)
    captions = padded([[4, 5, 6], [7, 8, 9], [10, 11, 4]])  # (3, 5)
    with torch.no_grad():
        logits, alphas = model(features, captions)  # (3, 4, V), (3, 4, P)
        state = model.start(features)
        for t in range(captions.size(1) - 1):
            log_probs, alpha, state = model.advance(state, captions[:, t])
            torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], dim=1))
            torch.testing.assert_close(alpha, alphas[:, t])
    assert log_probs.dtype == torch.float32


def test_state_select_picks_rows_in_order():
    model = make_model()
    state = model.start(make_features(3))
    chosen = state.select(torch.tensor([2, 0, 2]))
    for field in ("x", "projected", "h", "c"):
        torch.testing.assert_close(getattr(chosen, field), getattr(state, field)[[2, 0, 2]])


def beam_state(images: int, beams: int, seed: int = 11):
    """A state of `images` distinct images with `beams` different LSTM rows each, laid out (images, beams)."""
    model = make_model(seed=3, sharpness=4.0)
    state = model.start(make_features(images, seed=seed) * 2)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(images).repeat_interleave(beams)
    state = state.select_beams(rows)  # K rows per image, the image's features not copied
    h = state.h + torch.randn(state.h.shape, generator=generator)
    c = torch.randn(state.c.shape, generator=generator)
    return model, dataclasses.replace(state, h=h, c=c)


@per_architecture
def test_beams_share_their_image_features_and_attend_as_if_each_had_a_copy():
    """K rows per image against one copy of its features equal one row per caption with its own copy."""
    images, beams = 4, 3
    model, state = beam_state(images, beams)
    assert state.x.size(0) == images and state.h.size(0) == images * beams and state.beams == beams
    words = torch.tensor([4, 5, 6, 7, 8, 9, 10, 11, 4, 5, 6, 7])  # (12,)
    with torch.no_grad():
        log_probs, alpha, after = model.advance(state, words)
        # the reference: every row with its own image's features, the layout the decoder had before
        copies = state.select(torch.arange(images * beams))
        assert copies.x.size(0) == images * beams and copies.beams == 1
        reference_log_probs, reference_alpha, reference = model.advance(copies, words)
    torch.testing.assert_close(log_probs, reference_log_probs)
    torch.testing.assert_close(alpha, reference_alpha)
    torch.testing.assert_close(after.h, reference.h)
    assert after.x is state.x and after.projected is state.projected  # still once per image
    # and the rows did use their own image: the attention differs between images for the same hidden state
    same_h = dataclasses.replace(state, h=state.h[:1].expand_as(state.h).contiguous(),
                                 c=state.c[:1].expand_as(state.c).contiguous())
    with torch.no_grad():
        _, same_alpha, _ = model.advance(same_h, words[:1].expand(images * beams))
    assert not torch.allclose(same_alpha[0], same_alpha[beams])
    torch.testing.assert_close(same_alpha[0], same_alpha[beams - 1])


@pytest.mark.parametrize("rows_per_block", [1, 2, 12, 10_000])  # part of an image's rows, whole images, all
def test_attention_without_a_gradient_in_blocks_equals_the_whole_energy(monkeypatch, rows_per_block):
    """Decoding computes the (N, K, P, A) energy a block at a time; training's whole tensor is the reference."""
    images, beams = 4, 5
    model, state = beam_state(images, beams)
    hidden = model.hidden_projection(state.h)[:, :A]  # (N*K, A)
    monkeypatch.setattr(decoder_module, "ENERGY_BLOCK_BYTES", rows_per_block * P * A * 4)
    with torch.no_grad():
        context, alpha = model.attention(state.x, state.projected, hidden)
    with torch.enable_grad():
        whole_context, whole_alpha = model.attention(state.x, state.projected, hidden.detach().requires_grad_())
    torch.testing.assert_close(alpha, whole_alpha.detach())
    torch.testing.assert_close(context, whole_context.detach())
    # by hand for one row: image 2's third beam
    row = 2 * beams + 2
    scores = torch.tanh(state.projected[2] + hidden[row]) @ model.attention.score.weight[0] + model.attention.score.bias
    torch.testing.assert_close(alpha[row], scores.softmax(0).detach())


@per_architecture
def test_advance_with_the_word_gate_table_equals_advance_without():
    model, state = beam_state(3, 2)
    words = torch.tensor([4, 5, 6, 7, 8, 9])
    with torch.no_grad():
        table = model.word_gate_table()
        assert table.shape == (V, 4 * H)
        log_probs, alpha, after = model.advance(state, words)
        table_log_probs, table_alpha, table_after = model.advance(state, words, table)
    torch.testing.assert_close(table_log_probs, log_probs)
    torch.testing.assert_close(table_alpha, alpha)
    torch.testing.assert_close(table_after.c, after.c)


def test_select_beams_reorders_within_images_and_drops_images():
    images, beams = 4, 3
    _, state = beam_state(images, beams)
    rows = torch.tensor([2, 2, 0, 3, 5, 4, 8, 6, 6, 11, 9, 10])  # each image's rows, reordered
    reordered = state.select_beams(rows)
    assert reordered.x is state.x and reordered.projected is state.projected
    torch.testing.assert_close(reordered.h, state.h[rows])
    torch.testing.assert_close(reordered.c, state.c[rows])
    keep = torch.tensor([1, 3])  # drop images 0 and 2
    kept = state.select_beams(torch.tensor([3, 4, 5, 9, 10, 11]), keep)
    torch.testing.assert_close(kept.x, state.x[keep])
    torch.testing.assert_close(kept.projected, state.projected[keep])
    torch.testing.assert_close(kept.h, state.h[[3, 4, 5, 9, 10, 11]])
    # the general select of these rows gives the same caption rows, with one features row each
    general = state.select(torch.tensor([3, 9]))
    torch.testing.assert_close(general.x, state.x[[1, 3]])
    torch.testing.assert_close(general.h, state.h[[3, 9]])
    with pytest.raises(ValueError, match="cannot be laid out"):
        state.select_beams(torch.tensor([0, 1, 2, 3, 4]))


# ----------------------------------------------------------------------------------------------
# the fused LSTM cell is nn.LSTMCell(D + E, H) on [embedding; gated context]


def test_sat_step_equals_lstm_cell_on_embedding_and_gated_context():
    model = make_model(architecture="sat")
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
        state = model.start(features)
        x, projected = state.x, state.projected
        h = state.h + torch.randn_like(state.h)  # a state away from the initial one
        c = torch.randn_like(state.c)
        new_h, new_c, out, alpha = model.step(x, projected, model.word_gates(embedded), h, c)

        # Show, Attend and Tell: attend with the previous h, then the cell reads [word; gated context]
        hidden = model.hidden_projection(h)  # (B, A + E)
        raw_context, reference_alpha = model.attention(x, projected, hidden[:, :A])
        gated = torch.sigmoid(hidden[:, A:]) * raw_context  # (B, E)
        reference_h, reference_c = cell(torch.cat([embedded, gated], dim=1), (h, c))
        logits = model.read_out(out)

    torch.testing.assert_close(new_h, reference_h)
    torch.testing.assert_close(new_c, reference_c)
    torch.testing.assert_close(alpha, reference_alpha)
    torch.testing.assert_close(out, new_h)  # what the word is read from
    # the attention context is the alpha-weighted sum of the (standardised) region features
    torch.testing.assert_close(raw_context, (reference_alpha.unsqueeze(2) * x).sum(dim=1))
    torch.testing.assert_close(logits, model.output(new_h))  # the word is read from h alone


def test_spatial_step_equals_lstm_cell_on_the_word_then_attention_with_the_new_state():
    model = make_model(architecture="spatial")
    torch.manual_seed(5)
    cell = torch.nn.LSTMCell(D, H)
    with torch.no_grad():
        cell.bias_hh.normal_()
        model.word_gates.weight.copy_(cell.weight_ih)
        model.word_gates.bias.copy_(cell.bias_ih + cell.bias_hh)
        model.recurrent_gates.weight.copy_(cell.weight_hh)

    features = make_features(3)
    embedded = torch.randn(3, D)
    with torch.no_grad():
        state = model.start(features)
        x, projected = state.x, state.projected
        h = state.h + torch.randn_like(state.h)
        c = torch.randn_like(state.c)
        new_h, new_c, out, alpha = model.step(x, projected, model.word_gates(embedded), h, c)

        # the cell reads the word alone (the image reaches the words only through attention), then
        # attention is queried with the NEW h
        reference_h, reference_c = cell(embedded, (h, c))
        hidden = model.hidden_projection(reference_h)
        raw_context, reference_alpha = model.attention(x, projected, hidden[:, :A])
        gated = torch.sigmoid(hidden[:, A:]) * raw_context
        logits = model.read_out(out)
        reference_logits = model.output(torch.tanh(model.combine(torch.cat([gated, reference_h], dim=1))))

    torch.testing.assert_close(new_h, reference_h)
    torch.testing.assert_close(new_c, reference_c)
    torch.testing.assert_close(alpha, reference_alpha)
    torch.testing.assert_close(out, torch.cat([gated, reference_h], dim=1))  # [gated context; new h]
    torch.testing.assert_close(logits, reference_logits)  # the word is read from [context; new h]


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown decoder architecture 'transformer'"):
        make_model(architecture="transformer")


def test_every_configurable_architecture_has_its_module_and_nothing_else():
    """The config's list of names, the registry and the modules of pipeline/model/architectures agree."""
    from pathlib import Path

    from pipeline.config import ARCHITECTURES
    from pipeline.model import architectures

    modules = {path.stem for path in Path(architectures.__file__).parent.glob("*.py")} - {"__init__"}
    assert set(ARCHITECTURES) == set(architectures.DECODERS) == modules
    for name in ARCHITECTURES:
        decoder = architectures.DECODERS[name]
        assert decoder.__module__ == f"pipeline.model.architectures.{name}"
        assert {"add_recurrent_layers", "step", "read_out"} <= set(vars(decoder))


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


def test_attention_penalty_of_uniform_attention_is_hand_computed():
    """Uniform attention over 4 regions for 2 real steps: each region's coverage is 2 * 1/4 = 0.5, so the
    penalty is mean over regions of (1 - 0.5)^2 = 0.25; a PAD step's attention does not count."""
    logits = torch.zeros(1, 3, V)  # (B, T, V): every word equally likely, cross-entropy log V
    targets = torch.tensor([[4, END, PAD]])  # (B, T): two real steps
    alphas = torch.tensor([[[0.25] * 4, [0.25] * 4, [1.0, 0.0, 0.0, 0.0]]])  # (B, T, P)
    total, cross_entropy = caption_loss(logits, targets, alphas, PAD, attention_penalty=2.0)
    assert cross_entropy.item() == pytest.approx(math.log(V))
    assert total.item() == pytest.approx(math.log(V) + 2.0 * 0.25)
    # attention on one region for both steps: coverage (2, 0, 0, 0), penalty (1 + 1 + 1 + 1) / 4 = 1
    focused = torch.tensor([[[1.0, 0.0, 0.0, 0.0]] * 3])
    assert caption_loss(logits, targets, focused, PAD, 1.0)[0].item() == pytest.approx(math.log(V) + 1.0)
    assert caption_loss(logits, targets, alphas, PAD, 0.0)[0].item() == pytest.approx(math.log(V))


# ----------------------------------------------------------------------------------------------
# a batch overfits and greedy decoding then reproduces it


@per_architecture
def test_overfits_a_batch_and_greedy_reproduces_the_captions():
    model = make_model(seed=0, dropout=0.1).train()
    features = make_features(4, seed=7) * 2
    training = [[4, 5, 6], [7, 8], [9, 10, 11, 4, 5], [6]]
    captions = padded(training)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        logits, alphas = model(features, captions)
        loss, _ = caption_loss(logits, captions[:, 1:], alphas, PAD, attention_penalty=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    logits, alphas = model(features, captions)
    assert caption_loss(logits, captions[:, 1:], alphas, PAD, 1.0)[1] < 0.05
    for beam_size in (1, 3):
        tokens, _, _ = generate(model, features, beam_size, max_length=10)
        assert tokens == training
