"""Scoring the validation split every epoch: the loss, and greedy captions scored like evaluate scores.

Under torchrun each process decodes its share of the validation images; rank 0 scores them all
(`pipeline.evaluation.scoring.coco_scores`, the PTB-tokenised scorer evaluate uses) and every
process follows its numbers, so early stopping decides the same everywhere.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from pipeline.config import TrainConfig
from pipeline.evaluation.scoring import coco_scores
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.decoder import CaptionDecoder
from pipeline.runtime import Processes
from pipeline.training.data import TrainingData
from pipeline.training.loop import run_epoch

VALIDATION_METRICS = ("bleu4", "cider")
DECODE_BATCH = 256  # validation images decoded at once


def greedy_captions(model: CaptionDecoder, data: TrainingData, processes: Processes) -> dict[str, str]:
    """{validation image: its greedy caption}, every process's share gathered on every process."""
    vocabulary, features = data.vocabulary, data.features
    mine = data.val_names[processes.rank::processes.world_size]
    found = describe_all(model, mine, lambda names: features[features.rows_of(names)], vocabulary,
                         search_options(vocabulary, 1, model.config.max_caption_length), DECODE_BATCH)
    return processes.gather({name: caption.text for name, caption in found.items()})


def greedy_scores(model: CaptionDecoder, data: TrainingData, processes: Processes,
                  metrics: Sequence[str] = VALIDATION_METRICS) -> tuple[dict[str, float], dict[str, str]]:
    """The validation split's greedy captions scored with `metrics` (rank 0's scores, on every process),
    and the captions."""
    hypotheses = greedy_captions(model, data, processes)
    scores = coco_scores(data.val_references, hypotheses, tuple(metrics)) if processes.main else {}
    return processes.follow(scores), hypotheses


def validate(model: CaptionDecoder, data: TrainingData, batches: list[torch.Tensor], config: TrainConfig,
             processes: Processes) -> tuple[dict[str, float], dict[str, str]]:
    """Validation loss and cross-entropy (teacher forced), greedy BLEU-4 and CIDEr; and the captions."""
    with torch.no_grad():
        stats = run_epoch(model, data.features, data.val_set, batches, config, processes.device,
                          world_size=processes.world_size)
    scores, hypotheses = greedy_scores(model, data, processes)
    stats.update(scores)
    return processes.follow(stats), hypotheses
