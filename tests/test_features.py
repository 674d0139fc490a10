"""The features stage end to end (tiny images, random encoder), its resume logic, and FeatureStore."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

import pipeline
from pipeline.stages import features
from pipeline.encoder import build_encoder, load_image
from pipeline.encoder.feature_cache import FeatureStore, FeatureStoreError

NAMES = ["b.png", "a.png", "sub/f.png", "d.png", "c.png", "e.png"]  # listed unsorted, in a sub-folder too
SORTED = sorted(NAMES)
SIZE = 64  # grid 2 x 2, P = 4
BATCH = 2
PROJECT_ROOT = Path(pipeline.__file__).resolve().parents[1]


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a run."""


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = 40 + 4 * seed, 72 - 4 * seed  # various shapes: resized whole, never cropped
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


def make_project(root: Path, **encoder: Any) -> Path:
    """Images, a prepared captions table (two captions per image, unsorted) and params.yaml under `root`."""
    for seed, name in enumerate(SORTED):
        write_image(root / "images" / name, seed)
    (root / "prepared").mkdir(parents=True)
    with (root / "prepared" / "captions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "split", "caption"])
        for name in NAMES + NAMES[::-1]:
            writer.writerow([name, "train", f"a picture called {name}"])
    params = {
        "dataset": {"captions": "captions.txt", "images": "images", "format": "auto", "split_files": None,
                    "split_ratios": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0, "captions_per_image": 2,
                    "max_dropped_fraction": 0.05, "check_images": False, "out_dir": "prepared"},
        "encoder": {"architecture": "resnet50", "weights": "none", "image_size": SIZE, "dtype": "float16",
                    "batch_size": BATCH, "num_workers": 0, "device": "cpu", "out_dir": "features", **encoder},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return root


def set_encoder_param(root: Path, key: str, value: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["encoder"][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")


def run_stage(root: Path) -> str:
    """Run the stage's main() in `root`; returns what it printed."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("PIPELINE_PARAMS", str(root / "params.yaml"))
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            features.main()
    return printed.getvalue()


def counting_loader(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[Path]:
    """Replace the stage's image loader by one that records its calls and can fail on call `fail_at`."""
    calls: list[Path] = []

    def load(path: Path, size: int) -> torch.Tensor:
        calls.append(Path(path))
        if len(calls) == fail_at:
            raise Interrupted(f"interrupted while loading {path}")
        return load_image(path, size)

    monkeypatch.setattr(features, "load_image", load)
    return calls


def read(path: Path) -> dict[str, Any]:
    with h5py.File(path, "r") as file:
        return {"datasets": sorted(file), "features": file["features"][()], "chunks": file["features"].chunks,
                "compression": file["features"].compression, "images": list(file["images"].asstr()[()]),
                "attrs": {key: file.attrs[key] for key in file.attrs}}


def partials(root: Path) -> list[Path]:
    return sorted((root / "features").glob(".*partial"))


def done_mask(root: Path) -> list[bool]:
    with h5py.File(root / "features" / ".features.h5.partial", "r") as file:
        return file["done"][()].tolist()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """(N, P, E) float32: the encoder run directly on the images, in sorted-name order."""
    root = tmp_path_factory.mktemp("reference")
    for seed, name in enumerate(SORTED):
        write_image(root / name, seed)
    images = torch.stack([load_image(root / name, SIZE) for name in SORTED])  # (N, 3, S, S)
    encoder = build_encoder("resnet50", "none")
    with torch.inference_mode():
        return torch.cat([encoder(batch) for batch in images.split(BATCH)]).numpy()


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project after one uninterrupted run: (features.h5, what the stage printed)."""
    root = make_project(tmp_path_factory.mktemp("clean"))
    printed = run_stage(root)
    return root / "features" / "features.h5", printed


# ----------------------------------------------------------------------------------------------
# the stage


def test_stage_writes_the_encoder_features(clean_run: tuple[Path, str], reference: np.ndarray) -> None:
    path, printed = clean_run
    cache = read(path)
    assert cache["datasets"] == ["features", "images"]  # no progress record left in the final file
    assert cache["images"] == SORTED
    assert cache["features"].shape == (len(SORTED), 4, 2048) and cache["features"].dtype == np.float16
    assert cache["chunks"] == (1, 4, 2048) and cache["compression"] is None
    np.testing.assert_allclose(cache["features"].astype(np.float32), reference, rtol=2e-3, atol=1e-2)
    attrs = cache["attrs"]
    assert (attrs["architecture"], attrs["weights"], attrs["dtype"]) == ("resnet50", "none", "float16")
    assert (attrs["image_size"], attrs["grid"], attrs["feature_dim"]) == (SIZE, 2, 2048)
    assert attrs["torch_version"] == torch.__version__
    assert attrs["images_sha256"] == features.names_sha256(SORTED)
    assert partials(path.parent.parent) == []
    assert f"{len(SORTED)} images" in printed and "(6, 4, 2048) float16" in printed and "images/s" in printed


def test_float32_option(tmp_path: Path, reference: np.ndarray) -> None:
    root = make_project(tmp_path, dtype="float32")
    run_stage(root)
    cache = read(root / "features" / "features.h5")
    assert cache["features"].dtype == np.float32 and cache["attrs"]["dtype"] == "float32"
    np.testing.assert_allclose(cache["features"], reference, rtol=1e-4, atol=1e-3)


def test_interrupted_run_continues_where_it_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    clean_run: tuple[Path, str]) -> None:
    root = make_project(tmp_path)
    counting_loader(monkeypatch, fail_at=5)  # in the third batch: two batches are finished
    with pytest.raises(Interrupted):
        run_stage(root)
    assert not (root / "features" / "features.h5").exists()
    assert done_mask(root) == [True] * 4 + [False] * 2

    calls = counting_loader(monkeypatch)
    run_stage(root)
    assert calls == [Path("images") / name for name in SORTED[4:]]  # only the rest is encoded
    resumed, clean = read(root / "features" / "features.h5"), read(clean_run[0])
    np.testing.assert_array_equal(resumed["features"], clean["features"])
    assert resumed["images"] == clean["images"] and resumed["attrs"] == clean["attrs"]
    assert partials(root) == []


def test_changed_inputs_start_over_and_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              reference: np.ndarray) -> None:
    root = make_project(tmp_path)
    counting_loader(monkeypatch, fail_at=3)
    with pytest.raises(Interrupted):
        run_stage(root)
    set_encoder_param(root, "dtype", "float32")
    calls = counting_loader(monkeypatch)
    printed = run_stage(root)
    assert "starting over" in printed and "dtype was 'float16', now 'float32'" in printed
    assert len(calls) == len(SORTED)
    cache = read(root / "features" / "features.h5")
    np.testing.assert_allclose(cache["features"], reference, rtol=1e-4, atol=1e-3)


def test_unreadable_image_stops_naming_it_and_keeps_the_work_done(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_project(tmp_path, num_workers=1)  # decoded in a worker process
    (root / "images" / "c.png").write_bytes(b"not a png")  # the third image; its batch-mate d.png is fine
    with pytest.raises(features.FeatureExtractionError, match=r"c\.png.*check_images: true"):
        run_stage(root)
    assert not (root / "features" / "features.h5").exists()
    assert done_mask(root) == [True, True, False, True, False, False]

    write_image(root / "images" / "c.png", SORTED.index("c.png"))
    set_encoder_param(root, "num_workers", 0)
    calls = counting_loader(monkeypatch)
    run_stage(root)
    assert calls == [Path("images") / name for name in ("c.png", "e.png", "sub/f.png")]
    assert (root / "features" / "features.h5").exists()


def test_missing_image_list_says_to_run_prepare(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "prepared" / "captions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="prepare"):
        run_stage(root)


def test_shares_cover_every_image_once() -> None:
    for count in (0, 1, 5, 6, 7):
        rows = [row for rank in range(4) for row in features.share(count, rank, 4)]
        assert rows == list(range(count))


def test_consecutive_runs() -> None:
    assert features.consecutive_runs(np.array([3, 4, 5, 9, 11, 12])) == [(0, 3), (3, 4), (4, 6)]


def test_two_processes_make_the_same_file(tmp_path: Path, clean_run: tuple[Path, str]) -> None:
    root = make_project(tmp_path)
    environment = {**os.environ, "PIPELINE_PARAMS": str(root / "params.yaml"), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "pipeline.features"], cwd=root, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    merged, clean = read(root / "features" / "features.h5"), read(clean_run[0])
    assert merged["images"] == clean["images"] and merged["attrs"] == clean["attrs"]
    assert merged["chunks"] == clean["chunks"] and merged["datasets"] == clean["datasets"]
    np.testing.assert_allclose(merged["features"].astype(np.float32), clean["features"].astype(np.float32),
                               rtol=2e-3, atol=1e-2)
    assert partials(root) == []


# ----------------------------------------------------------------------------------------------
# the read side


def test_feature_store_reads_what_the_stage_wrote(clean_run: tuple[Path, str]) -> None:
    path = clean_run[0]
    everything = read(path)["features"]
    with FeatureStore(path) as store:
        assert store.names == SORTED and store.index["sub/f.png"] == SORTED.index("sub/f.png")
        assert (len(store), store.grid, store.num_regions, store.feature_dim, store.itemsize) == (6, 2, 4, 2048, 2)
        assert store.attrs["weights"] == "none" and store.attrs["image_size"] == SIZE
        loaded = store.load()
        assert loaded.dtype == torch.float16 and torch.equal(loaded, torch.from_numpy(everything))
        assert torch.equal(store.load([4, 1, 1]), torch.from_numpy(everything[[4, 1, 1]]))
        assert torch.equal(store[2], torch.from_numpy(everything[2]))
        assert torch.equal(store[[5, 0]], torch.from_numpy(everything[[5, 0]]))
        assert torch.equal(store[1:3], torch.from_numpy(everything[1:3]))
        assert store.rows_of(["c.png", "a.png"]) == [2, 0]
        assert store.fits_in_memory(everything.nbytes) and not store.fits_in_memory(everything.nbytes - 1)
        with pytest.raises(FeatureStoreError, match="zebra.png"):
            store.rows_of(["zebra.png"])


class StoreRows(Dataset):
    """Rows of a store, each with whether it was read through a handle this process opened."""

    def __init__(self, store: FeatureStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, bool]:
        features_of_row = self.store[row]
        return features_of_row, self.store._handle[0] == os.getpid()


def test_feature_store_workers_open_their_own_handles(clean_run: tuple[Path, str]) -> None:
    store = FeatureStore(clean_run[0])
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
