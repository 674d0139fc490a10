"""Typed configuration: one dataclass per params.yaml section.

`load_section(ShapesConfig)` reads `params.yaml` (or the file named by the `PIPELINE_PARAMS`
environment variable) and builds the dataclass for that section. A missing, unknown or wrongly
typed key raises `ConfigError` naming the key and the file, so a typo in params.yaml stops the
stage before it does any work.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

PARAMS_ENV = "PIPELINE_PARAMS"
DEFAULT_PARAMS = "params.yaml"


class ConfigError(ValueError):
    """A params.yaml key is missing, unknown, or of the wrong type or value."""


# ----------------------------------------------------------------------------------------------
# sections


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """The built-in synthetic dataset: coloured shapes with captions and object boxes."""

    out_dir: str
    num_images: int
    image_size: int
    min_objects: int
    max_objects: int
    colours: list[str]
    shapes: list[str]
    object_size: list[int]  # [smallest, largest] side of an object's box, in pixels
    seed: int


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Where the captions and images are, how to read them and how to split them."""

    captions: str
    images: str
    format: Literal["auto", "flickr_token", "csv", "pipe", "karpathy"]
    split_files: Optional[dict[str, str]]  # {train|val|test: file listing image names}
    split_ratios: dict[str, float]  # used when the format carries no split
    seed: int
    captions_per_image: Optional[int]  # expected count; images with another count are reported
    max_dropped_fraction: float
    check_images: bool  # open every image and drop the unreadable ones
    out_dir: str


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The frozen CNN that turns each image into a grid of region features."""

    architecture: Literal["resnet50"]
    weights: str  # IMAGENET1K_V1 | IMAGENET1K_V2 | path to a state-dict file | none
    image_size: int  # images are resized (whole, no crop) to image_size x image_size
    dtype: Literal["float16", "float32"]
    batch_size: int
    num_workers: int
    device: str  # auto | cpu | cuda | cuda:N
    out_dir: str


@dataclasses.dataclass(frozen=True)
class VocabConfig:
    min_count: int
    max_caption_length: int  # words; longer training captions are truncated
    out_dir: str


@dataclasses.dataclass(frozen=True)
class EmbeddingsConfig:
    dim: int
    pretrained: Optional[str]  # word2vec .bin/.bin.gz/.txt file, or null to train on the captions
    epochs: int
    window: int
    seed: int
    out_dir: str


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    attention_dim: int
    decoder_dim: int
    dropout: float
    fine_tune_embeddings: bool


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    lr_step_epochs: int
    lr_gamma: float
    grad_clip: float
    attention_penalty: float
    patience: int
    early_stopping: Literal["bleu4", "loss"]
    num_samples: int  # sample captions logged every epoch
    amp: Literal["auto", "fp32", "bf16", "fp16"]  # not "off": YAML reads an unquoted off as false
    device: str
    seed: int
    resume: bool
    out_dir: str
    log_dir: str


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    split: Literal["val", "test"]
    beam_size: int
    max_length: int
    batch_size: int
    num_figures: int
    objects: Optional[str]  # object boxes (the shapes demo) for the attention-correctness score
    device: str
    out_dir: str


SECTIONS: dict[type, str] = {
    ShapesConfig: "shapes",
    DatasetConfig: "dataset",
    EncoderConfig: "encoder",
    VocabConfig: "vocab",
    EmbeddingsConfig: "embeddings",
    ModelConfig: "model",
    TrainConfig: "train",
    EvaluateConfig: "evaluate",
}


# ----------------------------------------------------------------------------------------------
# loading and checking


def params_path() -> Path:
    """The params file in use: $PIPELINE_PARAMS or ./params.yaml."""
    return Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))


def read_params(path: Path | None = None) -> dict[str, Any]:
    """Read the whole params file as a dict, with a clear error when it is missing or not YAML."""
    path = Path(path) if path is not None else params_path()
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or set {PARAMS_ENV}")
    try:
        params = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check(value: Any, annotation: Any, key: str, where: Path) -> Any:
    """Return `value` converted to `annotation`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check(value, option, key, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: key '{key}': {value!r} fits none of {_type_name(annotation)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: key '{key}' is {value!r}; expected one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key '{key}' should be a list, got {value!r}")
        return [_check(item, args[0], f"{key}[{i}]", where) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' should be a mapping, got {value!r}")
        return {_check(k, args[0], key, where): _check(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' should be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' should be a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no decimal point) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' should be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' should be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for key '{key}'")


def build(cls: type, section: dict[str, Any], name: str, where: Path) -> Any:
    """Build dataclass `cls` from a params section, failing on missing, unknown or mistyped keys."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: section '{name}' should be a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                          f"valid keys are {', '.join(fields)}")
    missing = [f for f in fields if f not in section]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(f'{name}.{k}' for k in missing)}")
    values = {f: _check(section[f], hints[f], f"{name}.{f}", where) for f in fields}
    config = cls(**values)
    _validate(config, name, where)
    return config


def load_section(cls: type, path: Path | None = None) -> Any:
    """Load one section of the params file as its dataclass."""
    path = Path(path) if path is not None else params_path()
    params = read_params(path)
    name = SECTIONS[cls]
    if name not in params:
        raise ConfigError(f"{path}: missing section '{name}'")
    return build(cls, params[name], name, path)


def _positive(config: Any, name: str, where: Path, *keys: str) -> None:
    for key in keys:
        if getattr(config, key) <= 0:
            raise ConfigError(f"{where}: key '{name}.{key}' must be positive, got {getattr(config, key)!r}")


def _validate(config: Any, name: str, where: Path) -> None:
    """Value checks that types alone cannot express."""
    if isinstance(config, ShapesConfig):
        _positive(config, name, where, "num_images", "image_size", "min_objects")
        if config.max_objects < config.min_objects:
            raise ConfigError(f"{where}: key '{name}.max_objects' must be >= min_objects")
        if len(config.object_size) != 2 or not 0 < config.object_size[0] <= config.object_size[1]:
            raise ConfigError(f"{where}: key '{name}.object_size' must be [smallest, largest] pixels")
    elif isinstance(config, DatasetConfig):
        unknown = set(config.split_ratios) - {"train", "val", "test"}
        if unknown or not config.split_ratios or abs(sum(config.split_ratios.values()) - 1.0) > 1e-6:
            raise ConfigError(f"{where}: key '{name}.split_ratios' must give train/val/test fractions that sum to 1, "
                              f"got {config.split_ratios}")
        if config.split_files is not None and set(config.split_files) - {"train", "val", "test"}:
            raise ConfigError(f"{where}: key '{name}.split_files' takes only train, val and test")
        if not 0.0 <= config.max_dropped_fraction <= 1.0:
            raise ConfigError(f"{where}: key '{name}.max_dropped_fraction' must be between 0 and 1")
    elif isinstance(config, EncoderConfig):
        _positive(config, name, where, "batch_size", "image_size")
        if config.image_size % 32:
            raise ConfigError(f"{where}: key '{name}.image_size' must be a multiple of 32 (ResNet stride), "
                              f"got {config.image_size}")
    elif isinstance(config, VocabConfig):
        _positive(config, name, where, "min_count", "max_caption_length")
    elif isinstance(config, EmbeddingsConfig):
        _positive(config, name, where, "dim", "epochs", "window")
    elif isinstance(config, ModelConfig):
        _positive(config, name, where, "attention_dim", "decoder_dim")
        if not 0.0 <= config.dropout < 1.0:
            raise ConfigError(f"{where}: key '{name}.dropout' must be in [0, 1)")
    elif isinstance(config, TrainConfig):
        _positive(config, name, where, "batch_size", "epochs", "lr", "lr_step_epochs", "patience")
    elif isinstance(config, EvaluateConfig):
        _positive(config, name, where, "beam_size", "max_length", "batch_size")
