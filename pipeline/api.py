"""The Python API: a trained captioner loaded once, to describe photos and to find them by text.

    from pipeline.api import Captioner

    captioner = Captioner("best.pt")                  # loaded once; device "auto"
    for result in captioner.caption(["photo.jpg", "holiday/beach.png"]):
        if result.error:                              # a file that cannot be read: the others go on
            print(result.source, result.error)
        else:
            print(result.source, result.text)         # also result.words, result.attention (L, G, G)

    library = captioner.index("holiday")              # encodes new photos once: holiday/.caption-index
    for hit in library.search("a dog running on the beach", top=5).hits:
        print(f"{hit.score:.2f} {hit.path} {hit.caption}")

`Captioner` loads the checkpoint's decoder and the encoder its features were made with (weights, input
size and precision are recorded in the checkpoint), so a photo is read, encoded and described exactly as
the dataset's images were; features made under bf16 are encoded in fp32 on a CPU without native bf16,
where bf16 is emulated (the same features to about 1%, 8x faster; docs/speed.md). It captions paths, PIL
images and uint8 tensors ((3, H, W) or (B, 3, H, W), any size: the whole image is resized to the
encoder's input), in batches. The decoding options default to params.yaml's `evaluate` section as the
package ships it; the ranking options to its `retrieval` section. One call at a time: the web page
(pipeline/commands/app.py) queues its requests in front of one Captioner. The caption, search and
web-page commands are thin layers over these classes.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from pipeline.defaults import Decoding, package_defaults
from pipeline.encoder.images import ImageReadError, load_image, pil_pixels, resize_pixels
from pipeline.encoder.resnet import build_encoder, encode, untrained_notice
from pipeline.errors import InputError
from pipeline.model.captioner import Caption, describe, search_options
from pipeline.model.checkpoint import load_checkpoint
from pipeline.retrieval.likelihood import unknown_words
from pipeline.retrieval.photo_index import IndexReport, default_index_dir, open_index, update_index
from pipeline.retrieval.ranking import Gallery, Hit, RankingOptions, Searcher
from pipeline.runtime import resolve_device, runs_native
from pipeline.text import normalise, tokenize

ImageInput = str | os.PathLike | Image.Image | torch.Tensor
BATCH_SIZE = 16  # images encoded and decoded at once


@dataclasses.dataclass
class CaptionResult:
    """One image's caption, or why it could not be read.

    `attention` (L, G, G) holds, for each of the L words, the weights over the encoder's G x G grid
    of regions (row-major from the top-left; each grid sums to 1)."""

    source: str  # the file's path, or "image N" for the N-th image given in memory
    text: str | None  # None when the image could not be read
    words: list[str] = dataclasses.field(default_factory=list)
    attention: torch.Tensor | None = None  # (L, G, G)
    score: float | None = None  # the beam's log-probability
    error: str | None = None  # why the image could not be read

    @property
    def path(self) -> Path:
        return Path(self.source)


@dataclasses.dataclass
class SearchResults:
    """A query's best photos, and the query's words the model has never seen (scored as <unk>)."""

    query: str
    hits: list[Hit]
    unknown: list[str]
    known_words: int  # the query's words the model knows

    @property
    def notice(self) -> str | None:
        """What a person must read beside the results: None unless no word of the query is known."""
        if self.known_words:
            return None
        return (f"the model knows none of the words {', '.join(self.unknown)}: every photo is ranked by how "
                "well it fits an unknown word, so this order and these scores say nothing about the query")


class Captioner:
    """A checkpoint and its encoder, loaded once: photos in, captions out; folders indexed and searched."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device = "auto", *,
                 beam_size: int | None = None, length_penalty: float | None = None,
                 no_repeat_ngram: int | None = None, allow_unk: bool | None = None) -> None:
        """Load `checkpoint` on `device` ("auto", "cpu", "cuda", "cuda:N"); options left None come from
        params.yaml's `evaluate` section (the package's copy)."""
        given = {"beam_size": beam_size, "length_penalty": length_penalty, "no_repeat_ngram": no_repeat_ngram,
                 "allow_unk": allow_unk}
        decoding = dataclasses.replace(package_defaults().decoding,
                                       **{key: value for key, value in given.items() if value is not None})
        self.device = device if isinstance(device, torch.device) else resolve_device(device, "device")
        self.checkpoint = Path(checkpoint)
        self.model, self.vocabulary, payload = load_checkpoint(self.checkpoint, self.device)
        info = payload["encoder"]
        self.encoder_info: dict[str, Any] = dict(info)  # what the features were made with (resnet.encoder_info)
        made = str(info.get("precision", "fp32"))
        self.precision = made if runs_native(made, self.device) else "fp32"  # what photos are encoded in
        self.encoder = build_encoder(str(info["weights"])).to_device(self.device, self.precision)
        self.image_size = int(info["image_size"])
        self.decoding = decoding
        self.options = search_options(self.vocabulary, decoding.beam_size, self.model.config.max_caption_length,
                                      decoding.length_penalty, decoding.no_repeat_ngram, decoding.allow_unk)

    @property
    def notice(self) -> str | None:
        """What to tell a person about this model's captions (an untrained encoder on real photos), or None.
        The demo's model has one too: the photos a person gives it are not the demo's shapes."""
        return untrained_notice(self.encoder_info, own_photos=True)

    def pixels(self, image: ImageInput) -> torch.Tensor:
        """One image as the encoder reads it: (3, S, S) uint8. Raises ImageReadError for an unreadable file."""
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, self.image_size)
        if isinstance(image, Image.Image):
            return resize_pixels(pil_pixels(image), self.image_size)
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
            return resize_pixels(image, self.image_size)
        raise InputError(f"cannot caption a {type(image).__name__}{tuple(getattr(image, 'shape', ()))}: give a "
                         "file path, a PIL image or a uint8 tensor (3, H, W) or (B, 3, H, W)")

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Region features (B, P, E) of a pixel batch (B, 3, S, S) uint8, on the device."""
        return encode(self.encoder, pixels, self.device, precision=self.precision)

    def caption_pixels(self, pixels: torch.Tensor) -> list[Caption]:
        """Captions of a pixel batch (B, 3, S, S) uint8, already at the encoder's input size."""
        return describe(self.model, self.features(pixels), self.vocabulary, self.options)

    def caption(self, images: ImageInput | Iterable[ImageInput], batch_size: int = BATCH_SIZE) -> list[CaptionResult]:
        """Each image's caption, in order; an unreadable file gets its error and the others are still captioned."""
        items = _as_list(images)
        results: list[CaptionResult] = []
        readable: list[tuple[CaptionResult, torch.Tensor]] = []
        for number, image in enumerate(items):
            source = str(image) if isinstance(image, (str, os.PathLike)) else f"image {number}"
            result = CaptionResult(source, None)
            results.append(result)
            try:
                readable.append((result, self.pixels(image)))
            except ImageReadError as error:
                result.error = str(error)
        for start in range(0, len(readable), batch_size):
            chunk = readable[start:start + batch_size]
            captions = self.caption_pixels(torch.stack([pixels for _, pixels in chunk]))  # (B, 3, S, S) in
            for (result, _), found in zip(chunk, captions):
                result.text, result.words, result.score = found.text, found.words, found.score
                grid = math.isqrt(found.attention.shape[-1])  # G: P = G * G regions
                result.attention = found.attention[:len(found.words)].cpu().reshape(-1, grid, grid)  # (L, G, G)
        return results

    def index(self, photos: str | os.PathLike, index_dir: str | os.PathLike | None = None,
              batch_size: int = BATCH_SIZE, show_progress: bool = False,
              ranking: RankingOptions | None = None) -> PhotoLibrary:
        """Index a folder of photos (new or changed ones only) and return it, ready to search.

        The index lives in `index_dir` (default PHOTOS/.caption-index); `.report` says what this run did."""
        report = update_index(self, Path(photos), None if index_dir is None else Path(index_dir), batch_size,
                              show_progress)
        directory = Path(index_dir) if index_dir is not None else default_index_dir(Path(photos))
        return self.open_index(directory, ranking, report)

    def open_index(self, index_dir: str | os.PathLike, ranking: RankingOptions | None = None,
                   report: IndexReport | None = None) -> PhotoLibrary:
        """A photo index made earlier (by `index` or `caption-search index`), ready to search."""
        return PhotoLibrary(self, open_index(Path(index_dir), self.checkpoint), ranking, report)


class PhotoLibrary:
    """Photos (a gallery: names, files, generated captions, features) ranked for text queries by a Captioner."""

    def __init__(self, captioner: Captioner, gallery: Gallery, ranking: RankingOptions | None = None,
                 report: IndexReport | None = None) -> None:
        self.captioner, self.gallery, self.report = captioner, gallery, report
        self.ranking = ranking if ranking is not None else package_defaults().ranking
        self.searcher = Searcher(captioner.model, captioner.vocabulary, gallery, captioner.device, self.ranking)

    def __len__(self) -> int:
        return len(self.gallery)

    def search(self, query: str, top: int = 10) -> SearchResults:
        """The `top` photos for `query`, best first. Raises QueryError for a query without words and
        SearchError for an empty library."""
        hits = self.searcher.search(query, top)
        unknown = unknown_words(query, self.captioner.vocabulary)
        return SearchResults(query, hits, unknown, len(tokenize(normalise(query))) - len(unknown))


def _as_list(images: ImageInput | Iterable[ImageInput]) -> Sequence[ImageInput]:
    """One image or many as a list; a (B, 3, H, W) tensor is B images."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


__all__ = ["Captioner", "CaptionResult", "Decoding", "PhotoLibrary", "SearchResults"]
