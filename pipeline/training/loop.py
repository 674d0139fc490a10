"""The training pieces: the model from the vocabulary and embeddings, its optimiser, one epoch, a process's share."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config import ModelConfig, TrainConfig
from pipeline.encoder.feature_matrix import FeatureMatrix
from pipeline.errors import InputError
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig, caption_loss
from pipeline.runtime import Processes
from pipeline.text import Vocabulary
from pipeline.training.batches import EncodedCaptions
from pipeline.training.precision import autocast_for


def load_embeddings(path: Path, vocabulary: Vocabulary) -> torch.Tensor:
    """The (V, D) embedding matrix, checked against the vocabulary."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: embeddings not found; run `dvc repro embeddings` first")
    try:
        matrix = torch.from_numpy(np.load(path))
    except (ValueError, EOFError, OSError, TypeError) as error:  # cut off, or not a .npy array
        raise InputError(f"{path} cannot be read as an embedding matrix ({type(error).__name__}: {error}); "
                         "rerun `dvc repro embeddings`") from error
    if matrix.ndim != 2 or matrix.size(0) != len(vocabulary):
        raise InputError(f"{path} has shape {tuple(matrix.shape)} but the vocabulary has {len(vocabulary)} words; "
                         "rerun `dvc repro embeddings`")
    return matrix


def build_model(vocabulary: Vocabulary, embeddings: torch.Tensor, feature_dim: int,
                config: ModelConfig) -> CaptionDecoder:
    """The decoder of params.yaml's `model` section, its embedding initialised from the matrix, frozen
    unless fine-tuned."""
    model = build_decoder(DecoderConfig.from_params(config, len(vocabulary), embeddings.size(1), feature_dim,
                                                    vocabulary.pad))
    with torch.no_grad():
        model.embedding.weight.copy_(embeddings)
    model.embedding.weight.requires_grad_(config.fine_tune_embeddings)
    return model


Optimisers = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]


def make_optimisers(model: CaptionDecoder, lr: float, weight_decay: float, step_epochs: int, gamma: float,
                    device: torch.device, amp: str) -> Optimisers:
    """Adam over the trainable weights, StepLR, and the gradient scaler fp16 needs (disabled otherwise).

    Adam is the fused implementation on the CPU and CUDA: one pass over each weight per step, where the
    default CPU implementation makes several (a third of the time on the 18 M weights of the seed's
    decoder; docs/speed.md). The same update, to float rounding."""
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_epochs, gamma)
    _, needs_scaler = autocast_for(device, amp)
    return optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=needs_scaler)


class NoUpdate:
    """An optimizer that changes nothing: a trial batch runs forward and backward, the weights stay."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        pass


def shard(batches: list[torch.Tensor], rank: int, world_size: int) -> list[torch.Tensor]:
    """This process's part of each global batch (every world_size-th caption of it).

    Every process gets the same number of batches, each non-empty (a DDP step needs every process),
    so a global batch with fewer captions than processes is left out.
    """
    if world_size == 1:
        return batches
    return [batch[rank::world_size] for batch in batches if batch.numel() >= world_size]


def update(model: torch.nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler, grad_clip: float, summed_over: Processes | None = None) -> None:
    """One optimiser step on `loss`: backward (scaled for fp16; a disabled scaler passes through), the
    gradients summed over `summed_over`'s processes when given (where no DistributedDataParallel
    wrapper does it), their norm clipped to `grad_clip`, then the step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if summed_over is not None and summed_over.world_size > 1:
        for parameter in model.parameters():
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def run_epoch(model: CaptionDecoder, features: FeatureMatrix, captions: EncodedCaptions, batches: list[torch.Tensor],
              config: TrainConfig, device: torch.device, optimizer: torch.optim.Optimizer | None = None,
              scaler: torch.amp.GradScaler | None = None, network: torch.nn.Module | None = None,
              world_size: int = 1, progress: str | None = None) -> dict[str, float]:
    """One pass over global `batches`: a training epoch with an optimizer, else a validation loss.

    Each process takes its share of every batch (`shard`); `network` is the module to call (the
    DistributedDataParallel wrapper of `model`), if any. Each process's loss is weighted by its
    share of the batch's tokens, so the averaged gradient is the token mean over the whole global
    batch, as one process would compute it. Returns token-mean loss and cross-entropy over all
    processes, and this process's tokens/s. With `progress`, a progress bar of that name.
    """
    training = optimizer is not None
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train(training)
    network = network or model
    autocast, _ = autocast_for(device, config.amp)
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # summed over real tokens: loss, cross-entropy
    tokens_seen, started = 0, time.perf_counter()
    global_tokens = [int((captions.lengths[b] - 1).sum()) for b in batches if b.numel() >= world_size]
    mine = shard(batches, rank, world_size)
    if hasattr(features, "prefetch"):  # streamed features: read the batches ahead, in the order asked for
        features.prefetch([captions.image_rows[batch] for batch in mine])
    with tqdm(total=sum(global_tokens), disable=progress is None, desc=progress, unit="tok", unit_scale=True,
              mininterval=1.0, leave=False) as bar:
        for batch, batch_tokens in zip(mine, global_tokens):
            length = int(captions.lengths[batch].max())
            tokens = captions.tokens[batch, :length].to(device, non_blocking=True)  # (B, T)
            x = features[captions.image_rows[batch]]  # (B, P, E)
            real = int((captions.lengths[batch] - 1).sum())  # targets that are not PAD, counted on the host
            with torch.set_grad_enabled(training), autocast:
                logits, alphas = network(x, tokens)  # (B, T-1, V), (B, T-1, P)
                loss, cross_entropy = caption_loss(logits, tokens[:, 1:], alphas, model.config.pad_index,
                                                   config.attention_penalty)
            if training:
                share = real * world_size / batch_tokens  # DDP averages over processes: weight by token share
                update(model, loss * share, optimizer, scaler, config.grad_clip)
            totals += torch.stack([loss.detach(), cross_entropy.detach()]).double() * real  # stays on the device
            tokens_seen += real
            bar.update(batch_tokens)
    totals = torch.cat([totals, torch.tensor([float(tokens_seen)], dtype=torch.float64, device=device)])
    if world_size > 1:
        torch.distributed.all_reduce(totals)
    loss, cross_entropy, count = totals.tolist()  # the epoch's one synchronisation
    seconds = time.perf_counter() - started
    return {"loss": loss / max(count, 1), "cross_entropy": cross_entropy / max(count, 1),
            "tokens_per_s": tokens_seen / seconds}
