"""Fault injection: kill -9 of the two long stages at a random point; the rerun finishes the same work.

features: the rerun continues the partial file and the cache is byte-identical to an uninterrupted
run's. train: the rerun continues last.pt and reaches the same weights as an uninterrupted run.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from pipeline.config import PARAMS_ENV
from tests.conftest import ROOT, write_params


def start(stage: str, folder: Path, params: Path) -> subprocess.Popen:
    """The stage's command line, as dvc.yaml runs it, in `folder`."""
    environment = {**os.environ, PARAMS_ENV: str(params), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", f"pipeline.stages.{stage}"], cwd=folder, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(stage: str, folder: Path, params: Path) -> None:
    process = start(stage, folder, params)
    _, error = process.communicate(timeout=600)
    assert process.returncode == 0, error[-3000:]


def kill_when(process: subprocess.Popen, ready: callable, delay: float) -> bool:
    """kill -9 the process `delay` seconds after `ready()` first holds; False when it ended first."""
    deadline = time.monotonic() + 300
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True


@pytest.fixture
def project(tiny_project: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny project (up to embeddings)."""
    copy = tmp_path / "project"
    shutil.copytree(tiny_project, copy)
    return copy


def test_features_killed_midway_resume_to_a_byte_identical_cache(project: Path) -> None:
    params = write_params(project / "small_batches.yaml", {"encoder": {"batch_size": 2}}, tiny=True)
    cache = project / "data/features/features.h5"
    finish("features", project, params)
    with h5py.File(cache, "r") as file:
        reference = file["features"][()].tobytes()
    cache.unlink()
    partial = cache.with_name(f".{cache.name}.partial")
    process = start("features", project, params)
    killed = kill_when(process, partial.exists, random.Random(os.getpid()).uniform(0.0, 0.3))
    assert killed, "the stage finished before it could be killed"
    assert not cache.exists()  # a killed run never leaves a cache that looks complete
    finish("features", project, params)
    with h5py.File(cache, "r") as file:
        assert file["features"][()].tobytes() == reference
    assert not partial.exists()


def test_train_killed_after_an_epoch_resumes_to_the_same_weights(project: Path) -> None:
    outputs = {"checkpoint": "straight/best.pt", "last_checkpoint": "straight/last.pt", "log_dir": "straight/tb",
               "metrics_dir": "straight/metrics"}
    straight = write_params(project / "straight.yaml", {"train": {"epochs": 3, **outputs}}, tiny=True)
    finish("train", project, straight)
    resumed_outputs = {key: value.replace("straight", "resumed") for key, value in outputs.items()}
    resumed = write_params(project / "resumed.yaml", {"train": {"epochs": 3, **resumed_outputs}}, tiny=True)
    process = start("train", project, resumed)
    last = project / "resumed/last.pt"
    killed = kill_when(process, last.exists, random.Random(os.getpid()).uniform(0.0, 1.0))
    assert killed, "the stage finished before it could be killed"
    # the checkpoint on disk is whole (written to a temporary name, then renamed) and not the last epoch
    assert 1 <= torch.load(last, weights_only=True)["state"]["epoch"] < 3
    finish("train", project, resumed)
    a = torch.load(project / "straight/last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["state"]["scores"] == b["state"]["scores"] and b["state"]["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
