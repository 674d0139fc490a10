"""Fault injection: kill -9 of the two long stages at a random point; the rerun finishes the same work.

features: the rerun continues the partial file and the cache is byte-identical to an uninterrupted
run's. train: the rerun continues last.pt and reaches the same weights as an uninterrupted run.

The killed process is held (it sleeps until killed) once it has done a set part of the work, before the
end: the kill comes at a random moment after the first work is on disk, yet always before the run could
finish, however fast or loaded the machine is.
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
from pipeline.datasets.table import read_captions
from tests.conftest import ROOT, write_params

pytestmark = pytest.mark.slow  # kill -9 of stages run as subprocesses, then their reruns


def start(stage: str, folder: Path, params: Path) -> subprocess.Popen:
    """The stage's command line, as dvc.yaml runs it, in `folder`."""
    environment = {**os.environ, PARAMS_ENV: str(params), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", f"pipeline.stages.{stage}"], cwd=folder, env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# The stage as dvc.yaml runs it, with one pipeline function wrapped: after that function's `times`-th call
# whose arguments include `marker` (any call when empty), the process sleeps until it is killed.
HOLD = """
import importlib, runpy, sys, time

stage, module, name, times, marker = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
target = importlib.import_module(module)
original, calls = getattr(target, name), []

def held(*args, **kwargs):
    result = original(*args, **kwargs)
    if not marker or marker in map(str, args):
        calls.append(None)
        if len(calls) >= times:
            time.sleep(600)  # until the test kills the process
    return result

setattr(target, name, held)
sys.argv = [stage]
runpy.run_module(stage, run_name="__main__", alter_sys=True)
"""


def start_held(stage: str, folder: Path, params: Path, function: str, times: int, marker: str = "") -> subprocess.Popen:
    """The stage's process, held for good after `function` ("module.name") has run `times` times (see HOLD)."""
    module, name = function.rsplit(".", 1)
    environment = {**os.environ, PARAMS_ENV: str(params), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", HOLD, f"pipeline.stages.{stage}", module, name, str(times), marker],
                            cwd=folder, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(stage: str, folder: Path, params: Path) -> None:
    process = start(stage, folder, params)
    _, error = process.communicate(timeout=600)
    assert process.returncode == 0, error[-3000:]


def kill_when(process: subprocess.Popen, ready: callable, delay: float) -> bool:
    """kill -9 the process `delay` seconds after `ready()` first holds; False when it ended first (a held
    process ends only by failing: its stderr is then in the assertion that follows)."""
    try:
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
    finally:
        if process.poll() is None:  # never leave a held process behind
            process.kill()
            process.wait()


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
    batches = -(-len(set(read_captions(project / "data/prepared/captions.csv")["image"])) // 2)
    # held after half of the batches are written: the kill falls before, during or after a write of the first half
    process = start_held("features", project, params, "pipeline.encoder.extraction.write_rows", batches // 2)
    killed = kill_when(process, partial.exists, random.Random(os.getpid()).uniform(0.0, 0.3))
    assert killed, f"the stage ended before it could be killed: {process.stderr.read()[-3000:]}"
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
    # held once last.pt holds epoch 2: the kill falls in epoch 2 (training, validation or a checkpoint write)
    # or after it, never after epoch 3
    process = start_held("train", project, resumed, "pipeline.files.save_torch", 2, marker="train.last_checkpoint")
    last = project / "resumed/last.pt"
    killed = kill_when(process, last.exists, random.Random(os.getpid()).uniform(0.0, 1.0))
    assert killed, f"the stage ended before it could be killed: {process.stderr.read()[-3000:]}"
    # the checkpoint on disk is whole (written to a temporary name, then renamed) and not the last epoch
    assert 1 <= torch.load(last, weights_only=True)["state"]["epoch"] < 3
    finish("train", project, resumed)
    a = torch.load(project / "straight/last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["state"]["scores"] == b["state"]["scores"] and b["state"]["epoch"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)


def test_scst_killed_midway_resumes_to_a_byte_identical_final_model(trained_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "trained"
    shutil.copytree(trained_project, project)
    outputs = {"checkpoint": "straight/best.pt", "last_checkpoint": "straight/last.pt", "log_dir": "straight/tb",
               "metrics_dir": "straight/metrics"}
    settings = {"epochs": 3, "batch_size": 4, "lr": 0.002, "kl_weight": 0.1}  # the frozen reference model too
    straight = write_params(project / "straight.yaml", {"scst": {**settings, **outputs}}, tiny=True)
    finish("scst", project, straight)
    resumed_outputs = {key: value.replace("straight", "resumed") for key, value in outputs.items()}
    resumed = write_params(project / "resumed.yaml", {"scst": {**settings, **resumed_outputs}}, tiny=True)
    # held once last.pt holds epoch 2: the kill falls in epoch 2 or after it, never after epoch 3
    process = start_held("scst", project, resumed, "pipeline.files.save_torch", 2, marker="scst.last_checkpoint")
    last = project / "resumed/last.pt"
    killed = kill_when(process, last.exists, random.Random(os.getpid()).uniform(0.0, 1.0))
    assert killed, f"the stage ended before it could be killed: {process.stderr.read()[-3000:]}"
    assert 1 <= torch.load(last, weights_only=True)["state"]["epoch"] < 3
    finish("scst", project, resumed)
    a = torch.load(project / "straight/last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["state"] == b["state"] and b["state"]["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(b["model"][key], value), key
    assert (project / "resumed/best.pt").read_bytes() == (project / "straight/best.pt").read_bytes()
