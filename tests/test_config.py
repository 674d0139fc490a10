"""Tests for the typed configuration: every kind of bad params.yaml fails loudly, naming the key and the file."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.config import (PARAMS_ENV, SECTIONS, ConfigError, DatasetConfig, EmbeddingsConfig, EncoderConfig,
                             EvaluateConfig, ModelConfig, ShapesConfig, TrainConfig, VocabConfig, load_section,
                             params_path, read_params)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def write(tmp_path: Path, change: dict[str, dict[str, Any]] | None = None,
          remove: tuple[str, str] | None = None) -> Path:
    """The repository's params with `change` ({section: {key: value}}) applied and (section, key) removed."""
    params = copy.deepcopy(PARAMS)
    for section, values in (change or {}).items():
        params[section].update(values)
    if remove is not None:
        del params[remove[0]][remove[1]]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def error_for(cls: type, path: Path) -> str:
    with pytest.raises(ConfigError) as error:
        load_section(cls, path)
    message = str(error.value)
    assert str(path) in message  # every message names the file
    return message


# ----------------------------------------------------------------------------------------------
# good files


def test_the_repository_params_load_every_section():
    for cls, name in SECTIONS.items():
        config = load_section(cls, ROOT / "params.yaml")
        assert isinstance(config, cls)
        assert {field: getattr(config, field) for field in PARAMS[name]} == PARAMS[name]


def test_load_section_builds_typed_values(tmp_path):
    path = write(tmp_path, {"train": {"lr": 1, "epochs": 3, "amp": "bf16"}, "dataset": {"captions_per_image": None}})
    train = load_section(TrainConfig, path)
    assert train.lr == 1.0 and isinstance(train.lr, float)  # an int is a fine float
    assert train.epochs == 3 and train.amp == "bf16" and train.resume is True
    assert load_section(DatasetConfig, path).captions_per_image is None
    shapes = load_section(ShapesConfig, path)
    assert shapes.colours == PARAMS["shapes"]["colours"] and shapes.object_size == PARAMS["shapes"]["object_size"]


def test_the_params_file_comes_from_the_environment(tmp_path, monkeypatch):
    path = write(tmp_path, {"vocab": {"min_count": 7}})
    monkeypatch.setenv(PARAMS_ENV, str(path))
    assert params_path() == path
    assert load_section(VocabConfig).min_count == 7
    monkeypatch.delenv(PARAMS_ENV)
    monkeypatch.chdir(tmp_path)
    assert params_path() == Path("params.yaml")
    assert load_section(VocabConfig).min_count == 7


# ----------------------------------------------------------------------------------------------
# keys: unknown, missing, wrongly typed


def test_unknown_key(tmp_path):
    message = error_for(TrainConfig, write(tmp_path, {"train": {"learning_rate": 0.1}}))
    assert "train.learning_rate" in message and "unknown" in message
    assert "lr" in message  # lists the valid keys


def test_exponent_without_a_decimal_point_is_a_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(write(tmp_path, {}).read_text().replace("lr: 0.001", "lr: 1e-3"))
    assert isinstance(yaml.safe_load(path.read_text())["train"]["lr"], str)  # what YAML 1.1 makes of it
    assert load_section(TrainConfig, path).lr == pytest.approx(0.001)


def test_missing_key(tmp_path):
    message = error_for(TrainConfig, write(tmp_path, remove=("train", "lr")))
    assert "train.lr" in message and "missing" in message


@pytest.mark.parametrize("cls,section,key,value,shown", [
    (TrainConfig, "train", "lr", "fast", "train.lr"),
    (TrainConfig, "train", "epochs", 2.5, "train.epochs"),
    (TrainConfig, "train", "epochs", True, "train.epochs"),  # a bool is not a whole number
    (TrainConfig, "train", "epochs", "10", "train.epochs"),
    (TrainConfig, "train", "lr", False, "train.lr"),
    (TrainConfig, "train", "resume", "yes", "train.resume"),
    (TrainConfig, "train", "resume", 1, "train.resume"),
    (TrainConfig, "train", "out_dir", 5, "train.out_dir"),
    (ModelConfig, "model", "fine_tune_embeddings", None, "model.fine_tune_embeddings"),
    (ShapesConfig, "shapes", "colours", "red", "shapes.colours"),
    (ShapesConfig, "shapes", "object_size", [56, "big"], "shapes.object_size[1]"),
    (DatasetConfig, "dataset", "split_ratios", [0.8, 0.2], "dataset.split_ratios"),
    (DatasetConfig, "dataset", "split_ratios", {"train": "most", "val": 0.5}, "dataset.split_ratios.train"),
    (DatasetConfig, "dataset", "split_files", {"train": 3}, "dataset.split_files.train"),
    (DatasetConfig, "dataset", "captions_per_image", 4.5, "dataset.captions_per_image"),
    (EmbeddingsConfig, "embeddings", "pretrained", 5, "embeddings.pretrained"),
    (EvaluateConfig, "evaluate", "objects", ["a"], "evaluate.objects"),
])
def test_wrong_type(tmp_path, cls, section, key, value, shown):
    message = error_for(cls, write(tmp_path, {section: {key: value}}))
    assert f"'{shown}'" in message
    assert "got" in message  # and says what it found


