"""End to end: the real `dvc repro` on a tiny configuration, in a temporary copy of the project.

Checks that the whole graph runs offline, writes what it promises, reruns nothing when nothing
changed, reruns only train and evaluate after a `train.*` change, and features onwards after an
`encoder.*` change.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import TINY_PARAMS, copy_project, write_params
from tests.conftest import run_in as run

pytestmark = pytest.mark.slow  # real `dvc repro` runs in a copy of the project

def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([a-z_]+)'", output))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_project(tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def first_run(project: Path) -> str:
    return run(["dvc", "repro"], project)


def test_repro_runs_every_stage_and_writes_outputs(project: Path, first_run: str) -> None:
    assert stages_run(first_run) == {"shapes", "prepare", "features", "vocab", "embeddings", "train", "scst",
                                      "evaluate", "retrieval"}
    assert (project / "dvc.lock").is_file()
    for path in ["data/shapes/objects.json", "data/prepared/captions.csv", "data/prepared/report.json",
                 "data/features/features.h5", "data/vocab/vocab.json", "data/embeddings/embeddings.npy",
                 "data/train/best.pt", "data/train/last.pt", "data/scst/best.pt", "data/evaluate/predictions.json"]:
        assert (project / path).is_file(), path
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    # the tiny run learns the demo's words. On 6 test images the scores swing with the seed: measured on
    # this configuration with train seeds 0-4 (sat), BLEU-1 0.28-0.51, CIDEr 0.33-1.14, 5-8 words used, the
    # training cross-entropy's last epoch 0.36-0.48 of its first; an untrained or broken model (captions of
    # one word repeated, or empty) scores BLEU-1 below 0.2 with 1 word used
    assert metrics["bleu1"] >= 0.25 and metrics["vocabulary_used"] >= 4, metrics
    cross_entropy = (project / "metrics/train/plots/metrics/train/cross_entropy.tsv").read_text().splitlines()
    first, last = (float(line.split("\t")[1]) for line in (cross_entropy[1], cross_entropy[-1]))
    assert last <= 0.6 * first, cross_entropy
    assert 0.0 <= metrics["attention_correctness"] <= 1.0
    assert metrics["images"] == 6
    predictions = json.loads((project / "data/evaluate/predictions.json").read_text())
    assert all(prediction["caption"] for prediction in predictions)
    assert len(list((project / "data/evaluate/attention").glob("*.png"))) == 2
    train_metrics = json.loads((project / "metrics/train/metrics.json").read_text())
    epochs = train_metrics["epochs_run"]
    assert 1 <= train_metrics["best_epoch"] <= epochs <= TINY_PARAMS["train"]["epochs"]
    assert (project / "metrics/train/plots/metrics/val/bleu4.tsv").is_file()
    samples = (project / "metrics/train/samples.txt").read_text()
    assert samples.startswith("epoch 1\n  img_") and f"epoch {epochs}\n" in samples
    assert f"epoch {epochs + 1}\n" not in samples
    # dvc sees the declared metrics and plots
    shown = run(["dvc", "metrics", "show", "--json"], project)
    assert "bleu4" in shown and "coverage" in shown and "median_rank" in shown
    assert "samples.txt" not in shown and ".tsv" not in shown  # only the declared metrics files
    plots = run(["dvc", "plots", "show", "--json"], project)
    assert '"bleu4": [{"type": "vega"' in plots and '"loss": [{"type": "vega"' in plots  # the top-level plots


def test_second_repro_runs_nothing(project: Path, first_run: str) -> None:
    assert stages_run(run(["dvc", "repro"], project)) == set()


def test_train_param_change_reruns_train_and_evaluate_only(project: Path, first_run: str) -> None:
    write_params(project, {"train": {"lr": 0.02, "epochs": 2}}, tiny=True)  # 2 epochs: cheaper
    assert stages_run(run(["dvc", "repro"], project)) == {"train", "scst", "evaluate", "retrieval"}


def test_encoder_param_change_reruns_features_onwards(project: Path, first_run: str) -> None:
    write_params(project, {"train": {"lr": 0.02, "epochs": 2}, "encoder": {"dtype": "float32"}}, tiny=True)
    assert stages_run(run(["dvc", "repro"], project)) == {"features", "train", "scst", "evaluate", "retrieval"}
    assert stages_run(run(["dvc", "repro"], project)) == set()
