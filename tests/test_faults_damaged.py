"""Fault injection, a finished features.h5 damaged on disk (64 bytes flipped inside one row's data):
train (resident and streamed), evaluate, retrieval and search over the dataset each stop with one
line naming the file, the row and its image, and write nothing; a damaged photo index is refused by
search and mended by the next index update."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import h5py
import pandas as pd
import pytest
import torch

from pipeline.api import Captioner
from pipeline.cli import exit_status
from pipeline.config import RetrievalConfig, load_section
from pipeline.encoder.feature_cache import CorruptFeaturesError, FeatureStore
from pipeline.errors import EXIT_CODE
from pipeline.model.checkpoint import load_checkpoint
from pipeline.retrieval.dataset_gallery import dataset_gallery
from pipeline.retrieval.photo_index import open_index, update_index
from pipeline.retrieval.ranking import RankingOptions, Searcher
from pipeline.stages import evaluate, retrieval, train
from pipeline.text import Vocabulary
from tests.conftest import write_params
from tests.test_faults_cache import damage_row

RANKING = RankingOptions.from_config(load_section(RetrievalConfig, Path(__file__).parent / "params.yaml"))
CPU = torch.device("cpu")


def damaged_copy(project: Path, folder: Path, split: str) -> tuple[Path, int, str]:
    """A copy of the project's features.h5 in `folder` with one row of a `split` image damaged: (path, row, image)."""
    table = pd.read_csv(project / "data/prepared/captions.csv")
    image = sorted(table.loc[table["split"] == split, "image"])[1]
    path = folder / "features.h5"
    shutil.copy(project / "data/features/features.h5", path)
    row = FeatureStore(path).index[image]
    damage_row(path, row)
    return path, row, image


def use_params(folder: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, dict[str, object]]) -> None:
    """The tiny params with `changes`, written in `folder` and used through PIPELINE_PARAMS."""
    monkeypatch.setenv("PIPELINE_PARAMS", str(write_params(folder, changes, tiny=True)))


