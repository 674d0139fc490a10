"""The feature cache written by the `features` stage, and its read side.

Layout of the cache file (`encoder.cache`, features.h5):
- `features`: (N, P, E) float16 or float32, one chunk per image, uncompressed;
- `images`: (N,) UTF-8 image names, row i of `features` belongs to `images[i]`;
- attrs: the encoder's provenance (architecture, weights, image_size, grid, feature_dim, dtype,
  library versions, images_sha256).

`FeatureStore` opens it read-only. `load()` reads it (or some rows) into memory; indexing
(`store[rows]`) streams rows through a handle opened lazily once per process, so each DataLoader
worker reads through its own handle.

Checked writes: HDF5 reports some write errors only when a file is closed, where h5py cannot raise
them, so a cache is read back before it is trusted: `verify_cache` reopens the file just written
read-only and checks its shape, its names and every row, against the `row_crc32` dataset (N,)
uint32 of per-row CRC-32s written beside the features (`row_checksums`), or, without it, that no
row reads back as all zeros (HDF5's fill value for a chunk that never reached the disk).

Checked reads: every row `FeatureStore` reads (and every row `FeatureMatrix` reads through it) is
checked against its CRC-32, so a cache damaged after it was written (a disk error, a bad copy or
download) stops the reader with `CorruptFeaturesError`, naming the file, the rows and their images,
instead of feeding it to a model. CRC-32 runs at about 3 GB/s on one core (benchmarks/README.md
has the cost). A cache without `row_crc32` (made before it existed) is read unchecked, said once
when it is opened.
"""
from __future__ import annotations

import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from pipeline.errors import InputError

FEATURES = "features"  # dataset (N, P, E)
IMAGES = "images"  # dataset (N,) of names
CHECKSUMS = "row_crc32"  # optional dataset (N,) uint32: CRC-32 of each row's bytes, written with the row
DONE_MASK = "done"  # the partial file's (N,) bool mask of finished rows (pipeline.encoder.extraction.DONE)
VERIFY_ROWS = 256  # rows read at a time by verify_cache
SHOWN_ROWS = 3  # bad rows named in an error
# how to get a good copy of the features stage's cache (encoder.cache); docs/sharing.md says more
REPAIR = ("get a good copy with `dvc pull --force features` (from DVC's cache or remote; a remote with `verify` on "
          "refuses a damaged download, see docs/sharing.md) or rebuild it with "
          "`dvc repro --force --single-item features`")

Rows = int | slice | Sequence[int] | np.ndarray | torch.Tensor

logger = logging.getLogger(__name__)


class FeatureStoreError(InputError):
    """The feature cache exists but is not what the readers expect."""


class CorruptFeaturesError(FeatureStoreError):
    """Rows read from a finished cache differ from the checksums written with them: the file changed on disk."""


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

    def __init__(self, path: str | Path, repair: str = REPAIR) -> None:
        self.path = Path(path)
        self.repair = repair  # how to get a good copy, said when a row does not match its checksum
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
            # (N,) uint32, or None: a cache made before checksums were written
            self.checksums: np.ndarray | None = file[CHECKSUMS][()] if CHECKSUMS in file else None
        if len(self.shape) != 3 or len(self.names) != self.shape[0]:
            raise FeatureStoreError(f"{self.path}: features of shape {self.shape} do not match "
                                    f"{len(self.names)} image names; rerun `dvc repro features`")
        if self.checksums is None:
            logger.warning("%s has no per-row checksums (it was made before they were written): its rows are read "
                           "unchecked; rebuild it to have them checked", self.path)
        elif self.checksums.shape != (self.shape[0],):
            raise FeatureStoreError(f"{self.path}: {self.checksums.shape} checksums for {self.shape[0]} rows; "
                                    f"{self.repair}")
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
        """Read all rows (N, P, E), or the given ones, into memory, in the stored dtype; each row checked."""
        with h5py.File(self.path, "r") as file:
            return self._read(file[FEATURES], slice(None) if rows is None else rows)

    def __getitem__(self, rows: Rows) -> torch.Tensor:
        """Stream rows, each checked: an int gives (P, E), a slice or sequence gives (R, P, E)."""
        return self._read(self._features(), rows)

    def check(self, rows: np.ndarray, features: np.ndarray) -> None:
        """CorruptFeaturesError unless each row of `features` (R, P, E), read from rows `rows` (R,) of this
        cache, matches the checksum written with it (a cache without checksums passes)."""
        if self.checksums is None:
            return
        bad = np.flatnonzero(row_checksums(features) != self.checksums[rows])
        if bad.size:
            raise self.corrupt(np.asarray(rows)[bad])

    def corrupt(self, rows: np.ndarray) -> CorruptFeaturesError:
        """The error for rows (K,) that do not match their checksums: the file, the rows, their images, the repair."""
        named = ", ".join(f"{row} (image '{self.names[row]}')" for row in rows[:SHOWN_ROWS].tolist())
        more = f" and {len(rows) - SHOWN_ROWS} more" if len(rows) > SHOWN_ROWS else ""
        which = f"row {named} no longer matches its" if len(rows) == 1 else f"rows {named}{more} no longer match their"
        return CorruptFeaturesError(f"{self.path} was damaged after it was written (a disk error, a bad copy or "
                                    f"download): {which} checksum; {self.repair}")

    def _read(self, dataset: h5py.Dataset, rows: Rows) -> torch.Tensor:
        """Read rows of the (N, P, E) dataset, checked; arbitrary row lists are read in sorted order."""
        if isinstance(rows, (int, np.integer)):
            row = range(self.shape[0])[rows]  # an IndexError out of range
            features = dataset[row]  # (P, E)
            self.check(np.array([row]), features[None])
            return torch.from_numpy(features)
        if isinstance(rows, slice):
            features = dataset[rows]  # (R, P, E)
            self.check(np.arange(self.shape[0])[rows], features)
            return torch.from_numpy(features)
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        if wanted.size == 0:
            return torch.from_numpy(np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype))
        if wanted.min() < 0 or wanted.max() >= dataset.shape[0]:
            raise IndexError(f"feature rows must lie in [0, {dataset.shape[0]}), got {wanted.min()}..{wanted.max()}")
        # HDF5 reads a selection fastest, and h5py only accepts one, in increasing order without repeats
        unique, inverse = np.unique(wanted, return_inverse=True)
        features = dataset[unique]  # (U, P, E)
        self.check(unique, features)
        return torch.from_numpy(features[inverse])  # (R, P, E)

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


