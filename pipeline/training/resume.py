"""Resuming training only where it is the same run.

`pipeline.identity.stage_identity` hashes what dvc.yaml declares for `train`, so `last.pt` is
continued only when DVC would consider the stage's inputs unchanged, with two exceptions that may
change between an interruption and its resumption: `train.epochs` and `train.patience`. For those,
`can_continue` replays the early stopping decisions recorded in `last.pt` under the new values: a run
may be continued (more epochs, more patience) but never stand in for a shorter one.
"""
from __future__ import annotations


def stop_epoch(scores: list[float], patience: int, higher_is_better: bool) -> int | None:
    """The epoch (1-based) after which early stopping with `patience` ends a run with these scores, if any."""
    best, bad = None, 0
    for epoch, score in enumerate(scores, start=1):
        if best is None or (score > best if higher_is_better else score < best):
            best, bad = score, 0
        else:
            bad += 1
        if bad >= patience:
            return epoch
    return None


def can_continue(scores: list[float], epochs: int, patience: int, higher_is_better: bool) -> str | None:
    """Why a run that recorded these per-epoch scores cannot be continued under (epochs, patience), or None."""
    done = len(scores)
    if done > epochs:
        return f"it ran {done} epochs, more than train.epochs = {epochs}"
    stopped = stop_epoch(scores, patience, higher_is_better)
    if stopped is not None and stopped < done:
        return f"with train.patience = {patience} it would have stopped after epoch {stopped}, not {done}"
    return None
