"""Stage `features`: run the frozen CNN over every image once and cache its region features.

Inputs: the prepared table `{dataset.out_dir}/captions.csv` (its unique images, sorted by name) and
the image files under `dataset.images`. Output: `{encoder.out_dir}/features.h5`, an (N, P, E) array
with the image names and the encoder's provenance (layout in pipeline/feature_store.py).

    python -m pipeline.features                           # one process, on the GPU when there is one
    torchrun --nproc_per_node 4 -m pipeline.features      # 4 processes, each encoding its own share

Decoding and resizing run in DataLoader workers; the encoder runs batched (on CUDA: pinned uint8
batches normalised on the GPU, channels_last, bf16 autocast) while a writer thread stores the
previous batch. Work in progress is kept in a hidden partial file beside the output with a per-image
`done` mask; its attrs (encoder provenance, dtype, and `images_sha256` of the image list) are the
fingerprint: a rerun after an interruption continues where it stopped when they still match, and
starts over, saying why, when they do not. `features.h5` appears only once every image is done: by
renaming the partial file (one process), or by rank 0 merging the ranks' partial files. (dvc.yaml
declares the file, not its folder, as the output, so the partial file survives DVC's removal of the
output before a rerun.)
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from pipeline.config import DatasetConfig, EncoderConfig, load_section
from pipeline.encoder import (FEATURE_DIM, STRIDE, Encoder, ImageReadError, build_encoder, encode, encoder_info,
                              load_image)
from pipeline.feature_store import FEATURES, IMAGES, create_layout, features_path, plain_attr
from pipeline.prepared import captions_path, read_captions
from pipeline.utils import atomic_path, resolve_device

DONE = "done"  # (N,) bool dataset of the partial file: which rows hold finished features
MAX_PENDING_WRITES = 2  # batches waiting for the writer thread; bounds the memory they hold
MERGE_ROWS = 256  # rows copied at a time when merging the ranks' files


class FeatureExtractionError(RuntimeError):
    """The features cannot be extracted: a bad image list, an unreadable image, an unfinished rank."""


# ----------------------------------------------------------------------------------------------
# the image list and its shares


def read_image_list(prepared_dir: str | Path) -> list[str]:
    """The unique image names of the prepared captions table, sorted."""
    names = sorted(set(read_captions(prepared_dir)["image"]))
    if not names:
        raise FeatureExtractionError(f"{captions_path(prepared_dir)} lists no images; check the prepare stage's report")
    return names


def names_sha256(names: Sequence[str]) -> str:
    """Fingerprint of an ordered list of image names."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()


def share(num_images: int, rank: int, world_size: int) -> range:
    """The contiguous rows of the image list that process `rank` of `world_size` encodes."""
    return range(num_images * rank // world_size, num_images * (rank + 1) // world_size)


def partial_path(out: Path, rank: int, world_size: int) -> Path:
    """The hidden file beside `out` holding one process's work in progress."""
    part = "" if world_size == 1 else f".rank{rank}of{world_size}"
    return out.with_name(f".{out.name}{part}.partial")


# ----------------------------------------------------------------------------------------------
# the partial file


def resume_blocker(path: Path, attrs: dict[str, Any]) -> str | None:
    """Why the partial file at `path` cannot be continued with `attrs`, or None when it can."""
    try:
        with h5py.File(path, "r") as file:
            if DONE not in file or FEATURES not in file:
                return "it holds no progress record"
            stored = {key: plain_attr(value) for key, value in file.attrs.items()}
    except OSError as error:  # cut off mid-write by a hard kill
        return f"it is unreadable ({error})"
    changed = [f"{key} was {stored.get(key)!r}, now {value!r}"
               for key, value in attrs.items() if stored.get(key) != value]
    return f"it was made from other inputs ({'; '.join(changed)})" if changed else None


def open_partial(path: Path, names: Sequence[str], attrs: dict[str, Any], num_regions: int, dtype: str) -> h5py.File:
    """Open the partial file to continue it when its fingerprint matches `attrs`, else start it anew."""
    if path.exists():
        reason = resume_blocker(path, attrs)
        if reason is None:
            return h5py.File(path, "r+")
        print(f"features: starting over: {path} cannot be continued: {reason}")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    file = h5py.File(path, "w")
    create_layout(file, names, num_regions, FEATURE_DIM, dtype, attrs)
    file.create_dataset(DONE, shape=(len(names),), dtype=bool)  # all False
    file.flush()
    return file


def consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) positions in increasing `rows` of each run of consecutive row numbers."""
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    bounds = [0, *breaks, len(rows)]
    return list(zip(bounds[:-1], bounds[1:]))


def write_rows(store: h5py.File, rows: np.ndarray, features: np.ndarray, ok: np.ndarray) -> None:
    """Write a batch (B, P, E) at `rows`, a slice per run, then mark its readable images done."""
    for start, stop in consecutive_runs(rows):
        first = int(rows[start])
        store[FEATURES][first:first + stop - start] = features[start:stop]
        store[DONE][first:first + stop - start] = ok[start:stop]
    store.flush()  # the done mask on disk never runs ahead of the features


# ----------------------------------------------------------------------------------------------
# extraction


class ImageFiles(Dataset):
    """Image files decoded and resized (in DataLoader workers): item -> (row, (3, S, S) uint8, error)."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths = list(paths)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor, str]:
        try:
            return row, load_image(self.paths[row], self.image_size), ""
        except ImageReadError as error:
            # returned rather than raised, so the batch's readable images are still stored
            return row, torch.zeros(3, self.image_size, self.image_size, dtype=torch.uint8), str(error)


