"""FeatureMatrix: streamed (with and without read-ahead) and resident features are the same tensors,
the path taken is announced with its reason, and loading the resident matrix makes no second copy."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pipeline.encoder.feature_cache import FeatureStore, create_layout
from pipeline.encoder.feature_matrix import MEMORY_ENV, FeatureMatrix
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
P, E = 4, 16


def write_cache(path: Path, num_images: int, regions: int = P, dim: int = E) -> list[str]:
    """A cache of random float16 features, written in shuffled row order; returns the names."""
    names = [f"img{i:03d}.jpg" for i in range(num_images)]
    values = np.random.default_rng(0).standard_normal((num_images, regions, dim)).astype(np.float16)
    with h5py.File(path, "w") as file:
        features = create_layout(file, names, regions, dim, "float16", {})
        for row in np.random.default_rng(1).permutation(num_images):  # chunks stored out of order
            features[row] = values[row]
    return names


@pytest.fixture
def cache(tmp_path: Path) -> tuple[FeatureStore, list[str]]:
    names = write_cache(tmp_path / "features.h5", 30)
    return FeatureStore(tmp_path / "features.h5"), names


def test_streamed_batches_are_bit_identical_to_resident(cache: tuple[FeatureStore, list[str]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store, names = cache
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    chosen = names[::3] + names[1:6]  # a subset, not in order: rows are not consecutive
    resident = FeatureMatrix(store, chosen, CPU, announce=False)
    streamed = FeatureMatrix(store, chosen, CPU, memory_budget_bytes=0, announce=False)
    assert resident.resident and not streamed.resident
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(resident.names), (7,), generator=generator) for _ in range(6)]  # repeats too
    streamed.prefetch(batches[:4])
    asked = [batches[0], batches[1], batches[5], batches[2], batches[3], batches[4]]  # one out of turn
    with h5py.File(store.path, "r") as file:
        stored = file["features"][()]  # (N, P, E) straight from HDF5
    for rows in asked:
        expected = torch.from_numpy(stored[[store.index[resident.names[r]] for r in rows.tolist()]])
        got_resident, got_streamed = resident[rows], streamed[rows]
        assert got_resident.dtype == got_streamed.dtype == torch.float16
        assert torch.equal(got_resident, expected) and torch.equal(got_streamed, expected)
    assert not streamed._prefetcher.expected  # the announced batches were all served from the read-ahead
    all_rows = torch.arange(len(resident.names))
    for a, b in zip(resident.statistics(all_rows), streamed.statistics(all_rows)):
        assert torch.equal(a, b)
    streamed.close()


def test_a_read_error_ahead_reaches_the_caller(cache: tuple[FeatureStore, list[str]]) -> None:
    store, names = cache
    streamed = FeatureMatrix(store, names[:10], CPU, memory_budget_bytes=0, announce=False)
    good, bad = torch.tensor([1, 2]), torch.tensor([3, 10])  # row 10 does not exist
    streamed.prefetch([good, bad])
    assert streamed[good].shape == (2, P, E)
    with pytest.raises(IndexError):
        streamed[bad]
    streamed.close()


def test_the_path_taken_is_announced_with_its_reason(cache: tuple[FeatureStore, list[str]],
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    store, names = cache
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    FeatureMatrix(store, names, CPU)
    monkeypatch.setenv(MEMORY_ENV, "0")
    FeatureMatrix(store, names, CPU)
    monkeypatch.setenv(MEMORY_ENV, "1M")  # the 30 images take 3,840 bytes
    FeatureMatrix(store, names, CPU)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("features: 30 images") and "held in RAM" in lines[0]
    assert "half the free RAM" in lines[0]
    assert f"streamed from {store.path}" in lines[1] and f"over the 0.00 GB budget ({MEMORY_ENV}=0)" in lines[1]
    assert "held in RAM" in lines[2] and f"{MEMORY_ENV}=1M" in lines[2]


def test_a_bad_memory_setting_names_the_variable(cache: tuple[FeatureStore, list[str]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, names = cache
    monkeypatch.setenv(MEMORY_ENV, "plenty")
    with pytest.raises(ConfigError, match=f"{MEMORY_ENV}='plenty' is not a size"):
        FeatureMatrix(store, names, CPU)


@pytest.mark.slow  # a process measured for its peak memory
def test_loading_the_resident_matrix_makes_no_second_copy(tmp_path: Path) -> None:
    """Peak memory of the load is the matrix plus small buffers (a second full copy would double it)."""
    write_cache(tmp_path / "big.h5", 1000, regions=49, dim=1024)  # 100 MB as float16
    script = textwrap.dedent(f"""
        import re, torch
        from pathlib import Path
        from pipeline.encoder.feature_cache import FeatureStore
        from pipeline.encoder.feature_matrix import FeatureMatrix

        def kilobytes(key):
            return int(re.search(key + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

        store = FeatureStore({str(tmp_path / "big.h5")!r})
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current RSS
        before = kilobytes("VmRSS")
        matrix = FeatureMatrix(store, store.names, torch.device("cpu"), announce=False)
        assert matrix.resident
        print(kilobytes("VmHWM") - before, store.nbytes)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    growth_kb, size = (int(value) for value in out.stdout.split())
    assert size <= growth_kb * 1024 < size + 64 * 2**20, (growth_kb * 1024, size)