def feature_bytes(num_rows: int, num_regions: int, feature_dim: int, dtype: str) -> int:
    """Bytes the features of `num_rows` images take on disk (N * P * E * itemsize; HDF5 adds well under 1%)."""
    return num_rows * num_regions * feature_dim * np.dtype(dtype).itemsize


def row_checksums(features: np.ndarray) -> np.ndarray:
    """(B, P, E) rows -> (B,) uint32: the CRC-32 of each row's bytes, as stored in the CHECKSUMS dataset."""
    rows = np.ascontiguousarray(features)  # the same array when it already is (no copy): zlib reads its buffer
    return np.fromiter((zlib.crc32(row) for row in rows), dtype=np.uint32, count=len(rows))


def create_checksums(file: h5py.File, num_rows: int) -> h5py.Dataset:
    """Add the (N,) CHECKSUMS dataset (0 until each row is written) to a writable cache or partial file."""
    return file.create_dataset(CHECKSUMS, shape=(num_rows,), dtype=np.uint32)


def unwritten_rows(path: str | Path) -> np.ndarray:
    """Rows of the cache (or partial file) at `path` that do not read back as written, sorted.

    A row is bad when its CRC-32 differs from CHECKSUMS (when the file has them), else when it is all
    zeros, and in a partial file also when its done mask is False. Raises OSError when the file
    cannot be opened or read.
    """
    with h5py.File(path, "r") as file:
        features = file[FEATURES]
        sums = file[CHECKSUMS][()] if CHECKSUMS in file else None
        bad: list[np.ndarray] = []
        for start in range(0, features.shape[0], VERIFY_ROWS):
            block = features[start:start + VERIFY_ROWS]  # (B, P, E)
            if sums is not None:
                wrong = row_checksums(block) != sums[start:start + len(block)]
            else:
                wrong = ~block.reshape(len(block), -1).any(axis=1)
            bad.append(start + np.flatnonzero(wrong))
        if DONE_MASK in file:
            bad.append(np.flatnonzero(~file[DONE_MASK][()]))
    return np.unique(np.concatenate(bad)) if bad else np.empty(0, dtype=np.int64)


def verify_cache(path: str | Path, expected_rows: int, names: Sequence[str] | None = None) -> None:
    """Reopen the written cache at `path` read-only; FeatureStoreError unless it holds `expected_rows` good rows.

    Checks that it opens, that features (N, P, E) and the image names (in the order `names`, when
    given) both have `expected_rows` rows, and that every row reads back as written (unwritten_rows).
    Call it on the finished file before renaming it into place.
    """
    rerun = "delete it and rerun `dvc repro features` (check the free space first: a full disk loses writes)"
    try:
        with h5py.File(path, "r") as file:
            missing = [name for name in (FEATURES, IMAGES) if name not in file]
            if missing:
                raise FeatureStoreError(f"{path} has no {' or '.join(missing)} dataset; {rerun}")
            shape = tuple(file[FEATURES].shape)
            stored = list(file[IMAGES].asstr()[()])
        bad = unwritten_rows(path)
    except OSError as error:
        raise FeatureStoreError(f"{path} cannot be read back ({' '.join(str(error).split())}); {rerun}") from error
    if len(shape) != 3 or shape[0] != expected_rows or len(stored) != expected_rows:
        raise FeatureStoreError(f"{path} holds features {shape} and {len(stored)} image names, "
                                f"expected {expected_rows} rows; {rerun}")
    if names is not None and stored != list(names):
        first = next(row for row, (a, b) in enumerate(zip(stored, names)) if a != b)
        raise FeatureStoreError(f"{path}: row {first} is image '{stored[first]}', expected '{names[first]}'; {rerun}")
    if bad.size:
        raise FeatureStoreError(f"{path}: {bad.size} of {expected_rows} rows did not reach the disk (first: row "
                                f"{bad[0]}, image '{stored[bad[0]]}'); {rerun}")
