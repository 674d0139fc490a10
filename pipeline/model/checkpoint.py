"""Checkpoints: a state dict plus what is needed to rebuild the model, loadable with weights_only."""
from __future__ import annotations

import dataclasses
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline.errors import InputError
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig
from pipeline.text import SPECIAL_TOKENS, Vocabulary

# what torch.load raises for a file that is cut off, empty or not a checkpoint
LOAD_ERRORS = (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError, ValueError,
               TypeError, AttributeError, IndexError)
REQUIRED = ("model_config", "state_dict", "vocabulary", "encoder")
ENCODER_KEYS = ("architecture", "weights", "weights_sha256", "image_size", "grid")  # what decides the features


class LoadedCheckpoint(NamedTuple):
    """A loaded checkpoint: the decoder (eval mode, on the device), its vocabulary and the whole payload."""

    model: CaptionDecoder
    vocabulary: Vocabulary
    payload: dict[str, Any]  # model_config, state_dict, vocabulary, encoder (the features' provenance), ...


def checkpoint_payload(model: CaptionDecoder, vocabulary: list[str], encoder: dict[str, Any],
                       **extra: Any) -> dict[str, Any]:
    """The dict saved in a checkpoint: model config, weights, vocabulary and encoder description."""
    return {"model_config": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
            "vocabulary": list(vocabulary), "encoder": dict(encoder), **extra}


def read_payload(path: str | Path, device: torch.device | str = "cpu") -> Any:
    """torch.load(path) with weights_only; a file that cannot be loaded raises InputError naming it."""
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError, torch.OutOfMemoryError):
        raise
    except LOAD_ERRORS as error:
        detail = " ".join(str(error).split()).split(". ")[0][:200]
        raise InputError(f"{path} cannot be loaded: it is cut off, empty or not a checkpoint "
                         f"({type(error).__name__}{': ' + detail if detail else ''})") from error


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> LoadedCheckpoint:
    """Rebuild the decoder from a checkpoint (eval mode) and return it with its vocabulary and the whole payload.

        model, vocabulary, payload = load_checkpoint("data/scst/best.pt", device)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run `dvc repro` (or `dvc pull`) first")
    retrain = "make it again (`dvc repro train`, or `dvc pull` it) or give another checkpoint"
    try:
        payload = read_payload(path, device)
    except InputError as error:
        raise InputError(f"{error}; {retrain}") from error
    missing = [key for key in REQUIRED if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise InputError(f"{path} is not a captioning checkpoint (no {', '.join(missing)}); {retrain}")
    encoder = payload["encoder"]
    if not isinstance(encoder, dict) or not {"weights", "image_size"} <= set(encoder):
        raise InputError(f"{path} does not say which encoder its features came from (its 'encoder' lacks weights "
                         f"or image_size); {retrain}")
    try:
        # a checkpoint from before model.architecture existed holds the Show, Attend and Tell decoder
        model = build_decoder(DecoderConfig(**{"architecture": "sat", **payload["model_config"]}))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: its weights do not fit its model_config, the checkpoint is damaged or of "
                         f"another version ({' '.join(str(error).split())[:200]}); {retrain}") from error
    words = payload["vocabulary"]
    try:
        vocabulary = Vocabulary(tuple(words))  # its own check: the special tokens first, in their order
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: its vocabulary does not start with {', '.join(SPECIAL_TOKENS)}, so its word ids "
                         f"mean something else; {retrain}") from error
    if len(words) != model.config.vocab_size:
        raise InputError(f"{path} holds {len(words)} vocabulary words for a model of "
                         f"{model.config.vocab_size}; {retrain}")
    return LoadedCheckpoint(model.to(device).eval(), vocabulary, payload)


def check_features(model: CaptionDecoder, encoder: Mapping[str, Any], cache: str | Path,
                   cache_attrs: Mapping[str, Any], feature_dim: int) -> None:
    """Refuse a feature cache the model was not trained on: other feature sizes, or another encoder.

    `encoder` is the checkpoint's record of the encoder its training features came from.
    """
    if feature_dim != model.config.encoder_dim:
        raise InputError(f"{cache} holds {feature_dim}-dim features but the checkpoint's model reads "
                         f"{model.config.encoder_dim}; rerun `dvc repro` so that features and train agree")
    differ = [key for key in ENCODER_KEYS if key in encoder and str(encoder[key]) != str(cache_attrs.get(key))]
    if differ:
        shown = ", ".join(f"{key} {cache_attrs.get(key)!r}, not {encoder[key]!r}" for key in differ)
        raise InputError(f"{cache} was made by another encoder than the checkpoint was trained on ({shown}); "
                         "rerun `dvc repro` so that features and train agree")
