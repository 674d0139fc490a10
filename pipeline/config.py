"""Typed configuration: one model per params.yaml section, each key with its type and valid range.

`load_section(TrainConfig)` reads `params.yaml` (or the file named by `$PIPELINE_PARAMS`) and
builds that section's model. A missing, unknown, misspelt, wrongly typed or out-of-range key, or a
key written twice, raises `ConfigError` with one line naming the file, the key, the value and
what is valid, before the stage does any work. The checks live next to the fields they check
(pydantic `Field` bounds, and a validator per section for the rules that tie keys together).

Every path the pipeline reads or writes is a key here; dvc.yaml refers to the same keys.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pipeline.errors import ConfigError

PARAMS_ENV = "PIPELINE_PARAMS"
DEFAULT_PARAMS = "params.yaml"
SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test"]
# the decoder architectures, one module each in pipeline/model/architectures/ (the default is params.yaml's)
Architecture = Literal["sat", "spatial"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
# torch.compile of the decoder step: auto (on CUDA, where kernel launches bound it) | always | never;
# not on/off: YAML reads those unquoted as booleans
CompileSetting = Literal["auto", "always", "never"]
COMPILE_SETTINGS: tuple[str, ...] = get_args(CompileSetting)

# what the demo can draw (pipeline.stages.shapes)
DEMO_COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
    "white": (245, 245, 245), "purple": (150, 60, 190), "orange": (245, 140, 30), "cyan": (40, 210, 220),
}
DEMO_SHAPES = ("circle", "square", "triangle", "diamond", "cross")


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no decimal point) as a string: accept it as the number it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _device(value: Any) -> Any:
    if isinstance(value, str) and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError(f"'{value}' is not a device; use auto, cpu, cuda or cuda:N")
    return value


Real = Annotated[float, BeforeValidator(_number)]
Path_ = Annotated[str, Field(min_length=1)]
Device = Annotated[str, BeforeValidator(_device)]


class Section(BaseModel):
    """A params.yaml section: frozen, every key required, no unknown keys, no silent conversions."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ShapesConfig(Section):
    """The built-in synthetic dataset: coloured shapes with captions and object boxes."""

    out_dir: Path_  # images/, captions.txt (Flickr token format), objects.json
    num_images: int = Field(ge=3, le=1_000_000)  # at least one per split
    image_size: int = Field(ge=32, le=4096)
    min_objects: int = Field(ge=1, le=8)
    max_objects: int = Field(ge=1, le=8)
    colours: list[Literal[tuple(DEMO_COLOURS)]] = Field(min_length=1)  # type: ignore[valid-type]
    shapes: list[Literal[DEMO_SHAPES]] = Field(min_length=1)  # type: ignore[valid-type]
    object_size: list[int] = Field(min_length=2, max_length=2)  # [smallest, largest] box side, pixels
    seed: int = Field(ge=0)

    @model_validator(mode="after")
    def _drawable(self) -> ShapesConfig:
        if self.max_objects < self.min_objects:
            raise ValueError(f"shapes.max_objects ({self.max_objects}) must be >= shapes.min_objects")
        if self.max_objects > len(set(self.colours)) * len(set(self.shapes)):
            raise ValueError("shapes.max_objects exceeds the number of distinct (colour, shape) pairs")
        smallest, largest = self.object_size
        if not 0 < smallest <= largest or largest * 2 > self.image_size:
            raise ValueError(f"shapes.object_size {self.object_size} must be [smallest, largest] with "
                             f"0 < smallest <= largest <= image_size / 2 (objects are placed apart)")
        return self


class DatasetConfig(Section):
    """Where the captions and images are, how to read them and how to split them."""

    captions: Path_
    images: Path_
    format: Literal["auto", "flickr_token", "csv", "pipe", "karpathy"]
    split_dir: Path_  # folder of split lists: train.txt, val.txt, test.txt (image names); none there: no lists
    split_ratios: dict[Split, Annotated[Real, Field(ge=0.0, le=1.0)]]  # when the format has no split
    seed: int = Field(ge=0)
    captions_per_image: int | None = Field(ge=1)  # expected count; other counts are reported
    max_dropped_fraction: Real = Field(ge=0.0, le=1.0)
    check_images: bool  # decode every image and drop the ones the encoder could not read
    table: Path_  # the prepared (image, split, caption) table, captions.csv
    report: Path_  # report.json: what was dropped, fixed and reported, and why

    @model_validator(mode="after")
    def _splits(self) -> DatasetConfig:
        ratios = self.split_ratios
        if set(ratios) != set(SPLITS) or abs(sum(ratios.values()) - 1.0) > 1e-6:
            raise ValueError(f"dataset.split_ratios must give train, val and test fractions that sum to 1, "
                             f"got {ratios}")
        if ratios["train"] <= 0 or ratios["val"] <= 0:
            raise ValueError(f"dataset.split_ratios: train and val must be > 0 (val drives early stopping), "
                             f"got {ratios}")
        return self