def extract(encoder: Encoder, files: ImageFiles, store: h5py.File, batch_size: int, num_workers: int,
            device: torch.device, show_progress: bool = True) -> int:
    """Encode the images of `files` not yet done in `store` and write their features; returns how many."""
    todo = np.flatnonzero(~store[DONE][()]).tolist()
    dtype = getattr(torch, store[FEATURES].dtype.name)
    loader = DataLoader(Subset(files, todo), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    encoded = 0
    with (ThreadPoolExecutor(max_workers=1) as writer,
          tqdm(total=len(files), initial=len(files) - len(todo), unit="image", desc="features",
               disable=not show_progress) as progress):
        pending: deque[Future[None]] = deque()
        for rows, images, errors in loader:
            ok = np.array([not error for error in errors])
            features = encode(encoder, images, device, dtype).cpu().numpy()  # (B, P, E)
            # the write of this batch overlaps the decoding and encoding of the next
            pending.append(writer.submit(write_rows, store, rows.numpy(), features, ok))
            encoded += int(ok.sum())
            progress.update(len(rows))
            failed = [error for error in errors if error]
            if failed:
                for write in pending:
                    write.result()
                raise FeatureExtractionError(
                    f"{failed[0]}{f' (and {len(failed) - 1} more in this batch)' if len(failed) > 1 else ''}. "
                    f"Rerun prepare with dataset.check_images: true, which drops unreadable images; the images "
                    f"encoded so far are kept in {store.filename} and the next run continues from there")
            while len(pending) > MAX_PENDING_WRITES:
                pending.popleft().result()
        for write in pending:
            write.result()
    return encoded


# ----------------------------------------------------------------------------------------------
# the final file


def unfinished(path: Path) -> int:
    """How many rows of a partial file are not done; an error when the file is missing."""
    if not path.is_file():
        raise FeatureExtractionError(f"{path} is missing: a process did not finish; rerun the stage")
    with h5py.File(path, "r") as file:
        return int((~file[DONE][()]).sum())


def finalise(out: Path, partials: Sequence[Path], names: Sequence[str], attrs: dict[str, Any]) -> None:
    """Make `out` from finished partial files (in rank order): a rename for one, a merge for several."""
    for path in partials:
        if left := unfinished(path):
            raise FeatureExtractionError(f"{path} has {left} images still to encode; rerun the stage")
    if len(partials) == 1:
        with h5py.File(partials[0], "r+") as file:  # its attrs are already the final ones
            del file[DONE]
        os.replace(partials[0], out)
    else:
        merge(partials, out, names, attrs)
    for stale in out.parent.glob(f".{out.name}*.partial"):  # the ranks' files, and any left by other runs
        stale.unlink()


def merge(partials: Sequence[Path], out: Path, names: Sequence[str], attrs: dict[str, Any]) -> None:
    """Copy the partial files' rows, in order, into one cache at `out`, written atomically."""
    with h5py.File(partials[0], "r") as first:
        num_regions, dtype = first[FEATURES].shape[1], first[FEATURES].dtype.name
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as merged:
        features = create_layout(merged, names, num_regions, FEATURE_DIM, dtype, attrs)
        start = 0
        for path in partials:
            with h5py.File(path, "r") as part:
                count = len(part[FEATURES])
                if list(part[IMAGES].asstr()[()]) != list(names[start:start + count]):
                    raise FeatureExtractionError(f"{path} holds other images than its share of the list; "
                                                 f"rerun the stage")
                for offset in range(0, count, MERGE_ROWS):
                    stop = min(count, offset + MERGE_ROWS)
                    features[start + offset:start + stop] = part[FEATURES][offset:stop]
            start += count


# ----------------------------------------------------------------------------------------------


def main() -> None:
    dataset = load_section(DatasetConfig)
    config = load_section(EncoderConfig)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # pinned-memory and NCCL work stay on this rank's GPU

    names = read_image_list(dataset.out_dir)
    encoder = build_encoder(config.architecture, config.weights).to_device(device)
    attrs = {**encoder_info(config.architecture, config.weights, config.image_size), "dtype": config.dtype}
    num_regions = (config.image_size // STRIDE) ** 2
    out = features_path(config.out_dir)

    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        started = time.perf_counter()
        mine = [names[row] for row in share(len(names), rank, world_size)]
        files = ImageFiles([Path(dataset.images) / name for name in mine], config.image_size)
        with open_partial(partial_path(out, rank, world_size), mine,
                          {**attrs, "images_sha256": names_sha256(mine)}, num_regions, config.dtype) as store:
            encoded = extract(encoder, files, store, config.batch_size, config.num_workers, device,
                              show_progress=rank == 0)
        if world_size > 1:  # also the barrier: every rank has finished its file before rank 0 merges
            total = torch.tensor([encoded], device=device)
            dist.all_reduce(total)
            encoded = int(total.item())
        if rank == 0:
            finalise(out, [partial_path(out, r, world_size) for r in range(world_size)], names,
                     {**attrs, "images_sha256": names_sha256(names)})
    finally:
        if world_size > 1:
            dist.destroy_process_group()

    if rank == 0:
        seconds = time.perf_counter() - started
        processes = f" x {world_size} processes" if world_size > 1 else ""
        print(f"features: {len(names)} images -> {out} {(len(names), num_regions, FEATURE_DIM)} {config.dtype}; "
              f"{encoded} encoded in {seconds:.1f} s ({encoded / seconds:.1f} images/s) on {device}{processes}")


if __name__ == "__main__":
    main()
