"""New photos, captioned: the checkpoint's decoder plus the encoder its features were made with.

Shared by the caption command, search's photo index and the web page, so a photo is read,
encoded and described the same way everywhere (and the same way the dataset's images were).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.encoder.images import ImageReadError, load_image
from pipeline.encoder.resnet import build_encoder, encode
from pipeline.model.beam_search import SearchOptions
from pipeline.model.captioner import Caption, describe, search_options
from pipeline.model.checkpoint import load_checkpoint
from pipeline.text import Vocabulary


@dataclasses.dataclass
class PhotoResult:
    """One photo's caption, or why it could not be read."""

    path: Path
    caption: Caption | None
    error: str | None = None


class PhotoCaptioner:
    """Loads the model and its encoder once; captions photo files or decoded pixels."""

    def __init__(self, checkpoint: str | Path, device: torch.device, beam_size: int = SearchOptions.beam_size,
                 length_penalty: float = 0.0, no_repeat_ngram: int = 0, allow_unk: bool = False) -> None:
        self.device = device
        self.checkpoint = Path(checkpoint)
        self.model, payload = load_checkpoint(checkpoint, device)
        self.vocabulary = Vocabulary(tuple(payload["vocabulary"]))
        info = payload["encoder"]
        self.encoder_info = dict(info)  # what the features were made with (pipeline.encoder.resnet.encoder_info)
        self.precision = str(info.get("precision", "fp32"))
        self.encoder = build_encoder(str(info["weights"])).to_device(device, self.precision)
        self.image_size = int(info["image_size"])
        self.options = search_options(self.vocabulary, beam_size, self.model.config.max_caption_length,
                                      length_penalty, no_repeat_ngram, allow_unk)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Region features (B, P, E) of a pixel batch (B, 3, S, S), on the device."""
        return encode(self.encoder, pixels, self.device, precision=self.precision)

    def caption_pixels(self, pixels: torch.Tensor) -> list[Caption]:
        """Captions of a pixel batch (B, 3, S, S) uint8, already resized to the encoder's input size."""
        return describe(self.model, self.features(pixels), self.vocabulary, self.options)

    def caption_files(self, paths: Sequence[Path], batch_size: int = 16) -> list[PhotoResult]:
        """Each file's caption; an unreadable file gets its error and the others are still captioned."""
        results = [PhotoResult(Path(path), None) for path in paths]
        readable: list[tuple[PhotoResult, torch.Tensor]] = []
        for result in results:
            try:
                readable.append((result, load_image(result.path, self.image_size)))
            except ImageReadError as error:
                result.error = str(error)
        for start in range(0, len(readable), batch_size):
            chunk = readable[start:start + batch_size]
            captions = self.caption_pixels(torch.stack([pixels for _, pixels in chunk]))
            for (result, _), caption in zip(chunk, captions):
                result.caption = caption
        return results
