"""The decoder's step compiled with torch.compile, for the training and decoding loops on CUDA.

One decoder step (attention, gating, LSTM cell) is some twenty small kernels; on a GPU each takes
less time than its launch at training batch sizes. Compiled, the step's elementwise work fuses into
a few kernels; the loop, the output layer and the loss stay as they are. Only the step is compiled,
so every caption length reuses one graph (a whole-forward graph would be unrolled, and recompiled,
for each length). docs/speed.md says where this matters and what it was measured to do.

    compiled = compile_step(model, device, config.compile, trial)   # before DistributedDataParallel

`auto` compiles on CUDA only (on a CPU the step's time is its matrix products, which compiling
does not change, and the first compile is slow); `always` on any device; `never` never (the
settings: `pipeline.config.COMPILE_SETTINGS`). The compiled step replaces `model.step` on that
instance only: the weights, `state_dict()` and checkpoints are unchanged, `forward` and `advance`
pick it up, and `restore(model)` puts the plain step back. `compile_step` compiles on a trial batch
before training and, when compilation fails on the machine (no C compiler, no Triton for the GPU),
puts the plain step back and says why, so training goes on with the same weights either way.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.model.decoder import CaptionDecoder


def compile_wanted(setting: str, device: torch.device) -> bool:
    """Whether `setting` (one of COMPILE_SETTINGS) compiles the step on `device`: auto means on CUDA only."""
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


def compile_step(model: CaptionDecoder, device: torch.device, setting: str, trial: Callable[[], object],
                 key: str) -> str | None:
    """Compile the step when `setting` asks for it and prove it on `trial`: a line to print, or None when
    nothing was compiled. `key` is the params key of the setting, named in the line."""
    if not compile_decoder(model, device, setting):
        return None
    failure = try_compiled(model, device, trial)
    if failure is None:
        return f"decoder step compiled with torch.compile ({key})"
    return f"torch.compile failed on this machine ({failure}); using the plain step ({key}: never skips the attempt)"


def is_compiled(model: CaptionDecoder) -> bool:
    """Whether `model` runs a compiled step."""
    return "step" in vars(model)


def restore(model: CaptionDecoder) -> None:
    """Put the plain step back."""
    vars(model).pop("step", None)
