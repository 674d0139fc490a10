"""Stage `features`: run the frozen CNN over every image once and cache its region features.

Inputs: the prepared table `dataset.table` (its unique images, sorted by name) and
the image files under `dataset.images`. Output: `encoder.cache` (features.h5), an (N, P, E) array
with the image names and the encoder's provenance (layout in pipeline/encoder/feature_cache.py),
including `demo_dataset`: whether `dataset.images` lies in `shapes.out_dir`. With `encoder.weights:
none` on images that are not the demo's, the stage says once that the encoder is untrained (the train
stage copies these attrs into the checkpoint, so the commands can say it too).

    python -m pipeline.stages.features                           # one process, on the GPU when there is one
    torchrun --nproc_per_node 4 -m pipeline.stages.features      # 4 processes, each encoding its own share

Decoding and resizing run in DataLoader workers (one torch thread each; on CUDA, JPEGs are decoded
on the GPU with nvJPEG, see pipeline/encoder/decoding.py); the encoder runs batched (BatchNorm
folded into the convolutions, channels_last; on CUDA pinned uint8 batches normalised on the GPU,
bf16 autocast) while a writer thread stores the previous batch; docs/speed.md has the measurements.
Work in progress is kept in a hidden partial file beside the output with a per-image `done` mask;
its attrs (encoder provenance, dtype, image decoder, and `images_sha256` of the image list) are the
fingerprint: a rerun after an interruption continues where it stopped when they still match, and
starts over, saying why, when they do not. `features.h5` appears only once every image is done: by
renaming the partial file (one process), or by rank 0 merging the ranks' partial files. (dvc.yaml
declares the file, not its folder, as the output, so the partial file survives DVC's removal of the
output before a rerun.)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.cli import run
from pipeline.config import DatasetConfig, EncoderConfig, ShapesConfig, load_section
from pipeline.datasets.table import read_captions
from pipeline.encoder.decoding import gpu_decode_wanted
from pipeline.encoder.extraction import (
    INPUTS,
    FeatureExtractionError,
    ImageFiles,
    extract,
    finalise,
    names_sha256,
    open_partial,
    partial_path,
    share,
)
from pipeline.encoder.feature_cache import feature_bytes
from pipeline.encoder.resnet import DEMO_ATTR, FEATURE_DIM, STRIDE, build_encoder, encoder_info, untrained_notice
from pipeline.files import full_disk_reported, lies_in, require_free_space, with_margin
from pipeline.identity import stage_identity
from pipeline.runtime import (
    emulation_warning,
    follow_rank_zero,
    relaunch_under_torchrun,
    resolve_precision,
    start_processes,
    stop_processes,
)


def read_image_list(table: str | Path) -> list[str]:
    """The unique image names of the prepared captions table, sorted."""
    names = sorted(set(read_captions(table)["image"]))
    if not names:
        raise FeatureExtractionError(f"{table} lists no images; check the prepare stage's report")
    return names


def main() -> None:
    dataset = load_section(DatasetConfig)
    config = load_section(EncoderConfig)
    rank, world_size, device = start_processes(config.device)

    names = read_image_list(dataset.table)
    precision = resolve_precision(config.precision, device)
    if rank == 0 and (warning := emulation_warning("encoder.precision", config.precision, device)):
        print(f"features: {warning}", file=sys.stderr, flush=True)
    encoder = build_encoder(config.weights).to_device(device, precision)
    gpu_decode = gpu_decode_wanted(device)
    attrs = {**encoder_info(config.weights, config.image_size, precision), "dtype": config.dtype,
             "image_decoder": "nvjpeg for plain JPEGs, else cpu" if gpu_decode else "cpu",
             DEMO_ATTR: lies_in(dataset.images, load_section(ShapesConfig).out_dir)}
    notice = untrained_notice(attrs)
    if notice and rank == 0:
        print(f"features: {notice}", file=sys.stderr, flush=True)
    num_regions = (config.image_size // STRIDE) ** 2
    out = Path(config.cache)

    # the merge of several processes' files writes a second copy before the partial files go
    cache_bytes = feature_bytes(len(names), num_regions, FEATURE_DIM, config.dtype)
    needed = with_margin(cache_bytes) * (2 if world_size > 1 else 1)
    require_free_space(out, needed, "encoder.cache")
    inputs = follow_rank_zero(stage_identity("features") if rank == 0 else None, world_size)
    try:
        started = time.perf_counter()
        mine = [names[row] for row in share(len(names), rank, world_size)]
        files = ImageFiles([Path(dataset.images) / name for name in mine], config.image_size, raw_jpegs=gpu_decode)
        with full_disk_reported(out, "encoder.cache"), open_partial(
                partial_path(out, rank, world_size), mine,
                {**attrs, "images_sha256": names_sha256(mine), INPUTS: inputs}, num_regions, config.dtype) as store:
            encoded = extract(encoder, files, store, config.batch_size, config.num_workers, device,
                              show_progress=rank == 0)
        if world_size > 1:  # also the barrier: every rank has finished its file before rank 0 merges
            total = torch.tensor([encoded], device=device)
            dist.all_reduce(total)
            encoded = int(total.item())
        if rank == 0:
            with full_disk_reported(out, "encoder.cache"):
                finalise(out, [partial_path(out, r, world_size) for r in range(world_size)], names,
                         {**attrs, "images_sha256": names_sha256(names)})
    finally:
        stop_processes(world_size)

    if rank == 0:
        seconds = time.perf_counter() - started
        processes = f" x {world_size} processes" if world_size > 1 else ""
        print(f"features: {len(names)} images -> {out} {(len(names), num_regions, FEATURE_DIM)} {config.dtype}; "
              f"{encoded} encoded in {seconds:.1f} s ({encoded / seconds:.1f} images/s) on {device}{processes}")


if __name__ == "__main__":
    if not relaunch_under_torchrun("pipeline.stages.features"):
        run(main, "features")
