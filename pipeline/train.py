"""Stage `train`: fit the attention decoder on the cached features with teacher forcing.

    data/features/features.h5, data/prepared/captions.csv, data/vocab/vocab.json,
    data/embeddings/embeddings.npy -> data/train/best.pt, data/train/last.pt,
    metrics/train (dvclive metrics and per-epoch plots), data/train/tensorboard

Adam with weight decay, StepLR, gradient clipping, cross-entropy + doubly stochastic attention
penalty, early stopping on the validation split (greedy BLEU-4, or loss). Every epoch writes
`last.pt` (model, optimiser, scheduler, early-stopping state); a rerun with the same inputs and
params resumes from it, so an interrupted run loses at most one epoch. `best.pt` holds the best
epoch's weights with everything `evaluate` and `caption` need to rebuild the model.

Run: python -m pipeline.train
     torchrun --nproc_per_node N -m pipeline.train   # DistributedDataParallel over N GPUs (or CPU
                                                     # processes with gloo); train.batch_size is per process
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from dvclive import Live
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from pipeline.config import (DatasetConfig, EmbeddingsConfig, EncoderConfig, ModelConfig, TrainConfig,
                             VocabConfig, load_section)
from pipeline.data import (EncodedCaptions, FeatureMatrix, bucket_batches, caption_images, encode_captions,
                           references_by_image)
from pipeline.feature_store import FeatureStore, features_path
from pipeline.model import BEST_CHECKPOINT, CaptionDecoder, DecoderConfig, caption_loss, checkpoint_payload
from pipeline.prepared import captions_path, read_captions
from pipeline.scoring import bleu4
from pipeline.text import Vocabulary
from pipeline.utils import atomic_path, resolve_device, seed_everything

METRICS_DIR = "metrics/train"  # dvclive: metrics.json and plots/metrics/*.tsv, declared in dvc.yaml
SAMPLES_FILE = "samples.txt"  # greedy captions of a few validation images, every epoch
# params that may change between an interrupted run and its resumption
RESUMABLE_KEYS = {"epochs", "patience", "resume", "device", "num_samples", "out_dir", "log_dir"}


# ----------------------------------------------------------------------------------------------
# pieces


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 runs faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_for(device: torch.device, amp: str) -> tuple[contextlib.AbstractContextManager, bool]:
    """The autocast context for `train.amp`, and whether fp16 gradient scaling is needed.

    `auto` is bf16 on CUDA and on CPUs with native bf16 arithmetic, else full precision.
    """
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    if amp == "fp32":
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), amp == "fp16"


def load_embeddings(path: Path, vocabulary: Vocabulary) -> torch.Tensor:
    """The (V, D) embedding matrix, checked against the vocabulary."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embeddings not found; run `dvc repro embeddings` first")
    matrix = torch.from_numpy(np.load(path))
    if matrix.ndim != 2 or matrix.size(0) != len(vocabulary):
        raise ValueError(f"{path} has shape {tuple(matrix.shape)} but the vocabulary has {len(vocabulary)} words; "
                         "rerun `dvc repro embeddings`")
    return matrix


def build_model(vocabulary: Vocabulary, embeddings: torch.Tensor, feature_dim: int,
                config: ModelConfig) -> CaptionDecoder:
    """The decoder with its embedding initialised from the matrix, frozen unless fine-tuned."""
    model = CaptionDecoder(DecoderConfig(
        vocab_size=len(vocabulary), embed_dim=embeddings.size(1), encoder_dim=feature_dim,
        attention_dim=config.attention_dim, decoder_dim=config.decoder_dim, dropout=config.dropout,
        pad_index=vocabulary.pad))
    with torch.no_grad():
        model.embedding.weight.copy_(embeddings)
    model.embedding.weight.requires_grad_(config.fine_tune_embeddings)
    return model


