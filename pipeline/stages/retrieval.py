"""Stage `retrieval`: text-to-image search on the held-out split, each reference caption a query.

    data/scst/best.pt (the final model: scst.checkpoint), data/features/features.h5,
    data/prepared/captions.csv -> metrics/retrieval.json

The gallery is the `evaluate.split` images; every reference caption is a query whose answer is its
own image. The images are captioned as evaluate captions them (`evaluate.beam_size` and the other
decoding settings). The first stage (BM25 over those generated captions) ranks every image; the
captioner's likelihood of the query re-ranks its `retrieval.candidates` best (see
`pipeline.retrieval`). Written: Recall@1/5/10, median and mean rank of both rankings, how many
answers the first stage kept among the candidates (the recall the re-ranking cannot win back),
and the counts that define those scores (images, queries, candidates): scores only, so that `dvc
exp show` and `dvc metrics diff` compare scores. The times (per distinct query, wall clock, the
query prior and image prior included; the one-off captioning of the gallery) are printed in the
summary line, with a progress bar over the (query, image) pairs while they are scored. Identical
queries are scored once.

Run: python -m pipeline.stages.retrieval
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import run
from pipeline.config import (
    DatasetConfig,
    EncoderConfig,
    EvaluateConfig,
    RetrievalConfig,
    ScstConfig,
    load_section,
)
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.errors import InputError
from pipeline.files import write_json
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import check_features, load_checkpoint
from pipeline.model.decoder import CaptionDecoder
from pipeline.retrieval.metrics import rank_counts, rerank, retrieval_scores
from pipeline.retrieval.ranking import Gallery, RankingOptions, Searcher
from pipeline.runtime import resolve_device, resolve_scoring_precision
from pipeline.text import Vocabulary, normalise


def generated_captions(model: CaptionDecoder, vocabulary: Vocabulary, store: FeatureStore, names: list[str],
                       config: EvaluateConfig, device: torch.device) -> list[str]:
    """Each image's caption, decoded with evaluate's settings from its cached features."""
    options = search_options(vocabulary, config.beam_size, model.config.max_caption_length, config.length_penalty,
                             config.no_repeat_ngram, config.allow_unk)
    rows = dict(zip(names, store.rows_of(names)))

    def features_of(chunk: list[str]) -> torch.Tensor:
        return store[[rows[name] for name in chunk]].to(device)

    captions = describe_all(model, names, features_of, vocabulary, options, config.batch_size)
    return [captions[name].text for name in names]


def queries_of(references: dict[str, list[str]], names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct normalised queries, and for every reference its query (Q,) and its image's row (Q,)."""
    pairs = [(normalise(text), row) for row, name in enumerate(names) for text in references[name]]
    distinct = sorted({text for text, _ in pairs})
    position = {text: i for i, text in enumerate(distinct)}
    return distinct, np.array([position[text] for text, _ in pairs]), np.array([row for _, row in pairs])


def retrieval_metrics(searcher: Searcher, distinct: list[str], which: np.ndarray, answers: np.ndarray
                      ) -> tuple[dict[str, object], dict[str, float]]:
    """The scores of both rankings (the metrics file), and the time per distinct query of each, ms."""
    started = time.perf_counter()
    first = searcher.index.score_matrix(distinct)  # (D, N)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    candidates, _, final = searcher.rank(distinct)  # (D, C) each; includes the first stage again
    rank_seconds = time.perf_counter() - started
    metrics: dict[str, object] = {
        "images": len(searcher.gallery), "queries": len(which), "distinct_queries": len(distinct),
        "candidates": int(candidates.shape[1]),
        "first_stage": retrieval_scores(*rank_counts(first[which], answers)),
        "reranked": retrieval_scores(*rank_counts(rerank(first, candidates, final)[which], answers)),
        "candidate_recall": 100.0 * float(np.mean((candidates[which] == answers[:, None]).any(axis=1))),
    }
    return metrics, {"first_stage": 1000 * first_seconds / len(distinct),
                     "reranked": 1000 * rank_seconds / len(distinct)}


def main() -> None:
    dataset, encoder_config = load_section(DatasetConfig), load_section(EncoderConfig)
    scst, evaluate_config = load_section(ScstConfig), load_section(EvaluateConfig)
    config = load_section(RetrievalConfig)
    device = resolve_device(config.device, "retrieval.device")
    model, vocabulary, payload = load_checkpoint(scst.checkpoint, device)
    references = references_by_image(read_captions(dataset.table, evaluate_config.split))
    if not references:
        raise InputError(f"no {evaluate_config.split} captions in {dataset.table}; check evaluate.split and "
                         "dataset.split_ratios / split_dir")
    names = sorted(references)
    store = FeatureStore(encoder_config.cache)
    check_features(model, payload["encoder"], store.path, store.attrs, store.feature_dim)
    started = time.perf_counter()
    captions = generated_captions(model, vocabulary, store, names, evaluate_config, device)
    captioning_seconds = time.perf_counter() - started
    gallery = Gallery(names, [Path(dataset.images) / name for name in names], captions, store,
                      np.array(store.rows_of(names)))
    options = RankingOptions.from_config(config)
    searcher = Searcher(model, vocabulary, gallery, device, options, progress="retrieval")
    distinct, which, answers = queries_of(references, names)  # identical queries are scored once
    metrics, ms_per_query = retrieval_metrics(searcher, distinct, which, answers)
    write_json(config.metrics, metrics)
    shown = "; ".join(f"{stage} R@1 {metrics[stage]['r1']:.1f} R@5 {metrics[stage]['r5']:.1f} "
                      f"R@10 {metrics[stage]['r10']:.1f} median rank {metrics[stage]['median_rank']:g} "
                      f"({ms_per_query[stage]:.3g} ms/query)" for stage in ("first_stage", "reranked"))
    precision = resolve_scoring_precision(options.precision, device)
    print(f"retrieval: {len(which)} queries ({len(distinct)} distinct) over {len(names)} {evaluate_config.split} "
          f"images: {shown}; decoder {precision}, {captioning_seconds:.1f} s to "
          f"caption the images -> {config.metrics}")


if __name__ == "__main__":
    run(main, "retrieval")
