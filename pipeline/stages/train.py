"""Stage `train`: fit the attention decoder on the cached features with teacher forcing.

    encoder.cache, dataset.table, vocab.path, embeddings.matrix
        -> train.checkpoint (best.pt), train.last_checkpoint (last.pt),
           train.metrics_dir (dvclive metrics and per-epoch plots), train.log_dir (TensorBoard)

Adam with weight decay, StepLR, gradient clipping, cross-entropy + doubly stochastic attention
penalty. Every epoch scores the validation split (loss, and greedy captions scored with BLEU-4 and
CIDEr by the scorer evaluate uses) and keeps the best epoch by `train.early_stopping` (CIDEr by
default: a constant caption can win BLEU, not CIDEr); training stops after `train.patience`
epochs without improvement. Every epoch writes `last.pt`; a rerun continues it only when it is the
same run (pipeline/training/resume.py), so an interrupted run loses at most one epoch and a changed
stage always starts afresh.

Run: python -m pipeline.stages.train
     torchrun --nproc_per_node N -m pipeline.stages.train   # DistributedDataParallel over N GPUs (or CPU
                                                            # processes with gloo); train.batch_size is per process
Under torchrun every process takes its share of each global batch and of the validation work;
rank 0 scores, decides early stopping and writes every file; the others follow its decisions.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.cli import run
from pipeline.config import (
    DatasetConfig,
    EmbeddingsConfig,
    EncoderConfig,
    ModelConfig,
    TrainConfig,
    VocabConfig,
    load_section,
)
from pipeline.identity import stage_identity
from pipeline.model.checkpoint import checkpoint_payload
from pipeline.runtime import Processes, emulation_warning, processes, relaunch_under_torchrun, seed_everything
from pipeline.text import Vocabulary
from pipeline.training.batches import bucket_batches
from pipeline.training.compiled import compile_step
from pipeline.training.data import TrainingData, load_training_data
from pipeline.training.epoch_log import EpochLog
from pipeline.training.loop import NoUpdate, Optimisers, build_model, load_embeddings, make_optimisers, run_epoch
from pipeline.training.resume import EarlyStopping, Run, RunFiles
from pipeline.training.validation import validate


def epoch_batches(data: TrainingData, config: TrainConfig, epoch: int, world_size: int) -> list[torch.Tensor]:
    """The epoch's shuffled, length-bucketed global batches: the same on every process, replayed on resume."""
    return bucket_batches(data.train_set.lengths, config.batch_size * world_size,
                          torch.Generator().manual_seed(config.seed + epoch))


def summary_line(epoch: int, epochs: int, train_stats: dict[str, float], val_stats: dict[str, float],
                 improved: bool) -> str:
    """The epoch's line on the console (`*`: the best epoch so far)."""
    return (f"epoch {epoch}/{epochs}: train loss {train_stats['loss']:.3f}, val loss {val_stats['loss']:.3f}, "
            f"val BLEU-4 {val_stats['bleu4']:.3f}, val CIDEr {val_stats['cider']:.3f}, "
            f"{train_stats['tokens_per_s']:.0f} tokens/s{' *' if improved else ''}")


