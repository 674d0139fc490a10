"""The train stage on the tiny project: exact resumption, the best checkpoint (standardised with training
statistics only), two processes with DistributedDataParallel."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.datasets.table import read_captions
from pipeline.model.checkpoint import load_checkpoint
from pipeline.stages import train
from pipeline.text import SPECIAL_TOKENS
from pipeline.training import compiled
from pipeline.training.compiled import compile_decoder
from tests.conftest import write_params


def run_paths(name: str) -> dict[str, str]:
    """train's output keys, all under runs/<name>."""
    return {"checkpoint": f"runs/{name}/best.pt", "last_checkpoint": f"runs/{name}/last.pt",
            "log_dir": f"runs/{name}/tb", "metrics_dir": f"runs/{name}/metrics"}


def run_train(folder: Path, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
              **train_params: object) -> str:
    """Run train with the tiny params, `train_params` and outputs under runs/; returns what it printed."""
    params = write_params(folder / f"{name}.yaml", {"train": train_params}, tiny=True)
    monkeypatch.setenv("PIPELINE_PARAMS", str(params))
    train.main()
    return capsys.readouterr().out


def test_resumed_run_equals_uninterrupted_run(in_tiny_project: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    straight = {"epochs": 2, "patience": 10, **run_paths("straight")}
    run_train(in_tiny_project, "straight", monkeypatch, capsys, **straight)

    resumed = {**straight, **run_paths("resumed")}
    first = run_train(in_tiny_project, "one", monkeypatch, capsys, **{**resumed, "epochs": 1})
    assert "resuming" not in first and "epoch 1/1" in first
    second = run_train(in_tiny_project, "two", monkeypatch, capsys, **resumed)
    assert "resuming from runs/resumed/last.pt after epoch 1" in second
    assert "epoch 1/2" not in second and "epoch 2/2" in second

    a = torch.load(in_tiny_project / "runs/straight/last.pt", weights_only=True)
    b = torch.load(in_tiny_project / "runs/resumed/last.pt", weights_only=True)
    assert a["state"] == b["state"] and a["state"]["epoch"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)

    # a changed training param makes last.pt stale: the run starts afresh instead of resuming
    changed = run_train(in_tiny_project, "lr", monkeypatch, capsys, **{**resumed, "epochs": 1, "lr": 0.005})
    assert "starting afresh" in changed and "epoch 1/1" in changed


def test_best_checkpoint_rebuilds_the_model_standardised_with_training_images_only(trained_project: Path) -> None:
    model, vocabulary, payload = load_checkpoint(trained_project / "data/train/best.pt")
    vocabulary = list(vocabulary.words)
    assert vocabulary == payload["vocabulary"]
    assert vocabulary[:4] == list(SPECIAL_TOKENS)
    assert model.config.vocab_size == len(vocabulary)
    assert model.config.max_caption_length == 12  # model.max_caption_length of the tiny params
    assert payload["encoder"]["image_size"] == 64 and payload["encoder"]["weights"] == "none"
    # the validation scores of the saved epoch, and nothing that varies between identical runs (speeds)
    assert {"val_loss", "val_cider", "val_bleu4"} <= set(payload)
    assert not [key for key in payload if "per_s" in key or "seconds" in key]

    # the feature statistics: per channel over every region of the training images, and of no other image
    table = read_captions(trained_project / "data/prepared/captions.csv")
    train_images = set(table.loc[table["split"] == "train", "image"])
    with h5py.File(trained_project / "data/features/features.h5", "r") as file:
        names = list(file["images"].asstr()[()])
        features = file["features"][()].astype(np.float64)  # (N, P, E)
    is_train = np.array([name in train_images for name in names])
    assert 0 < is_train.sum() < len(names)
    regions = features[is_train].reshape(-1, features.shape[2])  # (N_train * P, E)
    np.testing.assert_allclose(model.feature_mean.numpy(), regions.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.feature_std.numpy(), np.maximum(regions.std(axis=0), 1e-6), rtol=1e-3, atol=1e-5)
    all_mean = features.reshape(-1, features.shape[2]).mean(axis=0)
    assert not np.allclose(model.feature_mean.numpy(), all_mean, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # torchrun, two processes
def test_two_processes_train_with_distributed_data_parallel(in_tiny_project: Path) -> None:
    params = write_params(in_tiny_project / "ddp.yaml", {"train": {"epochs": 2, **run_paths("ddp")}}, tiny=True)
    # the stage's own command, as dvc.yaml runs it; the process layout comes from the environment
    environment = {**os.environ, "PIPELINE_PARAMS": str(params), "OMP_NUM_THREADS": "1",
                   "PIPELINE_TORCHRUN": "--standalone --nproc_per_node 2",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "pipeline.stages.train"], check=False, cwd=in_tiny_project,
                            env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "running under torchrun" in result.stdout
    assert result.stdout.count("epoch 2/2") == 1  # one process logs
    checkpoint = torch.load(in_tiny_project / "runs/ddp/last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 2
    assert (in_tiny_project / "runs/ddp/best.pt").is_file()



def test_a_machine_where_torch_compile_fails_trains_with_the_plain_step(
        in_tiny_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """The compiled step is tried on a first batch; a compiler that fails there costs the run nothing:
    the same weights as a run that never compiled (the trial neither updates nor draws random numbers)."""
    from tests.test_speed_compiled import failing_backend

    run_train(in_tiny_project, "plain", monkeypatch, capsys, epochs=1, compile="never", **run_paths("plain"))
    monkeypatch.setattr(compiled, "compile_decoder", functools.partial(compile_decoder, backend=failing_backend))
    out = run_train(in_tiny_project, "failing", monkeypatch, capsys, epochs=1, compile="always",
                    **run_paths("failing"))
    assert ("train: torch.compile failed on this machine (RuntimeError: Failed to find C compiler. Please specify "
            "via CC environment variable.); using the plain step") in out
    plain = torch.load(in_tiny_project / "runs/plain/last.pt", weights_only=True)["model"]
    fallen_back = torch.load(in_tiny_project / "runs/failing/last.pt", weights_only=True)["model"]
    for key, value in plain.items():
        assert torch.equal(fallen_back[key], value), key
