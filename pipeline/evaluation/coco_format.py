"""Predictions and references in the COCO caption formats, which pycocoevalcap and the COCO leaderboard read.

The evaluate stage writes, beside predictions.json in `evaluate.out_dir`:

    coco_results.json       [{"image_id": int, "caption": str}, ...]   the results file (COCO.loadRes)
    coco_image_ids.json     {image name: image_id}                     the mapping from names to ids
    coco_annotations.json   {"info", "licenses", "type": "captions", "images": [{"id", "file_name"}],
                             "annotations": [{"id", "image_id", "caption"}]}   the references (COCO(...))

so that `COCOEvalCap(COCO("coco_annotations.json"), coco.loadRes("coco_results.json"))` scores
them unchanged. Image ids are COCO's own when every name is a COCO file name
(`COCO_val2014_000000391895.jpg` or `000000391895.jpg`), so the results also match COCO's own
annotation files; otherwise 1..N in the order of the sorted names.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

COCO_FILE = re.compile(r"(?:COCO_[a-z]+\d{4}_)?(\d{12})\.jpg")


def image_ids(names: Iterable[str]) -> dict[str, int]:
    """{name: id}: COCO's ids when every (base) name is a COCO file name and they are distinct, else 1..N."""
    names = sorted(names)
    found = [COCO_FILE.fullmatch(name.rsplit("/", 1)[-1]) for name in names]
    if names and all(found) and len({int(match.group(1)) for match in found}) == len(names):
        return {name: int(match.group(1)) for name, match in zip(names, found)}
    return {name: number for number, name in enumerate(names, start=1)}


def coco_results(captions: Mapping[str, str], ids: Mapping[str, int]) -> list[dict[str, int | str]]:
    """One {"image_id", "caption"} per image, in id order."""
    return [{"image_id": ids[name], "caption": captions[name]} for name in sorted(captions, key=ids.__getitem__)]


def coco_annotations(references: Mapping[str, Iterable[str]], ids: Mapping[str, int]) -> dict:
    """The references as a COCO caption annotation file: its images carry each id's file name."""
    names = sorted(references, key=ids.__getitem__)
    annotations = [{"image_id": ids[name], "caption": caption} for name in names for caption in references[name]]
    return {"info": {"description": "test references of the captioning pipeline"}, "licenses": [],
            "type": "captions", "images": [{"id": ids[name], "file_name": name} for name in names],
            "annotations": [{"id": number, **annotation} for number, annotation in enumerate(annotations, start=1)]}
