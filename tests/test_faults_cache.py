"""Fault injection, the feature cache: a cache is read back before it is trusted (verify_cache), and
a row that never reached the disk, a corrupted row or a cut-off file is found and named; a row
damaged after the cache was written stops every reader (FeatureStore, FeatureMatrix resident and
streamed), naming the file, the row and its image."""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.encoder.feature_cache import (
    CHECKSUMS,
    DONE_MASK,
    FEATURES,
    CorruptFeaturesError,
    FeatureStore,
    FeatureStoreError,
    create_checksums,
    create_layout,
    row_checksums,
    unwritten_rows,
    verify_cache,
)
from pipeline.encoder.feature_matrix import FeatureMatrix

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


def damage_row(path: Path, row: int, count: int = 64) -> None:
    """Flip `count` bytes in the middle of row `row`'s data in the file (not HDF5's metadata), as bit rot would."""
    with h5py.File(path, "r") as file:
        chunk = file[FEATURES].id.get_chunk_info_by_coord((row, 0, 0))  # one row per chunk
    start = chunk.byte_offset + chunk.size // 2 - count // 2
    with open(path, "r+b") as handle:
        handle.seek(start)
        flipped = bytes(byte ^ 0xFF for byte in handle.read(count))
        handle.seek(start)
        handle.write(flipped)


def test_a_row_damaged_after_writing_stops_every_reader_naming_the_file_and_the_row(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    features = write_cache(path, checksums=True)
    damage_row(path, 5)
    with h5py.File(path, "r") as file:
        assert not np.array_equal(file[FEATURES][5], features[5])  # the data changed, the file still opens
    store = FeatureStore(path)
    first = rf"{path} was damaged after it was written .*: row 5 \(image '05.jpg'\) no longer matches its checksum"
    for read in (lambda: store.load(), lambda: store.load([7, 5]), lambda: store[5], lambda: store[[5, 1, 5]],
                 lambda: store[4:6]):
        with pytest.raises(CorruptFeaturesError, match=first) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message and "dvc pull --force features" in message and "dvc repro" in message
        assert "full" not in message and "free space" not in message  # the disk is not to blame for a file read
    np.testing.assert_array_equal(store[[1, 2, 9]].numpy(), features[[1, 2, 9]])  # intact rows stay readable
    damage_row(path, 8)
    with pytest.raises(CorruptFeaturesError, match=r"rows 5 \(image '05.jpg'\), 8 \(image '08.jpg'\) no longer"):
        store.load()


def test_the_feature_matrix_checks_its_rows_resident_and_streamed(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    features = write_cache(path, checksums=True)
    damage_row(path, 3)
    store, cpu = FeatureStore(path), torch.device("cpu")
    with pytest.raises(CorruptFeaturesError, match=r"row 3 \(image '03.jpg'\)"):
        FeatureMatrix(store, NAMES, cpu, announce=False)  # resident: checked as it is loaded
    resident = FeatureMatrix(store, NAMES[4:], cpu, announce=False)  # the damaged row is not among these
    assert torch.equal(resident[torch.tensor([0, 5])], torch.from_numpy(features[[4, 9]]))
    streamed = FeatureMatrix(store, NAMES, cpu, memory_budget_bytes=0, announce=False)
    assert not streamed.resident
    assert torch.equal(streamed[torch.tensor([1, 2])], torch.from_numpy(features[[1, 2]]))
    with pytest.raises(CorruptFeaturesError, match=r"row 3 \(image '03.jpg'\)"):
        streamed[torch.tensor([2, 3])]
    good, bad = torch.tensor([0, 1]), torch.tensor([9, 3])
    streamed.prefetch([good, bad])  # read ahead by a thread: the error reaches whoever asks for the batch
    assert torch.equal(streamed[good], torch.from_numpy(features[[0, 1]]))
    with pytest.raises(CorruptFeaturesError, match=r"row 3 \(image '03.jpg'\)"):
        streamed[bad]
    streamed.close()


def test_a_cache_without_checksums_is_read_unchecked_and_says_so_when_opened(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "features.h5"
    features = write_cache(path)  # no row_crc32: a cache made before checksums were written
    damage_row(path, 2)
    with caplog.at_level(logging.WARNING, logger="pipeline.encoder.feature_cache"):
        store = FeatureStore(path)
        loaded = store.load().numpy()
        store[[1, 2]]
    assert [record.getMessage() for record in caplog.records] == [
        f"{path} has no per-row checksums (it was made before they were written): its rows are read unchecked; "
        "rebuild it to have them checked"]
    assert not np.array_equal(loaded[2], features[2]) and np.array_equal(loaded[3], features[3])


def test_another_repair_is_named_for_a_cache_of_another_owner(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    write_cache(path, checksums=True)
    damage_row(path, 0)
    with pytest.raises(CorruptFeaturesError, match=r"row 0 .*; index the photos again$"):
        FeatureStore(path, repair="index the photos again")[0]
