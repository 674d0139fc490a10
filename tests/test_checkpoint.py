"""Checkpoints: what is saved is what is rebuilt, loadable with weights_only, and a missing file is named."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.model.checkpoint import checkpoint_payload, load_checkpoint
from tests.tiny_models import E, V, generate, make_features, make_model, padded

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoint_round_trip(tmp_path):
    model = make_model(seed=6, dropout=0.3, end_bias=0.0, sharpness=4.0)
    model.set_feature_statistics(torch.linspace(-0.5, 0.5, E), torch.linspace(0.5, 1.5, E))
    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))]
    encoder = {"architecture": "resnet50", "weights": "none", "image_size": 64}
    payload = checkpoint_payload(model, vocabulary, encoder, epoch=3, best_bleu4=0.25)
    path = tmp_path / "model.pt"
    torch.save(payload, path)  # loaded back with weights_only=True: plain types only

    loaded, loaded_payload = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded_payload["vocabulary"] == vocabulary
    assert loaded_payload["encoder"] == encoder
    assert loaded_payload["epoch"] == 3 and loaded_payload["best_bleu4"] == 0.25
    assert loaded_payload["model_config"] == dataclasses.asdict(model.config)
    torch.testing.assert_close(loaded.feature_mean, model.feature_mean)
    torch.testing.assert_close(loaded.feature_std, model.feature_std)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name

    features = make_features(6) * 3 + 1
    captions = padded([[4, 5], [6, 7, 8], [9], [4], [5, 6], [7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, captions), model(features, captions))
    expected = generate(model, features, 3, max_length=8)
    actual = generate(loaded, features, 3, max_length=8)
    assert actual[0] == expected[0] and any(expected[0])
    torch.testing.assert_close(actual[2], expected[2])


def test_load_checkpoint_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: checkpoint not found; run `dvc repro train`"):
        load_checkpoint(tmp_path / "nothing.pt")
