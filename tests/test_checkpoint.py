"""Checkpoints: what is saved is what is rebuilt, loadable with weights_only, and a missing file is named."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.errors import InputError
from pipeline.model.checkpoint import check_features, checkpoint_payload, load_checkpoint
from tests.tiny_models import E, H, V, generate, make_features, make_model, padded

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checkpoint_round_trip(tmp_path):
    model = make_model(seed=6, dropout=0.3, end_bias=0.0, sharpness=4.0)
    model.set_feature_statistics(torch.linspace(-0.5, 0.5, E), torch.linspace(0.5, 1.5, E))
    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))]
    encoder = {"architecture": "resnet50", "weights": "none", "image_size": 64}
    payload = checkpoint_payload(model, vocabulary, encoder, epoch=3, best_bleu4=0.25)
    path = tmp_path / "model.pt"
    torch.save(payload, path)  # loaded back with weights_only=True: plain types only

    loaded, loaded_vocabulary, loaded_payload = load_checkpoint(path)
    assert loaded_vocabulary.words == tuple(vocabulary)  # the checkpoint's vocabulary, built once
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
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: checkpoint not found; run `dvc repro` \(or `dvc pull`\) first"):
        load_checkpoint(tmp_path / "nothing.pt")


def saved_checkpoint(path, **changes):
    """A checkpoint of a tiny model saved at `path`, with `changes` made to its payload."""
    vocabulary = ["<pad>", "<start>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))]
    payload = checkpoint_payload(make_model(), vocabulary, {"weights": "none", "image_size": 64, "grid": 2})
    torch.save({**payload, **changes}, path)
    return path


@pytest.mark.parametrize("damage", ["cut_off", "empty", "text", "a_list"])
def test_a_damaged_checkpoint_is_one_error_naming_it(tmp_path, damage):
    path = saved_checkpoint(tmp_path / "best.pt")
    whole = path.read_bytes()
    if damage == "cut_off":
        path.write_bytes(whole[:len(whole) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("not a checkpoint\n")
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(InputError, match=r"best\.pt .*(cut off|not a captioning checkpoint).*`dvc repro train`") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value)


def test_a_checkpoint_whose_parts_do_not_fit_is_refused(tmp_path):
    config = dataclasses.asdict(make_model().config)
    with pytest.raises(InputError, match="weights do not fit its model_config"):
        load_checkpoint(saved_checkpoint(tmp_path / "wider.pt", model_config={**config, "decoder_dim": H * 2}))
    with pytest.raises(InputError, match="weights do not fit its model_config"):
        load_checkpoint(saved_checkpoint(tmp_path / "newer.pt", model_config={**config, "layers": 2}))
    with pytest.raises(InputError, match=f"holds 4 vocabulary words for a model of {V}"):
        load_checkpoint(saved_checkpoint(tmp_path / "words.pt", vocabulary=["<pad>", "<start>", "<end>", "<unk>"]))
    reordered = ["<start>", "<pad>", "<end>", "<unk>", *(f"w{i}" for i in range(V - 4))]
    with pytest.raises(InputError, match="its vocabulary does not start with <pad>, <start>, <end>, <unk>"):
        load_checkpoint(saved_checkpoint(tmp_path / "order.pt", vocabulary=reordered))
    with pytest.raises(InputError, match="does not say which encoder its features came from"):
        load_checkpoint(saved_checkpoint(tmp_path / "encoder.pt", encoder={"architecture": "resnet50"}))


def test_features_from_another_encoder_or_of_another_size_are_refused(tmp_path):
    model, _, payload = load_checkpoint(saved_checkpoint(tmp_path / "best.pt"))
    made = payload["encoder"]
    check_features(model, made, "features.h5", {**made, "torch_version": "other"}, E)  # the same encoder: fine
    with pytest.raises(InputError, match=f"features.h5 holds {E * 2}-dim features but the checkpoint's model reads {E}"):
        check_features(model, made, "features.h5", made, E * 2)
    with pytest.raises(InputError, match=r"another encoder .*\(image_size 128, not 64, grid 4, not 2\)"):
        check_features(model, made, "features.h5", {**made, "image_size": 128, "grid": 4}, E)
