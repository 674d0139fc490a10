"""A training run that survives interruptions: its progress, early stopping, and its best.pt / last.pt.

Shared by the `train` and `scst` stages. Each epoch the stage writes `last.pt` (weights, optimiser,
scheduler, gradient scaler, the `Progress`, and the stage's identity) and, when the validation score
improved, `best.pt`. A rerun continues `last.pt` only when it is the same run:

- `pipeline.identity.stage_identity` hashes what dvc.yaml declares for the stage, so `last.pt` is
  continued only when DVC would consider the stage's inputs unchanged, except for the stage's
  `epochs` and `patience`, which may change between an interruption and its resumption:
  `can_continue` replays the recorded early-stopping decisions under the new values, so a run may be
  continued (more epochs, more patience) but never stand in for a shorter one;
- `best.pt` must be the best epoch `last.pt` records (a kill between the two writes, or a replaced
  file, starts afresh).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.files import save_torch
from pipeline.model.checkpoint import read_payload


@dataclasses.dataclass
class Progress:
    """What a run has done: epochs finished, each one's validation score, and the best of them."""

    epoch: int = 0
    scores: list[float] = dataclasses.field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = 0  # 0: none of the epochs beat the start
    start_score: float | None = None  # the model's score before the first epoch, when it competes (scst)

    @classmethod
    def starting_at(cls, score: float | None) -> Progress:
        """A run whose starting model scored `score` (None: no starting model competes)."""
        return cls(best_score=score, start_score=score)

    def as_dict(self) -> dict[str, Any]:
        """As stored in last.pt under "state"."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Progress:
        return cls(int(state["epoch"]), [float(s) for s in state["scores"]], state["best_score"],
                   int(state["best_epoch"]), state.get("start_score"))


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Keep the best epoch by a validation score; stop after `patience` epochs without a better one."""

    patience: int
    higher_is_better: bool  # CIDEr and BLEU rise, a loss falls

    def improves(self, score: float, best: float | None) -> bool:
        """Whether `score` beats `best` (any score beats none)."""
        return best is None or (score > best if self.higher_is_better else score < best)

    def record(self, progress: Progress, score: float) -> bool:
        """Add one finished epoch's score to `progress`; whether it is the new best."""
        better = self.improves(score, progress.best_score)
        progress.scores.append(score)
        progress.epoch += 1
        if better:
            progress.best_score, progress.best_epoch = score, progress.epoch
        return better

    def stopped(self, progress: Progress) -> bool:
        """Whether the run has gone `patience` epochs without a better score."""
        return len(progress.scores) - progress.best_epoch >= self.patience

    def stop_epoch(self, scores: list[float], start_score: float | None = None) -> int | None:
        """The epoch (1-based) after which this early stopping ends a run with these scores (and this
        starting score), if any."""
        replay = Progress.starting_at(start_score)
        for score in scores:
            self.record(replay, score)
            if self.stopped(replay):
                return replay.epoch
        return None


def can_continue(scores: list[float], epochs: int, stopping: EarlyStopping, keys: str = "train",
                 start_score: float | None = None) -> str | None:
    """Why a run that recorded these per-epoch scores cannot be continued under (epochs, stopping), or None.
    `keys` is the params section, named in the reason."""
    done = len(scores)
    if done > epochs:
        return f"it ran {done} epochs, more than {keys}.epochs = {epochs}"
    stopped = stopping.stop_epoch(scores, start_score)
    if stopped is not None and stopped < done:
        return f"with {keys}.patience = {stopping.patience} it would have stopped after epoch {stopped}, not {done}"
    return None


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A stage's best.pt and last.pt, and the params section that names them (for messages)."""

    best: Path
    last: Path
    section: str  # "train" or "scst": its checkpoint, last_checkpoint, epochs and patience keys

    def resume_point(self, identity: str, resume: bool, epochs: int,
                     stopping: EarlyStopping) -> tuple[dict[str, Any] | None, str]:
        """The last.pt payload to continue, or None and why not."""
        if not resume or not self.last.is_file():
            return None, "no last.pt to continue" if resume else f"{self.section}.resume is false"
        if not self.best.is_file():
            return None, f"{self.best} is missing"
        try:
            last, best = read_payload(self.last), read_payload(self.best)
        except InputError as error:
            return None, str(error)
        if not isinstance(last, dict) or last.get("identity") != identity:
            return None, f"{self.last} was made from other code, inputs or params"
        best_epoch = last["state"]["best_epoch"]
        if not isinstance(best, dict) or best.get("epoch") != best_epoch:
            return None, (f"{self.best} is not the best epoch ({best_epoch}) of the run in {self.last}; "
                          "it was replaced or written by an interrupted epoch")
        why = can_continue(last["state"]["scores"], epochs, stopping, self.section, last["state"].get("start_score"))
        return (None, f"{self.last} cannot be continued: {why}") if why else (last, "")

    def save_best(self, best: dict[str, Any]) -> None:
        """Write best.pt atomically."""
        save_torch(self.best, best, f"{self.section}.checkpoint")

    def save(self, last: dict[str, Any], best: dict[str, Any] | None) -> None:
        """Write best.pt (when the epoch improved) and then last.pt, each atomically."""
        if best is not None:
            self.save_best(best)
        save_torch(self.last, last, f"{self.section}.last_checkpoint")


STATE_PARTS = ("model", "optimizer", "scheduler", "scaler")  # what last.pt holds beside the progress


@dataclasses.dataclass
class Run:
    """One stage's training run: its files, its early stopping, its identity, what it has done, and the
    last.pt it continues (None when it started afresh)."""

    files: RunFiles
    stopping: EarlyStopping
    identity: str
    progress: Progress
    continued: dict[str, Any] | None

    @classmethod
    def open(cls, files: RunFiles, stopping: EarlyStopping, identity: str, resume: bool,
             epochs: int) -> tuple[Run, str]:
        """The run to continue from last.pt, or a fresh one; and why it starts afresh."""
        last, reason = files.resume_point(identity, resume, epochs, stopping)
        progress = Progress.from_dict(last["state"]) if last else Progress()
        return cls(files, stopping, identity, progress, last), reason

    def finished(self, epochs: int) -> bool:
        """Whether the continued run has nothing left to train under `epochs`."""
        return self.continued is not None and (self.progress.epoch >= epochs or self.stopping.stopped(self.progress))

    def restore(self, *parts: Any) -> None:
        """Load the model, optimiser, scheduler and scaler (in STATE_PARTS order) from last.pt, if continued."""
        if self.continued is not None:
            for part, name in zip(parts, STATE_PARTS):
                part.load_state_dict(self.continued[name])

    def save(self, parts: tuple[Any, ...], best: dict[str, Any] | None) -> None:
        """Write best.pt when given, then last.pt: the parts' states (STATE_PARTS order), progress and identity."""
        last = {name: part.state_dict() for part, name in zip(parts, STATE_PARTS)}
        self.files.save({**last, "state": self.progress.as_dict(), "identity": self.identity}, best)
