"""Stage `train`: fit the attention decoder on the cached features with teacher forcing.

    encoder.cache, dataset.table, vocab.path, embeddings.matrix
        -> train.checkpoint (best.pt), train.last_checkpoint (last.pt),
           train.metrics_dir (dvclive metrics and per-epoch plots), train.log_dir (TensorBoard)

Adam with weight decay, StepLR, gradient clipping, cross-entropy + doubly stochastic attention
penalty. Every epoch scores the validation split (loss, and greedy captions scored with BLEU-4 and
CIDEr by the scorer evaluate uses) and keeps the best epoch by `train.early_stopping` (CIDEr by
default: a constant caption can win BLEU, not CIDEr); training stops after `train.patience`
epochs without improvement. Every epoch writes `last.pt` (model, optimiser, scheduler, gradient
scaler, per-epoch scores); a rerun continues it only when it is the same run (see
pipeline/training/resume.py), so an interrupted run loses at most one epoch and a changed stage
always starts afresh.

Run: python -m pipeline.stages.train
     torchrun --nproc_per_node N -m pipeline.stages.train   # DistributedDataParallel over N GPUs (or CPU
                                                            # processes with gloo); train.batch_size is per process
Under torchrun every process takes its share of each global batch and of the validation work;
rank 0 scores, decides early stopping and writes every file; the others follow its decisions.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

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
from pipeline.datasets.table import read_captions, references_by_image
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.errors import ConfigError, InputError
from pipeline.evaluation.scoring import coco_scores
from pipeline.files import save_torch
from pipeline.identity import stage_identity
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import checkpoint_payload, read_payload
from pipeline.runtime import (
    follow_rank_zero,
    gather,
    relaunch_under_torchrun,
    seed_everything,
    start_processes,
    stop_processes,
)
from pipeline.text import Vocabulary, tokenize
from pipeline.training.batches import bucket_batches, encode_captions
from pipeline.training.compiled import compile_decoder, try_compiled
from pipeline.training.epoch_log import EpochLog
from pipeline.training.loop import build_model, load_embeddings, run_epoch
from pipeline.training.precision import autocast_for
from pipeline.training.resume import can_continue

VALIDATION_METRICS = ("bleu4", "cider")


class NoUpdate:
    """An optimizer that changes nothing: a trial batch runs forward and backward, the weights stay."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        pass


def improved(score: float, best: float | None, criterion: str) -> bool:
    """Whether `score` beats `best` under the early-stopping criterion (loss falls, the others rise)."""
    return best is None or (score < best if criterion == "loss" else score > best)


def captions_cut(captions: pd.Series, max_words: int) -> int:
    """How many captions have more than `max_words` words; ConfigError when that is most of them (the model
    would learn to stop mid-caption), naming the length that keeps 95% of them whole."""
    words = captions.map(lambda caption: len(tokenize(caption)))
    cut = int((words > max_words).sum())
    if 2 * cut > len(words):
        whole = int(words.quantile(0.95, interpolation="higher"))
        raise ConfigError(f"model.max_caption_length is {max_words} but {cut:,} of {len(words):,} training captions "
                          f"are longer and would be cut: the model would learn to stop mid-caption; set it to at "
                          f"least {whole} (95% of the captions fit)")
    return cut


def resume_state(path: Path, identity: str, config: TrainConfig, best_path: Path) -> tuple[dict | None, str]:
    """The last.pt payload to continue, or None and why not."""
    if not config.resume or not path.is_file():
        return None, "no last.pt to continue" if config.resume else "train.resume is false"
    if not best_path.is_file():
        return None, f"{best_path} is missing"
    try:
        last, best = read_payload(path), read_payload(best_path)
    except InputError as error:
        return None, str(error)
    if not isinstance(last, dict) or last.get("identity") != identity:
        return None, f"{path} was made from other code, inputs or params"
    if not isinstance(best, dict) or best.get("epoch") != last["state"]["best_epoch"]:
        return None, (f"{best_path} is not the best epoch ({last['state']['best_epoch']}) of the run in {path}; "
                      "it was replaced or written by an interrupted epoch")
    why = can_continue(last["state"]["scores"], config.epochs, config.patience, config.early_stopping != "loss")
    return (None, f"{path} cannot be continued: {why}") if why else (last, "")