def start_processes(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when started by torchrun."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(device_name)
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def shard(batches: list[torch.Tensor], rank: int, world_size: int) -> list[torch.Tensor]:
    """This process's batches: every world_size-th one, the same count on every process."""
    usable = len(batches) // world_size * world_size or len(batches)
    return batches[:usable][rank::world_size]


def run_epoch(model: CaptionDecoder, features: FeatureMatrix, captions: EncodedCaptions, batches: list[torch.Tensor],
              config: TrainConfig, device: torch.device, optimizer: torch.optim.Optimizer | None = None,
              scaler: torch.amp.GradScaler | None = None, network: torch.nn.Module | None = None) -> dict[str, float]:
    """One pass over `batches`: a training epoch with an optimizer, else a validation loss.

    `network` is the module to call (the DistributedDataParallel wrapper of `model`), if any.
    """
    training = optimizer is not None
    model.train(training)
    network = network or model
    autocast, _ = autocast_for(device, config.amp)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed over real tokens: loss, cross-entropy
    tokens_seen, started = 0, time.perf_counter()
    for batch in batches:
        length = int(captions.lengths[batch].max())
        tokens = captions.tokens[batch, :length].to(device, non_blocking=True)  # (B, T)
        x = features[captions.image_rows[batch]]  # (B, P, E)
        with torch.set_grad_enabled(training), autocast:
            logits, alphas = network(x, tokens)  # (B, T-1, V), (B, T-1, P)
            loss, cross_entropy = caption_loss(logits, tokens[:, 1:], alphas, model.config.pad_index,
                                               config.attention_penalty)
        if training:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        real = int((captions.lengths[batch] - 1).sum())  # targets that are not PAD, counted on the host
        totals += torch.stack([loss.detach(), cross_entropy.detach()]).double() * real  # stays on the device
        tokens_seen += real
    loss, cross_entropy = (totals / max(tokens_seen, 1)).tolist()  # the epoch's one synchronisation
    seconds = time.perf_counter() - started
    return {"loss": loss, "cross_entropy": cross_entropy, "tokens_per_s": tokens_seen / seconds}


def pipeline_sources() -> list[Path]:
    """The source files of every pipeline module this process has imported, this one included."""
    imported = {Path(module.__file__).resolve() for name, module in list(sys.modules.items())
                if name.split(".")[0] == "pipeline" and getattr(module, "__file__", None)}
    return sorted(imported | {Path(__file__).resolve()})  # run as `-m`, this module is __main__


def fingerprint(paths: list[Path], store: FeatureStore, *configs: Any) -> str:
    """Identity of the training code, inputs and params, so a stale last.pt is never resumed.

    A rerun resumes only what an interruption stopped: after a change of the code, the data or a
    param other than RESUMABLE_KEYS, training starts afresh, as DVC expects of a changed stage.
    """
    digest = hashlib.sha256()
    for path in [*pipeline_sources(), *paths]:
        digest.update(path.read_bytes())
    digest.update("\n".join(store.names).encode())
    digest.update(json.dumps(store.attrs, sort_keys=True, default=str).encode())
    for config in configs:
        values = {k: v for k, v in dataclasses.asdict(config).items()
                  if not (isinstance(config, TrainConfig) and k in RESUMABLE_KEYS)}
        digest.update(json.dumps(values, sort_keys=True).encode())
    return digest.hexdigest()


def save(path: Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# ----------------------------------------------------------------------------------------------
# the recipe


def main() -> None:
    dataset, vocab_config = load_section(DatasetConfig), load_section(VocabConfig)
    embeddings_config, encoder_config = load_section(EmbeddingsConfig), load_section(EncoderConfig)
    model_config, config = load_section(ModelConfig), load_section(TrainConfig)
    seed_everything(config.seed)
    rank, world_size, device = start_processes(config.device)
    try:
        fit(dataset, vocab_config, embeddings_config, encoder_config, model_config, config, rank, world_size, device)
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def fit(dataset: DatasetConfig, vocab_config: VocabConfig, embeddings_config: EmbeddingsConfig,
        encoder_config: EncoderConfig, model_config: ModelConfig, config: TrainConfig,
        rank: int, world_size: int, device: torch.device) -> None:
    """Train, validate, checkpoint and log every epoch; only rank 0 writes files."""
    out_dir = Path(config.out_dir)

    vocab_path = Path(vocab_config.out_dir) / "vocab.json"
    embeddings_path = Path(embeddings_config.out_dir) / "embeddings.npy"
    table_path = captions_path(dataset.out_dir)
    vocabulary = Vocabulary.from_json(vocab_path)
    store = FeatureStore(features_path(encoder_config.out_dir))
    table = read_captions(dataset.out_dir)
    train_table, val_table = table[table["split"] == "train"], table[table["split"] == "val"]
    if train_table.empty or val_table.empty:
        raise ValueError(f"{table_path} needs train and val captions (early stopping uses val); "
                         "check dataset.split_ratios / split_files")
    features = FeatureMatrix(store, pd.concat([train_table, val_table])["image"], device)
    train_set = encode_captions(train_table, vocabulary, features.rows, vocab_config.max_caption_length)
    val_set = encode_captions(val_table, vocabulary, features.rows, vocab_config.max_caption_length)
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
    last_path, best_path = out_dir / "last.pt", out_dir / BEST_CHECKPOINT
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
            greedy = caption_images(model, features, val_names, vocabulary, 1, vocab_config.max_caption_length,
                                    batch_size=256)
        hypotheses = {name: " ".join(words) for name, (words, _) in greedy.items()}
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
            save(best_path, checkpoint_payload(model, vocabulary.words, store.attrs, epoch=epoch + 1,
                                               val_bleu4=val_stats["bleu4"], val_loss=val_stats["loss"]))
        save(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "state": state, "fingerprint": identity})
        samples = [f"{n}: {hypotheses[n]}  (ref: {val_references[n][0]})" for n in val_names[:config.num_samples]]
        log.epoch(epoch + 1, train_stats, val_stats, lr, samples, improved)

    if log is not None:
        log.close(state)
        print(f"train: best epoch {state['best_epoch']} of {state['epoch']} (val {config.early_stopping} "
              f"{state['best_score']:.4f}) -> {best_path}")


class EpochLog:
    """Per-epoch metrics to dvclive (DVC metrics and plots), TensorBoard and the console."""

    def __init__(self, config: TrainConfig, resumed: bool) -> None:
        if not resumed:
            shutil.rmtree(config.log_dir, ignore_errors=True)
        self.config = config
        self.live = Live(METRICS_DIR, resume=resumed, save_dvc_exp=False, dvcyaml=None)
        self.writer = SummaryWriter(config.log_dir)
        self.samples = Path(METRICS_DIR) / SAMPLES_FILE
        if not resumed:
            self.samples.unlink(missing_ok=True)

    def epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float], lr: float,
              samples: list[str], improved: bool) -> None:
        for name, value in [("train/loss", train_stats["loss"]), ("train/cross_entropy", train_stats["cross_entropy"]),
                            ("val/loss", val_stats["loss"]), ("val/cross_entropy", val_stats["cross_entropy"]),
                            ("val/bleu4", val_stats["bleu4"]), ("lr", lr)]:
            self.live.log_metric(name, value)
            self.writer.add_scalar(name, value, epoch)
        self.writer.add_scalar("train/tokens_per_s", train_stats["tokens_per_s"], epoch)
        self.writer.add_text("val/samples", "  \n".join(samples), epoch)
        self.live.next_step()
        with self.samples.open("a", encoding="utf-8") as handle:
            handle.write(f"epoch {epoch}\n" + "".join(f"  {sample}\n" for sample in samples))
        print(f"epoch {epoch}/{self.config.epochs}: train loss {train_stats['loss']:.3f}, val loss "
              f"{val_stats['loss']:.3f}, val BLEU-4 {val_stats['bleu4']:.3f}, "
              f"{train_stats['tokens_per_s']:.0f} tokens/s{' *' if improved else ''}", flush=True)
        for sample in samples:
            print(f"  {sample}", flush=True)

    def close(self, state: dict[str, Any]) -> None:
        self.live.summary.update({"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                                  f"best_val_{self.config.early_stopping}": state["best_score"]})
        self.live.make_summary()
        self.live.end()
        self.writer.close()


if __name__ == "__main__":
    main()
