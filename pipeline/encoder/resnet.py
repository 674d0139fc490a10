"""The frozen CNN encoder: an image batch in, a grid of region features out.

Shared by the `features` stage (which caches the features of every dataset image) and by the
`caption` command (which encodes new photos), so both see exactly the same preprocessing.

Dimensions: B batch, S image side (pixels), G = S / 32 grid side, P = G * G regions, E = 2048
feature size. Region p covers grid cell (p // G, p % G): row-major, top-left first.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models import ResNet50_Weights

from pipeline.errors import PipelineError

ARCHITECTURE = "resnet50"
NO_WEIGHTS = "none"
STATE_DICT_SUFFIXES = (".pth", ".pt")
FEATURE_DIM = 2048  # E: channels of ResNet50's last stage
STRIDE = 32  # pixels per grid cell: ResNet50 downsamples by 32
RANDOM_INIT_SEED = 0
DROPPED_LAYERS = ("avgpool", "fc")  # the classifier head; the encoder keeps the spatial grid
# what torch.load(weights_only=True) raises for a file that is not a plain state dict
UNLOADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError)


class EncoderError(PipelineError):
    """The encoder cannot be built: unknown name, or weights that cannot be found or loaded."""


def weight_names() -> list[str]:
    """The pretrained weights torchvision offers for ResNet50 (aliases such as DEFAULT left out)."""
    return [weights.name for weights in ResNet50_Weights]


def _options() -> str:
    names = ", ".join([*weight_names(), NO_WEIGHTS])
    return f"{names}, or a path to a {'/'.join(STATE_DICT_SUFFIXES)} state-dict file"


def _is_path(weights: str) -> bool:
    return weights.endswith(STATE_DICT_SUFFIXES) or os.sep in weights or "/" in weights or Path(weights).is_file()


# ----------------------------------------------------------------------------------------------
# the model


class Encoder(nn.Module):
    """ResNet50 without its pooling and classifier: (B, 3, S, S) pixels -> (B, P, E) regions.

    Frozen and always in eval mode (`train()` is a no-op), so BatchNorm keeps its statistics
    even when the encoder sits inside a module that is being trained.
    """

    def __init__(self, body: nn.Sequential, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.body = body
        # per-channel normalisation for pixels in [0, 1], broadcast over (B, 3, S, S)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        return self

    def to_device(self, device: torch.device, precision: str = "fp32") -> Encoder:
        """A copy ready for inference on `device`, BatchNorm folded into the convolutions, channels_last;
        this encoder is left as it is (its weights stay those of the checkpoint).

        Both keep the function (up to float rounding) and make it faster: folding removes a pass over
        every activation, and channels_last is oneDNN's native layout on CPUs and what cuDNN's
        tensor-core kernels want on GPUs (docs/speed.md has the measurements). `precision` is how it
        will be run (see `encode`); the copy is the same for both.
        """
        ready = copy.deepcopy(self)
        fold_batch_norms(ready.body)
        return ready.to(device).to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode a batch of pixels in [0, 255] (uint8 or float) into region features."""
        x = (images.float() / 255.0 - self.mean) / self.std  # (B, 3, S, S)
        x = self.body(x)  # (B, E, G, G)
        return x.flatten(2).transpose(1, 2)  # (B, P, E), p = row * G + col


def fold_batch_norms(module: nn.Module) -> None:
    """Fold each eval-mode BatchNorm into the convolution registered just before it, in place.

    In torchvision's ResNet every BatchNorm directly follows that convolution (conv1/bn1 .. conv3/bn3
    of a block, and the downsample's (conv, bn)), so the pair is one convolution with rescaled weights.
    Running the model again folds nothing more.
    """
    for parent in list(module.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in itertools.pairwise(children):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm).requires_grad_(False))
                setattr(parent, norm_name, nn.Identity())


def encode(encoder: Encoder, images: torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32,
           precision: str = "fp32") -> torch.Tensor:
    """Features (B, P, E) of a pixel batch (B, 3, S, S), as `dtype`, left on `device`.

    Computed on `device` (where `encoder.to_device` put the encoder) at `precision` (fp32, or bf16
    autocast with the normalisation itself in float32), from channels_last input.
    """
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        features = encoder(images)  # (B, P, E)
    return features.to(dtype)


def build_encoder(weights: str) -> Encoder:
    """Build the frozen encoder with `weights`: a torchvision weights name, a state-dict path or 'none'."""
    if weights in weight_names():
        state_dict = _download_state_dict(ResNet50_Weights[weights])
    elif weights == NO_WEIGHTS:
        state_dict = None
    elif _is_path(weights):
        state_dict = _load_state_dict_file(Path(weights))
    else:
        raise EncoderError(f"unknown encoder weights '{weights}'; expected one of {_options()}")

    # a fixed seed makes the random ('none') encoder, and so its features, reproducible
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        resnet = torchvision.models.resnet50(weights=None)
    if state_dict is not None:
        _load_into(resnet, state_dict, source=weights)
    body = nn.Sequential(OrderedDict((name, module) for name, module in resnet.named_children()
                                     if name not in DROPPED_LAYERS))
    mean, std = normalisation(weights)
    return Encoder(body, mean, std)


