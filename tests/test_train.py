"""Training: batching, caption encoding, input checks, and exact resumption."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.stages import train
from pipeline.training.batches import bucket_batches, encode_captions
from pipeline.stages.train import shard
from pipeline.text import SPECIAL_TOKENS, Vocabulary
from tests.conftest import write_params


def test_bucket_batches_cover_every_caption_once_with_similar_lengths() -> None:
    lengths = torch.randint(3, 20, (1000,), generator=torch.Generator().manual_seed(0))
    batches = bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    # within a batch, lengths span far less than over random batches of the same size
    spread = np.mean([int(lengths[b].max() - lengths[b].min()) for b in batches])
    assert spread < 3
    again = bucket_batches(lengths, 32, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


def test_encode_captions_pads_and_maps_images() -> None:
    vocabulary = Vocabulary((*SPECIAL_TOKENS, "a", "red", "circle"))
    table = pd.DataFrame({"image": ["x.png", "y.png"], "caption": ["a red circle", "a blue circle"]})
    encoded = encode_captions(table, vocabulary, {"x.png": 5, "y.png": 7}, max_words=30)
    assert encoded.tokens.tolist() == [[1, 4, 5, 6, 2], [1, 4, 3, 6, 2]]  # blue -> UNK
    assert encoded.lengths.tolist() == [5, 5]
    assert encoded.image_rows.tolist() == [5, 7]
    short = encode_captions(table, vocabulary, {"x.png": 0, "y.png": 1}, max_words=2)
    assert short.tokens[0].tolist() == [1, 4, 5, 2]
    with pytest.raises(KeyError, match="dvc repro features"):
        encode_captions(table, vocabulary, {"x.png": 0}, max_words=30)


def test_embeddings_must_match_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.npy"
    np.save(path, np.zeros((3, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="vocabulary has 5 words"):
        train.load_embeddings(path, Vocabulary((*SPECIAL_TOKENS, "a")))
    with pytest.raises(FileNotFoundError, match="dvc repro embeddings"):
        train.load_embeddings(tmp_path / "missing.npy", Vocabulary((*SPECIAL_TOKENS, "a")))


def _run(params: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    monkeypatch.setenv("PIPELINE_PARAMS", str(params))
    train.main()
    return capsys.readouterr().out


def test_resumed_run_equals_uninterrupted_run(in_tiny_project: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    straight = {"epochs": 3, "out_dir": "runs/straight", "log_dir": "runs/straight/tb", "patience": 10}
    _run(write_params(in_tiny_project, "straight.yaml", train=straight), monkeypatch, capsys)

    resumed = {**straight, "out_dir": "runs/resumed", "log_dir": "runs/resumed/tb"}
    first = _run(write_params(in_tiny_project, "one.yaml", train={**resumed, "epochs": 1}), monkeypatch, capsys)
    assert "resuming" not in first
    second = _run(write_params(in_tiny_project, "three.yaml", train=resumed), monkeypatch, capsys)
    assert "resuming from runs/resumed/last.pt after epoch 1" in second
    assert "epoch 1/3" not in second and "epoch 3/3" in second

    a = torch.load(in_tiny_project / "runs/straight/last.pt", weights_only=True)
    b = torch.load(in_tiny_project / "runs/resumed/last.pt", weights_only=True)
    assert a["state"] == b["state"]
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)

    # a changed training param makes last.pt stale: the run starts afresh instead of resuming
    changed = _run(write_params(in_tiny_project, "lr.yaml", train={**resumed, "lr": 0.005}), monkeypatch, capsys)
    assert "starting afresh" in changed and "epoch 1/3" in changed


def test_best_checkpoint_rebuilds_the_model(trained_project: Path) -> None:
    from pipeline.model import load_checkpoint

    model, payload = load_checkpoint(trained_project / "data/train/best.pt")
    vocabulary = payload["vocabulary"]
    assert vocabulary[:4] == list(SPECIAL_TOKENS)
    assert model.config.vocab_size == len(vocabulary)
    assert payload["encoder"]["image_size"] == 64 and payload["encoder"]["weights"] == "none"
    # the features were standardised with statistics of the training split, not left at 0/1
    assert not torch.equal(model.feature_mean, torch.zeros_like(model.feature_mean))
    assert not torch.equal(model.feature_std, torch.ones_like(model.feature_std))


def test_shard_gives_every_process_the_same_number_of_distinct_batches() -> None:
    batches = [torch.tensor([i]) for i in range(7)]
    parts = [shard(batches, rank, 3) for rank in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert sorted(int(b) for p in parts for b in p) == list(range(6))
    assert shard(batches, 0, 1) == batches


def test_two_processes_train_with_distributed_data_parallel(in_tiny_project: Path) -> None:
    params = write_params(in_tiny_project, "ddp.yaml",
                          train={"epochs": 2, "out_dir": "runs/ddp", "log_dir": "runs/ddp/tb"})
    environment = {**os.environ, "PIPELINE_PARAMS": str(params), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "pipeline.train"], cwd=in_tiny_project, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("epoch 2/2") == 1  # one process logs
    checkpoint = torch.load(in_tiny_project / "runs/ddp/last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 2
    assert (in_tiny_project / "runs/ddp/best.pt").is_file()


def test_autocast_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    context, scaled = train.autocast_for(cpu, "bf16")
    with context:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    assert scaled is False
    assert train.autocast_for(cpu, "fp16")[1] is True  # fp16 needs gradient scaling
    with train.autocast_for(cpu, "fp32")[0]:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: False)
    with train.autocast_for(cpu, "auto")[0]:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: True)
    with train.autocast_for(cpu, "auto")[0]:
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_fingerprint_covers_the_training_code() -> None:
    sources = {path.name for path in train.pipeline_sources()}
    assert {"train.py", "model.py", "data.py", "feature_store.py", "config.py"} <= sources
