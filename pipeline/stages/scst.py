"""Stage `scst`: fine-tune the cross-entropy model with self-critical sequence training on CIDEr-D.

    train.checkpoint (best.pt), encoder.cache, dataset.table, vocab.path
        -> scst.checkpoint (the final model), scst.last_checkpoint (last.pt),
           scst.metrics_dir (dvclive metrics and per-epoch plots), scst.log_dir (TensorBoard)

Every epoch samples `scst.samples` captions of each training image from the cached features,
rewards each with its CIDEr-D against the image's references (END included), and follows the policy
gradient against the `scst.baseline` (pipeline/training/scst.py). The validation split's greedy
captions are scored after every epoch as train scores them; the final model is the best epoch by
validation CIDEr, where the cross-entropy model itself is epoch 0 (so fine-tuning that does not help
leaves it the final model), and training stops after `scst.patience` epochs without a better one.
Resumes after an interruption exactly as train does. `scst.epochs: 0` turns it off: the final model
is then a copy of train's, byte for byte.

Run: python -m pipeline.stages.scst
     torchrun --nproc_per_node N -m pipeline.stages.scst   # each process samples its share of each batch
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.cli import run
from pipeline.config import DatasetConfig, EncoderConfig, ScstConfig, TrainConfig, VocabConfig, load_section
from pipeline.errors import InputError
from pipeline.files import atomic_path
from pipeline.identity import stage_identity
from pipeline.model.captioner import search_options
from pipeline.model.checkpoint import check_features, checkpoint_payload, load_checkpoint, read_payload
from pipeline.model.decoder import CaptionDecoder
from pipeline.runtime import Processes, emulation_warning, processes, relaunch_under_torchrun, seed_everything
from pipeline.text import Vocabulary
from pipeline.training.compiled import compile_step
from pipeline.training.data import TrainingData, load_training_data
from pipeline.training.epoch_log import EpochLog
from pipeline.training.loop import NoUpdate, Optimisers, make_optimisers
from pipeline.training.resume import EarlyStopping, Progress, Run, RunFiles
from pipeline.training.scst import Rewards, ScstSettings, image_batches, run_scst_epoch
from pipeline.training.validation import greedy_scores

CRITERION = "cider"


def copy_model(source: Path, config: ScstConfig) -> None:
    """scst.epochs 0: the final model is train's, byte for byte; the log's epoch 0 is its validation scores."""
    payload = read_payload(source)
    with atomic_path(config.checkpoint, "scst.checkpoint") as tmp:
        tmp.write_bytes(source.read_bytes())
    log = EpochLog(config.log_dir, config.metrics_dir, resumed=False)
    scores = {f"val/{name}": payload[f"val_{name}"] for name in ("bleu4", "cider") if f"val_{name}" in payload}
    log.epoch(0, scores, [], f"scst: scst.epochs is 0: {source} is the final model -> {config.checkpoint}")
    log.close({"best_epoch": 0, "epochs_run": 0, "start_val_cider": payload.get("val_cider")})


def check_vocabulary(vocabulary: Vocabulary, path: Path, checkpoint: Path) -> None:
    """The checkpoint must speak the vocabulary the captions are encoded with now."""
    if Vocabulary.from_json(path).words != vocabulary.words:
        raise InputError(f"{checkpoint} was trained with another vocabulary than {path}; rerun `dvc repro train` "
                         "so that the model and the vocabulary agree")


def main() -> None:
    dataset, encoder, vocab = load_section(DatasetConfig), load_section(EncoderConfig), load_section(VocabConfig)
    train, config = load_section(TrainConfig), load_section(ScstConfig)
    if config.epochs == 0:
        copy_model(Path(train.checkpoint), config)
        return
    files = RunFiles(Path(config.checkpoint), Path(config.last_checkpoint), "scst")
    with processes(config.device, "scst.device") as cluster:
        seed_everything(config.seed)
        identity = cluster.follow(stage_identity("scst") if cluster.main else None)
        training, reason = Run.open(files, EarlyStopping(config.patience, higher_is_better=True), identity,
                                    config.resume, config.epochs)
        if training.finished(config.epochs):
            cluster.say(f"scst: {files.last} already holds this run, finished after epoch {training.progress.epoch} "
                        f"(best epoch {training.progress.best_epoch}); nothing to train")
            return
        model, vocabulary, payload = load_checkpoint(train.checkpoint, cluster.device)
        check_vocabulary(vocabulary, Path(vocab.path), Path(train.checkpoint))
        data = load_training_data(Path(dataset.table), vocabulary, Path(encoder.cache),
                                  model.config.max_caption_length, cluster.device)
        check_features(model, payload["encoder"], data.store.path, data.store.attrs, data.store.feature_dim)
        reference = frozen_copy(train.checkpoint, cluster.device) if config.kl_weight else None
        optimisers = make_optimisers(model, config.lr, 0.0, config.epochs, 1.0, cluster.device, config.amp)
        cluster.warn(emulation_warning("scst.amp", config.amp, cluster.device))
        training.restore(model, *optimisers)
        log = EpochLog(config.log_dir, config.metrics_dir, training.continued is not None) if cluster.main else None
        if training.continued:
            cluster.say(f"scst: resuming from {files.last} after epoch {training.progress.epoch}")
        else:
            cluster.say(f"scst: starting from {train.checkpoint} (epoch {payload.get('epoch')}; {reason})")
            training.progress = start(model, data, payload["encoder"], files, cluster, log, train.num_samples)
        fit(model, optimisers, data, config, cluster, training, log, payload["encoder"], train.num_samples,
            reference)


def frozen_copy(checkpoint: str, device: torch.device) -> CaptionDecoder:
    """The cross-entropy model as `scst.kl_weight`'s reference: evaluation mode, no gradients."""
    reference, _, _ = load_checkpoint(checkpoint, device)
    return reference.eval().requires_grad_(False)


