"""Self-critical sequence training: sampling, rewards with END, baselines, the policy gradient, the stage."""
from __future__ import annotations

import dataclasses
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.evaluation.cider import CiderD
from pipeline.model.beam_search import SearchOptions, beam_search
from pipeline.model.decoder import coverage_penalty
from pipeline.runtime import Processes
from pipeline.text import Vocabulary
from pipeline.training.loop import update
from pipeline.training.scst import (
    Rewards,
    baseline_rewards,
    policy_loss,
    reference_divergence,
    reference_log_distributions,
    sample,
)
from tests.conftest import run_stages, write_params
from tests.tiny_models import END, PAD, START, UNK, P, V, make_features, make_model

BANNED = (PAD, START, UNK)
SPECIAL = {"start": START, "end": END, "pad": PAD}


def teacher_forced_log_probs(model, features: torch.Tensor, tokens: torch.Tensor, per_image: int) -> torch.Tensor:
    """log p of each token of rows (R, T) given the previous ones, from the decoder's forward pass (another path
    than sampling's start/advance), renormalised without the banned tokens."""
    captions = torch.cat([torch.full((tokens.size(0), 1), START), tokens], dim=1)  # (R, T+1)
    logits, _ = model(features.repeat_interleave(per_image, 0), captions)  # (R, T, V)
    logits[:, :, list(BANNED)] = float("-inf")
    return F.log_softmax(logits, dim=2).gather(2, tokens[:, :, None]).squeeze(2)  # (R, T)


def test_samples_are_whole_captions_whose_log_probabilities_are_the_models(one_thread, each_architecture) -> None:
    model, features = make_model(end_bias=1.0), make_features(3)
    torch.manual_seed(0)
    with torch.no_grad():
        found = sample(model, features, 4, 6, BANNED, **SPECIAL)
    tokens, log_probs = found.tokens, found.log_probs  # (12, T)
    assert tokens.shape[0] == 12
    for row in tokens.tolist():
        words = row[:row.index(END)]
        assert len(words) <= 6 and not set(words) & set(BANNED) and set(row[row.index(END) + 1:]) <= {PAD}
    reference = teacher_forced_log_probs(model, features, tokens.clamp_min(0), 4)
    chosen = found.mask
    torch.testing.assert_close(log_probs[chosen], reference[chosen], rtol=1e-5, atol=1e-5)
    assert (log_probs[tokens == PAD] == 0).all()
    assert len({tuple(row) for row in tokens.tolist()}) > 3  # samples, not one caption repeated


def test_greedy_sampling_is_beam_search_with_one_beam(one_thread, each_architecture) -> None:
    model, features = make_model(sharpness=3.0), make_features(5)
    with torch.no_grad():
        greedy = sample(model, features, 1, 8, BANNED, greedy=True, **SPECIAL).tokens.tolist()
    searched = beam_search(model, features, START, END, SearchOptions(1, 8, banned=BANNED))
    for row, hypothesis in zip(greedy, searched):
        words = row[:row.index(END)]
        assert words == hypothesis.tokens


def test_a_caption_at_the_length_limit_ends_with_a_forced_end_that_carries_no_gradient(one_thread) -> None:
    model, features = make_model(end_bias=-1e4), make_features(2)  # END is never chosen
    found = sample(model, features, 2, 5, BANNED, **SPECIAL)
    assert found.tokens.shape == (4, 6) and (found.tokens[:, 5] == END).all()
    assert (found.log_probs[:, :5] < 0).all() and (found.log_probs[:, 5] == 0).all()
    assert found.log_probs.requires_grad


