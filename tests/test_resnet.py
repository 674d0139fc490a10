"""The frozen ResNet50 encoder: shapes, region order, precision, weights sources and their errors."""
from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import ResNet50_Weights

from pipeline.encoder.resnet import FEATURE_DIM, Encoder, EncoderError, build_encoder, encode, encoder_info, file_sha256

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return build_encoder("none")


@pytest.fixture(scope="module")
def seeded_resnet() -> torch.nn.Module:
    torch.manual_seed(1)
    return torchvision.models.resnet50().eval()


@pytest.fixture(scope="module")
def state_dict_file(seeded_resnet: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet50_seed1.pth"
    torch.save(seeded_resnet.state_dict(), path)
    return path


def pixels(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def conv_body(resnet: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """ResNet50 up to its last stage, on ImageNet-normalised pixels: (B, 3, S, S) -> (B, E, G, G)."""
    transforms = ResNet50_Weights.IMAGENET1K_V1.transforms()
    mean = torch.tensor(transforms.mean).view(1, 3, 1, 1)
    std = torch.tensor(transforms.std).view(1, 3, 1, 1)
    x = (images.float() / 255 - mean) / std
    for layer in (resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
                  resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        x = layer(x)
    return x


@pytest.mark.parametrize("size", [64, 96])
def test_regions_are_the_grid_in_row_major_order(encoder: Encoder, size: int) -> None:
    images = pixels(2, size)
    with torch.inference_mode():
        features = encoder(images)
        grid_features = encoder.body((images.float() / 255 - encoder.mean) / encoder.std)  # (B, E, G, G)
    grid = size // 32
    assert features.shape == (2, grid * grid, FEATURE_DIM)
    for row in range(grid):
        for col in range(grid):
            torch.testing.assert_close(features[:, row * grid + col], grid_features[:, :, row, col])


def test_encoder_is_frozen_and_stays_in_eval_mode(encoder: Encoder) -> None:
    assert all(not parameter.requires_grad for parameter in encoder.parameters())
    encoder.train()
    assert not encoder.training and not any(module.training for module in encoder.modules())
    features = encoder(pixels(1, 64))
    assert not features.requires_grad


def test_same_input_gives_same_output_for_uint8_and_float(encoder: Encoder) -> None:
    images = pixels(2, 64)
    with torch.inference_mode():
        first = encoder(images)
        second = encoder(images.float())
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_encode_returns_cpu_features_in_the_asked_dtype(encoder: Encoder) -> None:
    images = pixels(2, 64)
    features = encode(encoder.to_device(torch.device("cpu")), images, torch.device("cpu"), torch.float16)
    with torch.inference_mode():
        expected = encoder(images).half()
    assert features.dtype == torch.float16 and features.device.type == "cpu"
    # to_device folds BatchNorm into the convolutions and uses channels_last: a few values move by one
    # float16 step, nothing more
    torch.testing.assert_close(features.float(), expected.float(), rtol=2e-3, atol=2e-3)


def test_random_weights_are_reproducible_and_leave_the_global_generator_alone(encoder: Encoder) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_encoder("none")
    assert torch.equal(torch.rand(3), expected)
    for (name, a), (_, b) in zip(encoder.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_state_dict_file_gives_the_resnet_conv_body(seeded_resnet: torch.nn.Module, state_dict_file: Path) -> None:
    encoder = build_encoder(str(state_dict_file))
    images = pixels(2, 64, seed=1)
    with torch.inference_mode():
        features = encoder(images)  # (B, P, E)
        expected = conv_body(seeded_resnet, images).flatten(2).transpose(1, 2)  # (B, P, E)
    torch.testing.assert_close(features, expected)
    info = encoder_info(str(state_dict_file), 64, "fp32")
    assert info["weights_sha256"] == file_sha256(state_dict_file) and info["grid"] == 2
    assert (info["architecture"], info["image_size"], info["precision"], info["feature_dim"]) == \
        ("resnet50", 64, "fp32", FEATURE_DIM)
    assert "weights_sha256" not in encoder_info("none", 64, "fp32")


def test_state_dict_without_classifier_loads(seeded_resnet: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "body.pt"
    torch.save({k: v for k, v in seeded_resnet.state_dict().items() if not k.startswith("fc.")}, path)
    encoder = build_encoder(str(path))
    torch.testing.assert_close(encoder.body.conv1.weight, seeded_resnet.conv1.weight)


def test_missing_state_dict_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pth"
    with pytest.raises(EncoderError, match="nowhere.pth"):
        build_encoder(str(path))


def test_state_dict_with_wrong_keys_names_the_path_and_key(seeded_resnet: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(seeded_resnet.state_dict())
    state["layer9.weight"] = state.pop("layer4.2.bn3.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(EncoderError, match=r"renamed\.pth.*layer4\.2\.bn3\.weight"):
        build_encoder(str(path))


def test_file_that_is_not_a_state_dict_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="junk.pth"):
        build_encoder(str(path))


def test_unknown_names_list_the_options() -> None:
    with pytest.raises(EncoderError, match=r"unknown encoder weights 'IMAGENET1K_V9'.*IMAGENET1K_V1, IMAGENET1K_V2, none"):
        build_encoder("IMAGENET1K_V9")


def test_offline_download_says_which_file_to_place_and_the_cache_is_used(
        seeded_resnet: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub's cache becomes tmp_path/hub
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected_file = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    with pytest.raises(EncoderError, match=str(expected_file)):
        build_encoder("IMAGENET1K_V1")

    expected_file.parent.mkdir(parents=True, exist_ok=True)
    expected_file.write_bytes(b"half a download")
    with pytest.raises(EncoderError, match="delete that file"):
        build_encoder("IMAGENET1K_V1")

    # following the advice (a good file at that place) works offline
    torch.save(seeded_resnet.state_dict(), expected_file)
    encoder = build_encoder("IMAGENET1K_V1")
    torch.testing.assert_close(encoder.body.layer4[2].conv3.weight, seeded_resnet.layer4[2].conv3.weight)
