"""Int8 products for scoring many captions on a CPU: a decoder's per-step layers, dynamically quantised.

`quantised(model)` returns a copy of a decoder in which every linear layer that a decoding step
multiplies by (h -> attention and gate, the architecture's recurrent gates, the output layer) is
an `Int8Linear`: its weight rounded to int8 once, per output row, and at every call its input
rounded to int8 per row, multiplied in int32 (exact) and scaled back to float32. The layers used
once per image or per word (the feature projection, the initial state, the embedding part of the
gates) and the attention's scoring vector stay float32. This is PyTorch's dynamic quantisation of
linear layers (`torch.ao.quantization.quantize_dynamic`, deprecated there), written on the int8
matrix product that stays (`torch._int_mm`, oneDNN's VNNI kernels on an x86 CPU).

What it changes: each product's inputs are rounded to 1/254 of their row's largest magnitude, so
scores move by a few hundredths of a nat (docs/search.md gives the measured tolerance); it is for
the retrieval scorer (`retrieval.precision: int8`), never for training.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from pipeline.model.decoder import CaptionDecoder

ONCE_PER_IMAGE_OR_WORD = ("encoder_projection", "init_h", "init_c", "word_gates")  # kept float32
LEVELS = 127.0  # int8 values used: -127..127, symmetric
SMALLEST_SCALE = torch.finfo(torch.float32).tiny
MIN_ROWS = 17  # torch._int_mm needs more than 16 rows; fewer are multiplied in float32 from the same int8 values


def to_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, n) float -> int8 values (R, n) and per-row scales (R, 1), x ~ values * scales."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(SMALLEST_SCALE).div_(LEVELS)  # (R, 1)
    return torch.round(x / scale).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A linear layer y = x W^T + b with W and each x rounded to int8 (per output row, per input row)."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        values, scale = to_int8(layer.weight.detach().float())  # (out, in), (out, 1)
        self.register_buffer("weight", values)
        self.register_buffer("scale", scale.view(1, -1))  # (1, out)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        values, scale = to_int8(x.reshape(-1, self.in_features).float())  # (R, in), (R, 1)
        if values.size(0) >= MIN_ROWS:
            product = torch._int_mm(values, self.weight.t()).float()  # (R, out), exact in int32
        else:
            product = values.float() @ self.weight.t().float()  # the same sums, to float32 rounding
        product.mul_(scale).mul_(self.scale)
        if self.bias is not None:
            product.add_(self.bias)
        return product.view(*lead, self.out_features)


def quantised(model: CaptionDecoder) -> CaptionDecoder:
    """A copy of `model` in eval mode whose per-step linear layers are `Int8Linear`s (module docstring)."""
    copied = copy.deepcopy(model).eval()
    for name, module in list(copied.named_modules()):
        if isinstance(module, nn.Linear) and name not in ONCE_PER_IMAGE_OR_WORD and module.out_features > 1:
            parent, _, attribute = name.rpartition(".")
            setattr(copied.get_submodule(parent) if parent else copied, attribute, Int8Linear(module))
    return copied