def one_line_naming(capsys: pytest.CaptureFixture, stage: str, path: Path, row: int, image: str) -> None:
    """The stage printed one line on stderr naming the file, the row and its image, and how to mend it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{stage}: {path} was damaged after it was written")
    assert f"row {row} (image '{image}') no longer matches its checksum" in err[0]
    assert "dvc pull --force features" in err[0] and "dvc repro --force --single-item features" in err[0]


@pytest.mark.parametrize("memory", ["resident", "streamed"])
def test_train_stops_on_a_damaged_row_and_saves_no_model(trained_project: Path, tmp_path: Path, memory: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture, one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.setenv("PIPELINE_FEATURE_MEMORY", "1G" if memory == "resident" else "0")
    path, row, image = damaged_copy(trained_project, tmp_path, "train")
    out = tmp_path / "train"
    use_params(tmp_path, monkeypatch, {"encoder": {"cache": str(path)}, "train": {
        "checkpoint": str(out / "best.pt"), "last_checkpoint": str(out / "last.pt"),
        "metrics_dir": str(out / "metrics"), "log_dir": str(out / "tensorboard")}})
    assert exit_status(train.main, "train") == EXIT_CODE
    one_line_naming(capsys, "train", path, row, image)
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


def test_evaluate_stops_on_a_damaged_row(trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    path, row, image = damaged_copy(trained_project, tmp_path, "test")
    use_params(tmp_path, monkeypatch, {"encoder": {"cache": str(path)}, "evaluate": {
        "out_dir": str(tmp_path / "evaluate"), "metrics": str(tmp_path / "evaluate.json")}})
    assert exit_status(evaluate.main, "evaluate") == EXIT_CODE
    one_line_naming(capsys, "evaluate", path, row, image)
    assert not (tmp_path / "evaluate").exists() and not (tmp_path / "evaluate.json").exists()


def test_retrieval_stops_on_a_damaged_row(trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture, one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    path, row, image = damaged_copy(trained_project, tmp_path, "test")
    use_params(tmp_path, monkeypatch, {"encoder": {"cache": str(path)},
                                       "retrieval": {"metrics": str(tmp_path / "retrieval.json")}})
    assert exit_status(retrieval.main, "retrieval") == EXIT_CODE
    one_line_naming(capsys, "retrieval", path, row, image)
    assert not (tmp_path / "retrieval.json").exists()


def test_search_over_the_dataset_stops_on_a_damaged_row(trained_project: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    path = tmp_path / "features.h5"
    shutil.copy(trained_project / "data/features/features.h5", path)
    use_params(tmp_path, monkeypatch, {"encoder": {"cache": str(path)},
                                       "retrieval": {"captions": str(tmp_path / "captions.json")}})
    checkpoint = trained_project / "data/train/best.pt"
    model, _, payload = load_checkpoint(checkpoint, CPU)
    vocabulary = Vocabulary(tuple(payload["vocabulary"]))

    def search() -> None:
        gallery = dataset_gallery(model, vocabulary, checkpoint, payload["encoder"], CPU)
        options = dataclasses.replace(RankingOptions.from_config(load_section(RetrievalConfig)), candidates=0)
        Searcher(model, vocabulary, gallery, CPU, options).search("a red circle")

    search()  # intact: the gallery's captions are made and kept
    _, row, image = damaged_copy(trained_project, tmp_path, "val")
    message = rf"{path} was damaged after it was written .*: row {row} \(image '{image}'\) no longer matches"
    with pytest.raises(CorruptFeaturesError, match=message):
        search()  # the captions are kept: the search itself reads the damaged row
    (tmp_path / "captions.json").unlink()
    with pytest.raises(CorruptFeaturesError, match=message):
        search()  # captioning the gallery reads it first
    assert not (tmp_path / "captions.json").exists()


def test_a_damaged_photo_index_is_refused_then_mended_by_the_next_update(trained_project: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         caplog: pytest.LogCaptureFixture,
                                                                         one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((trained_project / "data/shapes/images").glob("*.png"))[:3]:
        shutil.copy(image, photos / image.name)
    captioner = Captioner(trained_project / "data/train/best.pt", CPU)
    assert update_index(captioner, photos, show_progress=False).encoded == 3
    index = photos / ".caption-index"
    store = FeatureStore(index / "features.h5")
    assert store.checksums is not None and len(store.checksums) == 3  # written by the features stage's writer
    row = store.index["img_00001.png"]
    damage_row(index / "features.h5", row)

    searcher = Searcher(captioner.model, captioner.vocabulary, open_index(index), CPU, RANKING)
    with pytest.raises(CorruptFeaturesError,
                       match=rf"row {row} \(image 'img_00001.png'\) .*run `caption-search index "
                             rf"{photos.resolve()}` again"):
        searcher.search("a red circle")
    report = update_index(captioner, photos, show_progress=False)
    assert (report.photos, report.encoded, report.removed) == (3, 1, 0)
    assert "1 photos' features" in caplog.text and "img_00001.png" in caplog.text
    hits = Searcher(captioner.model, captioner.vocabulary, open_index(index), CPU, RANKING).search("a red circle")
    assert sorted(hit.name for hit in hits) == ["img_00000.png", "img_00001.png", "img_00002.png"]


@pytest.mark.parametrize("damage", ["cut off", "no checksums"])
def test_a_photo_index_that_cannot_be_checked_is_encoded_again(trained_project: Path, tmp_path: Path, damage: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture,
                                                               caplog: pytest.LogCaptureFixture, one_thread: None) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((trained_project / "data/shapes/images").glob("*.png"))[:2]:
        shutil.copy(image, photos / image.name)
    captioner = Captioner(trained_project / "data/train/best.pt", CPU)
    update_index(captioner, photos, show_progress=False)
    features = photos / ".caption-index" / "features.h5"
    if damage == "cut off":
        features.write_bytes(features.read_bytes()[:len(features.read_bytes()) // 2])
    else:
        with h5py.File(features, "r+") as file:  # as an index made before checksums were written
            del file["row_crc32"]
    capsys.readouterr()
    report = update_index(captioner, photos, show_progress=False)
    assert (report.photos, report.encoded) == (2, 2)
    said = capsys.readouterr()
    assert f"{features} cannot be kept: it " in said.out + said.err + caplog.text  # printed or logged
    assert FeatureStore(features).checksums is not None and len(open_index(photos / ".caption-index")) == 2
