"""Stage `retrieval`: text-to-image search on the held-out split, each reference caption a query.

    data/train/best.pt, data/features/features.h5, data/prepared/captions.csv -> metrics/retrieval.json

The gallery is the `evaluate.split` images; every reference caption is a query whose answer is its
own image. The images are captioned as evaluate captions them (`evaluate.beam_size` and the other
decoding settings). The first stage (BM25 over those generated captions) ranks every image; the
captioner's likelihood of the query re-ranks its `retrieval.candidates` best (see
`pipeline.retrieval`). Written: Recall@1/5/10, median and mean rank of both rankings, how many
answers the first stage kept among the candidates (the recall the re-ranking cannot win back),
the time per distinct query (wall clock, the query prior and image prior included) and the one-off
time to caption the gallery. Identical queries are scored once.

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
from pipeline.runtime import resolve_device
from pipeline.text import Vocabulary, normalise


def ranking_options(config: RetrievalConfig) -> RankingOptions:
    """The ranking options of params.yaml's retrieval section."""
    return RankingOptions(config.candidates, config.prior, config.prior_weight, config.image_weight,
                          config.bank_size, config.batch_size)


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
    searcher = Searcher(model, vocabulary, gallery, device, ranking_options(config))

    # every (reference, its image) pair; identical queries are scored once
    pairs = [(normalise(text), row) for row, name in enumerate(names) for text in references[name]]
    distinct = sorted({text for text, _ in pairs})
    position = {text: i for i, text in enumerate(distinct)}
    which = np.array([position[text] for text, _ in pairs])  # (Q,) distinct query of each pair
    answers = np.array([row for _, row in pairs])  # (Q,)

    started = time.perf_counter()
    first = searcher.index.score_matrix(distinct)  # (D, N)
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    candidates, _, final = searcher.rank(distinct)  # (D, C) each; includes the first stage again
    rank_seconds = time.perf_counter() - started

    metrics = {"split": evaluate_config.split, "images": len(names), "queries": len(pairs),
               "distinct_queries": len(distinct), "candidates": int(candidates.shape[1]), "prior": config.prior,
               "prior_weight": config.prior_weight, "image_weight": config.image_weight,
               "captioning_seconds": captioning_seconds}
    metrics["first_stage"] = retrieval_scores(*rank_counts(first[which], answers))
    metrics["first_stage"]["ms_per_query"] = 1000 * first_seconds / len(distinct)
    metrics["reranked"] = retrieval_scores(*rank_counts(rerank(first, candidates, final)[which], answers))
    metrics["reranked"]["ms_per_query"] = 1000 * rank_seconds / len(distinct)
    metrics["candidate_recall"] = 100.0 * float(np.mean((candidates[which] == answers[:, None]).any(axis=1)))
    write_json(config.metrics, metrics)
    shown = "; ".join(f"{stage} R@1 {metrics[stage]['r1']:.1f} R@5 {metrics[stage]['r5']:.1f} "
                      f"R@10 {metrics[stage]['r10']:.1f} median rank {metrics[stage]['median_rank']:g} "
                      f"({metrics[stage]['ms_per_query']:.1f} ms/query)" for stage in ("first_stage", "reranked"))
    print(f"retrieval: {len(pairs)} queries ({len(distinct)} distinct) over {len(names)} {evaluate_config.split} "
          f"images: {shown} -> {config.metrics}")


if __name__ == "__main__":
    run(main, "retrieval")
