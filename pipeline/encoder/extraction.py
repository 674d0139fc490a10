"""Extraction into the feature cache: the image files as batches, a resumable partial file, the
batched encode loop, and the final file made from finished partial files (`write_cache`, also the
photo index's writer: rows copied with their checksums, the result verified before it appears).

Work in progress lives in a hidden partial file beside the output with a per-image `done` mask;
its attrs (encoder provenance, dtype, and `images_sha256` of the image list) are its fingerprint:
a rerun continues it when they still match and starts over, saying why, when they do not.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from pipeline.encoder.decoding import NO_BYTES, Batch, Item, decode_jpegs, plain_jpeg
from pipeline.encoder.feature_cache import (
    CHECKSUMS,
    FEATURES,
    IMAGES,
    FeatureStoreError,
    create_checksums,
    create_layout,
    plain_attr,
    row_checksums,
    verify_cache,
)
from pipeline.encoder.images import ImageReadError, load_image
from pipeline.encoder.resnet import FEATURE_DIM, Encoder, encode
from pipeline.errors import PipelineError
from pipeline.files import atomic_path

logger = logging.getLogger(__name__)

INPUTS = "inputs_sha256"  # attr of a partial file: the stage's declared deps and params (resume identity)
DONE = "done"  # (N,) bool dataset of the partial file: which rows hold finished features
MAX_PENDING_WRITES = 2  # batches waiting for the writer thread; bounds the memory they hold
PREFETCH_BATCHES = 4  # batches each DataLoader worker decodes ahead
COPY_ROWS = 256  # rows copied at a time by write_cache


class FeatureExtractionError(PipelineError):
    """The features cannot be extracted: a bad image list, an unreadable image, an unfinished rank."""


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
            return h5py.File(path, "r+", rdcc_nbytes=0)
        logger.info(f"features: starting over: {path} cannot be continued: {reason}")
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    file = h5py.File(path, "w", rdcc_nbytes=0)  # no chunk cache: a failed write raises here, not when h5py frees it
    create_layout(file, names, num_regions, FEATURE_DIM, dtype, attrs)
    create_checksums(file, len(names))
    file.create_dataset(DONE, shape=(len(names),), dtype=bool)  # all False
    file.flush()
    return file


def consecutive_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) positions in increasing `rows` of each run of consecutive row numbers."""
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    bounds = [0, *breaks, len(rows)]
    return list(itertools.pairwise(bounds))


class ImageFiles(Dataset):
    """Image files for DataLoader workers: item -> Item(row, pixels, raw, error); `collate` batches them,
    `to_device` finishes the batch on the encoder's device (decoding raw JPEGs there)."""

    def __init__(self, paths: Sequence[Path], image_size: int, raw_jpegs: bool = False) -> None:
        self.paths = list(paths)
        self.image_size = image_size
        self.raw_jpegs = raw_jpegs  # hand plain JPEGs over undecoded, for `to_device` to decode on the GPU

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> Item:
        path = self.paths[row]
        try:
            if self.raw_jpegs:
                data = Path(path).read_bytes()
                if plain_jpeg(data):
                    return Item(row, NO_BYTES, torch.frombuffer(bytearray(data), dtype=torch.uint8), "")
            return Item(row, load_image(path, self.image_size), NO_BYTES, "")
        except ImageReadError as error:
            # returned rather than raised, so the batch's readable images are still stored
            return Item(row, NO_BYTES, NO_BYTES, str(error))
        except OSError as error:
            return Item(row, NO_BYTES, NO_BYTES, f"cannot read image {path}: {error}")

    def collate(self, items: list[Item]) -> Batch:
        """Stack the decoded items; zeros stand where raw bytes wait for the GPU or an error was found."""
        size = self.image_size
        blank = torch.zeros(3, size, size, dtype=torch.uint8)
        pixels = torch.stack([item.pixels if item.pixels.numel() else blank for item in items])  # (B, 3, S, S)
        raw_positions = [i for i, item in enumerate(items) if item.raw.numel()]
        raw = [items[i].raw for i in raw_positions]
        ends = torch.tensor([part.numel() for part in raw], dtype=torch.long).cumsum(0).tolist()
        return Batch(torch.tensor([item.row for item in items]), pixels, raw_positions,
                     torch.cat(raw) if raw else NO_BYTES, ends, [item.error for item in items])

    def to_device(self, batch: Batch, device: torch.device) -> tuple[torch.Tensor, list[str]]:
        """Pixels (B, 3, S, S) uint8 on `device`, the raw JPEGs decoded there (nvJPEG on CUDA); the errors."""
        pixels = batch.pixels.to(device, non_blocking=True)  # (B, 3, S, S)
        errors = list(batch.errors)
        if batch.raw_positions:
            decoded = decode_jpegs(batch.raw, batch.raw_ends, self.image_size, device)  # B' x (3, S, S) or why not
            for position, image in zip(batch.raw_positions, decoded):
                if isinstance(image, str):
                    errors[position] = f"cannot read image {self.paths[int(batch.rows[position])]}: {image}"
                else:
                    pixels[position] = image
        return pixels, errors


