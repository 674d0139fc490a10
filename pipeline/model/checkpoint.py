"""Checkpoints: a state dict plus what is needed to rebuild the model, loadable with weights_only."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pipeline.model.decoder import CaptionDecoder, DecoderConfig


def checkpoint_payload(model: CaptionDecoder, vocabulary: list[str], encoder: dict[str, Any],
                       **extra: Any) -> dict[str, Any]:
    """The dict saved in a checkpoint: model config, weights, vocabulary and encoder description."""
    return {"model_config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
            "vocabulary": list(vocabulary), "encoder": dict(encoder), **extra}


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[CaptionDecoder, dict[str, Any]]:
    """Rebuild the decoder from a checkpoint (eval mode) and return it with the whole payload."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run `dvc repro train` (or `dvc pull`) first")
    payload = torch.load(path, map_location=device, weights_only=True)
    model = CaptionDecoder(DecoderConfig(**payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload
