"""Outputs that appear only when complete: atomic, checked writes of files and folders.

Every output is written through `atomic_path`: to a hidden temporary sibling, flushed to disk
(fsync) and only then renamed onto its final name, so a crash, a kill or a full disk never leaves a
file that looks complete. A full disk (OSError ENOSPC / EDQUOT, or the RuntimeError torch's zip
writer raises for it) becomes one `OutputError` line naming the file, the free space and the params
key to move; `require_free_space` refuses a big write up front.

    with atomic_path(path, "dataset.table") as tmp: ...   # write tmp; path appears on success
    write_json(path, payload, key); save_torch(path, payload, key); save_numpy(path, array, key)

`list_files(folder)` lists what a folder input holds (the image folder: prepare, features, the
stage identity; a photo folder: search), symbolic links followed and their loops cut.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import OutputError

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# How a full disk shows in messages that carry no errno: h5py's driver text, torch's zip writer
# (PytorchStreamWriter, inline_container.cc) when the file cannot grow.
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "errno = 28", "errno = 122",
                   "file write failed", "unexpected pos")


def format_bytes(count: float) -> str:
    """A byte count for people: '512 B', '1.5 MB', '6.4 GB' (powers of 1000, as df -H shows)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def existing_ancestor(path: str | Path) -> Path:
    """`path` itself, or its nearest folder that exists (the one whose file system it will land on)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (or where it would be created)."""
    path = existing_ancestor(path).resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | Path) -> int:
    """Bytes free to an unprivileged writer on the file system that holds (or would hold) `path`."""
    return shutil.disk_usage(existing_ancestor(path)).free


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or an error it was raised from, says the disk (or quota) is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(current, (OSError, RuntimeError)) and any(text in str(current) for text in DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(path: str | Path, key: str | None) -> OutputError:
    """The one-line error for a write to `path` that ran out of disk space."""
    where = mount_point(path)
    return OutputError(f"cannot write {path}: the disk is full ({format_bytes(free_bytes(where))} free on {where}); "
                       f"free space or move {key or 'the output'} elsewhere")


def require_free_space(path: str | Path, bytes_needed: int, key: str | None) -> None:
    """Raise OutputError before a big write to `path` when its file system has less than `bytes_needed` free."""
    free = free_bytes(path)
    if free < bytes_needed:
        raise OutputError(f"cannot write {path}: it needs about {format_bytes(bytes_needed)} but only "
                          f"{format_bytes(free)} is free on {mount_point(path)}; "
                          f"free space or move {key or 'the output'} elsewhere")


@contextlib.contextmanager
def full_disk_reported(path: str | Path, key: str | None) -> Iterator[None]:
    """Turn a full-disk error raised in the block into the one-line OutputError naming `path` and `key`.

    For files written in place rather than through atomic_path, such as a resumable partial file.
    """
    try:
        yield
    except Exception as error:
        if is_disk_full(error) and not isinstance(error, OutputError):
            raise disk_full_error(path, key) from error
        raise


def with_margin(bytes_needed: int) -> int:
    """`bytes_needed` plus room for file-system and format overhead: 5 % and 1 MB more."""
    return int(bytes_needed * 1.05) + 2**20


def fsync_path(path: Path) -> None:
    """Flush a file, or every file in a folder and the folder itself, to the disk."""
    if path.is_dir():
        for root, _, files in os.walk(path):
            for name in files:
                _fsync(Path(root) / name)
            _fsync(Path(root))
    else:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF) or not path.is_dir():
            raise  # a folder on a file system that cannot sync folders is fine; a file is not
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, key: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; fsync it and rename it onto `path` only on success.

    Works for files and directories. On an exception the temporary is removed and `path` is left as
    it was, so a crash never leaves an output that looks complete; a full disk raises OutputError
    naming `path`, the free space and the params `key` that sets the path.
    """
    with atomic_paths((path, key)) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*outputs: tuple[str | Path, str | None]) -> Iterator[list[Path]]:
    """Several outputs, each (path, params key), that appear together or not at all: yields their temporaries.

    Every temporary is written and fsynced before the first rename, so a failure while writing any of
    them (a full disk included) leaves none of the outputs changed.
    """
    paths = [Path(path) for path, _ in outputs]
    tmps = [path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in paths]
    try:
        for path, tmp in zip(paths, tmps):
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
        yield tmps
        for tmp in tmps:
            fsync_path(tmp)
        for path, tmp in zip(paths, tmps):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(tmp, path)
        for folder in dict.fromkeys(path.parent for path in paths):
            with contextlib.suppress(OSError):
                _fsync(folder)  # the renames themselves
    except Exception as error:
        if is_disk_full(error) and not isinstance(error, OutputError):
            failed = _failed_output(error, tmps)
            raise disk_full_error(paths[failed], outputs[failed][1]) from error
        raise
    finally:
        for tmp in tmps:
            _remove(tmp)


def _failed_output(error: BaseException, tmps: list[Path]) -> int:
    """Which output a write error belongs to: the temporary it names, else the last one started."""
    named = getattr(error, "filename", None) or getattr(error.__context__, "filename", None)
    for index, tmp in enumerate(tmps):
        if (named is not None and Path(named).name == tmp.name) or tmp.name in str(error):
            return index
    started = [index for index, tmp in enumerate(tmps) if tmp.exists() or tmp.is_symlink()]
    return started[-1] if started else 0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def json_text(payload: Any) -> str:
    """The JSON text every output uses: indented, UTF-8 kept as is, a final line end."""
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def write_text(path: str | Path, text: str, key: str | None = None) -> None:
    """Write UTF-8 text atomically."""
    with atomic_path(path, key) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, payload: Any, key: str | None = None) -> None:
    """Write JSON atomically."""
    write_text(path, json_text(payload), key)


def save_numpy(path: str | Path, array: np.ndarray, key: str | None = None) -> None:
    """np.save, atomically (to `path` exactly: no '.npy' is added)."""
    with atomic_path(path, key) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def save_torch(path: str | Path, payload: Any, key: str | None = None) -> None:
    """torch.save, atomically; a full disk raises OutputError naming `path` and the free space."""
    import torch

    # through a Python file, so that a failed write surfaces as the OSError (ENOSPC) that caused it
    with atomic_path(path, key) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)


def lies_in(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` lies inside `folder` (links resolved): how the stages tell the built-in demo's data,
    which lies in `shapes.out_dir`, from a real dataset."""
    return Path(folder).resolve() in Path(path).resolve().parents


def list_files(folder: Path) -> set[str]:
    """Every file under `folder`, as a '/'-separated path relative to it.

    Symbolic links are followed, except a link to a folder the walk is already inside (a loop),
    so a link back to a parent neither hangs the walk nor lists the same files again and again.
    """
    names: set[str] = set()
    top = os.path.realpath(folder)
    stack: list[tuple[str, str, str, frozenset[str]]] = [(str(folder), "", top, frozenset({top}))]
    while stack:
        directory, prefix, real_directory, inside = stack.pop()  # `inside`: real paths of it and its parents
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if entry.is_dir():  # follows links
                        real = (os.path.realpath(entry.path) if entry.is_symlink()
                                else os.path.join(real_directory, entry.name))
                        if real not in inside:
                            stack.append((entry.path, f"{prefix}{entry.name}/", real, inside | {real}))
                    elif entry.is_file():
                        names.add(prefix + entry.name)
                except OSError:  # a link that cannot be resolved (broken, or a loop of links)
                    continue
    return names
