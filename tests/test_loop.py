"""The training pieces: the model built from the vocabulary and embeddings (frozen or fine-tuned), one
epoch of run_epoch, the embedding checks, and each process's share of the batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig, load_section
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.errors import InputError
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from pipeline.training.batches import encode_captions
from pipeline.training.loop import build_model, load_embeddings, run_epoch
from tests.conftest import DEFAULT_PARAMS, write_feature_cache

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
VOCABULARY = Vocabulary((*SPECIAL_TOKENS, "a", "red", "blue", "circle", "square"))
CAPTIONS = pd.DataFrame({"image": ["x.png", "y.png", "x.png", "y.png"],
                         "caption": ["a red circle", "a blue square", "red circle", "blue square"]})


def model_config(fine_tune: bool) -> ModelConfig:
    return ModelConfig(architecture="spatial", attention_dim=4, decoder_dim=8, dropout=0.0, fine_tune_embeddings=fine_tune,
                       max_caption_length=5)


def train_config() -> TrainConfig:
    return load_section(TrainConfig, DEFAULT_PARAMS).model_copy(update={"amp": "fp32"})


def train_a_little(tmp_path: Path, fine_tune: bool) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Three epochs of run_epoch on 2 images and 4 captions; returns the model and its weights before."""
    torch.manual_seed(0)
    names = ["x.png", "y.png"]
    features = np.random.default_rng(0).normal(size=(2, 4, 6)).astype(np.float32)  # (N, P, E)
    matrix = FeatureMatrix(FeatureStore(write_feature_cache(tmp_path / "features.h5", names, features)), names, CPU)
    captions = encode_captions(CAPTIONS, VOCABULARY, matrix.rows, max_words=5)
    embeddings = torch.randn(len(VOCABULARY), 5)  # (V, D)
    model = build_model(VOCABULARY, embeddings, feature_dim=6, config=model_config(fine_tune))
    assert torch.equal(model.embedding.weight, embeddings)
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.01)  # every parameter offered
    batches = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    for _ in range(3):
        stats = run_epoch(model, matrix, captions, batches, train_config(), CPU, optimizer)
        assert stats["loss"] > 0 and stats["loss"] >= stats["cross_entropy"]
    return model, before


def test_a_frozen_embedding_stays_bit_identical(tmp_path: Path) -> None:
    model, before = train_a_little(tmp_path, fine_tune=False)
    assert not model.embedding.weight.requires_grad
    assert torch.equal(model.embedding.weight, before["embedding.weight"])
    assert not torch.equal(model.output.weight, before["output.weight"])  # the rest did train


def test_a_fine_tuned_embedding_changes(tmp_path: Path) -> None:
    model, before = train_a_little(tmp_path, fine_tune=True)
    assert model.embedding.weight.requires_grad
    assert not torch.equal(model.embedding.weight, before["embedding.weight"])


def test_validation_epoch_changes_nothing(tmp_path: Path) -> None:
    names = ["x.png", "y.png"]
    features = np.random.default_rng(1).normal(size=(2, 4, 6)).astype(np.float32)
    matrix = FeatureMatrix(FeatureStore(write_feature_cache(tmp_path / "features.h5", names, features)), names, CPU)
    captions = encode_captions(CAPTIONS, VOCABULARY, matrix.rows, max_words=5)
    model = build_model(VOCABULARY, torch.randn(len(VOCABULARY), 5), 6, model_config(True))
    before = {name: value.clone() for name, value in model.state_dict().items()}
    with torch.no_grad():
        first = run_epoch(model, matrix, captions, [torch.arange(4)], train_config(), CPU)
        second = run_epoch(model, matrix, captions, [torch.tensor([0, 1]), torch.tensor([2, 3])], train_config(), CPU)
    assert not model.training
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    # the epoch loss is the mean over real tokens, however the captions are batched
    assert first["cross_entropy"] == pytest.approx(second["cross_entropy"], rel=1e-5)


def test_embeddings_must_match_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.npy"
    np.save(path, np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(InputError, match="vocabulary has 5 words"):
        load_embeddings(path, Vocabulary((*SPECIAL_TOKENS, "a")))
    with pytest.raises(FileNotFoundError, match="dvc repro embeddings"):
        load_embeddings(tmp_path / "missing.npy", Vocabulary((*SPECIAL_TOKENS, "a")))


@pytest.mark.parametrize("damage", ["cut_off", "empty", "pickled"])
def test_a_damaged_embedding_matrix_is_one_error_naming_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "embeddings.npy"
    np.save(path, np.zeros((5, 8), dtype=np.float32))
    if damage == "pickled":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(path.read_bytes()[:60] if damage == "cut_off" else b"")
    with pytest.raises(InputError, match=r"embeddings\.npy cannot be read as an embedding matrix .*dvc repro embeddings"):
        load_embeddings(path, Vocabulary((*SPECIAL_TOKENS, "a")))


@pytest.mark.parametrize("text", ['{"words": ["<pad>"', '["<pad>"]', '{"counts": {}}', '{"words": ["a", "b"]}'])
def test_a_damaged_vocabulary_is_one_error_naming_it(tmp_path: Path, text: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=r"vocab\.json is not a vocabulary file .*dvc repro vocab"):
        Vocabulary.from_json(path)
    path.write_text(json.dumps({"words": list(VOCABULARY.words)}), encoding="utf-8")
    assert Vocabulary.from_json(path) == VOCABULARY
