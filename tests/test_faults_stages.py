"""Fault injection, a full disk, in the two long stages: features (HDF5, whose failed writes h5py
only reports when it frees an object) and train (checkpoints). The disk: tests/full_disk.py (a
filled 2 MB tmpfs, or injected ENOSPC where mounting is not allowed)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from full_disk import SmallDisk, assert_disk_full, disk_folder, project_params, small_disk, small_table  # noqa: F401 - fixtures

import pipeline.files
from pipeline.cli import run
from pipeline.config import PARAMS_ENV
from pipeline.datasets.table import read_captions
from pipeline.errors import OutputError
from tests.conftest import ROOT


def run_features(disk: SmallDisk, params: Path, capsys: pytest.CaptureFixture[str],
                 claim_room: bool = False) -> tuple[int, str]:
    """Run the features stage as the command line does: (exit status, stderr).

    On a mounted disk it runs in a child process, so that a crash in HDF5 (as when lost writes go
    unnoticed) fails this test, not the whole session. `claim_room`: the free-space check is told
    there is room, so the disk fills up midway through the writes.
    """
    room = "import pipeline.files; pipeline.files.free_bytes = lambda path: 10**12\n" if claim_room else ""
    if disk.mounted:
        code = room + "from pipeline.cli import run\nfrom pipeline.stages import features\nrun(features.main, 'features')"
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, PARAMS_ENV: str(params)},
                                capture_output=True, text=True, timeout=600, check=False)
        return result.returncode, result.stderr
    from pipeline.stages import features

    with pytest.MonkeyPatch.context() as patch:
        if claim_room:
            patch.setattr(pipeline.files, "free_bytes", lambda path: 10**12)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            run(features.main, "features")
    return int(exited.value.code), capsys.readouterr().err


@pytest.mark.slow  # a small filesystem filled up, the stage run twice
@pytest.mark.parametrize("found", ["before", "while_writing"])
def test_features_on_a_full_disk_fail_in_one_line_then_complete_once_there_is_room(
        found: str, small_disk: SmallDisk, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Needs features.py to call require_free_space / full_disk_reported / verify_cache (see docs/failures.md).

    before: the free-space check refuses to start; while_writing: the check is told there is room,
    so the disk fills up midway and the failed HDF5 write must surface; the rerun, with room,
    continues or restarts the partial file and gives the cache a clean run gives.
    """
    from pipeline.encoder.feature_cache import FeatureStore, verify_cache

    table = small_table(tiny_project, tmp_path)
    names = sorted(set(read_captions(table)["image"]))
    cache = small_disk.folder / "features.h5"
    params = project_params(monkeypatch, tmp_path, tiny_project, encoder={"cache": str(cache)},
                            dataset={"table": str(table)})
    small_disk.fill(leave=8 * small_disk.page)  # 32 kB: the 6 images need 98 kB
    status, stderr = run_features(small_disk, params, capsys, claim_room=found == "while_writing")
    assert status == 2 and "Traceback" not in stderr, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"features: cannot write {cache}: ") and " free on " in message
    assert message.endswith("; free space or move encoder.cache elsewhere")
    assert not cache.exists()
    if found == "before":
        assert small_disk.files() == []  # refused before anything was written
        return

    small_disk.make_room()
    status, stderr = run_features(small_disk, params, capsys)
    assert status == 0, stderr
    verify_cache(cache, len(names), names)
    expected = FeatureStore(tiny_project / "data/features/features.h5")  # the same encoder, from a clean run
    got = FeatureStore(cache)
    assert got.names == names and torch.equal(got.load(), expected.load(expected.rows_of(names)))
    assert small_disk.files() == ["features.h5"]  # the partial file is gone


def test_train_on_a_full_disk_fails_in_one_line_and_leaves_no_checkpoint(
        small_disk: SmallDisk, tiny_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Needs train.py to save checkpoints with save_torch(path, payload, key)."""
    from pipeline.stages import train

    best, last = small_disk.folder / "best.pt", small_disk.folder / "last.pt"
    project_params(monkeypatch, tmp_path, tiny_project,
                   dataset={"table": str(small_table(tiny_project, tmp_path))},
                   train={"checkpoint": str(best), "last_checkpoint": str(last), "log_dir": str(tmp_path / "tb"),
                          "metrics_dir": str(tmp_path / "m"), "epochs": 1})
    small_disk.fill(leave=0)
    with pytest.raises(OutputError) as caught:
        train.main()
    message = str(caught.value)
    written = best if message.startswith(f"cannot write {best}:") else last
    assert_disk_full(caught.value, written, "train.checkpoint" if written == best else "train.last_checkpoint",
                     small_disk)
    assert small_disk.files() == []
