"""A folder of photos made searchable: each photo encoded once and captioned, kept beside the folder.

    caption-search index PHOTOS_DIR [--index DIR]               (default DIR: PHOTOS_DIR/.caption-index)

DIR/features.h5 has the feature cache's layout (`pipeline.encoder.feature_cache`), made with the
checkpoint's encoder; DIR/captions.json holds {"photos": folder, "checkpoint_sha256", "files":
{name: [size, mtime_ns]}, "captions": {name: caption}, "skipped": {name: why}}. Names are paths
relative to the folder.

Updating is incremental: photos already indexed (same size and modification time) are not encoded
again, removed or changed ones leave the index, new ones are encoded into a partial file with a
done mask (`pipeline.encoder.extraction`) that an interrupted run continues, then merged into a new
features.h5 by the features stage's writer (`write_cache`: every row with its checksum, the file
verified before it replaces the old one atomically). Rows of the old features.h5 that no longer
match their checksums are encoded again; search refuses them. captions.json is written last: an
index whose captions do not cover its features is incomplete and `open_index` says so. Files that
cannot be decoded are skipped and listed; files without an image suffix are counted and left alone.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from pipeline.encoder.extraction import DONE, ImageFiles, names_sha256, open_partial, write_cache, write_rows
from pipeline.encoder.feature_cache import IMAGES, FeatureStore, FeatureStoreError, unwritten_rows
from pipeline.encoder.resnet import file_sha256
from pipeline.errors import InputError
from pipeline.files import list_files, write_json
from pipeline.model.captioner import describe
from pipeline.retrieval.ranking import Gallery

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pipeline.api import Captioner

INDEX_DIR = ".caption-index"
FEATURES_FILE, CAPTIONS_FILE, PARTIAL_FILE = "features.h5", "captions.json", ".features.h5.partial"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
DTYPE = "float16"
MANIFEST_KEYS = ("files", "captions", "skipped")

logger = logging.getLogger(__name__)


class PhotoIndexError(InputError):
    """A photo index that is missing, incomplete or made for another model."""


@dataclasses.dataclass
class IndexReport:
    """What one update did."""

    photos: int  # photos in the index now
    encoded: int  # encoded by this run
    captioned: int  # captioned by this run
    removed: int  # left the index: deleted, changed or made with another encoder
    skipped: dict[str, str]  # files that could not be read, and why
    ignored: int  # files without an image suffix


def default_index_dir(photos: Path) -> Path:
    """Where a folder's index is kept unless told otherwise."""
    return Path(photos) / INDEX_DIR