def start(model: CaptionDecoder, data: TrainingData, encoder: dict, files: RunFiles, cluster: Processes,
          log: EpochLog | None, num_samples: int) -> Progress:
    """Epoch 0: the cross-entropy model's validation scores, which later epochs must beat, as best.pt."""
    scores, hypotheses = greedy_scores(model, data, cluster)
    if log is not None:
        files.last.unlink(missing_ok=True)  # a last.pt of another run must not pass for this one's
        files.save_best(checkpoint_payload(model, data.vocabulary.words, encoder, epoch=0,
                                           **{f"val_{k}": v for k, v in scores.items()}))
        log.epoch(0, {"val/bleu4": scores["bleu4"], "val/cider": scores["cider"]},
                  data.samples(hypotheses, num_samples), f"scst epoch 0 (the cross-entropy model): val BLEU-4 "
                  f"{scores['bleu4']:.3f}, val CIDEr {scores['cider']:.3f}")
    return Progress.starting_at(scores[CRITERION])


def fit(model: CaptionDecoder, optimisers: Optimisers, data: TrainingData, config: ScstConfig, cluster: Processes,
        training: Run, log: EpochLog | None, encoder: dict, num_samples: int,
        reference: CaptionDecoder | None = None) -> None:
    """The epochs: sample and reward, validate, decide, save and log each; rank 0 writes every file."""
    optimizer, scheduler, scaler = optimisers
    rewards = Rewards(data.train_references, data.vocabulary)
    settings = ScstSettings(config.samples, config.baseline, config.batch_size, config.grad_clip, config.amp,
                            config.xe_weight, config.attention_penalty, config.kl_weight)
    banned = search_options(data.vocabulary, 1, model.config.max_caption_length).banned
    trial = [torch.arange(min(config.batch_size, len(rewards.names)))]
    plain = torch.amp.GradScaler(cluster.device.type, enabled=False)  # the trial updates nothing
    if note := compile_step(model, cluster.device, config.compile, lambda: run_scst_epoch(
            model, data, rewards, trial, settings, NoUpdate(model), plain, cluster, banned), "scst.compile"):
        cluster.say(f"scst: {note}")
    progress = training.progress
    for epoch in range(progress.epoch, config.epochs):
        torch.manual_seed(config.seed + epoch + 1_000_003 * cluster.rank)  # samples and dropout: replayed on resume
        order = torch.Generator().manual_seed(config.seed + epoch)  # the same on every process
        stats = run_scst_epoch(model, data, rewards, image_batches(len(rewards.names), config.batch_size, order),
                               settings, optimizer, scaler, cluster, banned,
                               progress=f"scst epoch {epoch + 1}" if cluster.main else None, reference=reference)
        scores, hypotheses = greedy_scores(model, data, cluster)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        improved = training.stopping.record(progress, scores[CRITERION])
        if log is not None:
            best = checkpoint_payload(model, data.vocabulary.words, encoder, epoch=progress.epoch, **{
                f"val_{k}": v for k, v in scores.items()}) if improved else None
            training.save((model, *optimisers), best)
            divergence = f", KL from the cross-entropy model {stats['kl']:.3f}" if reference is not None else ""
            line = (f"scst epoch {progress.epoch}/{config.epochs}: reward {stats['reward']:.3f} (baseline "
                    f"{stats['baseline']:.3f}{divergence}), val BLEU-4 {scores['bleu4']:.3f}, "
                    f"val CIDEr {scores['cider']:.3f}, "
                    f"{stats['images_per_s']:.1f} images/s, {stats['sampled_tokens_per_s']:.0f} sampled tokens/s"
                    f"{' *' if improved else ''}")
            log.epoch(progress.epoch, {"train/reward": stats["reward"], "train/baseline": stats["baseline"],
                                       **({"train/kl": stats["kl"]} if reference is not None else {}),
                                       "val/bleu4": scores["bleu4"], "val/cider": scores["cider"], "lr": lr},
                      data.samples(hypotheses, num_samples), line,
                      {"train/images_per_s": stats["images_per_s"],
                       "train/sampled_tokens_per_s": stats["sampled_tokens_per_s"]})
        if training.stopping.stopped(progress):
            cluster.say(f"scst: no better validation CIDEr for {config.patience} epochs; stopping")
            break
    if log is not None:
        log.close({"best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
                   "best_val_cider": progress.best_score, "start_val_cider": progress.start_score})
        cluster.say(f"scst: best epoch {progress.best_epoch} of {progress.epoch} (val CIDEr {progress.best_score:.4f}; "
                    f"the cross-entropy model {progress.start_score:.4f}) -> {training.files.best}")


if __name__ == "__main__":
    if not relaunch_under_torchrun("pipeline.stages.scst"):
        run(main, "scst")
