"""The COCO formats of evaluate's predictions: image ids (COCO's own for COCO file names), the results
list, and references that pycocotools' COCO and pycocoevalcap's COCOEvalCap read unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pycocoevalcap.bleu.bleu import Bleu

from pipeline.evaluation.coco_format import coco_annotations, coco_results, image_ids

CAPTIONS = {"b.png": "a red circle", "a.png": "a blue square", "c/d.png": "a green triangle"}
REFERENCES = {"a.png": ["a blue square", "one blue square"], "b.png": ["a red circle"],
              "c/d.png": ["a green triangle", "a triangle"]}


def test_ids_are_cocos_own_for_coco_file_names_else_1_to_n() -> None:
    assert image_ids(CAPTIONS) == {"a.png": 1, "b.png": 2, "c/d.png": 3}
    coco = ["val2014/COCO_val2014_000000391895.jpg", "000000000042.jpg", "COCO_train2014_000000000009.jpg"]
    assert image_ids(coco) == {coco[0]: 391895, coco[1]: 42, coco[2]: 9}
    assert image_ids([*coco, "holiday.jpg"]) == {"000000000042.jpg": 1, coco[2]: 2, "holiday.jpg": 3, coco[0]: 4}
    twice = ["COCO_val2014_000000000001.jpg", "COCO_train2014_000000000001.jpg"]
    assert sorted(image_ids(twice).values()) == [1, 2]  # the same COCO id twice: numbered instead


class MinimalCOCO:
    """What pycocoevalcap's COCOEvalCap uses of pycocotools' COCO: getImgIds, imgToAnns, loadRes (as there)."""

    def __init__(self, dataset: dict) -> None:
        self.dataset = dataset
        self.imgToAnns: dict[int, list[dict]] = {}
        for annotation in dataset["annotations"]:
            self.imgToAnns.setdefault(annotation["image_id"], []).append(annotation)

    def getImgIds(self) -> list[int]:  # noqa: N802 - pycocotools' name
        return [image["id"] for image in self.dataset["images"]]

    def loadRes(self, path: Path) -> MinimalCOCO:  # noqa: N802 - pycocotools' name
        results = json.loads(Path(path).read_text())
        assert isinstance(results, list) and {"image_id", "caption"} <= set(results[0])
        assert {r["image_id"] for r in results} <= set(self.getImgIds())  # pycocotools' own check
        images = [image for image in self.dataset["images"] if image["id"] in {r["image_id"] for r in results}]
        return MinimalCOCO({"images": images, "annotations": [{**r, "id": i + 1} for i, r in enumerate(results)]})


def test_files_read_the_way_cocoevalcap_reads_them(tmp_path: Path) -> None:
    ids = image_ids(CAPTIONS)
    (tmp_path / "results.json").write_text(json.dumps(coco_results(CAPTIONS, ids)))
    (tmp_path / "annotations.json").write_text(json.dumps(coco_annotations(REFERENCES, ids)))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == [{"image_id": 1, "caption": "a blue square"}, {"image_id": 2, "caption": "a red circle"},
                       {"image_id": 3, "caption": "a green triangle"}]
    coco = MinimalCOCO(json.loads((tmp_path / "annotations.json").read_text()))
    assert {image["file_name"]: image["id"] for image in coco.dataset["images"]} == ids  # the mapping
    assert len({a["id"] for a in coco.dataset["annotations"]}) == 5
    found = coco.loadRes(tmp_path / "results.json")
    # COCOEvalCap.evaluate: gts and res by image id, then each scorer (here BLEU, which needs no Java)
    image = found.getImgIds()
    gts = {i: [a["caption"] for a in coco.imgToAnns[i]] for i in image}
    res = {i: [a["caption"] for a in found.imgToAnns[i]] for i in image}
    assert res[ids["b.png"]] == ["a red circle"] and gts[ids["a.png"]] == REFERENCES["a.png"]
    bleu, _ = Bleu(1).compute_score(gts, res)
    assert bleu[0] == pytest.approx(1.0, abs=1e-6)  # every caption is one of its image's references
