"""Resuming training only where it is the same run: the stage's identity, and the replay check.

DVC reruns `train` when any dep or param that dvc.yaml declares for it changes. `stage_identity`
hashes exactly those (read from dvc.yaml, `${...}` resolved from the params file: each dep's
bytes, each declared param's value), so `last.pt` is continued only when DVC would consider the
stage's inputs unchanged, with two exceptions that may change between an interruption and its
resumption: `train.epochs` and `train.patience`. For those, `can_continue` replays the early
stopping decisions recorded in `last.pt` under the new values: a run may be continued (more
epochs, more patience) but never stand in for a shorter one.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import params_path, read_params

CONTINUABLE = {"train.epochs", "train.patience"}  # a finished run may be extended in these
CODE_ROOT = Path(__file__).resolve().parents[2]  # the project holding pipeline/ and dvc.yaml
_REFERENCE = re.compile(r"\$\{([^}]+)\}")


def _lookup(params: dict[str, Any], dotted: str) -> Any:
    value: Any = params
    for part in dotted.split("."):
        value = value[part]
    return value


def _resolve(text: str, params: dict[str, Any]) -> str:
    """`${section.key}` references in a dvc.yaml entry, replaced by their values."""
    return _REFERENCE.sub(lambda match: str(_lookup(params, match.group(1))), text)


def _hash_path(digest: "hashlib._Hash", path: Path) -> None:
    """Add a file's bytes, or a directory's relative names and file bytes, to the digest."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)


def _locate(dep: str) -> Path:
    """A dep path: relative to the working directory (data), else to the project (code)."""
    here = Path(dep)
    return here if here.exists() or here.is_absolute() else CODE_ROOT / dep


def stage_identity(stage: str, dvc_file: Path | None = None, params_file: Path | None = None) -> str:
    """SHA-256 over the deps' contents and the params' values that dvc.yaml declares for `stage`."""
    params_file = params_file or params_path()
    dvc_file = dvc_file or (Path("dvc.yaml") if Path("dvc.yaml").is_file() else CODE_ROOT / "dvc.yaml")
    params = read_params(params_file)
    declared = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["stages"][stage]
    digest = hashlib.sha256()
    for dep in declared.get("deps", []):
        path = _locate(_resolve(str(dep), params))
        if not path.exists():
            raise FileNotFoundError(f"{path}: a dependency of stage '{stage}' in {dvc_file} is missing; "
                                    f"run `dvc repro {stage}` so that DVC builds it first")
        digest.update(f"dep {dep}\n".encode())
        _hash_path(digest, path)
    for key in declared.get("params", []):
        if key in CONTINUABLE:
            continue
        value = _lookup(params, key)
        if isinstance(value, dict):  # a whole section: all but the continuable keys
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in CONTINUABLE}
        digest.update(f"param {key}={json.dumps(value, sort_keys=True, default=str)}\n".encode())
    return digest.hexdigest()


def stop_epoch(scores: list[float], patience: int, higher_is_better: bool) -> int | None:
    """The epoch (1-based) after which early stopping with `patience` ends a run with these scores, if any."""
    best, bad = None, 0
    for epoch, score in enumerate(scores, start=1):
        if best is None or (score > best if higher_is_better else score < best):
            best, bad = score, 0
        else:
            bad += 1
        if bad >= patience:
            return epoch
    return None


def can_continue(scores: list[float], epochs: int, patience: int, higher_is_better: bool) -> str | None:
    """Why a run that recorded these per-epoch scores cannot be continued under (epochs, patience), or None."""
    done = len(scores)
    if done > epochs:
        return f"it ran {done} epochs, more than train.epochs = {epochs}"
    stopped = stop_epoch(scores, patience, higher_is_better)
    if stopped is not None and stopped < done:
        return f"with train.patience = {patience} it would have stopped after epoch {stopped}, not {done}"
    return None
