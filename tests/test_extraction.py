"""Extraction into the feature cache: shares of the image list, partial files, and the merge."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from pipeline.encoder.extraction import (
    DONE,
    consecutive_runs,
    finalise,
    names_sha256,
    open_partial,
    partial_path,
    resume_blocker,
    share,
    write_rows,
)
from pipeline.encoder.feature_cache import FeatureStore
from pipeline.encoder.resnet import FEATURE_DIM


def test_shares_cover_every_image_once() -> None:
    for count in (0, 1, 5, 6, 7):
        rows = [row for rank in range(4) for row in share(count, rank, 4)]
        assert rows == list(range(count))
    assert list(share(7, 1, 2)) == [3, 4, 5, 6]


def test_consecutive_runs() -> None:
    assert consecutive_runs(np.array([3, 4, 5, 9, 11, 12])) == [(0, 3), (3, 4), (4, 6)]


def test_partial_paths_are_hidden_siblings(tmp_path: Path) -> None:
    out = tmp_path / "features.h5"
    assert partial_path(out, 0, 1) == tmp_path / ".features.h5.partial"
    assert partial_path(out, 1, 2) == tmp_path / ".features.h5.rank1of2.partial"


def test_two_partial_files_merge_in_rank_order(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "c.png"]
    features = np.random.default_rng(0).normal(size=(3, 4, FEATURE_DIM)).astype(np.float16)
    out = tmp_path / "features.h5"
    parts = [partial_path(out, rank, 2) for rank in range(2)]
    attrs = {"weights": "none", "dtype": "float16"}
    for rank, path in enumerate(parts):
        rows = list(share(3, rank, 2))
        mine = [names[row] for row in rows]
        with open_partial(path, mine, {**attrs, "images_sha256": names_sha256(mine)}, 4, "float16") as file:
            write_rows(file, np.arange(len(rows)), features[rows], np.ones(len(rows), dtype=bool))
            assert file[DONE][()].all()
    assert resume_blocker(parts[0], {**attrs, "dtype": "float32"}) == \
        "it was made from other inputs (dtype was 'float16', now 'float32')"
    finalise(out, parts, names, {**attrs, "images_sha256": names_sha256(names)})
    assert not any(path.exists() for path in parts)
    with FeatureStore(out) as store:
        assert store.names == names and store.attrs["images_sha256"] == names_sha256(names)
        np.testing.assert_array_equal(store.load().numpy(), features)
    with h5py.File(out, "r") as file:
        assert DONE not in file
