"""The per-step products of a teacher-forced pass: the values and gradients of plain `nn.Linear` layers,
the weight's gradient computed once for all steps; in float32 and under bf16 autocast."""
from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from pipeline.model.decoder import caption_loss
from pipeline.model.step_products import StepProducts
from tests.tiny_models import PAD, make_features, make_model, padded

pytestmark = pytest.mark.usefixtures("one_thread")


def recurrence(layers: tuple[nn.Linear, nn.Linear], x: torch.Tensor, steps: int,
               products: StepProducts | None) -> torch.Tensor:
    """h_{t+1} = tanh(A h_t + b) * sigmoid(B h_t), the loss a weighted sum of every step's h."""
    linear = products.linear if products else (lambda layer, inputs: layer(inputs))
    h, total = x, x.new_zeros(())
    for t in range(steps):
        h = torch.tanh(linear(layers[0], h)) * torch.sigmoid(linear(layers[1], h))
        total = total + (h * (t + 1)).sum()
    return total


def gradients(layers: tuple[nn.Linear, nn.Linear], x: torch.Tensor, products: StepProducts | None,
              autocast: bool = False) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        loss = recurrence(layers, x, 6, products)
    grads = torch.autograd.grad(loss, [x, *[p for layer in layers for p in layer.parameters()]])
    return loss.detach(), list(grads[1:]), grads[0]


def layers_and_input() -> tuple[tuple[nn.Linear, nn.Linear], torch.Tensor]:
    torch.manual_seed(0)
    return (nn.Linear(5, 5), nn.Linear(5, 5, bias=False)), torch.randn(3, 5)


def test_products_give_the_values_and_gradients_of_the_plain_layers():
    layers, x = layers_and_input()
    loss, weight_grads, input_grad = gradients(layers, x, None)
    shared_loss, shared_weight_grads, shared_input_grad = gradients(layers, x, StepProducts())
    torch.testing.assert_close(shared_loss, loss, rtol=0, atol=0)  # the same kernels in the forward
    torch.testing.assert_close(shared_input_grad, input_grad)
    assert len(shared_weight_grads) == len(weight_grads) == 3  # A, its bias, B (no bias)
    for shared, plain in zip(shared_weight_grads, weight_grads, strict=True):
        torch.testing.assert_close(shared, plain)
        assert shared.dtype == torch.float32


def test_steps_that_do_not_reach_the_loss_add_nothing():
    layers, x = layers_and_input()
    products = StepProducts()
    kept = products.linear(layers[0], x)
    products.linear(layers[0], torch.randn(3, 5))  # a step whose output is never used
    weight_grad, bias_grad = torch.autograd.grad((kept * 2).sum(), list(layers[0].parameters()))
    torch.testing.assert_close(weight_grad, 2 * torch.ones(5, 1) * x.sum(0))
    torch.testing.assert_close(bias_grad, torch.full((5,), 2.0 * 3))


def test_under_autocast_products_are_bf16_and_gradients_close_to_autocasts():
    layers, x = layers_and_input()
    loss, weight_grads, input_grad = gradients(layers, x, None, autocast=True)
    shared_loss, shared_weight_grads, shared_input_grad = gradients(layers, x, StepProducts(), autocast=True)
    torch.testing.assert_close(shared_loss, loss, rtol=0, atol=0)
    # the input's gradient: the same products, summed with the other uses' in another order
    torch.testing.assert_close(shared_input_grad, input_grad, rtol=1e-2, atol=1e-2)
    for shared, plain in zip(shared_weight_grads, weight_grads, strict=True):
        assert shared.dtype == torch.float32  # the weights' own precision
        torch.testing.assert_close(shared, plain, rtol=2e-2, atol=2e-2)  # rounded once, not once per step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert StepProducts().linear(layers[0], x).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# in the decoder: every architecture's teacher-forced pass


def loss_and_gradients(model: torch.nn.Module, plain: bool, autocast: bool = False
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if plain:  # the per-step layers called directly, as decoding does
        model.linear = lambda layer, x: layer(x)
    features = make_features(3, seed=4) * 2
    captions = padded([[4, 5, 6, 7], [8, 9], [10, 11, 4, 5, 6]])
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
        logits, alphas = model(features, captions)
        loss = caption_loss(logits, captions[:, 1:], alphas, PAD, 1.0)[0]
    loss.backward()
    vars(model).pop("linear", None)
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.usefixtures("each_architecture")
def test_teacher_forced_gradients_equal_those_of_the_plain_layers():
    model = make_model(seed=2).train()
    loss, grads = loss_and_gradients(model, plain=True)
    shared_loss, shared_grads = loss_and_gradients(model, plain=False)
    torch.testing.assert_close(shared_loss, loss, rtol=0, atol=0)
    assert shared_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(shared_grads[name], grad, msg=name)
    assert model.step_products is None  # nothing kept once the pass is over


@pytest.mark.usefixtures("each_architecture")
def test_teacher_forced_gradients_under_bf16_autocast_stay_close_to_autocasts():
    model = make_model(seed=2).train()
    loss, grads = loss_and_gradients(model, plain=True, autocast=True)
    shared_loss, shared_grads = loss_and_gradients(model, plain=False, autocast=True)
    torch.testing.assert_close(shared_loss, loss, rtol=0, atol=0)
    for name, grad in grads.items():
        assert shared_grads[name].dtype == torch.float32
        scale = float(grad.abs().max())
        torch.testing.assert_close(shared_grads[name], grad, rtol=0, atol=2e-2 * scale, msg=name)


def test_features_are_kept_in_autocasts_dtype_for_the_steps():
    model = make_model()
    features = make_features(2)
    plain = model.start(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = model.start(features)
    assert plain.x.dtype == torch.float32 and cast.x.dtype == torch.bfloat16
    torch.testing.assert_close(cast.x, plain.x.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(cast.h.float(), plain.h, rtol=2e-2, atol=2e-2)  # from the float32 mean
