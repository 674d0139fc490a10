"""Per-epoch metrics to dvclive (DVC metrics and plots), TensorBoard and the console."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from dvclive import Live
from torch.utils.tensorboard import SummaryWriter

from pipeline.config import TrainConfig

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.txt"  # greedy captions of a few validation images, every epoch


class EpochLog:
    """Per-epoch metrics to dvclive (DVC metrics and plots), TensorBoard and the console."""

    def __init__(self, config: TrainConfig, resumed: bool) -> None:
        if not resumed:
            shutil.rmtree(config.log_dir, ignore_errors=True)
        self.config = config
        self.live = Live(config.metrics_dir, resume=resumed, save_dvc_exp=False, dvcyaml=None)
        self.writer = SummaryWriter(config.log_dir)
        self.samples = Path(config.metrics_dir) / SAMPLES_FILE
        if not resumed:
            self.samples.unlink(missing_ok=True)

    def epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float], lr: float,
              samples: list[str], improved: bool) -> None:
        for name, value in [("train/loss", train_stats["loss"]), ("train/cross_entropy", train_stats["cross_entropy"]),
                            ("val/loss", val_stats["loss"]), ("val/cross_entropy", val_stats["cross_entropy"]),
                            ("val/bleu4", val_stats["bleu4"]), ("val/cider", val_stats["cider"]), ("lr", lr)]:
            self.live.log_metric(name, value)
            self.writer.add_scalar(name, value, epoch)
        self.writer.add_scalar("train/tokens_per_s", train_stats["tokens_per_s"], epoch)
        self.writer.add_text("val/samples", "  \n".join(samples), epoch)
        self.live.next_step()
        with self.samples.open("a", encoding="utf-8") as handle:
            handle.write(f"epoch {epoch}\n" + "".join(f"  {sample}\n" for sample in samples))
        logger.info(f"epoch {epoch}/{self.config.epochs}: train loss {train_stats['loss']:.3f}, val loss "
                    f"{val_stats['loss']:.3f}, val BLEU-4 {val_stats['bleu4']:.3f}, "
                    f"val CIDEr {val_stats['cider']:.3f}, {train_stats['tokens_per_s']:.0f} tokens/s"
                    f"{' *' if improved else ''}")
        for sample in samples:
            logger.info(f"  {sample}")

    def close(self, state: dict[str, Any]) -> None:
        self.live.summary.update({"best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                                  f"best_val_{self.config.early_stopping}": state["best_score"]})
        self.live.make_summary()
        self.live.end()
        self.writer.close()
