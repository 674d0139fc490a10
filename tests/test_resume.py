"""Training resumes only the run it belongs to: the identity covers exactly dvc.yaml's deps and params."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.identity import CONTINUABLE, stage_identity
from pipeline.training.resume import EarlyStopping, Progress, RunFiles, can_continue

ROOT = Path(__file__).resolve().parents[1]


def changed(value: object) -> object:
    """A different value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    raise TypeError(value)


def declared_param_changes(params: dict) -> list[tuple[str, str]]:
    """(section, key) of every train param declared in dvc.yaml, a section expanded to its keys."""
    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"]
    pairs = []
    for entry in declared:
        section, _, key = entry.partition(".")
        keys = [key] if key else list(params[section])
        pairs += [(section, k) for k in keys if f"{section}.{k}" not in CONTINUABLE]
    return pairs


@pytest.fixture
def project(tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the tiny project (data up to embeddings), as the working directory."""
    copy = tmp_path / "project"
    shutil.copytree(tiny_project, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    return copy


def test_every_declared_param_changes_the_identity(project: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    base = stage_identity("train", ROOT / "dvc.yaml", project / "params.yaml")
    pairs = declared_param_changes(params)
    assert ("model", "max_caption_length") in pairs and ("train", "lr") in pairs
    for section, key in pairs:
        variant = yaml.safe_load((project / "params.yaml").read_text())
        variant[section][key] = changed(variant[section][key])
        path = project / "variant.yaml"
        path.write_text(yaml.safe_dump(variant))
        assert stage_identity("train", ROOT / "dvc.yaml", path) != base, f"{section}.{key}"


def test_continuable_params_and_undeclared_ones_keep_the_identity(project: Path) -> None:
    base = stage_identity("train", ROOT / "dvc.yaml", project / "params.yaml")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] += 5
    params["train"]["patience"] += 5
    params["evaluate"]["beam_size"] += 1  # not a train param
    (project / "variant.yaml").write_text(yaml.safe_dump(params))
    assert stage_identity("train", ROOT / "dvc.yaml", project / "variant.yaml") == base


def test_a_changed_dependency_changes_the_identity(project: Path) -> None:
    base = stage_identity("train", ROOT / "dvc.yaml", project / "params.yaml")
    matrix = project / "data/embeddings/embeddings.npy"
    data = bytearray(matrix.read_bytes())
    data[-1] ^= 1  # one bit of one embedding
    matrix.write_bytes(bytes(data))
    assert stage_identity("train", ROOT / "dvc.yaml", project / "params.yaml") != base


def test_a_change_inside_a_linked_image_folder_changes_the_identity(tmp_path: Path) -> None:
    """The stages read the image folder through symbolic links (list_files), so the identity does too."""
    elsewhere = tmp_path / "disk2/photos"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.jpg").write_bytes(b"first")
    images = tmp_path / "images"
    images.mkdir()
    (images / "b.jpg").write_bytes(b"b")
    (images / "more").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {"cmd": "x", "deps": [str(images)]}}}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"dataset": {"images": str(images)}}))
    base = stage_identity("s", tmp_path / "dvc.yaml", tmp_path / "params.yaml")
    (elsewhere / "a.jpg").write_bytes(b"other")
    assert stage_identity("s", tmp_path / "dvc.yaml", tmp_path / "params.yaml") != base


def test_early_stopping_records_the_best_epoch_and_stops_after_patience() -> None:
    stopping, progress = EarlyStopping(2, higher_is_better=True), Progress()
    assert [stopping.record(progress, score) for score in (0.1, 0.3, 0.3, 0.2)] == [True, True, False, False]
    assert (progress.epoch, progress.best_epoch, progress.best_score) == (4, 2, 0.3) and stopping.stopped(progress)
    assert Progress.from_dict(progress.as_dict()) == progress
    falling = EarlyStopping(1, higher_is_better=False)
    assert falling.improves(1.0, None) and falling.improves(1.0, 2.0) and not falling.improves(2.0, 1.0)


def test_stop_epoch_and_can_continue() -> None:
    scores = [0.1, 0.3, 0.2, 0.25, 0.2]  # best at epoch 2, then three epochs without improvement
    assert EarlyStopping(3, higher_is_better=True).stop_epoch(scores) == 5
    assert EarlyStopping(2, higher_is_better=True).stop_epoch(scores) == 4
    assert EarlyStopping(4, higher_is_better=True).stop_epoch(scores) is None
    assert EarlyStopping(1, higher_is_better=False).stop_epoch([3.0, 2.0, 2.5]) == 3
    assert can_continue(scores, 10, EarlyStopping(3, higher_is_better=True)) is None  # it stopped exactly there
    assert can_continue(scores, 10, EarlyStopping(5, higher_is_better=True)) is None  # more patience: go on
    assert "would have stopped after epoch 4" in can_continue(scores, 10, EarlyStopping(2, higher_is_better=True))
    assert "more than train.epochs = 4" in can_continue(scores, 4, EarlyStopping(9, higher_is_better=True))


def run_train(project: Path, capsys: pytest.CaptureFixture, **train: object) -> str:
    from pipeline.stages import train as stage

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(train)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    capsys.readouterr()
    stage.main()
    return capsys.readouterr().out


def test_resume_continues_only_the_same_run(project: Path, capsys: pytest.CaptureFixture) -> None:
    first = run_train(project, capsys, epochs=2)
    assert "starting afresh" in first and "best epoch" in first
    best = torch.load(project / "data/train/best.pt", weights_only=True)
    assert "nothing to train" in run_train(project, capsys, epochs=2)
    assert torch.equal(torch.load(project / "data/train/best.pt", weights_only=True)["state_dict"]["output.weight"],
                       best["state_dict"]["output.weight"])
    longer = run_train(project, capsys, epochs=3)
    assert "resuming from" in longer and "after epoch 2" in longer and "epoch 3/3" in longer
    shorter = run_train(project, capsys, epochs=1)  # the 3-epoch run cannot stand in for a 1-epoch one
    assert "cannot be continued: it ran 3 epochs, more than train.epochs = 1" in shorter
    assert torch.load(project / "data/train/last.pt", weights_only=True)["state"]["epoch"] == 1
    other = run_train(project, capsys, epochs=1, lr=0.002)
    assert "was made from other code, inputs or params" in other


def test_a_damaged_or_foreign_last_or_best_checkpoint_starts_afresh_saying_why(tmp_path: Path) -> None:
    last_path, best_path = tmp_path / "last.pt", tmp_path / "best.pt"
    files = RunFiles(best_path, last_path, "train")

    def resume_state(last: Path, identity: str) -> tuple:
        return files.resume_point(identity, True, 12, EarlyStopping(5, higher_is_better=False))

    state = {"epoch": 3, "scores": [3.0, 2.0, 2.5], "best_score": 2.0, "best_epoch": 2}
    torch.save({"state": state, "identity": "run"}, last_path)
    torch.save({"epoch": 2}, best_path)
    last, reason = resume_state(last_path, "run")
    assert last is not None and last["state"] == state and not reason

    torch.save({"epoch": 3}, best_path)  # killed after best.pt of epoch 4 was written, before last.pt
    assert resume_state(last_path, "run") == (
        None, f"{best_path} is not the best epoch (2) of the run in {last_path}; "
              "it was replaced or written by an interrupted epoch")
    torch.save({"epoch": 2}, best_path)
    for damaged in (last_path, best_path):
        whole = damaged.read_bytes()
        for broken in (whole[:len(whole) // 2], b""):
            damaged.write_bytes(broken)
            last, reason = resume_state(last_path, "run")
            assert last is None and reason.startswith(f"{damaged} cannot be loaded: it is cut off, empty or not a "
                                                      "checkpoint")
        damaged.write_bytes(whole)
    torch.save([1, 2], last_path)
    assert resume_state(last_path, "run")[1] == f"{last_path} was made from other code, inputs or params"
    best_path.unlink()
    assert resume_state(last_path, "run") == (None, f"{best_path} is missing")
