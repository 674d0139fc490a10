"""Search a gallery of images with a text query: BM25 over the generated captions picks candidates,
the captioner's likelihood of the query re-ranks them (see `pipeline.retrieval.likelihood`).

Shared by the retrieval stage, the search command and the web page.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pipeline.config import RetrievalConfig
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.errors import InputError
from pipeline.model.decoder import CaptionDecoder
from pipeline.retrieval.likelihood import (
    LikelihoodScorer,
    blank_features,
    caption_bank,
    corrected,
    image_prior,
)
from pipeline.retrieval.text_index import CaptionIndex, top_candidates
from pipeline.runtime import emulation_warning, resolve_scoring_precision
from pipeline.text import Vocabulary

logger = logging.getLogger(__name__)

MEAN_CHUNK = 256  # images read at a time when averaging a gallery's features


class SearchError(InputError):
    """A search that cannot run: an empty gallery or index."""


@dataclasses.dataclass(frozen=True)
class RankingOptions:
    """How a query ranks images: params.yaml `retrieval` (its one source of values), through `from_config`."""

    candidates: int  # images the caption index passes on to the likelihood; 0: every image
    prior: Literal["none", "mean", "blank"]  # context whose likelihood of the query is subtracted
    prior_weight: float
    image_weight: float  # weight of the image prior (mean log-likelihood of the caption bank)
    bank_size: int  # captions in the bank
    batch_size: int  # (query, image) pairs scored at once
    precision: Literal["auto", "fp32", "bf16", "int8"]  # of the decoder while scoring (`resolve_scoring_precision`)

    @classmethod
    def from_config(cls, config: RetrievalConfig) -> RankingOptions:
        """The ranking keys of params.yaml's `retrieval` section."""
        return cls(**{field.name: getattr(config, field.name) for field in dataclasses.fields(cls)})


@dataclasses.dataclass
class Gallery:
    """Images to search: their names, files, generated captions, and features in a cache file."""

    names: list[str]
    paths: list[Path]
    captions: list[str]
    store: FeatureStore
    rows: np.ndarray  # (N,) the store's row of each image

    def __len__(self) -> int:
        return len(self.names)

    def features_of(self, images: np.ndarray) -> torch.Tensor:
        """Features (U, P, E) of gallery images (U,)."""
        return self.store[self.rows[np.asarray(images, dtype=np.int64)]]

    def mean_features(self) -> torch.Tensor:
        """The mean (P, E) of all the gallery's features, read in chunks."""
        total = torch.zeros(self.store.num_regions, self.store.feature_dim, dtype=torch.float64)
        for start in range(0, len(self), MEAN_CHUNK):
            total += self.features_of(np.arange(start, min(len(self), start + MEAN_CHUNK))).double().sum(0)
        return (total / max(len(self), 1)).float()


@dataclasses.dataclass
class Hit:
    """One image found for a query: its place in the gallery, final score and raw log-likelihood."""

    row: int
    name: str
    path: Path
    caption: str
    score: float
    log_likelihood: float


class Searcher:
    """Ranks a gallery's images for text queries with a caption decoder."""

    def __init__(self, model: CaptionDecoder, vocabulary: Vocabulary, gallery: Gallery, device: torch.device,
                 options: RankingOptions, progress: str | None = None) -> None:
        self.gallery, self.options = gallery, options
        if warning := emulation_warning("retrieval.precision", options.precision, device):
            logger.warning(warning)
        self.scorer = LikelihoodScorer(model, vocabulary, gallery.features_of, device, options.batch_size,
                                       resolve_scoring_precision(options.precision, device), progress)
        self.index = CaptionIndex(gallery.captions)
        self.bank = caption_bank(gallery.captions, options.bank_size) if options.image_weight else []
        self._context: torch.Tensor | None = None
        self._image_priors: dict[int, float] = {}

    def context(self) -> torch.Tensor | None:
        """The features (P, E) the query prior is computed from, or None without a query prior."""
        if self.options.prior == "none" or not self.options.prior_weight:
            return None
        if self._context is None:
            self._context = (self.gallery.mean_features() if self.options.prior == "mean"
                             else blank_features(self.scorer.model, self.gallery.store.num_regions))
        return self._context

    def query_prior(self, tokens: torch.Tensor) -> np.ndarray | None:
        """log p(query | context) (Q,), or None without a query prior."""
        context = self.context()
        return None if context is None else self.scorer.given(tokens, context)

    def image_priors(self, images: np.ndarray) -> np.ndarray | None:
        """Each image's mean log-likelihood of the caption bank, same shape as `images`; None when unused."""
        if not self.options.image_weight:
            return None
        images = np.asarray(images, dtype=np.int64)
        todo = sorted(set(images.reshape(-1).tolist()) - set(self._image_priors))
        self._image_priors.update(zip(todo, image_prior(self.scorer, self.bank, np.array(todo)).tolist()))
        return np.vectorize(self._image_priors.__getitem__, otypes=[float])(images)

    def candidates(self, first_stage: np.ndarray) -> np.ndarray:
        """Columns (Q, C) of the images each query re-ranks: the caption index's best, or all."""
        count = self.options.candidates or len(self.gallery)
        return top_candidates(first_stage, count)

    def rank(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(candidates (Q, C), raw log-likelihoods (Q, C), final scores (Q, C)) for the queries."""
        if not len(self.gallery):
            raise SearchError("there are no images to search: the index is empty")
        tokens = self.scorer.tokens(queries)  # QueryError before any work
        candidates = self.candidates(self.index.score_matrix(queries))
        raw = self.scorer.matrix(tokens, candidates)
        final = corrected(raw, self.query_prior(tokens), self.options.prior_weight,
                          self.image_priors(candidates), self.options.image_weight)
        return candidates, raw, final

    def search(self, query: str, top: int = 10) -> list[Hit]:
        """The `top` images for one query, best first."""
        candidates, raw, final = self.rank([query])
        order = np.argsort(-final[0], kind="stable")[:top]
        hits = []
        for column in order:
            row = int(candidates[0, column])
            hits.append(Hit(row, self.gallery.names[row], self.gallery.paths[row], self.gallery.captions[row],
                            float(final[0, column]), float(raw[0, column])))
        return hits
