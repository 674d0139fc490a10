"""Fault injection, a full disk: every stage's outputs are checked writes that fail in one line
naming the file, the free space and the params key, and leave no output that looks complete.
The disk: tests/full_disk.py (a filled 2 MB tmpfs, or injected ENOSPC where mounting is not allowed).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from full_disk import SmallDisk, assert_disk_full, disk_folder, project_params, small_disk  # noqa: F401 - fixtures

from pipeline.errors import OutputError
from pipeline.files import require_free_space, save_torch, write_json

# ----------------------------------------------------------------------------------------------
# the writers


def test_write_json_on_a_full_disk_is_one_line_and_keeps_the_previous_file(small_disk: SmallDisk) -> None:
    target = small_disk.folder / "scores" / "metrics.json"
    write_json(target, {"bleu4": 0.25})
    before = target.read_bytes()
    small_disk.fill(leave=0)
    with pytest.raises(OutputError) as caught:
        write_json(target, {"numbers": list(range(5000))}, "evaluate.metrics")
    assert_disk_full(caught.value, target, "evaluate.metrics", small_disk)
    assert target.read_bytes() == before and small_disk.files() == ["scores/metrics.json"]  # no temporary left


def test_save_torch_on_a_full_disk_is_one_line_and_leaves_nothing(small_disk: SmallDisk) -> None:
    target = small_disk.folder / "train" / "last.pt"
    small_disk.fill(leave=16 * small_disk.page)  # room for part of the file: it fails midway
    with pytest.raises(OutputError) as caught:
        save_torch(target, {"weights": torch.arange(200_000, dtype=torch.float32)}, "train.last_checkpoint")
    assert_disk_full(caught.value, target, "train.last_checkpoint", small_disk)
    assert small_disk.files() == []
    small_disk.make_room()
    save_torch(target, {"weights": torch.arange(10)}, "train.last_checkpoint")
    assert torch.equal(torch.load(target)["weights"], torch.arange(10))


def test_require_free_space_refuses_a_write_larger_than_the_free_space(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    target = tmp_path / "features" / "features.h5"
    with pytest.raises(OutputError, match=rf"^cannot write {re.escape(str(target))}: it needs about [\d.]+ [kMGT]?B "
                                          r"but only [\d.]+ [kMGT]?B is free on /\S*; free space or move "
                                          r"encoder\.cache elsewhere$"):
        require_free_space(target, free + 10**9, "encoder.cache")
    require_free_space(target, 1, "encoder.cache")  # enough: nothing happens
    assert not target.parent.exists()


# ----------------------------------------------------------------------------------------------
# the stages


def test_prepare_on_a_full_disk_writes_neither_the_table_nor_the_report(
        small_disk: SmallDisk, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages import prepare

    table, report = small_disk.folder / "prepared" / "captions.csv", small_disk.folder / "prepared" / "report.json"
    project_params(monkeypatch, tmp_path, tiny_project, dataset={"table": str(table), "report": str(report)})
    size = (tiny_project / "data/prepared/captions.csv").stat().st_size  # the same inputs: the same table
    small_disk.fill(leave=size)  # the table fits, the report does not
    with pytest.raises(OutputError) as caught:
        prepare.main()
    assert_disk_full(caught.value, report, "dataset.report", small_disk)
    assert small_disk.files() == []


def test_vocab_on_a_full_disk_is_one_line_and_leaves_nothing(
        small_disk: SmallDisk, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages import vocab

    target = small_disk.folder / "vocab" / "vocab.json"
    project_params(monkeypatch, tmp_path, tiny_project, vocab={"path": str(target)})
    small_disk.fill(leave=0)
    with pytest.raises(OutputError) as caught:
        vocab.main()
    assert_disk_full(caught.value, target, "vocab.path", small_disk)
    assert small_disk.files() == []


def test_embeddings_on_a_full_disk_writes_neither_the_matrix_nor_the_metrics(
        small_disk: SmallDisk, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.stages import embeddings

    matrix, metrics = small_disk.folder / "embeddings.npy", small_disk.folder / "metrics.json"
    project_params(monkeypatch, tmp_path, tiny_project, embeddings={"matrix": str(matrix), "metrics": str(metrics)})
    small_disk.fill(leave=(tiny_project / "data/embeddings/embeddings.npy").stat().st_size)  # the matrix fits
    with pytest.raises(OutputError) as caught:
        embeddings.main()
    assert_disk_full(caught.value, metrics, "embeddings.metrics", small_disk)
    assert small_disk.files() == []