class EncoderConfig(Section):
    """The frozen CNN that turns each image into a grid of region features."""

    weights: Path_  # IMAGENET1K_V1 | IMAGENET1K_V2 | path to a state-dict file | none
    image_size: int = Field(ge=32, le=1024, multiple_of=32)  # whole image resized to this square
    dtype: Literal["float16", "float32"]  # how the features are stored
    precision: Literal["auto", "fp32", "bf16"]  # how they are computed; auto: bf16 where native
    batch_size: int = Field(ge=1, le=4096)
    num_workers: int = Field(ge=0, le=128)
    device: Device
    cache: Path_  # the HDF5 feature cache


class VocabConfig(Section):
    min_count: int = Field(ge=1)
    path: Path_  # vocab.json


class EmbeddingsConfig(Section):
    dim: int = Field(ge=1, le=4096)
    pretrained: Path_ | None  # word2vec .bin/.bin.gz/.txt file, or null to train on the captions
    epochs: int = Field(ge=1, le=1000)
    window: int = Field(ge=1, le=100)
    seed: int = Field(ge=0)
    matrix: Path_  # embeddings.npy (V, dim)
    metrics: Path_  # coverage metrics, JSON


class ModelConfig(Section):
    architecture: Architecture
    attention_dim: int = Field(ge=1, le=16384)
    decoder_dim: int = Field(ge=1, le=16384)
    dropout: Real = Field(ge=0.0, lt=1.0)
    fine_tune_embeddings: bool
    max_caption_length: int = Field(ge=1, le=500)  # words: training captions are cut, decoding stops


class TrainConfig(Section):
    batch_size: int = Field(ge=1, le=65536)
    epochs: int = Field(ge=1, le=10000)
    lr: Real = Field(gt=0.0, le=10.0)
    weight_decay: Real = Field(ge=0.0, lt=1.0)
    lr_step_epochs: int = Field(ge=1)
    lr_gamma: Real = Field(gt=0.0, le=1.0)
    grad_clip: Real = Field(gt=0.0)
    attention_penalty: Real = Field(ge=0.0, le=100.0)
    patience: int = Field(ge=1)
    early_stopping: Literal["cider", "bleu4", "loss"]  # on the validation split
    num_samples: int = Field(ge=0, le=1000)  # sample captions logged every epoch
    amp: Literal["auto", "fp32", "bf16", "fp16"]  # not "off": YAML reads an unquoted off as false
    compile: CompileSetting
    device: Device
    seed: int = Field(ge=0)
    resume: bool
    checkpoint: Path_  # best.pt: the best epoch, what evaluate and caption load
    last_checkpoint: Path_  # last.pt: every epoch, to resume
    log_dir: Path_  # TensorBoard
    metrics_dir: Path_  # dvclive metrics.json and plots


class ScstConfig(Section):
    """Self-critical sequence training on CIDEr-D after cross-entropy (Rennie et al. 2017); 0 epochs is off."""

    epochs: int = Field(ge=0, le=10000)  # 0: no fine-tuning, the cross-entropy model is the final one
    samples: int = Field(ge=1, le=100)  # captions sampled per image
    baseline: Literal["greedy", "mean"]  # the image's greedy caption's reward | its other samples' mean reward
    xe_weight: Real = Field(ge=0.0, le=100.0)  # cross-entropy of a reference caption added to the policy loss
    attention_penalty: Real = Field(ge=0.0, le=100.0)  # doubly stochastic penalty on the samples' attention
    kl_weight: Real = Field(ge=0.0, le=100.0)  # per-token KL divergence from the cross-entropy model, added to the loss
    lr: Real = Field(gt=0.0, le=10.0)
    batch_size: int = Field(ge=1, le=65536)  # images per step (each sampled `samples` times)
    grad_clip: Real = Field(gt=0.0)
    patience: int = Field(ge=1)  # epochs without a better validation CIDEr before stopping
    amp: Literal["auto", "fp32", "bf16", "fp16"]
    compile: CompileSetting
    device: Device
    seed: int = Field(ge=0)
    resume: bool
    checkpoint: Path_  # the final model: the best epoch by validation CIDEr (epoch 0 is the cross-entropy model)
    last_checkpoint: Path_  # every epoch, to resume
    log_dir: Path_  # TensorBoard
    metrics_dir: Path_  # dvclive metrics.json and plots

    @model_validator(mode="after")
    def _baseline(self) -> ScstConfig:
        if self.baseline == "mean" and self.samples < 2:
            raise ValueError(f"scst.samples must be at least 2 with scst.baseline mean (the baseline of a sample "
                             f"is the mean reward of the image's other samples), got {self.samples}")
        return self


