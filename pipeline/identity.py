"""A stage's identity: what DVC considers its inputs, hashed, so that work kept between runs (train's
last.pt, the features stage's partial file) is reused only by the run it belongs to.

`stage_identity` reads the stage's entry in dvc.yaml, resolves `${...}` from the params file, and
hashes each declared dep's bytes and each declared param's value (the `epochs` and `patience` of train
and scst left out: a finished run may be extended in those, see pipeline/training/resume.py).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import params_path, read_params
from pipeline.files import list_files

CONTINUABLE = {"train.epochs", "train.patience", "scst.epochs", "scst.patience"}  # a finished run may go on
CODE_ROOT = Path(__file__).resolve().parents[1]  # the project holding pipeline/ and dvc.yaml
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
    """Add a file's bytes, or a directory's relative names and file bytes, to the digest (symbolic links
    followed, as `list_files` lists the image folder for prepare and features)."""
    names = sorted(list_files(path)) if path.is_dir() else [path.name]  # links followed, as the stages read
    for name in names:
        digest.update(name.encode())
        with (path / name if path.is_dir() else path).open("rb") as handle:
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