def test_rewards_are_cider_d_with_end_on_both_sides_and_no_padding() -> None:
    vocabulary = Vocabulary(("<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle", "blue", "square"))
    references = {"x.png": ["a red circle", "a red circle a"], "y.png": ["a blue square"]}
    rewards = Rewards(references, vocabulary)
    rows = torch.tensor([[4, 5, 6, 2, 0], [4, 7, 2, 0, 0], [4, 7, 8, 2, 0], [6, 2, 0, 0, 0]])  # 2 per image
    expected = CiderD([[[4, 5, 6, 2], [4, 5, 6, 4, 2]], [[4, 7, 8, 2]]]).score(
        [[4, 5, 6, 2], [4, 7, 2], [4, 7, 8, 2], [6, 2]], np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(rewards(["x.png", "y.png"], rows), expected)
    # END counts: a fragment that stops before the reference's last word loses its END n-grams
    whole, fragment = rewards(["y.png", "y.png"], torch.tensor([[4, 7, 8, 2], [4, 7, 2, 0]]))
    assert whole == pytest.approx(10.0) and fragment < whole


def test_the_mixed_objective_adds_the_cross_entropy_of_one_reference_per_image(one_thread) -> None:
    """reference_cross_entropy is the teacher-forced cross-entropy of one of each image's own captions."""
    from pipeline.training.batches import EncodedCaptions
    from pipeline.training.scst import reference_cross_entropy

    model, features = make_model(), make_features(2)
    tokens = torch.tensor([[START, 4, 5, END], [START, 6, END, PAD], [START, 7, 8, END]])
    data = types.SimpleNamespace(train_set=EncodedCaptions(tokens, torch.tensor([4, 3, 4]), torch.tensor([0, 1, 1])))
    captions_of = {0: [0], 1: [1, 2]}
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        loss, targets = reference_cross_entropy(model, data, features, torch.tensor([0, 1]), captions_of)
        for second in (1, 2):  # image 1's caption is one of its two, image 0's is its only one
            rows = tokens[[0, second]][:, :4]
            logits, alphas = model(features, rows)
            expected = F.cross_entropy(logits.reshape(-1, V), rows[:, 1:].reshape(-1), ignore_index=PAD)
            if torch.allclose(loss, expected):
                seen.add(second)
                assert targets == (rows[:, 1:] != PAD).sum()  # the tokens the mean is over
    assert seen == {1, 2}


def test_samples_carry_the_attention_of_each_step_and_the_penalty_can_shape_it(one_thread) -> None:
    """alphas are the decoder's attention at the sampled steps (the teacher-forced pass agrees), with a
    gradient: the coverage penalty on them, followed alone, brings each region's summed attention to 1
    (captions of P steps, so that the penalty's least value is 0)."""
    model, features = make_model(end_bias=-1e4), make_features(2)  # every caption runs to the limit: P steps
    torch.manual_seed(0)
    found = sample(model, features, 3, P, BANNED, **SPECIAL)
    assert found.alphas.shape == (6, P, P) and found.alphas.requires_grad
    captions = torch.cat([torch.full((6, 1), START), found.tokens[:, :P]], dim=1)  # START and the P words
    _, alphas = model(features.repeat_interleave(3, 0), captions)  # (R, P, P)
    torch.testing.assert_close(found.alphas, alphas, rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    steps = found.mask[:, :P]

    def penalty() -> torch.Tensor:
        torch.manual_seed(1)
        return coverage_penalty(sample(model, features, 3, P, BANNED, **SPECIAL).alphas, steps)

    before = float(penalty().detach())
    for _ in range(40):
        optimizer.zero_grad()
        penalty().backward()
        optimizer.step()
    after = float(penalty().detach())
    assert after < 0.2 * before, (before, after)


def test_the_coverage_penalty_counts_only_the_captions_steps() -> None:
    alphas = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]])  # 1 caption, 3 steps, 2 regions
    # steps 1-2 count: coverage (1.5, 0.5) -> ((1 - 1.5)^2 + (1 - 0.5)^2) / 2 = 0.25
    assert float(coverage_penalty(alphas, torch.tensor([[True, True, False]]))) == pytest.approx(0.25)
    # all 3: coverage (1.5, 1.5) -> 0.25; none: coverage 0 -> 1
    assert float(coverage_penalty(alphas, torch.ones(1, 3, dtype=torch.bool))) == pytest.approx(0.25)
    assert float(coverage_penalty(alphas, torch.zeros(1, 3, dtype=torch.bool))) == pytest.approx(1.0)