def main() -> None:
    dataset, vocab, embeddings = load_section(DatasetConfig), load_section(VocabConfig), load_section(EmbeddingsConfig)
    encoder, model_config, config = load_section(EncoderConfig), load_section(ModelConfig), load_section(TrainConfig)
    stopping = EarlyStopping(config.patience, higher_is_better=config.early_stopping != "loss")
    files = RunFiles(Path(config.checkpoint), Path(config.last_checkpoint), "train")
    with processes(config.device, "train.device") as cluster:
        seed_everything(config.seed)
        identity = cluster.follow(stage_identity("train") if cluster.main else None)
        training, reason = Run.open(files, stopping, identity, config.resume, config.epochs)
        if training.finished(config.epochs):
            cluster.say(f"train: {files.last} already holds this run, finished after epoch {training.progress.epoch} "
                        f"(best epoch {training.progress.best_epoch}); nothing to train")
            return
        data = load_training_data(Path(dataset.table), Vocabulary.from_json(Path(vocab.path)), Path(encoder.cache),
                                  model_config.max_caption_length, cluster.device)
        if data.cut:
            cluster.say(f"train: {data.cut} of {len(data.train_set)} training captions are longer than "
                        f"model.max_caption_length = {model_config.max_caption_length} words and are cut there")
        model = build_model(data.vocabulary, load_embeddings(Path(embeddings.matrix), data.vocabulary),
                            data.store.feature_dim, model_config).to(cluster.device)
        model.set_feature_statistics(*data.features.statistics(data.train_set.image_rows))
        optimisers = make_optimisers(model, config.lr, config.weight_decay, config.lr_step_epochs, config.lr_gamma,
                                     cluster.device, config.amp)
        cluster.warn(emulation_warning("train.amp", config.amp, cluster.device))
        training.restore(model, *optimisers)
        resuming = f"resuming from {files.last} after epoch {training.progress.epoch}"
        cluster.say(f"train: {resuming if training.continued else f'starting afresh ({reason})'}; "
                    f"{len(data.train_set)} training captions, {len(data.val_set)} validation captions")
        first = [torch.arange(min(config.batch_size, len(data.train_set)))]  # compiled on a batch of training's size
        if note := compile_step(model, cluster.device, config.compile, lambda: run_epoch(
                model, data.features, data.train_set, first, config, cluster.device, NoUpdate(model)), "train.compile"):
            cluster.say(f"train: {note}")
        fit(model, optimisers, data, config, cluster, training)


def fit(model: torch.nn.Module, optimisers: Optimisers, data: TrainingData, config: TrainConfig, cluster: Processes,
        training: Run) -> None:
    """The epochs: train, validate, decide, save and log each; rank 0 writes every file."""
    optimizer, scheduler, scaler = optimisers
    network = cluster.wrap(model)
    log = EpochLog(config.log_dir, config.metrics_dir, training.continued is not None) if cluster.main else None
    val_batches = bucket_batches(data.val_set.lengths, config.batch_size * cluster.world_size,
                                 torch.Generator().manual_seed(0))
    progress = training.progress
    for epoch in range(progress.epoch, config.epochs):
        torch.manual_seed(config.seed + epoch + 1_000_003 * cluster.rank)  # dropout: replays on resume
        train_stats = run_epoch(model, data.features, data.train_set, epoch_batches(data, config, epoch,
                                cluster.world_size), config, cluster.device, optimizer, scaler, network,
                                cluster.world_size, progress=f"epoch {epoch + 1}" if cluster.main else None)
        val_stats, hypotheses = validate(model, data, val_batches, config, cluster)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        improved = training.stopping.record(progress, val_stats[config.early_stopping])
        if log is not None:
            # scores, not speeds: the same run gives a byte-identical best.pt (one DVC hash)
            best = checkpoint_payload(model, data.vocabulary.words, data.store.attrs, epoch=progress.epoch, **{
                f"val_{k}": v for k, v in val_stats.items() if k != "tokens_per_s"}) if improved else None
            training.save((model, *optimisers), best)
            scores = {"train/loss": train_stats["loss"], "train/cross_entropy": train_stats["cross_entropy"],
                      "val/loss": val_stats["loss"], "val/cross_entropy": val_stats["cross_entropy"],
                      "val/bleu4": val_stats["bleu4"], "val/cider": val_stats["cider"], "lr": lr}
            log.epoch(progress.epoch, scores, data.samples(hypotheses, config.num_samples),
                      summary_line(progress.epoch, config.epochs, train_stats, val_stats, improved),
                      {"train/tokens_per_s": train_stats["tokens_per_s"]})
        if training.stopping.stopped(progress):
            cluster.say(f"train: no better validation {config.early_stopping} for {config.patience} epochs; stopping")
            break
    if log is not None:
        log.close({"best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
                   f"best_val_{config.early_stopping}": progress.best_score})
        cluster.say(f"train: best epoch {progress.best_epoch} of {progress.epoch} (val {config.early_stopping} "
                    f"{progress.best_score:.4f}) -> {training.files.best}")


if __name__ == "__main__":
    if not relaunch_under_torchrun("pipeline.stages.train"):
        run(main, "train")
