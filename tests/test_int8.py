"""Int8 products for scoring: exact on values int8 represents, close on the rest, only the per-step layers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.model.int8 import MIN_ROWS, Int8Linear, quantised
from tests.tiny_models import make_features, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


def integer_layer(rows: int, columns: int, seed: int) -> nn.Linear:
    """A layer whose weights int8 holds exactly: integers in -127..127, each row reaching 127."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(columns, rows)
    weight = torch.randint(-126, 127, (rows, columns), generator=generator).float()
    weight[:, 0] = 127.0
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(torch.randn(rows, generator=generator))
    return layer


@pytest.mark.parametrize("batch", [1, MIN_ROWS - 1, MIN_ROWS, 40])  # below and above the int8 kernel's minimum
def test_values_int8_holds_are_multiplied_exactly(batch: int) -> None:
    layer = integer_layer(24, 64, seed=batch)
    generator = torch.Generator().manual_seed(100 + batch)
    x = torch.randint(-126, 127, (batch, 64), generator=generator).float()
    x[:, 3] = -127.0  # each row's largest magnitude is 127: its scale is 1
    x = x * 0.5  # ... and with a power of two, still exact
    expected = (x.double() @ layer.weight.double().t() + layer.bias.double()).float()
    torch.testing.assert_close(Int8Linear(layer)(x), expected, rtol=0, atol=1e-4)


def test_any_values_are_close_and_any_leading_shape_is_kept() -> None:
    generator = torch.Generator().manual_seed(0)
    layer = nn.Linear(256, 96)
    x = torch.randn(3, 20, 256, generator=generator)
    y = Int8Linear(layer)(x)
    assert y.shape == (3, 20, 96) and y.dtype == torch.float32
    exact = layer(x).detach()
    error = (y - exact).norm() / exact.norm()
    assert 0 < error < 0.02  # rounded, but to within about 1%


def test_a_zero_row_gives_the_bias() -> None:
    layer = integer_layer(8, 32, seed=1)
    y = Int8Linear(layer)(torch.zeros(20, 32))
    torch.testing.assert_close(y, layer.bias.detach().expand(20, 8))


@pytest.mark.usefixtures("each_architecture")
def test_quantised_copy_replaces_the_per_step_layers_only_and_decodes_close() -> None:
    model = make_model(seed=3, sharpness=4.0)
    copy = quantised(model)
    replaced = {name for name, module in copy.named_modules() if isinstance(module, Int8Linear)}
    assert {"hidden_projection", "output"} <= replaced
    assert replaced.isdisjoint({"encoder_projection", "init_h", "init_c", "word_gates", "attention.score"})
    per_step = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)} - {
        "encoder_projection", "init_h", "init_c", "word_gates", "attention.score"}
    assert replaced == per_step  # the architecture's own recurrent layers too
    assert not any(isinstance(module, Int8Linear) for module in model.modules())
    assert not copy.training
    features = make_features(3)
    words = torch.tensor([4, 5, 6])
    with torch.no_grad():
        model.eval()
        expected, _, _ = model.advance(model.start(features), words)
        got, _, _ = copy.advance(copy.start(features), words)
    assert not torch.equal(got, expected)
    torch.testing.assert_close(got, expected, rtol=0, atol=0.1)