def normalisation(weights: str) -> tuple[list[float], list[float]]:
    """The ImageNet mean and std from the weights' own transforms (V1's for 'none' and state-dict files)."""
    enum = ResNet50_Weights[weights] if weights in weight_names() else ResNet50_Weights.IMAGENET1K_V1
    transforms = enum.transforms()
    return list(transforms.mean), list(transforms.std)


def hub_checkpoint_path(weights: ResNet50_Weights) -> Path:
    """Where torch.hub looks for (and downloads) the checkpoint file of `weights`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _download_state_dict(weights: ResNet50_Weights) -> dict[str, torch.Tensor]:
    """The state dict of torchvision `weights`, from the torch hub cache or downloaded into it."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except OSError as error:  # URLError, HTTPError, timeouts: no network or no access
        raise EncoderError(
            f"cannot download the {weights.name} ResNet50 weights ({error}). Offline, copy "
            f"{weights.url} to {hub_checkpoint_path(weights)}, or set encoder.weights to the path of a "
            f"local ResNet50 state-dict file") from error
    except UNLOADABLE as error:  # a damaged file in the cache
        raise EncoderError(
            f"cannot load the {weights.name} ResNet50 weights from {hub_checkpoint_path(weights)} "
            f"({_first_line(error)}); delete that file to download it again, or put a good copy of "
            f"{weights.url} there") from error


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch.load's run to a page), or its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EncoderError(f"encoder weights file {path} not found; set encoder.weights to an existing "
                           f"state-dict file or to one of {', '.join([*weight_names(), NO_WEIGHTS])}")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (*UNLOADABLE, OSError) as error:
        raise EncoderError(f"encoder weights file {path} cannot be loaded as a state dict: "
                           f"{_first_line(error)}") from error
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise EncoderError(f"encoder weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return state_dict


def _load_into(resnet: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a full ResNet50 state dict into `resnet`; the classifier (fc.*) may be present or not."""
    expected = {key: value for key, value in resnet.state_dict().items() if not key.startswith("fc.")}
    given = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing or unexpected:
        problem = f"missing key '{missing[0]}'" if missing else f"unexpected key '{unexpected[0]}'"
        raise EncoderError(f"encoder weights {source} do not fit a torchvision ResNet50: {problem} "
                           f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for key, value in given.items():
        if value.shape != expected[key].shape:
            raise EncoderError(f"encoder weights {source}: key '{key}' has shape {tuple(value.shape)}, "
                               f"a ResNet50 expects {tuple(expected[key].shape)}")
    resnet.load_state_dict(given, strict=False)


# ----------------------------------------------------------------------------------------------
# provenance


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_info(weights: str, image_size: int, precision: str) -> dict[str, str | int]:
    """What produced a set of features: stored as HDF5 attrs beside them."""
    info: dict[str, str | int] = {
        "architecture": ARCHITECTURE,
        "weights": weights,
        "image_size": image_size,
        "precision": precision,  # resolved: fp32 or bf16
        "grid": image_size // STRIDE,
        "feature_dim": FEATURE_DIM,
        "preprocessing": "whole image resized (no crop), bilinear with antialiasing; ImageNet mean/std",
        "torch_version": str(torch.__version__),  # a str subclass that HDF5 attrs refuse
        "torchvision_version": str(torchvision.__version__),
    }
    if weights not in weight_names() and weights != NO_WEIGHTS:
        info["weights_sha256"] = file_sha256(Path(weights))
    return info


DEMO_ATTR = "demo_dataset"  # cache attr (and so the checkpoint's `encoder`): the features are of the built-in demo


def untrained_notice(encoder: Mapping[str, Any], own_photos: bool = False) -> str | None:
    """What to tell a person whose features come from an untrained encoder on real photos, else None.

    `encoder` is a feature cache's attrs or a checkpoint's `encoder` record. With `weights: none` the
    ResNet50 is random: its features still separate the demo's flat coloured shapes, but on real photos
    captions only follow the training captions' prior. Caches that do not record DEMO_ATTR count as
    not the demo. The demo's own images need no notice, but with `own_photos` (a model captioning or
    searching photos a person gives it) the demo's model gets one too: those photos are not its shapes.
    """
    if str(encoder.get("weights")) != NO_WEIGHTS:
        return None
    if bool(encoder.get(DEMO_ATTR, False)):
        return DEMO_MODEL_NOTICE if own_photos else None
    return ("the encoder is untrained (encoder.weights: none), so captions and search on real photos follow only "
            "the training captions' prior; set encoder.weights to IMAGENET1K_V2 or a weights file "
            "(docs/real-datasets.md, 'Machines without pretrained weights') and rerun `dvc repro`")


DEMO_MODEL_NOTICE = ("the encoder is untrained (encoder.weights: none) and this is the built-in demo's model: it "
                     "knows only the demo's coloured shapes, so on real photos its captions and search mean nothing; "
                     "for real photos train on a real dataset with pretrained weights (docs/real-datasets.md)")
