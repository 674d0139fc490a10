"""The feature cache's read side: FeatureStore's names, rows, streaming per process, and its errors."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.encoder.feature_cache import FeatureStore, FeatureStoreError
from tests.conftest import write_feature_cache

NAMES = ["a.png", "b.png", "c.png", "d.png", "e.png", "sub/f.png"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A cache of 6 images, 4 regions, 8 features, float16: (its path, its features)."""
    everything = np.random.default_rng(0).normal(size=(6, 4, 8)).astype(np.float16)
    path = write_feature_cache(tmp_path_factory.mktemp("cache") / "features.h5", NAMES, everything)
    return path, everything


def test_feature_store_reads_the_cache(cache: tuple[Path, np.ndarray]) -> None:
    path, everything = cache
    with FeatureStore(path) as store:
        assert store.names == NAMES and store.index["sub/f.png"] == 5
        assert (len(store), store.grid, store.num_regions, store.feature_dim, store.itemsize) == (6, 2, 4, 8, 2)
        assert store.attrs == {"weights": "none", "image_size": 64}
        loaded = store.load()
        assert loaded.dtype == torch.float16 and torch.equal(loaded, torch.from_numpy(everything))
        assert torch.equal(store.load([4, 1, 1]), torch.from_numpy(everything[[4, 1, 1]]))
        assert torch.equal(store[2], torch.from_numpy(everything[2]))
        assert torch.equal(store[[5, 0]], torch.from_numpy(everything[[5, 0]]))
        assert torch.equal(store[1:3], torch.from_numpy(everything[1:3]))
        assert store.rows_of(["c.png", "a.png"]) == [2, 0]
        assert store.fits_in_memory(everything.nbytes) and not store.fits_in_memory(everything.nbytes - 1)
        assert store.fits_in_memory(everything[:2].nbytes, num_rows=2)
        with pytest.raises(FeatureStoreError, match="zebra.png"):
            store.rows_of(["zebra.png"])
        with pytest.raises(IndexError, match=r"\[0, 6\)"):
            store[[0, 6]]


class StoreRows(Dataset):
    """Rows of a store, each with whether it was read through a handle this process opened."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, bool]:
        features_of_row = self.store[row]
        return features_of_row, self.store._handle[0] == os.getpid()


def test_feature_store_workers_open_their_own_handles(cache: tuple[Path, np.ndarray]) -> None:
    store = FeatureStore(cache[0])
    first = store[0]  # the parent opens a handle before the workers fork
    loader = DataLoader(StoreRows(store), batch_size=3, num_workers=2)
    rows, own_handles = zip(*loader)
    assert torch.equal(torch.cat(rows), store.load()) and torch.equal(first, store.load(0))
    assert all(bool(own.all()) for own in own_handles)
    store.close()


def test_feature_store_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dvc repro features"):
        FeatureStore(tmp_path / "features.h5")
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.create_dataset("features", data=np.zeros((2, 4, 8), dtype=np.float16))
    with pytest.raises(FeatureStoreError, match="images"):
        FeatureStore(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(FeatureStoreError, match="text.h5"):
        FeatureStore(tmp_path / "text.h5")