def main() -> None:
    dataset, vocab_config = load_section(DatasetConfig), load_section(VocabConfig)
    embeddings_config, encoder_config = load_section(EmbeddingsConfig), load_section(EncoderConfig)
    model_config, config = load_section(ModelConfig), load_section(TrainConfig)
    rank, world_size, device = start_processes(config.device, "train.device")
    seed_everything(config.seed)
    try:
        fit(dataset, vocab_config, embeddings_config, encoder_config, model_config, config, rank, world_size, device)
    finally:
        stop_processes(world_size)


def fit(dataset: DatasetConfig, vocab_config: VocabConfig, embeddings_config: EmbeddingsConfig,
        encoder_config: EncoderConfig, model_config: ModelConfig, config: TrainConfig,
        rank: int, world_size: int, device: torch.device) -> None:
    """Train, validate, checkpoint and log every epoch; only rank 0 writes files."""
    clock = {"start": time.perf_counter()}
    say = print if rank == 0 else (lambda *args, **kwargs: None)
    last_path, best_path = Path(config.last_checkpoint), Path(config.checkpoint)
    identity = follow_rank_zero(stage_identity("train") if rank == 0 else None, world_size)
    last, reason = resume_state(last_path, identity, config, best_path)
    state = last["state"] if last else {"epoch": 0, "scores": [], "best_score": None, "best_epoch": 0}
    criterion = config.early_stopping
    if last and (state["epoch"] >= config.epochs or
                 len(state["scores"]) - state["best_epoch"] >= config.patience):
        say(f"train: {last_path} already holds this run, finished after epoch {state['epoch']} "
            f"(best epoch {state['best_epoch']}); nothing to train")
        return
    clock["identity"] = time.perf_counter()

    vocabulary = Vocabulary.from_json(Path(vocab_config.path))
    store = FeatureStore(encoder_config.cache)
    table = read_captions(dataset.table)
    train_table, val_table = table[table["split"] == "train"], table[table["split"] == "val"]
    if train_table.empty or val_table.empty:
        raise InputError(f"{dataset.table} needs train and val captions (early stopping uses val); "
                         "check dataset.split_ratios / split_files")
    cut = captions_cut(train_table["caption"], model_config.max_caption_length)  # before the features load
    features = FeatureMatrix(store, pd.concat([train_table, val_table])["image"], device)
    clock["features"] = time.perf_counter()
    max_words = model_config.max_caption_length
    train_set = encode_captions(train_table, vocabulary, features.rows, max_words)
    val_set = encode_captions(val_table, vocabulary, features.rows, max_words)
    if cut:
        say(f"train: {cut} of {len(train_set)} training captions are longer than model.max_caption_length = "
            f"{max_words} words and are cut there")
    val_batches = bucket_batches(val_set.lengths, config.batch_size * world_size, torch.Generator().manual_seed(0))
    val_references = references_by_image(val_table)
    val_names = sorted(val_references)
    my_val_names = val_names[rank::world_size]

    model = build_model(vocabulary, load_embeddings(Path(embeddings_config.matrix), vocabulary), store.feature_dim,
                        model_config).to(device)
    model.set_feature_statistics(*features.statistics(train_set.image_rows))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_gamma)
    _, needs_scaler = autocast_for(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)
    if last:
        model.load_state_dict(last["model"])
        optimizer.load_state_dict(last["optimizer"])
        scheduler.load_state_dict(last["scheduler"])
        scaler.load_state_dict(last["scaler"])
        say(f"train: resuming from {last_path} after epoch {state['epoch']}")
    else:
        say(f"train: starting afresh ({reason})")
    if compile_decoder(model, device, config.compile):  # same results (tests/test_speed_compiled.py), fewer launches
        first = [torch.arange(min(config.batch_size, len(train_set)))]  # compiled now, on a batch of training's size
        failure = try_compiled(model, device, lambda: run_epoch(model, features, train_set, first, config, device,
                                                                 NoUpdate(model)))
        say("train: decoder step compiled with torch.compile (train.compile)" if failure is None else
            f"train: torch.compile failed on this machine ({failure}); training with the plain step "
            f"(train.compile: never skips the attempt)")
    network = model
    if world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = EpochLog(config, resumed=last is not None) if rank == 0 else None
    clock["model"] = time.perf_counter()
    path = "resident" if features.resident else "streamed"
    seconds = {name: clock[name] - clock[before]
               for name, before in (("identity", "start"), ("features", "identity"), ("model", "features"))}
    say(f"train: start-up {clock['model'] - clock['start']:.1f} s (resume check {seconds['identity']:.1f} s, "
        f"features {seconds['features']:.1f} s on {device}, {path}; "
        f"captions, model and feature statistics {seconds['model']:.1f} s); "
        f"{len(train_set)} training captions, {len(val_set)} validation captions", flush=True)

    for epoch in range(state["epoch"], config.epochs):
        # dropout: replays on resume, differs across processes
        torch.manual_seed(config.seed + epoch + 1_000_003 * rank)
        batches = bucket_batches(train_set.lengths, config.batch_size * world_size,
                                 torch.Generator().manual_seed(config.seed + epoch))  # the same on every process
        train_stats = run_epoch(model, features, train_set, batches, config, device, optimizer, scaler, network,
                                world_size, progress=f"epoch {epoch + 1}" if rank == 0 else None)
        with torch.no_grad():
            val_stats = run_epoch(model, features, val_set, val_batches, config, device, world_size=world_size)
            greedy = describe_all(model, my_val_names, lambda names: features[features.rows_of(names)], vocabulary,
                                  search_options(vocabulary, 1, max_words), batch_size=256)
        hypotheses = gather({name: caption.text for name, caption in greedy.items()}, world_size)
        if rank == 0:
            val_stats.update(coco_scores(val_references, hypotheses, VALIDATION_METRICS))
        val_stats = follow_rank_zero(val_stats, world_size)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        score = val_stats[criterion]
        better = improved(score, state["best_score"], criterion)
        state["scores"].append(score)
        state["epoch"] = epoch + 1
        if better:
            state.update(best_score=score, best_epoch=epoch + 1)
        if log is not None:
            if better:
                # scores, not speeds: the same run gives a byte-identical best.pt (one DVC hash)
                scores = {f"val_{k}": v for k, v in val_stats.items() if k != "tokens_per_s"}
                save_torch(best_path, checkpoint_payload(model, vocabulary.words, store.attrs, epoch=epoch + 1,
                                                         **scores), "train.checkpoint")
            save_torch(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                   "state": state, "identity": identity}, "train.last_checkpoint")
            samples = [f"{n}: {hypotheses[n]}  (ref: {val_references[n][0]})" for n in val_names[:config.num_samples]]
            log.epoch(epoch + 1, train_stats, val_stats, lr, samples, better)
        if len(state["scores"]) - state["best_epoch"] >= config.patience:
            say(f"train: no better validation {criterion} for {config.patience} epochs; stopping")
            break

    if log is not None:
        log.close(state)
        say(f"train: best epoch {state['best_epoch']} of {state['epoch']} (val {criterion} "
            f"{state['best_score']:.4f}) -> {best_path}")


if __name__ == "__main__":
    if not relaunch_under_torchrun("pipeline.stages.train"):
        run(main, "train")
