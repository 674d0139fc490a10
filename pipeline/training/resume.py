"""Resuming training: the identity of a run, so that a stale last.pt is never continued."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from pipeline.config import TrainConfig
from pipeline.encoder.feature_cache import FeatureStore

# params that may change between an interrupted run and its resumption
RESUMABLE_KEYS = {"epochs", "patience", "resume", "device", "num_samples", "out_dir", "log_dir"}


def pipeline_sources() -> list[Path]:
    """The source files of every pipeline module this process has imported, this one included."""
    imported = {Path(module.__file__).resolve() for name, module in list(sys.modules.items())
                if name.split(".")[0] == "pipeline" and getattr(module, "__file__", None)}
    return sorted(imported | {Path(__file__).resolve()})  # run as `-m`, this module is __main__


def fingerprint(paths: list[Path], store: FeatureStore, *configs: Any) -> str:
    """Identity of the training code, inputs and params, so a stale last.pt is never resumed.

    A rerun resumes only what an interruption stopped: after a change of the code, the data or a
    param other than RESUMABLE_KEYS, training starts afresh, as DVC expects of a changed stage.
    """
    digest = hashlib.sha256()
    for path in [*pipeline_sources(), *paths]:
        digest.update(path.read_bytes())
    digest.update("\n".join(store.names).encode())
    digest.update(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    for config in configs:
        values = {k: v for k, v in config.model_dump().items()
                  if not (isinstance(config, TrainConfig) and k in RESUMABLE_KEYS)}
        digest.update(json.dumps(values, sort_keys=True).encode())
    return digest.hexdigest()
