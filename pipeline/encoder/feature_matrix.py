"""The features of a set of images for training and evaluation: resident on the device when they
fit the memory budget, else streamed from the HDF5 cache with the next batches read ahead.

    features = FeatureMatrix(store, names, device)   # prints which path it took, and why
    features.prefetch([rows_of_batch_1, rows_of_batch_2, ...])   # streaming: read these ahead, in order
    x = features[rows_of_batch_1]   # (B, P, E) on the device, in the stored dtype

The budget is half the free memory of the device (GPU memory on CUDA, RAM on the CPU), or what
the caller (`memory_fraction` of the free memory, or `memory_budget_bytes`) or the environment
variable PIPELINE_FEATURE_MEMORY (bytes, with an optional K/M/G/T suffix) sets; 0 forces streaming.
Both paths return bit-identical tensors.

Resident: read straight into one preallocated (N, P, E) tensor (on CUDA through a small pinned
buffer), so the peak is the matrix plus a few MB, never two copies of it. Streamed: each batch's
distinct rows are read in increasing order, one HDF5 read per run of consecutive rows (h5py's own
fancy indexing is ~50x slower), into pinned memory on CUDA. `prefetch` starts a thread that reads
the announced batches ahead (h5py releases the GIL while it reads); a request that does not match
the next announced batch is read on the spot and leaves the schedule in place.

Every row read is checked against the CRC-32 written with it (`FeatureStore.check`): each row of
the resident matrix once, as it is loaded; each batch's distinct rows as they are streamed. A
damaged row stops the reader with `CorruptFeaturesError` (raised where the batch is asked for,
when the read-ahead thread found it).
"""
from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.encoder.feature_cache import FEATURES, FeatureStore
from pipeline.errors import ConfigError

logger = logging.getLogger(__name__)

MEMORY_ENV = "PIPELINE_FEATURE_MEMORY"
MEMORY_FRACTION = 0.5  # of the free memory, when neither the caller nor the environment sets a budget
LOAD_ROWS = 256  # rows per read while loading the resident matrix
READ_AHEAD = 4  # batches the prefetch thread may hold ready
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}

Reader = Callable[[torch.Tensor], torch.Tensor]  # local rows (R,) -> their features (R, P, E) on the host


def available_memory(device: torch.device) -> int:
    """Bytes free on the device: GPU memory, or the host RAM available without swapping (MemAvailable,
    which counts the page cache the kernel can drop)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        meminfo = Path("/proc/meminfo").read_text()
        return int(re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, flags=re.MULTILINE).group(1)) * 1024
    except (OSError, AttributeError):  # not Linux
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def parse_bytes(text: str) -> int:
    """'2G', '512M', '1.5G', '0' or a plain count -> bytes; a ValueError naming the variable otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ConfigError(f"{MEMORY_ENV}={text!r} is not a size; use bytes with an optional K/M/G/T suffix "
                         f"(e.g. 2G, 512M), or 0 to stream the features from disk")
    return int(float(match.group(1)) * UNITS[match.group(2).upper()])


def memory_budget(device: torch.device, budget: int | None = None, fraction: float | None = None) -> tuple[int, str]:
    """The bytes the resident matrix may take, and where that number comes from: the caller's
    `budget` or `fraction` of the free memory, else PIPELINE_FEATURE_MEMORY, else half the free memory."""
    where = "GPU memory" if device.type == "cuda" else "RAM"
    if budget is not None:
        return budget, "set by the caller"
    if fraction is not None:
        return int(fraction * available_memory(device)), f"{fraction:g} of the free {where}, set by the caller"
    if os.environ.get(MEMORY_ENV, "").strip():
        return parse_bytes(os.environ[MEMORY_ENV]), f"{MEMORY_ENV}={os.environ[MEMORY_ENV].strip()}"
    return int(MEMORY_FRACTION * available_memory(device)), f"half the free {where}"


def gigabytes(count: int) -> str:
    """Bytes as GB with two decimals."""
    return f"{count / 1e9:.2f} GB"


def read_rows(dataset: h5py.Dataset, rows: np.ndarray, out: np.ndarray) -> None:
    """Read increasing, distinct `rows` (R,) of an (N, P, E) dataset into `out` (R, P, E): one read per
    run of consecutive rows, at most LOAD_ROWS at a time (so the read's own buffer stays small)."""
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    for run_start, run_stop in zip([0, *breaks], [*breaks, len(rows)]):
        for start in range(run_start, run_stop, LOAD_ROWS):
            stop = min(run_stop, start + LOAD_ROWS)
            first = int(rows[start])
            out[start:stop] = dataset[first:first + stop - start]  # a slice: h5py's fastest read


