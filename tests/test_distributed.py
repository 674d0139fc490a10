"""Training under torchrun (gloo, 2 CPU processes): same result as one process, one decision, no hang; for the
cross-entropy epochs and the self-critical ones."""
from __future__ import annotations

import os
import socket
import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.config import TrainConfig
from pipeline.model.architectures import build_decoder
from pipeline.model.decoder import CaptionDecoder, DecoderConfig
from pipeline.runtime import Processes, follow_rank_zero
from pipeline.text import Vocabulary
from pipeline.training.batches import EncodedCaptions
from pipeline.training.loop import run_epoch, shard
from pipeline.training.scst import Rewards, ScstSettings, run_scst_epoch
from tests.tiny_models import END, START, make_features, make_model

TIMEOUT = 120  # seconds: a hang becomes a failure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(batch_size: int) -> TrainConfig:
    return TrainConfig(batch_size=batch_size, epochs=1, lr=0.01, weight_decay=0.0, lr_step_epochs=1, lr_gamma=1.0,
                       grad_clip=1e9, attention_penalty=0.0, patience=1, early_stopping="loss", num_samples=0,
                       amp="fp32", compile="never", device="cpu", seed=0, resume=False, checkpoint="b.pt",
                       last_checkpoint="l.pt",
                       log_dir="tb", metrics_dir="m")