@pytest.mark.parametrize("cls,section,key,value", [
    (TrainConfig, "train", "amp", "fp8"),
    (TrainConfig, "train", "early_stopping", "bleu"),
    (DatasetConfig, "dataset", "format", "json"),
    (EncoderConfig, "encoder", "architecture", "resnet101"),
    (EvaluateConfig, "evaluate", "split", "train"),
])
def test_value_outside_a_literal(tmp_path, cls, section, key, value):
    message = error_for(cls, write(tmp_path, {section: {key: value}}))
    assert f"'{section}.{key}'" in message and repr(value) in message
    assert "expected one of" in message


# ----------------------------------------------------------------------------------------------
# the file and its sections


def test_missing_section(tmp_path):
    params = copy.deepcopy(PARAMS)
    del params["evaluate"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    message = error_for(EvaluateConfig, path)
    assert "evaluate" in message and "missing section" in message
    assert load_section(TrainConfig, path).epochs == PARAMS["train"]["epochs"]  # the others still load


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    params = copy.deepcopy(PARAMS)
    params["vocab"] = 5
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert "'vocab'" in error_for(VocabConfig, path)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    message = error_for(TrainConfig, path)
    assert "not found" in message and PARAMS_ENV in message


def test_missing_file_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(PARAMS_ENV, str(tmp_path / "other.yaml"))
    with pytest.raises(ConfigError, match="other.yaml"):
        load_section(TrainConfig)


@pytest.mark.parametrize("text", ["train: {lr: 0.1\n", "train:\n  lr: 0.1\n lr: 2\n", "a: [1, 2\n"])
def test_invalid_yaml(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert "not valid YAML" in error_for(TrainConfig, path)


@pytest.mark.parametrize("text", ["", "- train\n- vocab\n", "just a string\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping of sections"):
        read_params(path)


# ----------------------------------------------------------------------------------------------
# value checks that types cannot express


@pytest.mark.parametrize("cls,change,shown", [
    (DatasetConfig, {"dataset": {"split_ratios": {"train": 0.8, "val": 0.1, "test": 0.05}}}, "dataset.split_ratios"),
    (DatasetConfig, {"dataset": {"split_ratios": {"train": 0.8, "dev": 0.2}}}, "dataset.split_ratios"),
    (DatasetConfig, {"dataset": {"split_ratios": {}}}, "dataset.split_ratios"),
    (DatasetConfig, {"dataset": {"split_files": {"train": "a.txt", "dev": "b.txt"}}}, "dataset.split_files"),
    (DatasetConfig, {"dataset": {"max_dropped_fraction": 1.5}}, "dataset.max_dropped_fraction"),
    (EncoderConfig, {"encoder": {"image_size": 100}}, "encoder.image_size"),
    (EncoderConfig, {"encoder": {"image_size": 240}}, "encoder.image_size"),  # a multiple of 16, not of 32
    (EncoderConfig, {"encoder": {"image_size": 0}}, "encoder.image_size"),
    (EncoderConfig, {"encoder": {"batch_size": 0}}, "encoder.batch_size"),
    (ShapesConfig, {"shapes": {"min_objects": 3, "max_objects": 2}}, "shapes.max_objects"),
    (ShapesConfig, {"shapes": {"object_size": [84, 56]}}, "shapes.object_size"),
    (ShapesConfig, {"shapes": {"object_size": [56]}}, "shapes.object_size"),
    (VocabConfig, {"vocab": {"min_count": 0}}, "vocab.min_count"),
    (EmbeddingsConfig, {"embeddings": {"dim": -300}}, "embeddings.dim"),
    (ModelConfig, {"model": {"dropout": 1.0}}, "model.dropout"),
    (TrainConfig, {"train": {"lr": 0}}, "train.lr"),
    (TrainConfig, {"train": {"epochs": -1}}, "train.epochs"),
    (EvaluateConfig, {"evaluate": {"beam_size": 0}}, "evaluate.beam_size"),
])
def test_value_checks(tmp_path, cls, change, shown):
    assert f"'{shown}'" in error_for(cls, write(tmp_path, change))


def test_value_checks_accept_the_edges(tmp_path):
    path = write(tmp_path, {"dataset": {"split_ratios": {"train": 0.7, "val": 0.2, "test": 0.1}},
                            "encoder": {"image_size": 64}, "model": {"dropout": 0.0}})
    assert load_section(DatasetConfig, path).split_ratios == {"train": 0.7, "val": 0.2, "test": 0.1}
    assert load_section(EncoderConfig, path).image_size == 64
    assert load_section(ModelConfig, path).dropout == 0.0
