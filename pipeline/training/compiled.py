"""The decoder's step compiled with torch.compile, for the training and decoding loops on CUDA.

One decoder step (attention, gating, LSTM cell) is ~20 small kernels; on a GPU at training batch
sizes each takes less time than its launch, so the step loop is bound by launch overhead. Compiled,
the step's elementwise work fuses into a few kernels; the loop, the output layer and the loss stay
as they are. Only the step is compiled, so every caption length reuses one graph (a whole-forward
graph would be unrolled, and recompiled, for each length).

    from pipeline.training.compiled import compile_decoder
    model = build_model(...).to(device)
    compile_decoder(model, device, "auto")   # before DistributedDataParallel and the first batch

`auto` compiles on CUDA only: on a CPU the step's time goes to its matrix products, which
compiling does not change, and the first compile takes minutes there. `always` compiles on any
device, `never` never. The train stage reads the setting from `train.compile`. `mode` is passed to
torch.compile ("reduce-overhead" adds CUDA graphs).

The compiled step replaces `model.step` on that instance only: the weights, `state_dict()` and
checkpoints are unchanged, `forward` and beam search's `advance` pick it up, and `restore(model)`
puts the plain step back. The train stage compiles on a first batch before training (`try_compiled`)
and, when compilation fails on the machine (no C compiler, no Triton for the GPU), says why and
trains with the plain step. Tested on the CPU with the `aot_eager` backend (same graph capture, no
code generation): same loss, gradients and greedy captions as the plain step. Not yet run on a GPU.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from pipeline.model.decoder import CaptionDecoder

Setting = Literal["auto", "always", "never"]  # not on/off: YAML reads those unquoted as booleans
SETTINGS = ("auto", "always", "never")


def compile_wanted(setting: str, device: torch.device) -> bool:
    """Whether `setting` (auto | always | never) compiles the step on `device`: auto means on CUDA only."""
    if setting not in SETTINGS:
        raise ValueError(f"compile setting {setting!r} is not one of {', '.join(SETTINGS)}")
    return setting == "always" or (setting == "auto" and device.type == "cuda")


def compile_decoder(model: CaptionDecoder, device: torch.device, setting: str = "auto", backend: str = "inductor",
                    mode: str | None = None) -> bool:
    """Compile `model`'s step in place when `setting` asks for it on `device`; returns whether it did."""
    if not compile_wanted(setting, device):
        return False
    plain = type(model).step.__get__(model)  # the bound method of the class, not an earlier compiled one
    # fullgraph: a graph break would silently fall back to many small graphs; fail loudly instead
    model.step = torch.compile(plain, backend=backend, mode=mode, fullgraph=True)
    return True


def try_compiled(model: CaptionDecoder, device: torch.device, trial: Callable[[], object]) -> str | None:
    """Run `trial` (one training batch, forward and backward, as training runs it) with the compiled
    step, so that compilation happens now; if it fails (no C compiler or Triton for the device, a
    backend error), put the plain step back and return the error's first line, else None.

    The random state is restored afterwards and the gradients are cleared: the run that follows is
    the one that would have run without the trial (trial must not update the weights).
    """
    if not is_compiled(model):
        return None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            trial()
        except Exception as error:  # noqa: BLE001 - any compiler failure; the plain step then runs the batch
            restore(model)
            cause = getattr(error, "inner_exception", None) or error  # dynamo wraps the backend's own error
            lines = str(cause).strip().splitlines()
            return f"{type(cause).__name__}: {lines[0] if lines else ''}"
        finally:
            model.zero_grad(set_to_none=True)
    return None


def is_compiled(model: CaptionDecoder) -> bool:
    """Whether `model` runs a compiled step."""
    return "step" in vars(model)


def restore(model: CaptionDecoder) -> None:
    """Put the plain step back."""
    vars(model).pop("step", None)
