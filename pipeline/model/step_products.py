"""The decoder's per-step products in a teacher-forced pass, with each weight's gradient computed once.

A recurrent decoder multiplies the same weight by a (B, in) input at each of T steps. Autograd
computes that weight's gradient at every step (a product with B rows, written out as an (out, in)
tensor) and adds it to the steps' sum (one more pass over an (out, in) tensor): for sat's
[context; h] -> gates, a 2,048 x 2,560 tensor written and added at each of the T steps, from
products of 32 rows that run well below the CPU's peak. Here each step's product keeps its input,
its backward keeps its output gradient, and the weight's gradient is one (out, T*B) x (T*B, in)
product once every step's backward has run: the same sum, in another order.

    products = StepProducts()          # one per teacher-forced pass
    y = products.linear(layer, x)      # at every step: layer(x), same kernels, same values

Under autocast the weight is cast once per pass (as autocast's cache of weight casts does) and each
step's input as autocast would cast it; the gradient of the whole sum is then rounded to the weight's
precision once, where autocast rounds each step's share before adding it up.
"""
from __future__ import annotations

import torch
from torch import nn


class SharedWeight:
    """One layer's weight and bias as every step of the pass multiplies them, and what the steps'
    backward passes leave for the weight's gradient."""

    def __init__(self, layer: nn.Linear, dtype: torch.dtype) -> None:
        self.inputs: list[torch.Tensor] = []  # each (B, in), a step's input in the product's dtype
        self.output_grads: list[torch.Tensor] = []  # each (B, out)
        self.weight, self.bias = _Gather.apply(layer.weight, layer.bias, dtype, self)  # (out, in), (out,) or None

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight's (out, in) and bias's (out,) gradient, summed over every step that had a backward."""
        grads = torch.cat(self.output_grads)  # (T*B, out)
        inputs = torch.cat(self.inputs)  # (T*B, in)
        self.inputs, self.output_grads = [], []
        return grads.t() @ inputs, grads.sum(0, dtype=torch.float32)  # (out, in), (out,)


class _Gather(torch.autograd.Function):
    """The weight (and bias) as the steps use them: cast once to the product's dtype. Its backward runs
    after every step's, so it can compute the weight's gradient from all of them in one product."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype,
                shared: SharedWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx.shared, ctx.has_bias = shared, bias is not None
        ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        ctx.set_materialize_grads(False)  # the steps send no gradient here; `shared` holds it
        # the same tensors when no cast is needed, as views: outputs of this node
        weight = weight.to(dtype) if weight.dtype != dtype else weight.view_as(weight)
        if bias is not None:
            bias = bias.to(dtype) if bias.dtype != dtype else bias.view_as(bias)
        return weight, bias

    @staticmethod
    def backward(ctx, weight_grad: torch.Tensor | None, bias_grad: torch.Tensor | None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        if not ctx.shared.output_grads:  # no step reached the loss
            return weight_grad, bias_grad, None, None
        weight_dtype, bias_dtype = ctx.dtypes
        weight, bias = ctx.shared.gradients()
        weight = weight.to(weight_dtype) if weight_grad is None else weight.to(weight_dtype) + weight_grad
        if not ctx.has_bias:
            return weight, None, None, None
        bias = bias.to(bias_dtype) if bias_grad is None else bias.to(bias_dtype) + bias_grad
        return weight, bias, None, None


class _Product(torch.autograd.Function):
    """x W^T + b as `nn.Linear` computes it (one addmm or mm); the backward returns the input's gradient
    and leaves the output's gradient and the input with the shared weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shared: SharedWeight) -> torch.Tensor:
        ctx.shared, ctx.input_dtype = shared, x.dtype
        x = x.to(weight.dtype)  # (B, in)
        ctx.save_for_backward(x, weight)
        return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())  # (B, out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        x, weight = ctx.saved_tensors
        ctx.shared.inputs.append(x)
        ctx.shared.output_grads.append(grad)
        return (grad @ weight).to(ctx.input_dtype), None, None, None  # (B, in)


class StepProducts:
    """The products of one teacher-forced pass: `linear(layer, x)` equals `layer(x)` and is
    differentiated the same way, the weight's gradient computed once over every step."""

    def __init__(self) -> None:
        self.shared: dict[nn.Linear, SharedWeight] = {}

    def linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """layer(x) for x (B, in) -> (B, out), in the dtype autocast gives `nn.Linear` here."""
        shared = self.shared.get(layer)
        if shared is None:
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else layer.weight.dtype
            shared = self.shared[layer] = SharedWeight(layer, dtype)
        return _Product.apply(x, shared.weight, shared.bias, shared)
