"""Fault injection, the feature cache: a cache is read back before it is trusted (verify_cache), and
a row that never reached the disk, a corrupted row or a cut-off file is found and named."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.encoder.feature_cache import (
    CHECKSUMS,
    DONE_MASK,
    FEATURES,
    FeatureStoreError,
    create_checksums,
    create_layout,
    row_checksums,
    unwritten_rows,
    verify_cache,
)

NAMES = [f"{i:02d}.jpg" for i in range(10)]


def write_cache(path: Path, skip: tuple[int, ...] = (), checksums: bool = False, done: bool = False) -> np.ndarray:
    """A (10, 4, 8) float16 cache with every row but `skip` written; returns the features meant for it."""
    features = np.random.default_rng(0).normal(size=(len(NAMES), 4, 8)).astype(np.float16)  # (N, P, E)
    with h5py.File(path, "w") as file:
        dataset = create_layout(file, NAMES, 4, 8, "float16", {"dtype": "float16"})
        if checksums:
            create_checksums(file, len(NAMES))
        if done:
            file.create_dataset(DONE_MASK, shape=(len(NAMES),), dtype=bool)
        for row in range(len(NAMES)):
            if row in skip:
                continue
            dataset[row] = features[row]
            if checksums:
                file[CHECKSUMS][row] = row_checksums(features[row:row + 1])[0]
            if done:
                file[DONE_MASK][row] = True
    return features


def test_a_complete_cache_passes(tmp_path: Path) -> None:
    write_cache(tmp_path / "plain.h5")
    verify_cache(tmp_path / "plain.h5", len(NAMES), NAMES)
    write_cache(tmp_path / "summed.h5", checksums=True)
    verify_cache(tmp_path / "summed.h5", len(NAMES), NAMES)


def test_a_row_that_never_reached_the_disk_is_named(tmp_path: Path) -> None:
    write_cache(tmp_path / "features.h5", skip=(3, 7))
    assert unwritten_rows(tmp_path / "features.h5").tolist() == [3, 7]
    with pytest.raises(FeatureStoreError, match=r"2 of 10 rows did not reach the disk \(first: row 3, image '03.jpg'\)"):
        verify_cache(tmp_path / "features.h5", len(NAMES))


def test_checksums_find_a_changed_row_and_accept_a_row_that_is_really_zero(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    write_cache(path, checksums=True)
    with h5py.File(path, "r+") as file:
        file[FEATURES][5, 0, 0] += 1  # one value differs from what was written and summed
        file[FEATURES][2] = 0  # a real all-zero row, with its checksum
        file[CHECKSUMS][2] = row_checksums(np.zeros((1, 4, 8), dtype=np.float16))[0]
    assert unwritten_rows(path).tolist() == [5]
    with pytest.raises(FeatureStoreError, match="1 of 10 rows did not reach the disk"):
        verify_cache(path, len(NAMES))


def test_a_row_not_done_in_a_partial_file_is_unwritten(tmp_path: Path) -> None:
    path = tmp_path / ".features.h5.partial"
    write_cache(path, skip=(9,), checksums=True, done=True)
    assert unwritten_rows(path).tolist() == [9]


def test_a_cut_off_file_cannot_be_read_back(tmp_path: Path) -> None:
    write_cache(tmp_path / "whole.h5")
    data = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(FeatureStoreError, match=r"cut\.h5 cannot be read back .*rerun `dvc repro features`"):
        verify_cache(tmp_path / "cut.h5", len(NAMES))


def test_the_wrong_number_or_order_of_images_is_refused(tmp_path: Path) -> None:
    write_cache(tmp_path / "features.h5")
    with pytest.raises(FeatureStoreError, match="expected 11 rows"):
        verify_cache(tmp_path / "features.h5", 11)
    with pytest.raises(FeatureStoreError, match="row 0 is image '00.jpg', expected '01.jpg'"):
        verify_cache(tmp_path / "features.h5", len(NAMES), [NAMES[1], NAMES[0], *NAMES[2:]])