def write_rows(store: h5py.File, rows: np.ndarray, features: np.ndarray, ok: np.ndarray,
               copied: torch.cuda.Event | None = None) -> None:
    """Write a batch (B, P, E) at `rows`, a slice per run, then mark its readable images done.

    `copied` is the event after which `features` (pinned host memory filled from the GPU) is complete.
    """
    if copied is not None:
        copied.synchronize()
    for start, stop in consecutive_runs(rows):
        first = int(rows[start])
        store[FEATURES][first:first + stop - start] = features[start:stop]
        store[CHECKSUMS][first:first + stop - start] = row_checksums(features[start:stop])
        store[DONE][first:first + stop - start] = ok[start:stop]
    store.flush()  # the done mask on disk never runs ahead of the features


def to_host(features: torch.Tensor) -> tuple[np.ndarray, torch.cuda.Event | None]:
    """The features (B, P, E) as a host array without waiting: on CUDA a copy into pinned memory is
    queued and the returned event marks its end; on the CPU the array is a view of the same memory."""
    if features.device.type != "cuda":
        return features.numpy(), None
    pinned = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)  # (B, P, E)
    pinned.copy_(features, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()
    return pinned.numpy(), copied


def extract(encoder: Encoder, files: ImageFiles, store: h5py.File, batch_size: int, num_workers: int,
            device: torch.device, show_progress: bool = True) -> int:
    """Encode the images of `files` not yet done in `store` and write their features; returns how many.

    Workers decode (with one torch thread each: DataLoader's default) while this process encodes
    with all its threads, and a writer thread stores each batch while the next one is encoded; on
    CUDA nothing here waits for the GPU: the features come back through pinned memory, and the
    writer waits for each copy.
    """
    todo = np.flatnonzero(~store[DONE][()]).tolist()
    dtype = getattr(torch, store[FEATURES].dtype.name)
    precision = str(store.attrs.get("precision", "fp32"))
    loader = DataLoader(Subset(files, todo), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=files.collate, pin_memory=device.type == "cuda",
                        prefetch_factor=PREFETCH_BATCHES if num_workers else None)
    encoded = 0
    with (ThreadPoolExecutor(max_workers=1) as writer,
          tqdm(total=len(files), initial=len(files) - len(todo), unit="image", desc="features",
               disable=not show_progress) as progress):
        pending: deque[Future[None]] = deque()
        for batch in loader:
            pixels, errors = files.to_device(batch, device)  # (B, 3, S, S) on the device
            ok = np.array([not error for error in errors])
            features, copied = to_host(encode(encoder, pixels, device, dtype, precision))  # (B, P, E)
            # the write of this batch overlaps the decoding and encoding of the next
            pending.append(writer.submit(write_rows, store, batch.rows.numpy(), features, ok, copied))
            encoded += int(ok.sum())
            progress.update(len(errors))
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
        with h5py.File(partials[0], "r+") as file:  # its attrs are already the final ones, but for the identity
            del file[DONE]
            file.attrs.pop(INPUTS, None)
        verify_cache(partials[0], len(names), names)  # every row reads back as written, before it appears
        os.replace(partials[0], out)
    else:
        sources = []
        for path in partials:
            with h5py.File(path, "r") as part:
                num_regions, dtype, count = part[FEATURES].shape[1], part[FEATURES].dtype.name, len(part[FEATURES])
            sources.append((path, np.arange(count)))
        write_cache(out, sources, attrs, num_regions, dtype, names)
    for stale in out.parent.glob(f".{out.name}*.partial"):  # the ranks' files, and any left by other runs
        stale.unlink()


def write_cache(out: Path, sources: Sequence[tuple[Path, np.ndarray]], attrs: dict[str, Any], num_regions: int,
                dtype: str, expected: Sequence[str] | None = None) -> list[str]:
    """Write the cache `out` atomically from rows of other caches or partial files: the given rows (increasing)
    of each source in turn, each with the checksum written with it; the whole is verified (`verify_cache`)
    before it appears. `expected`: the image names it must hold, in order. Returns its image names.

    The one writer of a cache from others: the features stage merging its processes' files, the photo
    index keeping its old rows beside the new ones."""
    names: list[str] = []
    for path, rows in sources:
        with h5py.File(path, "r") as source:
            if CHECKSUMS not in source:
                raise FeatureStoreError(f"{path} has no per-row checksums to carry over; make it again")
            stored = source[IMAGES].asstr()[()]
        names += [str(stored[row]) for row in rows]
    if expected is not None and names != list(expected):
        raise FeatureExtractionError(f"{', '.join(str(path) for path, _ in sources)} hold other images than "
                                     f"{out} should; rerun the stage")
    with atomic_path(out) as tmp:
        with h5py.File(tmp, "w", rdcc_nbytes=0) as file:
            features = create_layout(file, names, num_regions, FEATURE_DIM, dtype, attrs)
            checksums = create_checksums(file, len(names))
            start = 0
            for path, rows in sources:
                copy_rows(path, np.asarray(rows, dtype=np.int64), features, checksums, start)
                start += len(rows)
        verify_cache(tmp, len(names), names)
    return names


def copy_rows(path: Path, rows: np.ndarray, features: h5py.Dataset, checksums: h5py.Dataset, start: int) -> None:
    """Copy `rows` (R,) of the cache or partial file at `path`, features and checksums, to rows start.. of the
    destination's datasets, a run of consecutive rows at a time, at most COPY_ROWS rows per read."""
    with h5py.File(path, "r") as source:
        for first, stop in consecutive_runs(rows):
            for offset in range(first, stop, COPY_ROWS):
                end = min(stop, offset + COPY_ROWS)
                row = int(rows[offset])
                features[start + offset:start + end] = source[FEATURES][row:row + end - offset]
                checksums[start + offset:start + end] = source[CHECKSUMS][row:row + end - offset]
