"""The features of a set of images for training and evaluation: resident on the device when they
fit, else read from the HDF5 cache batch by batch."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from pipeline.encoder.feature_cache import FeatureStore


def available_memory(device: torch.device) -> int:
    """Bytes free on the device (GPU memory, or the host RAM available for a CPU run)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class FeatureMatrix:
    """The features of a set of images, resident on the device when they fit, else read per batch."""

    def __init__(self, store: FeatureStore, names: Sequence[str], device: torch.device,
                 memory_fraction: float = 0.5) -> None:
        self.store, self.device = store, device
        self.names = sorted(set(names))
        self.rows = {name: i for i, name in enumerate(self.names)}  # local row of each image
        self._store_rows = np.array(store.rows_of(self.names))
        self.resident = store.fits_in_memory(int(memory_fraction * available_memory(device)), len(self.names))
        self._data = store.load(self._store_rows).to(device) if self.resident else None  # (N, P, E)

    def rows_of(self, names: Sequence[str]) -> torch.Tensor:
        """Local rows (R,) of the named images."""
        return torch.tensor([self.rows[name] for name in names], dtype=torch.long)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        """Features (B, P, E) of local rows, on the device, in their stored dtype."""
        if self._data is not None:
            return self._data[rows.to(self.device)]
        wanted = self._store_rows[rows.cpu().numpy()]
        return self.store[wanted].to(self.device, non_blocking=True)

    def statistics(self, rows: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (E,) over all regions of the given images, in float64."""
        total = torch.zeros(self.store.feature_dim, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        count = 0
        for part in rows.unique().split(chunk):
            x = self[part].double().flatten(0, 1)  # (B*P, E)
            total += x.sum(0)
            squares += (x * x).sum(0)
            count += x.size(0)
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), std.float()
