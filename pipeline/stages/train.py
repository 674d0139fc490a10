"""Stage `train`: fit the attention decoder on the cached features with teacher forcing.

    data/features/features.h5, data/prepared/captions.csv, data/vocab/vocab.json,
    data/embeddings/embeddings.npy -> data/train/best.pt, data/train/last.pt,
    metrics/train (dvclive metrics and per-epoch plots), data/train/tensorboard

Adam with weight decay, StepLR, gradient clipping, cross-entropy + doubly stochastic attention
penalty, early stopping on the validation split (greedy BLEU-4, or loss). Every epoch writes
`last.pt` (model, optimiser, scheduler, early-stopping state); a rerun with the same inputs and
params resumes from it, so an interrupted run loses at most one epoch. `best.pt` holds the best
epoch's weights with everything `evaluate` and `caption` need to rebuild the model.

Run: python -m pipeline.stages.train
     torchrun --nproc_per_node N -m pipeline.stages.train   # DistributedDataParallel over N GPUs (or CPU
                                                     # processes with gloo); train.batch_size is per process
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch.nn.parallel import DistributedDataParallel

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
from pipeline.evaluation.scoring import bleu4
from pipeline.files import save_torch
from pipeline.model.captioner import describe_all, search_options
from pipeline.model.checkpoint import checkpoint_payload
from pipeline.runtime import seed_everything, start_processes, stop_processes
from pipeline.text import Vocabulary
from pipeline.training.batches import bucket_batches, encode_captions
from pipeline.training.epoch_log import EpochLog
from pipeline.training.loop import build_model, load_embeddings, run_epoch, shard
from pipeline.training.precision import autocast_for
from pipeline.training.resume import fingerprint


def main() -> None:
    dataset, vocab_config = load_section(DatasetConfig), load_section(VocabConfig)
    embeddings_config, encoder_config = load_section(EmbeddingsConfig), load_section(EncoderConfig)
    model_config, config = load_section(ModelConfig), load_section(TrainConfig)
    seed_everything(config.seed)
    rank, world_size, device = start_processes(config.device)
    try:
        fit(dataset, vocab_config, embeddings_config, encoder_config, model_config, config, rank, world_size, device)
    finally:
        stop_processes(world_size)


def fit(dataset: DatasetConfig, vocab_config: VocabConfig, embeddings_config: EmbeddingsConfig,
        encoder_config: EncoderConfig, model_config: ModelConfig, config: TrainConfig,
        rank: int, world_size: int, device: torch.device) -> None:
    """Train, validate, checkpoint and log every epoch; only rank 0 writes files."""
    vocab_path, embeddings_path, table_path = Path(vocab_config.path), Path(embeddings_config.matrix), Path(dataset.table)
    vocabulary = Vocabulary.from_json(vocab_path)
    store = FeatureStore(encoder_config.cache)
    table = read_captions(table_path)
    train_table, val_table = table[table["split"] == "train"], table[table["split"] == "val"]
    if train_table.empty or val_table.empty:
        raise ValueError(f"{table_path} needs train and val captions (early stopping uses val); "
                         "check dataset.split_ratios / split_files")
    features = FeatureMatrix(store, pd.concat([train_table, val_table])["image"], device)
    train_set = encode_captions(train_table, vocabulary, features.rows, model_config.max_caption_length)
    val_set = encode_captions(val_table, vocabulary, features.rows, model_config.max_caption_length)
    val_batches = bucket_batches(val_set.lengths, config.batch_size, torch.Generator().manual_seed(0))
    val_references = references_by_image(val_table)
    val_names = sorted(val_references)

    model = build_model(vocabulary, load_embeddings(embeddings_path, vocabulary), store.feature_dim,
                        model_config).to(device)
    model.set_feature_statistics(*features.statistics(train_set.image_rows))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                 weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_gamma)
    _, needs_scaler = autocast_for(device, config.amp)
    scaler = torch.amp.GradScaler(device.type) if needs_scaler else None
    identity = fingerprint([vocab_path, embeddings_path, table_path], store, model_config, config)

    state = {"epoch": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0}
    last_path, best_path = Path(config.last_checkpoint), Path(config.checkpoint)
    resumed = False
    if config.resume and last_path.is_file():
        last = torch.load(last_path, map_location=device, weights_only=True)
        if last.get("fingerprint") == identity and best_path.is_file():
            model.load_state_dict(last["model"])
            optimizer.load_state_dict(last["optimizer"])
            scheduler.load_state_dict(last["scheduler"])
            state = last["state"]
            resumed = True
            if rank == 0:
                print(f"train: resuming from {last_path} after epoch {state['epoch']}")
        elif rank == 0:
            print(f"train: {last_path} was made from other code, inputs or params; starting afresh")
    network = model
    if world_size > 1:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = EpochLog(config, resumed) if rank == 0 else None  # only rank 0 writes files

    higher_is_better = config.early_stopping == "bleu4"
    for epoch in range(state["epoch"], config.epochs):
        if state["bad_epochs"] >= config.patience:
            break
        torch.manual_seed(config.seed + epoch)  # dropout and batch order replay exactly on resume
        batches = bucket_batches(train_set.lengths, config.batch_size, torch.Generator().manual_seed(config.seed + epoch))
        train_stats = run_epoch(model, features, train_set, shard(batches, rank, world_size), config, device,
                                optimizer, scaler, network)
        with torch.no_grad():  # every process validates the same (synchronised) weights: same decisions
            val_stats = run_epoch(model, features, val_set, val_batches, config, device)
            greedy = describe_all(model, val_names, lambda names: features[features.rows_of(names)], vocabulary,
                                  search_options(vocabulary, 1, model_config.max_caption_length), batch_size=256)
        hypotheses = {name: caption.text for name, caption in greedy.items()}
        val_stats["bleu4"] = bleu4(val_references, hypotheses)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        score = val_stats["bleu4"] if higher_is_better else val_stats["loss"]
        best = state["best_score"]
        improved = best is None or (score > best if higher_is_better else score < best)
        state.update(epoch=epoch + 1, bad_epochs=0 if improved else state["bad_epochs"] + 1)
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1)
        if log is None:
            continue
        if improved:
            save_torch(best_path, checkpoint_payload(model, vocabulary.words, store.attrs, epoch=epoch + 1,
                                               val_bleu4=val_stats["bleu4"], val_loss=val_stats["loss"]))
        save_torch(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "state": state, "fingerprint": identity})
        samples = [f"{n}: {hypotheses[n]}  (ref: {val_references[n][0]})" for n in val_names[:config.num_samples]]
        log.epoch(epoch + 1, train_stats, val_stats, lr, samples, improved)

    if log is not None:
        log.close(state)
        print(f"train: best epoch {state['best_epoch']} of {state['epoch']} (val {config.early_stopping} "
              f"{state['best_score']:.4f}) -> {best_path}")


if __name__ == "__main__":
    main()
