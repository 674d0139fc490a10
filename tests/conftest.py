"""Shared fixtures: a tiny demo project (shapes -> ... -> embeddings) built once per session, and
`write_params`, the one way tests write a params.yaml.

Tests never read the repository's working params.yaml (`dvc exp run -S train.lr=...` leaves its
value there): every params file they write starts from DEFAULT_PARAMS, tests/params.yaml, the tests'
own copy of the defaults (tests/test_config.py checks that it has the same keys as params.yaml)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = Path(__file__).resolve().parent / "params.yaml"

# The repository's params with these overrides: a demo small enough for a test (30 images of 64 px,
# 18 for training). 12 epochs of 12 steps at lr 0.01 without dropout is the least training after which
# the captions are words of the demo rather than one word repeated (test split of 6 images, seeds 0-4:
# BLEU-1 0.28-0.51 and 5-8 words used; after 2 epochs at the repository's lr: BLEU-1 0.15). Early
# stopping on the loss: validation BLEU-4 stays 0 on 6 images, so it would keep the first epoch.
TINY_PARAMS = {
    "shapes": {"num_images": 30, "image_size": 64, "object_size": [20, 28]},
    "dataset": {"split_ratios": {"train": 0.6, "val": 0.2, "test": 0.2}},
    "encoder": {"image_size": 64, "batch_size": 8, "num_workers": 0, "precision": "fp32"},
    "embeddings": {"dim": 16, "epochs": 2},
    "model": {"architecture": "sat", "attention_dim": 16, "decoder_dim": 32, "dropout": 0.0, "max_caption_length": 12},
    "train": {"epochs": 12, "batch_size": 8, "lr": 0.01, "early_stopping": "loss", "num_samples": 1},
    # the final model is train's unless a test fine-tunes it (tests/test_scst.py)
    "scst": {"epochs": 0, "batch_size": 8},
    "evaluate": {"beam_size": 2, "num_figures": 2},
}


def default_params() -> dict[str, dict[str, Any]]:
    """A fresh copy of the default params (tests/params.yaml)."""
    return yaml.safe_load(DEFAULT_PARAMS.read_text(encoding="utf-8"))


def params_with(changes: dict[str, dict[str, Any]] | None = None, tiny: bool = False,
                remove: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The default params, with TINY_PARAMS when `tiny`, then `changes` ({section: {key: value}}),
    and without the `remove` keys ("section.key")."""
    params = default_params()
    for overrides in ((TINY_PARAMS if tiny else {}), changes or {}):
        for section, values in overrides.items():
            params[section].update(values)
    for dotted in remove:
        section, key = dotted.split(".", 1)
        del params[section][key]
    return params


# What a temporary copy of the project holds (tests/test_pipeline.py and others that run DVC). params.yaml is
# not copied: the copy gets the tests' own defaults through write_params; of splits/ (dataset.split_dir) only
# its README: no split lists, whatever a user put there.
PROJECT_FILES = ["pipeline", "splits/README.md", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore"]


def write_params(path: Path, changes: dict[str, dict[str, Any]] | None = None, tiny: bool = False,
                 remove: Iterable[str] = ()) -> Path:
    """Write `params_with(changes, tiny, remove)` to `path` (a folder gets params.yaml); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "params.yaml"
    path.write_text(yaml.safe_dump(params_with(changes, tiny, remove), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="session")
def library_messages() -> None:
    """The library's log messages shown as `run` shows them to a person: tests call stages' main() directly."""
    from pipeline.cli import configure_logging

    configure_logging()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is as fast as two, and stays fast on a busy machine (no spinning)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_stages(folder: Path, *stages: Any) -> None:
    """Run the stages' main() in `folder` with its params.yaml."""
    previous = Path.cwd()
    saved = os.environ.pop("PIPELINE_PARAMS", None)
    os.chdir(folder)
    try:
        for stage in stages:
            stage.main()
    finally:
        os.chdir(previous)
        if saved is not None:
            os.environ["PIPELINE_PARAMS"] = saved


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny params.yaml and the outputs of shapes, prepare, features, vocab, embeddings."""
    from pipeline.stages import embeddings, features, prepare, shapes, vocab

    folder = tmp_path_factory.mktemp("tiny")
    write_params(folder, tiny=True)
    (folder / default_params()["dataset"]["split_dir"]).mkdir()  # dataset.split_dir, without lists: a random split
    run_stages(folder, shapes, prepare, features, vocab, embeddings)
    return folder


@pytest.fixture
def in_tiny_project(tiny_project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the test inside the tiny project, with its params.yaml."""
    monkeypatch.chdir(tiny_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    yield tiny_project


@pytest.fixture(scope="session")
def trained_project(tiny_project: Path) -> Path:
    """The tiny project after `train` and `scst` (off: data/scst/best.pt is a copy of data/train/best.pt)."""
    from pipeline.stages import scst, train

    run_stages(tiny_project, train, scst)
    return tiny_project


def write_feature_cache(path: Path, names: list[str], features: Any, attrs: dict[str, Any] | None = None) -> Path:
    """A feature cache (the layout the features stage writes, row checksums included) holding `features`
    (N, P, E) for `names`."""
    import h5py

    from pipeline.encoder.feature_cache import create_checksums, create_layout, row_checksums

    with h5py.File(path, "w") as file:
        dataset = create_layout(file, names, features.shape[1], features.shape[2], features.dtype.name,
                                attrs or {"weights": "none", "image_size": 64})
        dataset[...] = features
        create_checksums(file, len(names))[...] = row_checksums(features)
    return path


def with_encoder_info(checkpoint: Path, copy: Path, **info: Any) -> Path:
    """A copy of `checkpoint` at `copy` whose recorded encoder info has `info` changed."""
    from pipeline.files import save_torch
    from pipeline.model.checkpoint import read_payload

    payload = read_payload(checkpoint)
    payload["encoder"] = {**payload["encoder"], **info}
    save_torch(copy, payload)
    return copy


@pytest.fixture(params=["spatial", "sat"])
def each_architecture(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per decoder architecture: tests.tiny_models.make_model builds that one."""
    from tests import tiny_models

    monkeypatch.setattr(tiny_models, "ARCHITECTURE", request.param)
    return request.param


def run_in(command: list[str], cwd: Path) -> str:
    """Run a command (dvc, git) in a project copy, with this interpreter's environment first on the PATH
    and no PIPELINE_PARAMS; its output (stdout then stderr), after asserting that it succeeded."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", "DVC_NO_ANALYTICS": "1"}
    env.pop("PIPELINE_PARAMS", None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output[-4000:]}"
    return output


def copy_project(copy: Path, changes: dict[str, dict[str, Any]] | None = None) -> Path:
    """A git repository at `copy` holding PROJECT_FILES and the tiny params with `changes`, committed."""
    for item in PROJECT_FILES:
        source, target = ROOT / item, copy / item
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    write_params(copy, changes, tiny=True)
    run_in(["git", "init", "-q"], copy)
    run_in(["git", "add", "-A"], copy)
    run_in(["git", "commit", "-qm", "tiny copy"], copy)
    return copy
