"""The features of a set of images: rows by name, resident or streamed alike, and the standardisation
statistics of exactly the rows asked for (training images only, in train)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.feature_matrix import FeatureMatrix
from tests.conftest import write_feature_cache

CPU = torch.device("cpu")


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    """4 images of 2 regions and 3 features: a.png and b.png small (the training images), c.png and d.png large."""
    features = np.array([
        [[0, 1, 2], [2, 3, 4]],  # a.png
        [[4, 1, 2], [6, 3, 8]],  # b.png
        [[100, 50, 20], [100, 50, 20]],  # c.png
        [[300, 50, 40], [300, 50, 40]],  # d.png
    ], dtype=np.float32)
    return FeatureStore(write_feature_cache(tmp_path / "features.h5", ["a.png", "b.png", "c.png", "d.png"], features))


def test_statistics_cover_only_the_given_rows(store: FeatureStore) -> None:
    matrix = FeatureMatrix(store, ["d.png", "b.png", "a.png", "c.png"], CPU)
    assert matrix.names == ["a.png", "b.png", "c.png", "d.png"] and matrix.rows["c.png"] == 2
    train = matrix.rows_of(["a.png", "b.png", "a.png"])  # a caption per row: repeats count once
    mean, std = matrix.statistics(train)
    # the four training regions per channel: (0, 2, 4, 6), (1, 3, 1, 3), (2, 4, 2, 8)
    torch.testing.assert_close(mean, torch.tensor([3.0, 2.0, 4.0]))
    torch.testing.assert_close(std, torch.tensor([5.0 ** 0.5, 1.0, 6.0 ** 0.5]))  # population std
    everything_mean, _ = matrix.statistics(torch.arange(4))
    torch.testing.assert_close(everything_mean, torch.tensor([101.5, 26.0, 17.0]))
    assert not torch.allclose(mean, everything_mean)


def test_resident_and_streamed_features_agree(store: FeatureStore) -> None:
    resident = FeatureMatrix(store, ["a.png", "c.png", "d.png"], CPU)
    streamed = FeatureMatrix(store, ["a.png", "c.png", "d.png"], CPU, memory_fraction=0.0)
    assert resident.resident and not streamed.resident
    rows = resident.rows_of(["d.png", "a.png"])
    torch.testing.assert_close(resident[rows], store.load([3, 0]))
    torch.testing.assert_close(streamed[rows], store.load([3, 0]))
    torch.testing.assert_close(resident.statistics(rows), streamed.statistics(rows))
