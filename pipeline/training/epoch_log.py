"""Per-epoch metrics to dvclive (DVC metrics and plots), TensorBoard and the console."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from dvclive import Live
from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)


SAMPLES_FILE = "samples.txt"  # greedy captions of a few validation images, every epoch


class EpochLog:
    """One run's per-epoch log: scores to dvclive and TensorBoard, a line and samples to the console."""

    def __init__(self, log_dir: str | Path, metrics_dir: str | Path, resumed: bool) -> None:
        if not resumed:
            shutil.rmtree(log_dir, ignore_errors=True)
        self.live = Live(str(metrics_dir), resume=resumed, save_dvc_exp=False, dvcyaml=None)
        self.writer = SummaryWriter(str(log_dir))
        self.samples = Path(metrics_dir) / SAMPLES_FILE
        if not resumed:
            self.samples.unlink(missing_ok=True)

    def epoch(self, epoch: int, scores: dict[str, float], samples: list[str], line: str,
              timings: dict[str, float] | None = None) -> None:
        """Log `scores` ({"train/loss": ..., "val/cider": ...}) everywhere, `timings` to TensorBoard only
        (DVC's metrics stay the same run after run), the samples, and print `line` and the samples."""
        for name, value in scores.items():
            self.live.log_metric(name, value)
            self.writer.add_scalar(name, value, epoch)
        for name, value in (timings or {}).items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.add_text("val/samples", "  \n".join(samples), epoch)
        self.live.next_step()
        with self.samples.open("a", encoding="utf-8") as handle:
            handle.write(f"epoch {epoch}\n" + "".join(f"  {sample}\n" for sample in samples))
        logger.info(line)
        for sample in samples:
            logger.info(f"  {sample}")

    def close(self, summary: dict[str, Any]) -> None:
        """Write the run's summary (best epoch, epochs run, best score) and close the writers."""
        self.live.summary.update(summary)
        self.live.make_summary()
        self.live.end()
        self.writer.close()