class Features:
    """Features indexed by image rows, like FeatureMatrix."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.data[rows]


def problem() -> tuple[CaptionDecoder, Features, EncodedCaptions, list[torch.Tensor]]:
    """A tiny model and 16 captions of varied lengths in 2 global batches of 8."""
    torch.manual_seed(0)
    model = build_decoder(DecoderConfig(vocab_size=12, embed_dim=6, encoder_dim=8, attention_dim=5, decoder_dim=7,
                                        dropout=0.0, pad_index=0, max_caption_length=30, architecture="sat"))
    features = Features(torch.randn(4, 4, 8))
    lengths = torch.tensor([3, 5, 4, 6, 3, 7, 5, 4, 6, 3, 4, 5, 7, 6, 3, 4])
    tokens = torch.zeros(16, 7, dtype=torch.long)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, 1:length - 1], tokens[i, length - 1] = 1, torch.randint(4, 12, (length - 2,)), 2
    captions = EncodedCaptions(tokens, lengths, torch.arange(16) % 4)
    return model, features, captions, [torch.arange(0, 8), torch.arange(8, 16)]


SCST_SAMPLES = 3
SCST_BATCHES = [torch.arange(5), torch.tensor([4, 2, 0, 1, 3])]  # 5 images: 3 on one process, 2 on the other
SCST_SETTINGS = ScstSettings(samples=SCST_SAMPLES, baseline="mean", batch_size=5, grad_clip=1e9, amp="fp32",
                             xe_weight=0.5, attention_penalty=0.5, kl_weight=0.5)  # every term of the loss on


class NamedFeatures(Features):
    """Features of named images, like FeatureMatrix."""

    def __init__(self, data: torch.Tensor, names: list[str]) -> None:
        super().__init__(data)
        self.names = names

    def rows_of(self, names: list[str]) -> torch.Tensor:
        return torch.tensor([self.names.index(name) for name in names])


def scst_problem() -> tuple[CaptionDecoder, CaptionDecoder, types.SimpleNamespace, Rewards]:
    """A tiny model, another as the divergence's reference, and 5 images with their references and one
    training caption each (of different lengths, so that the processes' shares of the tokens differ)."""
    model, reference = make_model(end_bias=1.0), make_model(seed=1).requires_grad_(False)
    vocabulary = Vocabulary(("<pad>", "<start>", "<end>", "<unk>", *(f"w{k}" for k in range(4, 12))))
    names = [f"i{k}.png" for k in range(5)]
    references = {name: [" ".join(f"w{4 + (k + j) % 8}" for j in range(k + 2)), f"w{11 - k} w{4 + k}"]
                  for k, name in enumerate(names)}
    lengths = torch.tensor([4 + k for k in range(5)])  # START, k + 2 words, END
    tokens = torch.zeros(5, 8, dtype=torch.long)
    for k in range(5):
        tokens[k, :lengths[k]] = torch.tensor([START, *(4 + (k + j) % 8 for j in range(k + 2)), END])
    data = types.SimpleNamespace(vocabulary=vocabulary, features=NamedFeatures(make_features(5), names),
                                 train_set=EncodedCaptions(tokens, lengths, torch.arange(5)))
    return model, reference, data, Rewards(references, vocabulary)


def layout_free_multinomial(probs: torch.Tensor, num_samples: int = 1, **_: object) -> torch.Tensor:
    """A draw that depends only on the row's distribution and its place among its image's samples, not on
    the process or the RNG: one process and two then sample the same captions and must update alike."""
    sample_of_image = torch.arange(probs.size(0), dtype=torch.float64) % SCST_SAMPLES
    expected = (probs.double() * torch.arange(probs.size(1), dtype=torch.float64)).sum(dim=1)
    cdf = probs.double().cumsum(dim=1)
    u = torch.frac(0.6180339887 * (sample_of_image + 1) + 3.0 * expected) * cdf[:, -1]
    return torch.searchsorted(cdf, u[:, None]).clamp_max(probs.size(1) - 1)


def scst_epoch(processes: Processes, batches: list[torch.Tensor]) -> dict:
    """One self-critical epoch of the tiny problem: its stats and the weights it leaves."""
    model, reference, data, rewards = scst_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = run_scst_epoch(model, data, rewards, batches, SCST_SETTINGS, optimizer, scaler, processes,
                           banned=(0, 1, 3), reference=reference)
    return {"stats": stats, "weights": model.state_dict()}


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    """Every distributed case in one process group: starting processes costs more than the cases."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.multinomial = layout_free_multinomial  # this process only: scst's samples
        for task in ("train", "decide", "tiny", "scst", "scst_tiny"):
            run_task(task, rank, world_size, out)
    finally:
        dist.destroy_process_group()


def run_task(task: str, rank: int, world_size: int, out: str) -> None:
    """One case, run by both processes."""
    if task == "train":
        model, features, captions, batches = problem()
        network = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = run_epoch(model, features, captions, batches, config(4), torch.device("cpu"), optimizer, None,
                          network, world_size)
        if rank == 0:
            torch.save({"stats": stats, "weights": model.state_dict()}, f"{out}/ddp.pt")
    elif task == "decide":  # each process sees a different score; rank 0's decision holds everywhere
        decision = follow_rank_zero({"stop": rank == 0, "score": float(rank)}, world_size)
        torch.save(decision, f"{out}/decision.{rank}")
    elif task == "tiny":  # one global batch with fewer captions than processes
        model, features, captions, _ = problem()
        network = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        stats = run_epoch(model, features, captions, [torch.tensor([3])], config(1), torch.device("cpu"),
                          optimizer, None, network, world_size)
        torch.save(stats, f"{out}/tiny.{rank}")
    elif task == "scst":
        torch.save(scst_epoch(Processes(rank, world_size, torch.device("cpu")), SCST_BATCHES), f"{out}/scst.{rank}")
    elif task == "scst_tiny":  # one image for two processes
        torch.save(scst_epoch(Processes(rank, world_size, torch.device("cpu")), [torch.tensor([2])]),
                   f"{out}/scst_tiny.{rank}")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where two gloo processes left their results."""
    out = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    for process in context.processes:
        process.join(TIMEOUT)
    alive = [p for p in context.processes if p.is_alive()]
    for process in alive:
        process.kill()
    assert not alive, f"processes still running after {TIMEOUT} s (a hang)"
    assert all(p.exitcode == 0 for p in context.processes), [p.exitcode for p in context.processes]
    return out


@pytest.mark.slow  # two processes
def test_two_processes_match_one_process_on_the_same_global_batch(results: Path) -> None:
    ddp = torch.load(results / "ddp.pt", weights_only=True)
    model, features, captions, batches = problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    single = run_epoch(model, features, captions, batches, config(8), torch.device("cpu"), optimizer)
    assert abs(ddp["stats"]["loss"] - single["loss"]) < 1e-5
    for name, value in model.state_dict().items():
        assert torch.allclose(ddp["weights"][name], value, atol=1e-5), name


@pytest.mark.slow  # two processes
def test_rank_zero_decides_for_every_process(results: Path) -> None:
    decisions = [torch.load(results / f"decision.{rank}", weights_only=True) for rank in range(2)]
    assert decisions == [{"stop": True, "score": 0.0}] * 2


@pytest.mark.slow  # two processes
def test_fewer_captions_than_processes_does_not_hang(results: Path) -> None:
    stats = [torch.load(results / f"tiny.{rank}", weights_only=True) for rank in range(2)]
    assert stats[0]["loss"] == stats[1]["loss"] == 0.0  # the one-caption batch is left out on both


@pytest.mark.slow  # two processes
def test_scst_under_two_processes_updates_as_one_process_on_the_same_samples(results: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The policy gradient, the divergence, the attention penalty and the mixed objective's cross-entropy are
    each the global batch's mean under two processes holding 3 and 2 of its 5 images; both processes end
    with the same weights and report the whole batch's reward, baseline and divergence."""
    monkeypatch.setattr(torch, "multinomial", layout_free_multinomial)
    single = scst_epoch(Processes(0, 1, torch.device("cpu")), SCST_BATCHES)
    start = scst_problem()[0].state_dict()
    assert any(not torch.allclose(start[name], value) for name, value in single["weights"].items())
    for rank in range(2):
        ddp = torch.load(results / f"scst.{rank}", weights_only=True)
        for key in ("reward", "baseline", "kl"):
            assert ddp["stats"][key] == pytest.approx(single["stats"][key], rel=1e-5), key
        for name, value in single["weights"].items():
            torch.testing.assert_close(ddp["weights"][name], value, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # two processes
def test_scst_with_fewer_images_than_processes_does_not_hang(results: Path) -> None:
    start = scst_problem()[0].state_dict()
    for rank in range(2):
        ended = torch.load(results / f"scst_tiny.{rank}", weights_only=True)
        assert ended["stats"]["reward"] == 0.0  # the one-image batch is left out on both
        for name, value in start.items():
            assert torch.equal(ended["weights"][name], value), name


def test_shard_splits_each_global_batch() -> None:
    batches = [torch.arange(0, 5), torch.arange(5, 6), torch.arange(6, 10)]
    assert [b.tolist() for b in shard(batches, 0, 2)] == [[0, 2, 4], [6, 8]]
    assert [b.tolist() for b in shard(batches, 1, 2)] == [[1, 3], [7, 9]]
    assert shard(batches, 0, 1) == batches
