"""Evaluation: the attention-correctness score, the COCO metrics, Java checks, the stage end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.stages import evaluate, scoring


def one_hot(cell: int, regions: int = 4) -> torch.Tensor:
    alpha = torch.full((regions,), 0.1 / (regions - 1))
    alpha[cell] = 0.9
    return alpha


def test_peak_point_is_the_centre_of_the_most_attended_cell() -> None:
    # 2x2 grid over a 100 x 60 image: cell 3 is bottom right
    assert evaluate.peak_point(one_hot(3), width=100, height=60) == (75.0, 45.0)
    assert evaluate.peak_point(one_hot(0), width=100, height=60) == (25.0, 15.0)


def test_attention_correctness_counts_colour_and_shape_words() -> None:
    objects = {"a.png": [{"colour": "red", "shape": "circle", "box": [0, 0, 50, 50]},
                         {"colour": "blue", "shape": "square", "box": [50, 50, 100, 100]}]}
    words = ["a", "red", "circle", "and", "a", "blue", "square"]
    # red looks top left (right), circle bottom right (wrong), blue bottom right (right), square top left (wrong)
    alphas = torch.stack([one_hot(0), one_hot(0), one_hot(3), one_hot(0), one_hot(0), one_hot(3), one_hot(0)])
    scores = evaluate.attention_correctness({"a.png": (words, alphas)}, objects, {"a.png": (100, 100)})
    assert scores["attention_words"] == 4
    assert scores["attention_correctness"] == pytest.approx(0.5)
    assert scores["attention_correctness_colour"] == pytest.approx(1.0)
    assert scores["attention_correctness_shape"] == pytest.approx(0.0)


def test_coco_scores_are_perfect_for_identical_captions_and_lower_otherwise() -> None:
    references = {"1": ["a red circle to the left of a blue square", "there is a red circle and a blue square"],
                  "2": ["a green triangle on a grey background", "a single green triangle"]}
    perfect = scoring.coco_scores(references, {"1": references["1"][0], "2": references["2"][0]})
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0)
    assert perfect["meteor"] > 0.9
    worse = scoring.coco_scores(references, {"1": "a blue square", "2": "a red circle"})
    for key in ("bleu1", "bleu4", "meteor", "rouge_l", "cider"):
        assert worse[key] < perfect[key], key
    assert scoring.bleu4(references, {"1": references["1"][0], "2": references["2"][0]}) == pytest.approx(1.0, abs=1e-6)


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="default-jre-headless"):
        scoring.coco_scores({"1": ["a red circle"]}, {"1": "a red circle"})


def test_evaluate_stage_writes_metrics_predictions_and_figures(trained_project: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(trained_project)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    evaluate.main()
    metrics = json.loads((trained_project / "metrics/evaluate.json").read_text())
    predictions = json.loads((trained_project / "data/evaluate/predictions.json").read_text())
    assert metrics["images"] == len(predictions) == 6
    assert metrics["beam_size"] == 2
    for key in ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "greedy_bleu4", "attention_correctness"):
        assert key in metrics
    assert all(len(p["references"]) == 5 and isinstance(p["caption"], str) for p in predictions)
    figures = sorted((trained_project / "data/evaluate/attention").glob("*.png"))
    assert [f.stem for f in figures] == [Path(p["image"]).stem for p in predictions[:2]]