def test_the_mean_baseline_leaves_each_sample_out_and_the_greedy_one_is_per_image() -> None:
    rewards = np.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])  # two images, three samples each
    np.testing.assert_allclose(baseline_rewards(rewards, 3, None), [4.0, 3.5, 1.5, 1.5, 1.5, 0.0])
    np.testing.assert_allclose(baseline_rewards(rewards, 3, np.array([2.0, 5.0])), [2, 2, 2, 5, 5, 5])


def test_the_policy_gradient_makes_rewarded_captions_likelier(one_thread, each_architecture) -> None:
    """Reward the captions that contain word 5: after a few self-critical steps the decoder says it more."""
    model, features = make_model(seed=3), make_features(4, seed=7)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    single = Processes(0, 1, torch.device("cpu"))

    def rate(samples) -> float:
        return float(np.mean([5 in row for row in samples.tokens.tolist()]))

    torch.manual_seed(0)
    with torch.no_grad():
        before = rate(sample(model, features, 64, 6, BANNED, **SPECIAL))
    for _ in range(30):
        found = sample(model, features, 8, 6, BANNED, **SPECIAL)
        reward = np.array([5.0 if 5 in row else 0.0 for row in found.tokens.tolist()])
        advantage = torch.as_tensor(reward - baseline_rewards(reward, 8, None), dtype=torch.float32)
        update(model, policy_loss(found, advantage, float(found.mask.sum())), optimizer, scaler, 5.0, single)
    with torch.no_grad():
        after = rate(sample(model, features, 64, 6, BANNED, **SPECIAL))
    assert after > before + 0.3, (before, after)


def test_samples_carry_each_steps_whole_distribution_without_the_banned_words(one_thread) -> None:
    model, features = make_model(end_bias=1.0), make_features(3)
    torch.manual_seed(2)
    with torch.no_grad():
        found = sample(model, features, 4, 6, BANNED, distributions=True, **SPECIAL)
    steps = found.log_distributions.size(1)
    assert found.log_distributions.shape == (12, steps, V) and found.tokens.size(1) == steps + 1
    chosen = found.mask[:, :steps]
    picked = found.log_distributions.gather(2, found.tokens[:, :steps, None].clamp_min(0)).squeeze(2)
    torch.testing.assert_close(picked[chosen], found.log_probs[:, :steps][chosen])
    probabilities = found.log_distributions.exp()
    torch.testing.assert_close(probabilities.sum(dim=2), torch.ones(12, steps))
    assert (probabilities[:, :, list(BANNED)] == 0).all()
    torch.manual_seed(2)
    with torch.no_grad():
        plain = sample(model, features, 4, 6, BANNED, **SPECIAL)  # not kept unless asked for; the same samples
    assert plain.log_distributions is None and torch.equal(plain.tokens, found.tokens)