def list_photos(folder: Path, index_dir: Path) -> tuple[list[str], int]:
    """(photo names under `folder` with an image suffix, sorted; how many other files), index left out."""
    inside = os.path.relpath(Path(index_dir).resolve(), Path(folder).resolve()).replace(os.sep, "/") + "/"
    names = [name for name in list_files(folder) if not name.startswith(inside)]
    photos = sorted(name for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return photos, len(names) - len(photos)


def file_stamp(path: Path) -> list[int]:
    """[size, mtime_ns]: a photo changed when this changes."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def empty_manifest() -> dict[str, Any]:
    return {key: {} for key in MANIFEST_KEYS}


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """captions.json, or an empty manifest when there is none yet."""
    path = Path(index_dir) / CAPTIONS_FILE
    if not path.is_file():
        return empty_manifest()
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # cut off, not JSON, not UTF-8
        raise PhotoIndexError(f"{path} is unreadable ({error})") from error
    if not isinstance(manifest, dict) or not all(isinstance(manifest.get(key), dict) for key in MANIFEST_KEYS):
        raise PhotoIndexError(f"{path} is not a photo index manifest (it needs {', '.join(MANIFEST_KEYS)})")
    return manifest


def indexed_names(features: Path, attrs: dict[str, Any]) -> tuple[list[str], str | None]:
    """(names of the intact rows of an existing features.h5, why none of it can be kept or None).

    A row that no longer matches its checksum (the file was damaged on disk) is left out, said, and so
    encoded again."""
    if not features.is_file():
        return [], None
    try:
        store = FeatureStore(features)
    except (OSError, ValueError, FeatureStoreError) as error:
        return [], f"it is unreadable ({error})"
    changed = [key for key, value in attrs.items() if store.attrs.get(key) != value]
    if changed:
        return [], f"the encoder changed ({', '.join(changed)})"
    if store.checksums is None:
        return [], "it has no per-row checksums (it was made before they were written)"
    try:
        damaged = set(unwritten_rows(features).tolist())
    except OSError as error:  # rows cut off
        return [], f"it is unreadable ({' '.join(str(error).split())})"
    if damaged:
        logger.warning("index: %d photos' features in %s were damaged on disk (first: %s); encoding them again",
                       len(damaged), features, store.names[min(damaged)])
    return [name for row, name in enumerate(store.names) if row not in damaged], None


def encode_new(captioner: Captioner, files: ImageFiles, store: h5py.File, batch_size: int,
               show_progress: bool) -> tuple[int, dict[str, str]]:
    """Encode the photos not yet done in the partial `store`; returns (encoded, {name: why} of bad files)."""
    todo = np.flatnonzero(~store[DONE][()]).tolist()
    encoded, skipped = 0, {}
    loader = DataLoader(Subset(files, todo), batch_size=batch_size, collate_fn=files.collate)
    for batch in tqdm(loader, desc="index", unit="batch", disable=not show_progress):
        rows = batch.rows
        pixels, errors = files.to_device(batch, captioner.device)  # (B, 3, S, S)
        ok = np.array([not error for error in errors])
        for row, error in zip(rows.tolist(), errors):
            if error:
                skipped[str(store[IMAGES].asstr()[row])] = error
        if ok.any():
            features = captioner.features(pixels[torch.from_numpy(ok)]).float().cpu().numpy()  # (B', P, E)
            write_rows(store, rows.numpy()[ok], features.astype(DTYPE), np.ones(int(ok.sum()), dtype=bool))
            encoded += int(ok.sum())
    return encoded, skipped


def write_features(out: Path, kept: Sequence[str], partial: Path | None, attrs: dict[str, Any],
                   num_regions: int) -> list[str]:
    """Write `out` atomically: the `kept` rows of the current `out`, then the done rows of `partial`, each row
    with its checksum, verified before it replaces the old file; returns the names."""
    sources: list[tuple[Path, np.ndarray]] = []
    if kept:
        position = {name: row for row, name in enumerate(FeatureStore(out).names)}
        sources.append((out, np.array(sorted(position[name] for name in kept), dtype=np.int64)))
    if partial is not None:
        with h5py.File(partial, "r") as file:
            sources.append((partial, np.flatnonzero(file[DONE][()])))
    return write_cache(out, sources, attrs, num_regions, DTYPE)


def caption_missing(captioner: Captioner, features: Path, captions: dict[str, str], batch_size: int) -> int:
    """Caption, from their stored features, the indexed photos `captions` lacks; returns how many."""
    store = FeatureStore(features)
    todo = [row for row, name in enumerate(store.names) if name not in captions]
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        found = describe(captioner.model, store[rows].to(captioner.device), captioner.vocabulary, captioner.options)
        captions.update((store.names[row], caption.text) for row, caption in zip(rows, found))
    store.close()
    return len(todo)


def update_index(captioner: Captioner, photos: Path, index_dir: Path | None = None, batch_size: int = 16,
                 show_progress: bool = True) -> IndexReport:
    """Bring the index of `photos` up to date with the folder and the model; see the module docstring."""
    photos = Path(photos)
    if not photos.is_dir():
        raise FileNotFoundError(f"{photos}: not a folder of photos")
    index_dir = Path(index_dir) if index_dir is not None else default_index_dir(photos)
    index_dir.mkdir(parents=True, exist_ok=True)
    features, partial = index_dir / FEATURES_FILE, index_dir / PARTIAL_FILE
    names, ignored = list_photos(photos, index_dir)
    stamps = {name: file_stamp(photos / name) for name in names}
    # the encoder's provenance, less the dataset's image list that the checkpoint also records, at the
    # precision the photos are encoded in here (fp32 for bf16 where this CPU would emulate it)
    attrs = {**{k: v for k, v in captioner.encoder_info.items() if k != "images_sha256"},
             "precision": captioner.precision, "dtype": DTYPE}
    try:
        manifest = read_manifest(index_dir)
    except PhotoIndexError as error:
        logger.warning(f"index: encoding every photo again: {error}")
        manifest = empty_manifest()
    old, reason = indexed_names(features, attrs)
    if reason:
        logger.info(f"index: encoding every photo again: {features} cannot be kept: {reason}")
    kept = [name for name in old if name in stamps and manifest["files"].get(name) == stamps[name]]
    new = sorted(set(names) - set(kept))
    num_regions = int(captioner.encoder_info["grid"]) ** 2
    encoded, skipped = 0, {}
    if new:
        files = ImageFiles([photos / name for name in new], captioner.image_size)
        with open_partial(partial, new, {**attrs, "images_sha256": names_sha256(new)}, num_regions, DTYPE) as store:
            encoded, skipped = encode_new(captioner, files, store, batch_size, show_progress)
    if new or len(kept) != len(old) or reason or not features.is_file():
        final = write_features(features, kept, partial if new else None, attrs, num_regions)
    else:
        final = old
    partial.unlink(missing_ok=True)

    checkpoint_sha = file_sha256(captioner.checkpoint)
    captions = {name: manifest["captions"][name] for name in final
                if manifest.get("checkpoint_sha256") == checkpoint_sha and name in manifest["captions"]}
    captioned = caption_missing(captioner, features, captions, batch_size) if final else 0
    write_json(index_dir / CAPTIONS_FILE, {
        "photos": str(photos.resolve()), "checkpoint_sha256": checkpoint_sha,
        "files": {name: stamps[name] for name in final}, "captions": {name: captions[name] for name in final},
        "skipped": skipped})
    return IndexReport(len(final), encoded, captioned, len(old) - len(kept), skipped, ignored)


def open_index(index_dir: Path, checkpoint: Path | None = None) -> Gallery:
    """The index as a searchable gallery; an error when it is missing, incomplete or of another model."""
    index_dir = Path(index_dir)
    features, manifest_path = index_dir / FEATURES_FILE, index_dir / CAPTIONS_FILE
    if not features.is_file() or not manifest_path.is_file():
        raise PhotoIndexError(f"{index_dir} is not a photo index; "
                              "make it with `caption-search index PHOTOS_DIR`")
    try:
        manifest = read_manifest(index_dir)
    except PhotoIndexError as error:
        raise PhotoIndexError(f"{error}; run `caption-search index` on its folder again") from error
    store = FeatureStore(features, repair=f"run `caption-search index {manifest.get('photos', '')}` "
                                          "again: it encodes the damaged photos again")
    missing = [name for name in store.names if name not in manifest["captions"]]
    if missing:
        raise PhotoIndexError(f"{index_dir} is incomplete ({len(missing)} photos without a caption); "
                          f"run `caption-search index` on its folder again")
    if checkpoint is not None and manifest.get("checkpoint_sha256") != file_sha256(Path(checkpoint)):
        raise PhotoIndexError(f"{index_dir} was made with another model than {checkpoint}; "
                          f"run `caption-search index` on its folder again")
    folder = Path(manifest["photos"])
    on_disk = [(folder / name).is_file() for name in store.names]
    present = [row for row, found in enumerate(on_disk) if found]
    gone = sorted(name for name, found in zip(store.names, on_disk) if not found)
    if gone:
        logger.warning(f"search: {len(gone)} of {len(store)} indexed photos are no longer in {folder} "
                       f"(first: {gone[0]}) and are left out; run `caption-search index {folder}` to update the index")
    names = [store.names[row] for row in present]
    return Gallery(names, [folder / name for name in names], [manifest["captions"][name] for name in names], store,
                   np.array(present, dtype=np.int64))
