"""A nearly full disk for fault-injection tests, and tiny-project params that write onto it.

    with mounted(folder) as is_mounted: disk = SmallDisk(folder, is_mounted, monkeypatch); disk.fill(leave=0)

The disk is a 2 MB tmpfs mounted over a temporary folder and filled up. Where mounting is not
allowed (not root), writes under that folder fail with ENOSPC past a byte budget instead (Python's
open(), h5py's dataset writes and pipeline.files.free_bytes are patched); FAULT_TESTS_NO_MOUNT=1
forces that mode.
"""
from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import h5py
import numpy as np
import pytest
import yaml

import pipeline.files
from pipeline.config import PARAMS_ENV
from pipeline.datasets.table import read_captions, write_captions
from tests.conftest import params_with

MOUNT_BYTES = 2 * 2**20
PAGE = 4096  # tmpfs allocates whole pages
FILLER = ".filler"
NO_MOUNT_ENV = "FAULT_TESTS_NO_MOUNT"


@contextlib.contextmanager
def mounted(folder: Path) -> Iterator[bool]:
    """Mount a 2 MB tmpfs on `folder` for the block when allowed; yields whether it is mounted."""
    is_mounted = False
    if os.environ.get(NO_MOUNT_ENV) != "1":
        try:
            is_mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_BYTES}", "tmpfs", str(folder)],
                                        capture_output=True, check=False).returncode == 0
        except OSError:  # no mount command
            is_mounted = False
    try:
        yield is_mounted
    finally:
        if is_mounted:
            subprocess.run(["umount", "-l", str(folder)], check=True)


class _Budgeted:
    """A writable file whose writes fail with ENOSPC once the disk's byte budget is spent."""

    def __init__(self, handle: Any, disk: SmallDisk, name: str) -> None:
        self._handle, self._disk, self._name = handle, disk, name

    def write(self, data: Any) -> int:
        size = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        self._disk.spend(size, self._name, lambda part: self._handle.write(data[:part]))
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._handle.close()


class SmallDisk:
    """The folder of a nearly full disk: `fill(leave)` leaves about `leave` bytes free."""

    def __init__(self, folder: Path, mounted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder, self.mounted = folder, mounted
        self.budget: int | None = None
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        if not mounted:
            self._inject(monkeypatch)

    @property
    def page(self) -> int:
        """Allocation unit: a tmpfs page, or one byte when writes are budgeted."""
        return PAGE if self.mounted else 1

    def fill(self, leave: int) -> None:
        """Use up the disk but `leave` bytes (rounded up to whole pages)."""
        if not self.mounted:
            self.budget = leave
            return
        size = shutil.disk_usage(self.folder).free - -(-leave // PAGE) * PAGE
        with open(self.folder / FILLER, "wb") as filler:
            filler.write(b"\0" * max(size, 0))

    def make_room(self) -> None:
        """Free the disk again."""
        self.budget = None
        (self.folder / FILLER).unlink(missing_ok=True)

    def files(self) -> list[str]:
        """Every file on the disk but the filler, relative to it."""
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*")
                      if not p.is_dir() and p.name != FILLER)

    def spend(self, size: int, name: str, write_part: Any) -> None:
        """Take `size` bytes from the budget, or write what fits and raise ENOSPC."""
        if self.budget is None:
            return
        if size > self.budget:
            write_part(self.budget)
            self.budget = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        self.budget -= size

    def _inside(self, path: Any) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(os.fspath(path)).absolute().is_relative_to(self.folder)

    def _inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open, real_setitem, real_free = builtins.open, h5py.Dataset.__setitem__, pipeline.files.free_bytes

        def budgeted_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_open(file, mode, *args, **kwargs)
            writing = any(flag in mode for flag in "wax+")
            return _Budgeted(handle, self, os.fspath(file)) if writing and self._inside(file) else handle

        def budgeted_setitem(dataset: h5py.Dataset, key: Any, value: Any) -> None:
            if self._inside(dataset.file.filename):
                def fail(_: int) -> None:
                    pass
                try:
                    self.spend(np.asarray(value).nbytes, dataset.file.filename, fail)
                except OSError as error:
                    raise OSError(errno.ENOSPC, f"Can't write data (file write failed: errno = 28, error message = "
                                                f"'No space left on device', filename = '{error.filename}')") from None
            real_setitem(dataset, key, value)

        def budgeted_free(path: Any) -> int:
            return self.budget if self.budget is not None and self._inside(path) else real_free(path)

        monkeypatch.setattr(pipeline.files, "free_bytes", budgeted_free)
        monkeypatch.setattr(builtins, "open", budgeted_open)
        monkeypatch.setattr(io, "open", budgeted_open)
        monkeypatch.setattr(h5py.Dataset, "__setitem__", budgeted_setitem)


def assert_disk_full(error: BaseException, path: Path, key: str, disk: SmallDisk) -> None:
    """The one-line message: `cannot write <path>: the disk is full (<free> free on <mount>); ... <key> ...`."""
    message = str(error)
    mount = re.escape(str(disk.folder)) if disk.mounted else r"/\S*"
    assert re.fullmatch(rf"cannot write {re.escape(str(path))}: the disk is full \(\d+(\.\d)? [kMGT]?B free on {mount}\); "
                        rf"free space or move {re.escape(key)} elsewhere", message), message


def project_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, project: Path, **changes: dict) -> Path:
    """Tiny params whose paths point into `project` (absolute), with `changes`; set as PIPELINE_PARAMS."""
    params = params_with(tiny=True)
    for values in params.values():
        for key, value in values.items():
            if isinstance(value, str) and value.startswith(("data/", "metrics/")):
                values[key] = str(project / value)
    params["dataset"]["split_dir"] = str(project / params["dataset"]["split_dir"])
    for section, values in changes.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.setenv(PARAMS_ENV, str(path))
    return path


def small_table(project: Path, folder: Path) -> Path:
    """The project's captions of 6 images (4 train, 1 val, 1 test), written to folder/captions.csv: quick stages."""
    table = read_captions(project / "data/prepared/captions.csv")
    names = [name for split, count in (("train", 4), ("val", 1), ("test", 1))
             for name in sorted(set(table[table["split"] == split]["image"]))[:count]]
    write_captions(folder / "captions.csv", table[table["image"].isin(names)].itertuples(index=False))
    return folder / "captions.csv"

@pytest.fixture(scope="module")
def disk_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, bool]]:
    """A folder with a 2 MB tmpfs mounted on it, when mounting is allowed: (folder, mounted)."""
    folder = tmp_path_factory.mktemp("small_disk")
    with mounted(folder) as is_mounted:
        yield folder, is_mounted


@pytest.fixture
def small_disk(disk_folder: tuple[Path, bool], monkeypatch: pytest.MonkeyPatch) -> SmallDisk:
    """An empty small disk (tests/full_disk.py)."""
    return SmallDisk(*disk_folder, monkeypatch)