def test_the_divergence_from_the_reference_is_the_kl_of_each_sampled_step(one_thread) -> None:
    """Against itself the divergence is 0; against another decoder it is, summed over the captions' steps
    (not those after END), KL(policy || reference) of the next-word distributions over the allowed words,
    computed here by hand from both decoders' teacher-forced logits."""
    policy, other, features = make_model(end_bias=1.0), make_model(seed=5, end_bias=1.0), make_features(3)
    torch.manual_seed(4)
    with torch.no_grad():
        found = sample(policy, features, 4, 6, BANNED, distributions=True, **SPECIAL)
    assert abs(float(reference_divergence(found, reference_log_distributions(
        policy, features, found, START, BANNED)))) < 1e-5
    captions = torch.cat([torch.full((12, 1), START), found.tokens.clamp_min(0)], dim=1)
    allowed = [word for word in range(V) if word not in BANNED]
    with torch.no_grad():
        mine, _ = policy(features.repeat_interleave(4, 0), captions)
        theirs, _ = other(features.repeat_interleave(4, 0), captions)
    expected = 0.0
    for row in range(12):
        for step in range(found.log_distributions.size(1)):
            if found.mask[row, step]:
                p = torch.softmax(mine[row, step, allowed].double(), dim=0)
                q = torch.softmax(theirs[row, step, allowed].double(), dim=0)
                expected += float((p * (p.log() - q.log())).sum())
    assert expected > 0.1
    found_divergence = float(reference_divergence(found, reference_log_distributions(
        other, features, found, START, BANNED)))
    assert found_divergence == pytest.approx(expected, rel=1e-4)


def test_the_divergence_alone_pulls_the_policy_to_the_reference(one_thread) -> None:
    """Followed alone, the KL term brings a decoder's sampling distributions to another decoder's; the
    reference has no gradient and does not move."""
    policy, reference = make_model(seed=3, sharpness=5.0), make_model(seed=8, sharpness=5.0)
    features = make_features(4, seed=7)
    reference.requires_grad_(False)
    kept = [parameter.clone() for parameter in reference.parameters()]
    optimizer = torch.optim.Adam(policy.parameters(), lr=0.01)

    def divergence() -> torch.Tensor:
        found = sample(policy, features, 8, 6, BANNED, distributions=True, **SPECIAL)
        fixed = reference_log_distributions(reference, features, found, START, BANNED)
        return reference_divergence(found, fixed) / found.mask.sum()

    torch.manual_seed(0)
    before = float(divergence().detach())
    for _ in range(60):
        optimizer.zero_grad()
        divergence().backward()
        optimizer.step()
    torch.manual_seed(0)
    after = float(divergence().detach())
    assert after < 0.2 * before, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(kept, reference.parameters()))


# ----------------------------------------------------------------------------------------------
# the stage


def scst_paths(name: str) -> dict[str, str]:
    return {"checkpoint": f"runs/{name}/best.pt", "last_checkpoint": f"runs/{name}/last.pt",
            "log_dir": f"runs/{name}/tb", "metrics_dir": f"runs/{name}/metrics"}


