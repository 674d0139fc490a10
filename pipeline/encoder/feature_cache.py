"""The feature cache written by the `features` stage, and its read side.

Layout of the cache file (`encoder.cache`, features.h5):
- `features`: (N, P, E) float16 or float32, one chunk per image, uncompressed;
- `images`: (N,) UTF-8 image names, row i of `features` belongs to `images[i]`;
- attrs: the encoder's provenance (architecture, weights, image_size, grid, feature_dim, dtype,
  library versions, images_sha256).

`FeatureStore` opens it read-only. `load()` reads it (or some rows) into memory; indexing
(`store[rows]`) streams rows through a handle opened lazily once per process, so each DataLoader
worker reads through its own handle.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch

FEATURES = "features"  # dataset (N, P, E)
IMAGES = "images"  # dataset (N,) of names

Rows = int | slice | Sequence[int] | np.ndarray | torch.Tensor


class FeatureStoreError(ValueError):
    """The feature cache exists but is not what the readers expect."""


def plain_attr(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def create_layout(file: h5py.File, names: Sequence[str], num_regions: int, feature_dim: int, dtype: str,
                  attrs: dict[str, Any]) -> h5py.Dataset:
    """Create the empty cache layout in an open, writable file; returns the (N, P, E) dataset to fill."""
    shape = (len(names), num_regions, feature_dim)  # (N, P, E)
    # one image per chunk: a reader fetching any row touches only that row
    features = file.create_dataset(FEATURES, shape=shape, dtype=dtype, chunks=(1, *shape[1:]) if names else None)
    file.create_dataset(IMAGES, data=np.array(list(names), dtype=object), dtype=h5py.string_dtype("utf-8"))
    file.attrs.update(attrs)
    return features


class FeatureStore:
    """Read-only access to a feature cache: names, provenance, and (N, P, E) features."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"feature cache {self.path} not found; run `dvc repro features` "
                                    f"(or `dvc pull features` to fetch it from the DVC remote)")
        try:
            file = h5py.File(self.path, "r")
        except OSError as error:
            raise FeatureStoreError(f"{self.path} is not a readable HDF5 file ({error}); "
                                    f"rerun `dvc repro features`") from error
        with file:
            missing = [name for name in (FEATURES, IMAGES) if name not in file]
            if missing:
                raise FeatureStoreError(f"{self.path} is not a feature cache: dataset(s) {', '.join(missing)} "
                                        f"missing; rerun `dvc repro features`")
            features = file[FEATURES]
            self.shape: tuple[int, int, int] = tuple(features.shape)  # (N, P, E)
            self.dtype = np.dtype(features.dtype)
            self.names: list[str] = list(file[IMAGES].asstr()[()])
            self.attrs: dict[str, Any] = {key: plain_attr(value) for key, value in file.attrs.items()}
        if len(self.shape) != 3 or len(self.names) != self.shape[0]:
            raise FeatureStoreError(f"{self.path}: features of shape {self.shape} do not match "
                                    f"{len(self.names)} image names; rerun `dvc repro features`")
        self.index: dict[str, int] = {name: row for row, name in enumerate(self.names)}
        self._handle: tuple[int, h5py.File] | None = None  # (process id, open file)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def num_regions(self) -> int:
        """P, regions per image."""
        return self.shape[1]

    @property
    def feature_dim(self) -> int:
        """E, features per region."""
        return self.shape[2]

    @property
    def grid(self) -> int:
        """G, the side of the square region grid (P = G * G)."""
        return math.isqrt(self.num_regions)

    @property
    def itemsize(self) -> int:
        """Bytes per stored value (2 for float16, 4 for float32)."""
        return self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes the whole cache takes in memory."""
        return math.prod(self.shape) * self.itemsize

    def fits_in_memory(self, budget_bytes: int, num_rows: int | None = None) -> bool:
        """Whether `load()` of the whole cache (or of `num_rows` rows) stays within `budget_bytes`."""
        rows = len(self) if num_rows is None else num_rows
        return rows * self.num_regions * self.feature_dim * self.itemsize <= budget_bytes

    def rows_of(self, names: Sequence[str]) -> list[int]:
        """Rows of the named images, with an error naming the first one that is not cached."""
        missing = [name for name in names if name not in self.index]
        if missing:
            raise FeatureStoreError(f"{self.path} has no features for image '{missing[0]}' "
                                    f"({len(missing)} missing); rerun `dvc repro features`")
        return [self.index[name] for name in names]

    def load(self, rows: Rows | None = None) -> torch.Tensor:
        """Read all rows (N, P, E), or the given ones, into memory, in the stored dtype."""
        with h5py.File(self.path, "r") as file:
            return _read(file[FEATURES], rows)

    def __getitem__(self, rows: Rows) -> torch.Tensor:
        """Stream rows: an int gives (P, E), a slice or sequence gives (R, P, E)."""
        return _read(self._features(), rows)

    def _features(self) -> h5py.Dataset:
        """The features dataset through this process's own handle, opened on first use."""
        pid = os.getpid()
        if self._handle is None or self._handle[0] != pid:
            # a handle inherited from a parent process (forked DataLoader worker) must not be used
            self._handle = (pid, h5py.File(self.path, "r"))
        return self._handle[1][FEATURES]

    def close(self) -> None:
        """Close this process's handle, if open."""
        if self._handle is not None and self._handle[0] == os.getpid():
            self._handle[1].close()
        self._handle = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # an open HDF5 handle cannot be pickled (spawned workers); each process opens its own
        return {**self.__dict__, "_handle": None}


def _read(dataset: h5py.Dataset, rows: Rows | None) -> torch.Tensor:
    """Read rows of an (N, P, E) dataset; arbitrary row lists are read in sorted order."""
    if rows is None:
        return torch.from_numpy(dataset[()])  # (N, P, E)
    if isinstance(rows, (int, np.integer, slice)):
        return torch.from_numpy(dataset[rows])  # (P, E) or (R, P, E)
    wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        return torch.from_numpy(np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype))
    if wanted.min() < 0 or wanted.max() >= dataset.shape[0]:
        raise IndexError(f"feature rows must lie in [0, {dataset.shape[0]}), got {wanted.min()}..{wanted.max()}")
    # HDF5 reads a selection fastest, and h5py only accepts one, in increasing order without repeats
    unique, inverse = np.unique(wanted, return_inverse=True)
    return torch.from_numpy(dataset[unique][inverse])  # (R, P, E)