class Prefetcher:
    """A thread that reads announced batches ahead, in order, at most READ_AHEAD at a time."""

    def __init__(self, read: Reader, batches: Sequence[torch.Tensor]) -> None:
        self.expected = deque(rows.cpu() for rows in batches)  # what __getitem__ will ask for, in order
        self.ready: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(read, list(self.expected)), daemon=True,
                                       name="feature-prefetch")
        self.thread.start()

    def _run(self, read: Reader, batches: list[torch.Tensor]) -> None:
        for rows in batches:
            try:
                item = read(rows)
            except Exception as error:  # noqa: BLE001 - any failure is raised to whoever asks for this batch
                item = error
            while not self.stopped.is_set():
                try:
                    self.ready.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stopped.is_set() or isinstance(item, Exception):
                return

    def take(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The features (R, P, E) read ahead for `rows` if they are the next batch announced, else None."""
        if not self.expected or not torch.equal(self.expected[0], rows):
            return None
        self.expected.popleft()
        item = self.ready.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Stop reading ahead and let the thread end."""
        self.stopped.set()
        self.thread.join()


class FeatureMatrix:
    """The features of a set of images, resident on the device when they fit, else streamed."""

    def __init__(self, store: FeatureStore, names: Sequence[str], device: torch.device,
                 memory_fraction: float | None = None, memory_budget_bytes: int | None = None,
                 announce: bool = True) -> None:
        self.store, self.device = store, device
        self.names = sorted(set(names))
        self.rows = {name: i for i, name in enumerate(self.names)}  # local row of each image
        self._store_rows = np.array(store.rows_of(self.names), dtype=np.int64)  # increasing: names are sorted
        self._handle: tuple[int, h5py.File] | None = None  # (process id, open file)
        self._prefetcher: Prefetcher | None = None
        self.dtype = torch.from_numpy(np.empty(0, dtype=store.dtype)).dtype  # the stored dtype, as torch's
        size = len(self.names) * store.num_regions * store.feature_dim * store.itemsize
        budget, source = memory_budget(device, memory_budget_bytes, memory_fraction)
        self.resident = size <= budget
        if announce and int(os.environ.get("RANK", "0")) == 0:
            where = "GPU memory" if device.type == "cuda" else "RAM"
            logger.info(f"features: {len(self.names):,} images ({gigabytes(size)}) "
                        + (f"held in {where}: within the {gigabytes(budget)} budget ({source})" if self.resident else
                           f"streamed from {store.path}, {READ_AHEAD} batches read ahead: over the "
                           f"{gigabytes(budget)} budget ({source})"))
        self._data = self._load() if self.resident else None  # (N, P, E)

    def _dataset(self) -> h5py.Dataset:
        """The cache's features through this process's own handle, opened on first use."""
        if self._handle is None or self._handle[0] != os.getpid():
            self._handle = (os.getpid(), h5py.File(self.store.path, "r"))
        return self._handle[1][FEATURES]

    def _load(self) -> torch.Tensor:
        """All rows, read into one preallocated (N, P, E) tensor on the device."""
        shape = (len(self._store_rows), self.store.num_regions, self.store.feature_dim)
        dtype = self.dtype
        if self.device.type != "cuda":
            data = torch.empty(shape, dtype=dtype)  # (N, P, E)
            read_rows(self._dataset(), self._store_rows, data.numpy())
            self.store.check(self._store_rows, data.numpy())
            return data
        data = torch.empty(shape, dtype=dtype, device=self.device)  # (N, P, E)
        staging = torch.empty((LOAD_ROWS, *shape[1:]), dtype=dtype, pin_memory=True)  # (LOAD_ROWS, P, E)
        for start in range(0, shape[0], LOAD_ROWS):
            rows = self._store_rows[start:start + LOAD_ROWS]
            read_rows(self._dataset(), rows, staging.numpy())
            self.store.check(rows, staging.numpy()[:len(rows)])
            data[start:start + len(rows)].copy_(staging[:len(rows)])  # synchronous: staging is reused
        return data

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        """Host features (R, P, E) of local `rows`, pinned on CUDA: the distinct rows read in increasing
        order, then put in the asked order (numpy's gather: ~5x torch's indexing on a CPU)."""
        unique, inverse = np.unique(rows.numpy(), return_inverse=True)
        shape = (self.store.num_regions, self.store.feature_dim)
        distinct = np.empty((len(unique), *shape), dtype=self.store.dtype)  # (U, P, E)
        read_rows(self._dataset(), self._store_rows[unique], distinct)
        self.store.check(self._store_rows[unique], distinct)
        out = torch.empty((len(rows), *shape), dtype=self.dtype, pin_memory=self.device.type == "cuda")  # (R, P, E)
        np.take(distinct, inverse.reshape(-1), axis=0, out=out.numpy())
        return out

    def prefetch(self, batches: Sequence[torch.Tensor]) -> None:
        """Announce the local rows of the next batches, in the order they will be asked for; when
        streaming, a thread starts reading them ahead (a no-op when resident)."""
        self.close()
        if self._data is None and len(batches):
            self._prefetcher = Prefetcher(self._read, batches)

    def rows_of(self, names: Sequence[str]) -> torch.Tensor:
        """Local rows (R,) of the named images."""
        return torch.tensor([self.rows[name] for name in names], dtype=torch.long)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        """Features (B, P, E) of local rows, on the device, in their stored dtype."""
        if self._data is not None and self.device.type == "cpu":  # numpy's gather is ~5x torch's here
            return torch.from_numpy(np.take(self._data.numpy(), rows.numpy(), axis=0))
        if self._data is not None:
            return self._data[rows.to(self.device)]
        rows = rows.cpu()
        ready = self._prefetcher.take(rows) if self._prefetcher is not None else None
        host = ready if ready is not None else self._read(rows)  # (B, P, E)
        return host.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Stop any reading ahead."""
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def statistics(self, rows: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (E,) over all regions of the given images, in float64."""
        total = torch.zeros(self.store.feature_dim, dtype=torch.float64, device=self.device)
        squares = torch.zeros_like(total)
        count = 0
        for part in rows.unique().split(chunk):
            x = self[part].double().flatten(0, 1)  # (B*P, E)
            total += x.sum(0)
            squares += (x * x).sum(0)
            count += x.size(0)
        mean = total / count
        std = (squares / count - mean * mean).clamp_min(0).sqrt()
        return mean.float(), std.float()