@pytest.fixture
def project(trained_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained tiny project, as the working directory."""
    copy = tmp_path / "project"
    shutil.copytree(trained_project, copy)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("PIPELINE_PARAMS", raising=False)
    return copy


def test_scst_off_makes_the_cross_entropy_model_the_final_one_byte_for_byte(project: Path) -> None:
    from pipeline.stages import scst

    write_params(project, {"scst": {"epochs": 0, **scst_paths("off")}}, tiny=True)
    run_stages(project, scst)
    assert (project / "runs/off/best.pt").read_bytes() == (project / "data/train/best.pt").read_bytes()
    assert json.loads((project / "runs/off/metrics/metrics.json").read_text())["epochs_run"] == 0


@pytest.mark.slow  # trains and evaluates
def test_scst_fine_tunes_keeps_the_best_epoch_and_evaluate_reports_both_models(
        project: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.stages import evaluate, scst

    write_params(project, {"scst": {"epochs": 2, "batch_size": 4, "lr": 0.001, "xe_weight": 0.5,
                                    "attention_penalty": 0.1, "kl_weight": 0.2, **scst_paths("on")}},
                 tiny=True)
    run_stages(project, scst)
    out = capsys.readouterr().out
    assert "scst epoch 0 (the cross-entropy model)" in out and "scst epoch 2/2: reward" in out
    assert "KL from the cross-entropy model" in out
    kl = (project / "runs/on/metrics/plots/metrics/train/kl.tsv").read_text().splitlines()
    assert len(kl) == 1 + 2 and all(float(line.split()[1]) > 0 for line in kl[1:])  # epochs 1, 2
    progress = torch.load(project / "runs/on/last.pt", weights_only=True)["state"]
    _, _, payload = load_checkpoint(project / "runs/on/best.pt")
    assert payload["epoch"] == progress["best_epoch"] and payload["val_cider"] == pytest.approx(progress["best_score"])
    assert progress["best_score"] >= progress["start_score"]  # the cross-entropy model competes as epoch 0
    plots = project / "runs/on/metrics/plots/metrics"
    assert len((plots / "val/cider.tsv").read_text().splitlines()) == 1 + 3  # header, epochs 0, 1, 2

    write_params(project, {"scst": {"epochs": 2, "batch_size": 4, "lr": 0.001, "xe_weight": 0.5,
                                    "attention_penalty": 0.1, "kl_weight": 0.2, **scst_paths("on")},
                           "evaluate": {"out_dir": "runs/eval", "metrics": "runs/eval.json"}}, tiny=True)
    run_stages(project, evaluate)
    metrics = json.loads((project / "runs/eval.json").read_text())
    predictions = json.loads((project / "runs/eval/predictions.json").read_text())
    if (project / "runs/on/best.pt").read_bytes() != (project / "data/train/best.pt").read_bytes():
        assert {"cider", "bleu4", "repeated_word_fraction", "dangling_end_fraction"} <= set(metrics["cross_entropy"])
        before = [p["cross_entropy"] for p in predictions]  # the cross-entropy model's caption beside the final one
        assert all(before) and metrics["cross_entropy"]["distinct_captions"] == len(set(before))
    else:
        assert not any("cross_entropy" in p for p in predictions)
    assert metrics["checkpoint_epoch"] == payload["epoch"]


def test_a_mean_baseline_needs_two_samples_and_says_so(project: Path) -> None:
    from pipeline.errors import ConfigError
    from pipeline.stages import scst

    write_params(project, {"scst": {"epochs": 1, "baseline": "mean", "samples": 1}}, tiny=True)
    with pytest.raises(ConfigError, match="scst.samples must be at least 2 with scst.baseline mean"):
        run_stages(project, scst)


def test_a_checkpoint_of_another_vocabulary_is_refused_in_one_line(project: Path) -> None:
    from pipeline.errors import InputError
    from pipeline.stages import scst

    vocabulary = json.loads((project / "data/vocab/vocab.json").read_text())
    vocabulary["words"].append("zebra")
    (project / "data/vocab/vocab.json").write_text(json.dumps(vocabulary))
    write_params(project, {"scst": {"epochs": 1, **scst_paths("other")}}, tiny=True)
    with pytest.raises(InputError, match="was trained with another vocabulary than data/vocab/vocab.json"):
        run_stages(project, scst)
    assert not (project / "runs/other/best.pt").exists()


def test_resume_continues_only_the_same_scst_run(project: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.stages import scst

    def run(**changes: object) -> str:
        write_params(project, {"scst": {"batch_size": 4, **scst_paths("resume"), **changes}}, tiny=True)
        capsys.readouterr()
        run_stages(project, scst)
        return capsys.readouterr().out

    assert "starting from" in run(epochs=1)
    assert "nothing to train" in run(epochs=1)
    longer = run(epochs=2)
    assert "resuming from" in longer and "scst epoch 2/2" in longer
    assert "was made from other code, inputs or params" in run(epochs=2, lr=0.002)


def test_sampling_rows_share_their_image_features_without_copies(one_thread) -> None:
    """R = n*S rows read n images' features: the state keeps one row of features per image."""
    model, features = make_model(), make_features(3)
    state = model.start(features)
    shared = dataclasses.replace(state, h=state.h.repeat_interleave(4, 0), c=state.c.repeat_interleave(4, 0))
    assert shared.x.size(0) == 3 and shared.beams == 4
    log_probs, _, _ = model.advance(shared, torch.full((12,), START))
    assert log_probs.shape == (12, V)
