"""Shared fixtures: a tiny demo project (shapes -> ... -> embeddings) built once per session."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY_PARAMS = {
    "shapes": {"num_images": 30, "image_size": 64, "object_size": [20, 28]},
    "dataset": {"split_ratios": {"train": 0.6, "val": 0.2, "test": 0.2}},
    "encoder": {"image_size": 64, "batch_size": 8, "num_workers": 0, "precision": "fp32"},
    "embeddings": {"dim": 16, "epochs": 2},
    "model": {"attention_dim": 16, "decoder_dim": 32, "max_caption_length": 12},
    "train": {"epochs": 2, "batch_size": 16, "num_samples": 1},
    "evaluate": {"beam_size": 2, "num_figures": 2},
}


def tiny_params(**changes: dict) -> dict:
    """The repository's params.yaml with the tiny overrides (and `changes`) applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for overrides in (TINY_PARAMS, changes):
        for section, values in overrides.items():
            params[section].update(values)
    return params


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny images: one thread is as fast as two, and stays fast on a busy machine (no spinning)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with params.yaml and the outputs of shapes, prepare, features, vocab, embeddings."""
    from pipeline.stages import embeddings, features, prepare, shapes, vocab

    folder = tmp_path_factory.mktemp("tiny")
    (folder / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    previous = Path.cwd()
    os.environ.pop("PIPELINE_PARAMS", None)
    os.chdir(folder)
    try:
        for stage in (shapes, prepare, features, vocab, embeddings):
            stage.main()
    finally:
        os.chdir(previous)
    return folder


@pytest.fixture
def in_tiny_project(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test inside the tiny project, with its params.yaml."""
    monkeypatch.chdir(tiny_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    yield tiny_project


@pytest.fixture(scope="session")
def trained_project(tiny_project: Path) -> Path:
    """The tiny project after `train` (2 epochs): data/train/best.pt exists."""
    from pipeline.stages import train

    previous = Path.cwd()
    os.chdir(tiny_project)
    try:
        train.main()
    finally:
        os.chdir(previous)
    return tiny_project


def write_params(folder: Path, name: str, **changes: dict) -> Path:
    """Write tiny params with `changes` to folder/name and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(tiny_params(**changes), sort_keys=False))
    return path
