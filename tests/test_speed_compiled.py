"""The compiled decoder step: when it is chosen, and that it computes what the plain step does.

Inductor's code generation takes minutes on a 2-core CPU, so the equality test compiles with the
`aot_eager` backend: the same graph capture (dynamo, whole step, no graph break allowed) and the same
autograd graph, run by eager kernels.
"""
from __future__ import annotations

import pytest
import torch

from pipeline.model.architectures import build_decoder
from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import CaptionDecoder, DecoderConfig, caption_loss
from pipeline.training.compiled import compile_decoder, compile_wanted, is_compiled, restore, try_compiled

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PAD, START, END, V = 0, 1, 2, 40

pytestmark = pytest.mark.usefixtures("one_thread")


def small_decoder() -> CaptionDecoder:
    torch.manual_seed(0)
    return build_decoder(DecoderConfig(vocab_size=V, embed_dim=8, encoder_dim=16, attention_dim=8, decoder_dim=12,
                                       dropout=0.0, pad_index=PAD, max_caption_length=8, architecture="sat"))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(5, 4, 16, generator=generator)  # (B, P, E)
    captions = torch.randint(3, V, (5, 7), generator=generator)  # (B, T)
    captions[:, 0], captions[:, -1], captions[0, 4:] = START, END, PAD
    return features, captions


def loss_and_gradients(model: CaptionDecoder) -> tuple[torch.Tensor, list[torch.Tensor]]:
    features, captions = batch()
    model.zero_grad()
    logits, alphas = model(features, captions)
    loss = caption_loss(logits, captions[:, 1:], alphas, PAD, 1.0)[0]
    loss.backward()
    return loss.detach(), [parameter.grad.clone() for parameter in model.parameters() if parameter.grad is not None]


def greedy(model: CaptionDecoder) -> list[list[int]]:
    features, _ = batch()
    return [found.tokens for found in beam_search(model.eval(), features, START, END, SearchOptions(1, 8))]


@pytest.mark.parametrize(("setting", "device", "expected"), [
    ("auto", CUDA, True), ("auto", CPU, False), ("always", CPU, True), ("always", CUDA, True), ("never", CUDA, False),
])
def test_auto_compiles_on_cuda_only(setting: str, device: torch.device, expected: bool) -> None:
    assert compile_wanted(setting, device) is expected


def test_auto_on_a_cpu_leaves_the_plain_step() -> None:
    model = small_decoder()
    assert compile_decoder(model, CPU, "auto") is False
    assert not is_compiled(model) and model.step.__func__ is type(model).step


def test_compiled_step_gives_the_same_loss_gradients_and_captions() -> None:
    model = small_decoder()
    loss, gradients = loss_and_gradients(model)
    captions = greedy(model)
    model.train()
    state = {key: value.clone() for key, value in model.state_dict().items()}

    assert compile_decoder(model, CPU, "always", backend="aot_eager") and is_compiled(model)
    compiled_loss, compiled_gradients = loss_and_gradients(model)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-6, atol=1e-6)
    for compiled, plain in zip(compiled_gradients, gradients, strict=True):
        torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-6)
    assert greedy(model) == captions
    assert model.state_dict().keys() == state.keys()  # checkpoints are unchanged by compiling

    restore(model)
    assert not is_compiled(model)


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list) -> None:
    raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.\nmore detail")


def one_training_batch(model: CaptionDecoder) -> None:
    model.train()
    features, captions = batch()
    logits, alphas = model(features, captions)
    caption_loss(logits, captions[:, 1:], alphas, PAD, 1.0)[0].backward()


def test_a_compiler_failure_in_the_trial_puts_the_plain_step_back_and_says_why() -> None:
    model = small_decoder()
    loss, gradients = loss_and_gradients(model)
    assert compile_decoder(model, CPU, "always", backend=failing_backend)
    failure = try_compiled(model, CPU, lambda: one_training_batch(model))
    assert failure == "RuntimeError: Failed to find C compiler. Please specify via CC environment variable."
    assert not is_compiled(model)
    assert all(parameter.grad is None for parameter in model.parameters())
    again, again_gradients = loss_and_gradients(model)
    torch.testing.assert_close(again, loss, rtol=0, atol=0)
    for plain, now in zip(gradients, again_gradients, strict=True):
        torch.testing.assert_close(now, plain, rtol=0, atol=0)


def test_a_working_trial_keeps_the_compiled_step_the_weights_and_the_random_state() -> None:
    model = small_decoder()
    weights = {key: value.clone() for key, value in model.state_dict().items()}
    assert compile_decoder(model, CPU, "always", backend="aot_eager")
    random_state = torch.get_rng_state()
    assert try_compiled(model, CPU, lambda: (one_training_batch(model), torch.rand(1))) is None  # draws numbers
    assert is_compiled(model)
    assert torch.equal(torch.get_rng_state(), random_state)  # the dropout masks of training are those of a run without the trial
    assert all(parameter.grad is None for parameter in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_try_compiled_does_nothing_for_a_plain_step() -> None:
    model = small_decoder()
    ran = []
    assert try_compiled(model, CPU, lambda: ran.append(1)) is None and ran == []