class EvaluateConfig(Section):
    split: Literal["val", "test"]
    beam_size: int = Field(ge=1, le=100)
    length_penalty: Real = Field(ge=0.0, le=10.0)  # alpha of ((5 + L) / 6) ** alpha; 0 is off
    no_repeat_ngram: int = Field(ge=0, le=10)  # block repeated n-grams of this size; 0 is off
    allow_unk: bool  # let captions contain <unk>
    batch_size: int = Field(ge=1, le=65536)
    num_figures: int = Field(ge=0, le=10000)
    objects: Path_ | None  # object boxes (the shapes demo) for attention correctness; null otherwise
    device: Device
    out_dir: Path_  # predictions.json and attention/*.png
    metrics: Path_  # the scores, JSON


class RetrievalConfig(Section):
    """Text-to-image search: BM25 over generated captions picks candidates, the captioner's likelihood ranks them.

    The ranking keys (candidates to precision) are the values of the stage, the search command and the
    web page alike (`pipeline.retrieval.ranking.RankingOptions.from_config`).
    """

    candidates: int = Field(ge=0, le=1_000_000)  # images the caption index passes on; 0: score every image
    prior: Literal["none", "mean", "blank"]  # context whose likelihood of the query is subtracted
    prior_weight: Real = Field(ge=0.0, le=10.0)
    image_weight: Real = Field(ge=0.0, le=10.0)  # weight of each image's mean log-likelihood of the bank
    bank_size: int = Field(ge=1, le=100_000)  # generated captions in that bank
    batch_size: int = Field(ge=1, le=65536)  # (query, image) pairs scored at once
    precision: Literal["auto", "fp32", "bf16", "int8"]  # of the decoder while scoring (docs/search.md)
    device: Device
    captions: Path_  # generated captions of the dataset's images, cached by the search command and web page
    metrics: Path_  # Recall@K, median and mean rank, candidate recall, JSON (scores only)


SECTIONS: dict[type[Section], str] = {
    ShapesConfig: "shapes", DatasetConfig: "dataset", EncoderConfig: "encoder", VocabConfig: "vocab",
    EmbeddingsConfig: "embeddings", ModelConfig: "model", TrainConfig: "train", ScstConfig: "scst",
    EvaluateConfig: "evaluate", RetrievalConfig: "retrieval",
}


# ----------------------------------------------------------------------------------------------
# reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (the last would silently win)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key '{key}' is written twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                              "keep one")
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def params_path() -> Path:
    """The params file in use: $PIPELINE_PARAMS or ./params.yaml."""
    return Path(os.environ.get(PARAMS_ENV, DEFAULT_PARAMS))


def read_params(path: Path | None = None) -> dict[str, Any]:
    """Read the whole params file as a dict, with a clear error when it is missing or not YAML."""
    path = Path(path) if path is not None else params_path()
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found; run from the project root or set {PARAMS_ENV}")
    try:
        params = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return params


def _describe(error: dict[str, Any], name: str, section: dict[str, Any]) -> str:
    """One pydantic error as 'section.key is VALUE: what is valid'."""
    location = [str(part) for part in error["loc"]]
    key = ".".join([name, *location]) if location else name
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"key {key} is missing; add it (see the repository's params.yaml)"
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}; valid keys of '{name}' are {', '.join(SECTION_FIELDS[name])}"
    if not location:
        return message
    hint = ""
    if isinstance(error["input"], bool) and error["type"] == "literal_error":  # `off` or `yes` unquoted
        hint = " (YAML reads an unquoted yes, no, on or off as true or false)"
    return f"key {key} is {error['input']!r}: {message[0].lower() + message[1:]}{hint}"


def build(cls: type[Section], section: Any, name: str, where: Path) -> Any:
    """Build section model `cls` from its params, or raise ConfigError naming the first bad key."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: section '{name}' should be a mapping of keys")
    try:
        return cls.model_validate(section)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        more = error.error_count() - 1
        raise ConfigError(f"{where}: {_describe(first, name, section)}"
                          f"{f' ({more} more problem(s) in this section)' if more else ''}") from None


def load_section(cls: type[Section], path: Path | None = None) -> Any:
    """Load one section of the params file as its model."""
    path = Path(path) if path is not None else params_path()
    params = read_params(path)
    name = SECTIONS[cls]
    if name not in params:
        raise ConfigError(f"{path}: missing section '{name}'")
    return build(cls, params[name], name, path)


def load_all(path: Path | None = None) -> dict[str, Any]:
    """Every section of the params file, checked: {section name: model}."""
    path = Path(path) if path is not None else params_path()
    params = read_params(path)
    missing = [name for name in SECTIONS.values() if name not in params]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {', '.join(missing)}")
    return {name: build(cls, params[name], name, path) for cls, name in SECTIONS.items()}


SECTION_FIELDS = {name: list(cls.model_fields) for cls, name in SECTIONS.items()}

