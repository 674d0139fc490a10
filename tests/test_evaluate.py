"""The evaluate stage on the tiny trained project: metrics that agree with a hand computation from its own
predictions, the figures, and a dataset without object boxes."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.stages import evaluate
from tests.conftest import write_params


def corpus_bleu1(predictions: list[dict]) -> float:
    """BLEU-1 over the corpus, written out: clipped unigram matches / hypothesis words, times the brevity
    penalty with each image's closest reference length (the shorter on a tie)."""
    matches = hypothesis_words = reference_words = 0
    for prediction in predictions:
        words = prediction["caption"].split()
        references = [reference.split() for reference in prediction["references"]]
        most = Counter()
        for reference in references:
            most |= Counter(reference)
        matches += sum(min(count, most[word]) for word, count in Counter(words).items())
        hypothesis_words += len(words)
        reference_words += min((len(r) for r in references), key=lambda n: (abs(n - len(words)), n))
    penalty = 1.0 if hypothesis_words >= reference_words else math.exp(1 - reference_words / hypothesis_words)
    return penalty * matches / hypothesis_words


def run_evaluate(project: Path, monkeypatch: pytest.MonkeyPatch, params: Path | None = None) -> None:
    monkeypatch.chdir(project)
    if params is None:
        monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    else:
        monkeypatch.setenv("PIPELINE_PARAMS", str(params))
    evaluate.main()


def test_evaluate_stage_writes_metrics_that_match_its_predictions(trained_project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_evaluate(trained_project, monkeypatch)
    metrics = json.loads((trained_project / "metrics/evaluate.json").read_text())
    predictions = json.loads((trained_project / "data/evaluate/predictions.json").read_text())
    assert metrics["images"] == len(predictions) == 6
    assert [p["image"] for p in predictions] == sorted(p["image"] for p in predictions)
    assert all(len(p["references"]) == 5 and p["caption"] for p in predictions)
    assert metrics["bleu1"] == pytest.approx(corpus_bleu1(predictions), abs=1e-6)
    assert metrics["beam_size"] == 2 and metrics["checkpoint_epoch"] >= 1
    assert 0.0 <= metrics["greedy_bleu4"] <= 1.0 and metrics["cider"] >= 0.0

    # attention correctness scores each colour and shape word that names something in its own image;
    # the other colour and shape words (of any image of the dataset) are counted as hallucinated
    objects = json.loads((trained_project / "data/shapes/objects.json").read_text())
    words = {o[kind] for boxes in objects.values() for o in boxes for kind in ("colour", "shape")}
    present = sum(word in {o[kind] for o in objects[p["image"]] for kind in ("colour", "shape")}
                  for p in predictions for word in p["caption"].split())
    spoken = sum(word in words for p in predictions for word in p["caption"].split())
    assert metrics["attention_words"] == present > 0
    assert metrics["hallucinated_words"] == spoken - present
    assert metrics["hallucination_rate"] == pytest.approx((spoken - present) / spoken)
    assert 0.0 <= metrics["attention_correctness"] <= 1.0
    said = {tuple(word for word in p["caption"].split() if word in words) for p in predictions}
    assert metrics["distinct_object_descriptions"] == len(said) <= metrics["distinct_captions"]

    figures = sorted((trained_project / "data/evaluate/attention").glob("*.png"))
    assert [f.stem for f in figures] == [Path(p["image"]).stem for p in predictions[:2]]

    # the same predictions in the COCO formats (tests/test_coco_format.py reads them as pycocoevalcap does)
    out = trained_project / "data/evaluate"
    ids = json.loads((out / "coco_image_ids.json").read_text())
    assert sorted(ids) == [p["image"] for p in predictions] and sorted(ids.values()) == list(range(1, 7))
    assert json.loads((out / "coco_results.json").read_text()) == [
        {"image_id": ids[p["image"]], "caption": p["caption"]} for p in predictions]
    annotations = json.loads((out / "coco_annotations.json").read_text())
    assert {image["file_name"]: image["id"] for image in annotations["images"]} == ids
    assert len(annotations["annotations"]) == sum(len(p["references"]) for p in predictions)


@pytest.mark.slow  # the evaluate stage with pycocoevalcap's Java scoring, a second time
def test_evaluate_without_object_boxes(trained_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(trained_project / "no_objects.yaml", {"evaluate": {
        "objects": None, "num_figures": 0, "out_dir": "data/evaluate_no_objects",
        "metrics": "metrics/evaluate_no_objects.json"}}, tiny=True)
    run_evaluate(trained_project, monkeypatch, params)
    metrics = json.loads((trained_project / "metrics/evaluate_no_objects.json").read_text())
    predictions = json.loads((trained_project / "data/evaluate_no_objects/predictions.json").read_text())
    assert not [key for key in metrics if key.startswith("attention")]
    assert metrics["images"] == len(predictions) == 6
    assert metrics["bleu1"] == pytest.approx(corpus_bleu1(predictions), abs=1e-6)
    assert list((trained_project / "data/evaluate_no_objects/attention").iterdir()) == []


@pytest.mark.parametrize("fault", ["empty_split", "objects_not_json", "objects_of_another_kind",
                                   "features_of_another_encoder", "features_of_another_size"])
def test_bad_inputs_stop_evaluate_in_one_line_before_decoding(trained_project: Path, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path, fault: str) -> None:
    import numpy as np

    from pipeline.encoder.feature_cache import FeatureStore
    from tests.conftest import write_feature_cache

    table, objects, cache = (trained_project / "data/prepared/captions.csv", trained_project / "data/shapes/objects.json",
                             trained_project / "data/features/features.h5")
    if fault == "empty_split":
        lines = table.read_text().splitlines()
        table = tmp_path / "captions.csv"
        table.write_text("\n".join(line for line in lines if ",test," not in line) + "\n")
    elif fault.startswith("objects"):
        objects = tmp_path / "objects.json"
        objects.write_text('{"img_00001.png": [{"colour"' if fault == "objects_not_json" else '{"img_00001.png": 3}')
    else:
        store = FeatureStore(cache)
        features = store.load().numpy()
        attrs = {**store.attrs, "image_size": 96, "grid": 3} if fault == "features_of_another_encoder" else store.attrs
        if fault == "features_of_another_size":
            features = np.concatenate([features, features], axis=2)
        cache = write_feature_cache(tmp_path / "features.h5", store.names, features, attrs)
    params = write_params(tmp_path / "params.yaml", {
        "dataset": {"table": str(table)}, "encoder": {"cache": str(cache)},
        "evaluate": {"objects": str(objects), "out_dir": str(tmp_path / "evaluate"),
                     "metrics": str(tmp_path / "evaluate.json")}}, tiny=True)
    monkeypatch.setattr(evaluate, "describe_all", lambda *args, **kwargs: pytest.fail("decoded before the check"))
    expected = {"empty_split": r"no test captions in .*captions\.csv; check evaluate\.split",
                "objects_not_json": r"objects\.json is not valid JSON",
                "objects_of_another_kind": r"objects\.json is not an object-box file",
                "features_of_another_encoder": r"features\.h5 was made by another encoder .*image_size 96, not 64",
                "features_of_another_size": r"features\.h5 holds 4096-dim features but the checkpoint's model reads 2048"}
    with pytest.raises(InputError, match=expected[fault]):
        run_evaluate(trained_project, monkeypatch, params)
    assert not (tmp_path / "evaluate").exists() and not (tmp_path / "evaluate.json").exists()
