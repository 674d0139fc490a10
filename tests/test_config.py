"""The typed configuration: every kind of bad params.yaml fails with one line naming the file, the key and the value."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipeline.config import (
    PARAMS_ENV,
    SECTIONS,
    DatasetConfig,
    EmbeddingsConfig,
    EncoderConfig,
    EvaluateConfig,
    ModelConfig,
    ScstConfig,
    ShapesConfig,
    TrainConfig,
    VocabConfig,
    load_all,
    load_section,
    params_path,
    read_params,
)
from pipeline.errors import ConfigError
from tests.conftest import DEFAULT_PARAMS, ROOT, default_params, write_params

PARAMS = default_params()


def error_for(cls: type, path: Path) -> str:
    """The ConfigError message of loading `cls` from `path`, checked to be one line naming the file."""
    with pytest.raises(ConfigError) as error:
        load_section(cls, path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------
# good files


def test_the_default_params_load_every_section():
    for cls, name in SECTIONS.items():
        config = load_section(cls, DEFAULT_PARAMS)
        assert isinstance(config, cls)
        assert config.model_dump() == PARAMS[name]
    assert set(load_all(DEFAULT_PARAMS)) == set(PARAMS)


def keys(params: dict[str, dict]) -> set[str]:
    """Every params key as `section.key` (the values, mappings included, are left out)."""
    return {f"{section}.{key}" for section, values in params.items() for key in values}


def test_the_tests_copy_has_the_keys_of_the_default_params():
    """tests/params.yaml stands in for params.yaml in every test: a key added to one belongs in both.
    Only keys are compared (`dvc exp run -S` changes values in the working file), and that file must load."""
    repository = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    assert keys(repository) - keys(PARAMS) == set(), "keys of params.yaml missing from tests/params.yaml"
    assert keys(PARAMS) - keys(repository) == set(), "keys of tests/params.yaml missing from params.yaml"
    assert set(load_all(ROOT / "params.yaml")) == set(PARAMS)


def test_load_section_builds_typed_values(tmp_path):
    path = write_params(tmp_path, {"train": {"lr": 1, "epochs": 3, "amp": "bf16"},
                                   "dataset": {"captions_per_image": None}})
    train = load_section(TrainConfig, path)
    assert train.lr == 1.0 and isinstance(train.lr, float)  # an int is a fine float
    assert train.epochs == 3 and train.amp == "bf16" and train.resume is True
    assert load_section(DatasetConfig, path).captions_per_image is None
    shapes = load_section(ShapesConfig, path)
    assert shapes.colours == PARAMS["shapes"]["colours"] and shapes.object_size == PARAMS["shapes"]["object_size"]


def test_sections_are_frozen():
    train = load_section(TrainConfig, DEFAULT_PARAMS)
    with pytest.raises(ValidationError):
        train.lr = 0.5  # type: ignore[misc]


def test_the_params_file_comes_from_the_environment(tmp_path, monkeypatch):
    path = write_params(tmp_path, {"vocab": {"min_count": 7}})
    monkeypatch.setenv(PARAMS_ENV, str(path))
    assert params_path() == path
    assert load_section(VocabConfig).min_count == 7
    monkeypatch.delenv(PARAMS_ENV)
    monkeypatch.chdir(tmp_path)
    assert params_path() == Path("params.yaml")
    assert load_section(VocabConfig).min_count == 7


def test_exponent_without_a_decimal_point_is_a_number(tmp_path):
    path = write_params(tmp_path)
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 1e-3"))
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "1e-3"  # what YAML 1.1 makes of it: a string
    lr = load_section(TrainConfig, path).lr
    assert isinstance(lr, float) and lr == 0.001
    # a string that spells no number is still refused
    path.write_text(path.read_text().replace("lr: 1e-3", "lr: 1e-3x"))
    assert "key train.lr is '1e-3x'" in error_for(TrainConfig, path)


# ----------------------------------------------------------------------------------------------
# the values the issue named: each refused with the key and the value


@pytest.mark.parametrize("cls,section,key,value,why", [
    (TrainConfig, "train", "grad_clip", -1, "greater than 0"),
    (TrainConfig, "train", "attention_penalty", -5, "greater than or equal to 0"),
    (TrainConfig, "train", "lr_gamma", 0, "greater than 0"),
    (TrainConfig, "train", "weight_decay", -0.1, "greater than or equal to 0"),
    (EncoderConfig, "encoder", "num_workers", -1, "greater than or equal to 0"),
    (EncoderConfig, "encoder", "device", "gpu", "use auto, cpu, cuda or cuda:N"),
    (EvaluateConfig, "evaluate", "num_figures", -2, "greater than or equal to 0"),
    (ScstConfig, "scst", "kl_weight", -0.01, "greater than or equal to 0"),
    (ScstConfig, "scst", "samples", 0, "greater than or equal to 1"),
])
def test_out_of_range_values_are_refused(tmp_path, cls, section, key, value, why):
    message = error_for(cls, write_params(tmp_path, {section: {key: value}}))
    assert f"key {section}.{key} is {value!r}: " in message
    assert why in message


def test_a_split_ratio_of_zero_for_val_is_refused(tmp_path):
    ratios = {"train": 0.9, "val": 0, "test": 0.1}
    message = error_for(DatasetConfig, write_params(tmp_path, {"dataset": {"split_ratios": ratios}}))
    assert "dataset.split_ratios" in message and "'val': 0.0" in message and "val must be > 0" in message


@pytest.mark.parametrize("text,key,lines", [
    ("train:\n  lr: 0.1\n  lr: 2\n", "'lr'", "lines 2 and 3"),
    ("train:\n  lr: 0.1\ntrain:\n  lr: 2\n", "'train'", "lines 1 and 3"),
])
def test_a_key_written_twice_is_refused(tmp_path, text, key, lines):
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    message = error_for(TrainConfig, path)
    assert f"key {key} is written twice ({lines})" in message


def test_a_key_written_twice_in_the_real_file_is_refused(tmp_path):
    path = write_params(tmp_path)
    text = path.read_text()
    path.write_text(text.replace("  grad_clip: 5.0\n", "  grad_clip: 5.0\n  grad_clip: 1.0\n"))
    assert path.read_text() != text
    assert "key 'grad_clip' is written twice" in error_for(TrainConfig, path)


def test_unknown_key(tmp_path):
    message = error_for(TrainConfig, write_params(tmp_path, {"train": {"learning_rate": 0.1}}))
    assert "unknown key train.learning_rate" in message
    assert "lr, weight_decay" in message  # lists the valid keys


@pytest.mark.parametrize("section,key", [("dataset", "out_dir"), ("encoder", "out_dir"), ("encoder", "architecture"),
                                         ("vocab", "max_caption_length"), ("evaluate", "max_length")])
def test_keys_of_the_old_layout_are_unknown(tmp_path, section, key):
    cls = next(cls for cls, name in SECTIONS.items() if name == section)
    assert f"unknown key {section}.{key}" in error_for(cls, write_params(tmp_path, {section: {key: "x"}}))


def test_missing_key(tmp_path):
    message = error_for(TrainConfig, write_params(tmp_path, remove=["train.lr"]))
    assert "key train.lr is missing" in message


@pytest.mark.parametrize("cls,section,key,value,shown", [
    (TrainConfig, "train", "lr", "fast", "train.lr"),
    (TrainConfig, "train", "epochs", 2.5, "train.epochs"),
    (TrainConfig, "train", "epochs", True, "train.epochs"),  # a bool is not a whole number
    (TrainConfig, "train", "epochs", "10", "train.epochs"),  # no silent conversions
    (TrainConfig, "train", "lr", False, "train.lr"),
    (TrainConfig, "train", "resume", "yes", "train.resume"),
    (TrainConfig, "train", "resume", 1, "train.resume"),
    (TrainConfig, "train", "checkpoint", 5, "train.checkpoint"),
    (ModelConfig, "model", "fine_tune_embeddings", None, "model.fine_tune_embeddings"),
    (ShapesConfig, "shapes", "colours", "red", "shapes.colours"),
    (ShapesConfig, "shapes", "object_size", [56, "big"], "shapes.object_size.1"),
    (DatasetConfig, "dataset", "split_ratios", [0.8, 0.2], "dataset.split_ratios"),
    (DatasetConfig, "dataset", "split_ratios", {"train": "most", "val": 0.5, "test": 0.5}, "dataset.split_ratios.train"),
    (DatasetConfig, "dataset", "split_dir", {"train": "a.txt"}, "dataset.split_dir"),  # the old mapping
    (DatasetConfig, "dataset", "captions_per_image", 4.5, "dataset.captions_per_image"),
    (EmbeddingsConfig, "embeddings", "pretrained", 5, "embeddings.pretrained"),
    (EvaluateConfig, "evaluate", "objects", ["a"], "evaluate.objects"),
])
def test_wrong_type(tmp_path, cls, section, key, value, shown):
    message = error_for(cls, write_params(tmp_path, {section: {key: value}}))
    shown_value = value[1] if shown.endswith(".1") else value["train"] if shown.endswith(".train") else value
    assert f"key {shown} is {shown_value!r}: input should be a valid" in message


@pytest.mark.parametrize("cls,section,key,value,valid", [
    (TrainConfig, "train", "amp", "fp8", "'auto', 'fp32', 'bf16' or 'fp16'"),
    (TrainConfig, "train", "amp", False, "'auto', 'fp32', 'bf16' or 'fp16'"),  # YAML's unquoted `off`
    (TrainConfig, "train", "early_stopping", "bleu", "'cider', 'bleu4' or 'loss'"),
    (DatasetConfig, "dataset", "format", "json", "'karpathy'"),
    (EncoderConfig, "encoder", "precision", "fp16", "'auto', 'fp32' or 'bf16'"),
    (EvaluateConfig, "evaluate", "split", "train", "'val' or 'test'"),
])
def test_value_outside_a_literal(tmp_path, cls, section, key, value, valid):
    message = error_for(cls, write_params(tmp_path, {section: {key: value}}))
    assert f"key {section}.{key} is {value!r}: input should be" in message and valid in message
    unquoted = "(YAML reads an unquoted yes, no, on or off as true or false)"
    assert (unquoted in message) is isinstance(value, bool)


@pytest.mark.parametrize("key,value", [("lr", float("nan")), ("grad_clip", float("inf")),
                                       ("attention_penalty", float("-inf"))])
def test_a_number_that_is_not_finite_is_refused_as_such(tmp_path, key, value):
    message = error_for(TrainConfig, write_params(tmp_path, {"train": {key: value}}))
    assert f"key train.{key} is {value!r}: input should be a finite number" in message


# ----------------------------------------------------------------------------------------------
# the file and its sections


def test_missing_section(tmp_path):
    path = tmp_path / "params.yaml"
    params = default_params()
    del params["evaluate"]
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert "missing section 'evaluate'" in error_for(EvaluateConfig, path)
    assert load_section(TrainConfig, path).epochs == PARAMS["train"]["epochs"]  # the others still load
    with pytest.raises(ConfigError, match="missing section"):
        load_all(path)


def test_section_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    params = default_params()
    params["vocab"] = 5
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert "section 'vocab' should be a mapping" in error_for(VocabConfig, path)


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
# value checks that tie keys together or that a type alone cannot express


@pytest.mark.parametrize("cls,change,shown", [
    (DatasetConfig, {"dataset": {"split_ratios": {"train": 0.8, "val": 0.1, "test": 0.05}}}, "sum to 1"),
    (DatasetConfig, {"dataset": {"split_ratios": {"train": 0.8, "dev": 0.2}}}, "key dataset.split_ratios.dev"),
    (DatasetConfig, {"dataset": {"split_ratios": {}}}, "dataset.split_ratios must give train, val and test"),
    (DatasetConfig, {"dataset": {"split_ratios": {"train": 0, "val": 0.5, "test": 0.5}}}, "train and val must be > 0"),
    (DatasetConfig, {"dataset": {"split_dir": ""}}, "key dataset.split_dir is ''"),
    (DatasetConfig, {"dataset": {"max_dropped_fraction": 1.5}}, "key dataset.max_dropped_fraction is 1.5"),
    (EncoderConfig, {"encoder": {"image_size": 100}}, "key encoder.image_size is 100: input should be a multiple of 32"),
    (EncoderConfig, {"encoder": {"image_size": 240}}, "key encoder.image_size is 240"),  # a multiple of 16, not 32
    (EncoderConfig, {"encoder": {"image_size": 0}}, "key encoder.image_size is 0"),
    (EncoderConfig, {"encoder": {"batch_size": 0}}, "key encoder.batch_size is 0"),
    (ShapesConfig, {"shapes": {"min_objects": 3, "max_objects": 2}}, "shapes.max_objects (2) must be >="),
    (ShapesConfig, {"shapes": {"object_size": [84, 56]}}, "shapes.object_size [84, 56]"),
    (ShapesConfig, {"shapes": {"object_size": [56]}}, "key shapes.object_size is [56]"),
    (ShapesConfig, {"shapes": {"colours": ["red", "mauve"]}}, "key shapes.colours.1 is 'mauve'"),
    (ShapesConfig, {"shapes": {"max_objects": 8, "colours": ["red"], "shapes": ["circle"]}},
     "shapes.max_objects exceeds"),
    (VocabConfig, {"vocab": {"min_count": 0}}, "key vocab.min_count is 0"),
    (EmbeddingsConfig, {"embeddings": {"dim": -300}}, "key embeddings.dim is -300"),
    (ModelConfig, {"model": {"dropout": 1.0}}, "key model.dropout is 1.0: input should be less than 1"),
    (ModelConfig, {"model": {"max_caption_length": 0}}, "key model.max_caption_length is 0"),
    (TrainConfig, {"train": {"lr": 0}}, "key train.lr is 0: input should be greater than 0"),
    (TrainConfig, {"train": {"epochs": -1}}, "key train.epochs is -1"),
    (EvaluateConfig, {"evaluate": {"beam_size": 0}}, "key evaluate.beam_size is 0"),
    (EvaluateConfig, {"evaluate": {"length_penalty": -1}}, "key evaluate.length_penalty is -1"),
    (EvaluateConfig, {"evaluate": {"no_repeat_ngram": -1}}, "key evaluate.no_repeat_ngram is -1"),
])
def test_value_checks(tmp_path, cls, change, shown):
    assert shown in error_for(cls, write_params(tmp_path, change))


def test_value_checks_accept_the_edges(tmp_path):
    path = write_params(tmp_path, {"dataset": {"split_ratios": {"train": 0.7, "val": 0.3, "test": 0}},
                                   "encoder": {"image_size": 64, "num_workers": 0, "device": "cuda:1"},
                                   "model": {"dropout": 0.0}, "train": {"attention_penalty": 0, "weight_decay": 0},
                                   "evaluate": {"num_figures": 0, "objects": None}})
    assert load_section(DatasetConfig, path).split_ratios == {"train": 0.7, "val": 0.3, "test": 0.0}
    encoder = load_section(EncoderConfig, path)
    assert (encoder.image_size, encoder.num_workers, encoder.device) == (64, 0, "cuda:1")
    assert load_section(ModelConfig, path).dropout == 0.0
    assert load_section(TrainConfig, path).attention_penalty == 0.0
    evaluate = load_section(EvaluateConfig, path)
    assert evaluate.num_figures == 0 and evaluate.objects is None
