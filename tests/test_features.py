"""The features stage end to end (tiny images, random encoder): the cache it writes, resuming, two processes."""
from __future__ import annotations

import contextlib
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
from PIL import Image

import pipeline
from pipeline import runtime
from pipeline.datasets.table import write_captions
from pipeline.encoder import extraction
from pipeline.encoder.extraction import FeatureExtractionError, names_sha256
from pipeline.encoder.images import load_image
from pipeline.encoder.resnet import DEMO_ATTR, build_encoder
from pipeline.stages import features
from tests.conftest import write_params

NAMES = ["b.png", "a.png", "sub/f.png", "d.png", "c.png", "e.png"]  # listed unsorted, in a sub-folder too
SORTED = sorted(NAMES)
SIZE = 64  # grid 2 x 2, P = 4
BATCH = 2
PROJECT_ROOT = Path(pipeline.__file__).resolve().parents[1]
UNTRAINED = "features: the encoder is untrained (encoder.weights: none)"


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a run."""


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = 40 + 4 * seed, 72 - 4 * seed  # various shapes: resized whole, never cropped
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


def project_params(root: Path, **encoder: Any) -> Path:
    """params.yaml under `root`: the tiny encoder on the CPU, with `encoder` overrides."""
    return write_params(root, {"dataset": {"images": "images", "table": "prepared/captions.csv"},
                               "encoder": {"weights": "none", "image_size": SIZE, "dtype": "float16",
                                           "precision": "fp32", "batch_size": BATCH, "num_workers": 0,
                                           "device": "cpu", "cache": "features/features.h5", **encoder}})


def make_project(root: Path, **encoder: Any) -> Path:
    """Images, a prepared captions table (two captions per image, unsorted) and params.yaml under `root`."""
    for seed, name in enumerate(SORTED):
        write_image(root / "images" / name, seed)
    (root / "prepared").mkdir(parents=True)
    write_captions(root / "prepared" / "captions.csv",
                   [(name, "train", f"a picture called {name}") for name in NAMES + NAMES[::-1]])
    project_params(root, **encoder)
    return root


def run_stage(root: Path) -> str:
    """Run the stage's main() in `root`; returns what it printed on stdout."""
    return run_stage_printing(root)[0]


def run_stage_printing(root: Path) -> tuple[str, str]:
    """Run the stage's main() in `root`; returns what it printed on stdout and on stderr."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("PIPELINE_PARAMS", str(root / "params.yaml"))
        printed, said = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(said):
            features.main()
    return printed.getvalue(), said.getvalue()


def counting_loader(monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> list[Path]:
    """Replace the stage's image loader by one that records its calls and can fail on call `fail_at`."""
    calls: list[Path] = []

    def load(path: Path, size: int) -> torch.Tensor:
        calls.append(Path(path))
        if len(calls) == fail_at:
            raise Interrupted(f"interrupted while loading {path}")
        return load_image(path, size)

    monkeypatch.setattr(extraction, "load_image", load)
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
    encoder = build_encoder("none")
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
    assert cache["datasets"] == ["features", "images", "row_crc32"]  # no progress record left; checksums kept
    assert cache["images"] == SORTED
    assert cache["features"].shape == (len(SORTED), 4, 2048) and cache["features"].dtype == np.float16
    assert cache["chunks"] == (1, 4, 2048) and cache["compression"] is None
    np.testing.assert_allclose(cache["features"].astype(np.float32), reference, rtol=2e-3, atol=1e-2)
    attrs = cache["attrs"]
    assert (attrs["architecture"], attrs["weights"], attrs["dtype"], attrs["precision"]) == \
        ("resnet50", "none", "float16", "fp32")
    assert (attrs["image_size"], attrs["grid"], attrs["feature_dim"]) == (SIZE, 2, 2048)
    assert attrs["torch_version"] == torch.__version__
    assert attrs["images_sha256"] == names_sha256(SORTED)
    assert partials(path.parent.parent) == []
    assert f"{len(SORTED)} images" in printed and "(6, 4, 2048) float16" in printed and "images/s" in printed


def test_bf16_on_a_cpu_that_would_emulate_it_is_warned_about_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    root = make_project(tmp_path, precision="bf16")
    _, said = run_stage_printing(root)
    assert said.count("features: encoder.precision is bf16, but this CPU has no native bf16") == 1
    assert read(root / "features/features.h5")["attrs"]["precision"] == "bf16"  # warned, then made as asked


def test_an_untrained_encoder_on_data_that_is_not_the_demo_is_said_once(tmp_path: Path) -> None:
    root = make_project(tmp_path)  # images/ outside shapes.out_dir (data/shapes): not the demo
    printed, said = run_stage_printing(root)
    assert said.count(UNTRAINED) == 1 and "IMAGENET1K_V2" in said and "Machines without pretrained weights" in said
    assert UNTRAINED not in printed
    assert read(root / "features" / "features.h5")["attrs"][DEMO_ATTR] is np.False_


def test_the_demo_with_an_untrained_encoder_is_not_a_notice(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "demo").mkdir()
    (root / "images").rename(root / "demo" / "images")
    write_params(root, {"shapes": {"out_dir": "demo"},
                        "dataset": {"images": "demo/images", "table": "prepared/captions.csv"},
                        "encoder": {"weights": "none", "image_size": SIZE, "precision": "fp32", "batch_size": BATCH,
                                    "num_workers": 0, "device": "cpu", "cache": "features/features.h5"}})
    printed, said = run_stage_printing(root)
    assert "encoder is untrained" not in printed + said
    assert read(root / "features" / "features.h5")["attrs"][DEMO_ATTR] is np.True_


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
    project_params(root, dtype="float32")
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
    with pytest.raises(FeatureExtractionError, match=r"c\.png.*check_images: true"):
        run_stage(root)
    assert not (root / "features" / "features.h5").exists()
    assert done_mask(root) == [True, True, False, True, False, False]

    write_image(root / "images" / "c.png", SORTED.index("c.png"))
    project_params(root, num_workers=0)
    calls = counting_loader(monkeypatch)
    run_stage(root)
    # the replaced image is a changed input of the stage: the partial file is not continued, since rows
    # encoded before the change could be stale; every image is encoded again
    assert calls == [Path("images") / name for name in SORTED]
    assert (root / "features" / "features.h5").exists()


def test_missing_image_list_says_to_run_prepare(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "prepared" / "captions.csv").unlink()
    with pytest.raises(FileNotFoundError, match="prepare"):
        run_stage(root)


@pytest.mark.slow  # torchrun, two processes
def test_two_processes_make_the_same_file(tmp_path: Path, clean_run: tuple[Path, str]) -> None:
    root = make_project(tmp_path)
    environment = {**os.environ, "PIPELINE_PARAMS": str(root / "params.yaml"), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "pipeline.stages.features"], check=False, cwd=root, env=environment, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x 2 processes" in result.stdout
    assert result.stderr.count(UNTRAINED) == 1  # said once, by the first process
    merged, clean = read(root / "features" / "features.h5"), read(clean_run[0])
    assert merged["images"] == clean["images"] and merged["attrs"] == clean["attrs"]
    assert merged["chunks"] == clean["chunks"] and merged["datasets"] == clean["datasets"]
    np.testing.assert_allclose(merged["features"].astype(np.float32), clean["features"].astype(np.float32),
                               rtol=2e-3, atol=1e-2)
    assert partials(root) == []
