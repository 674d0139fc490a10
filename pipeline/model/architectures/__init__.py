"""The decoder architectures, one module each; `build_decoder` makes the one a config names.

Each module defines `Decoder`, a subclass of `pipeline.model.decoder.CaptionDecoder` with its own
recurrent layers, `step` and `read_out`. Adding an architecture is a new module here, its import
below and its name in `pipeline.config.ARCHITECTURES` (tests/test_decoder.py checks the three agree).
"""
from __future__ import annotations

from pipeline.model.architectures import sat, spatial
from pipeline.model.decoder import CaptionDecoder, DecoderConfig

DECODERS: dict[str, type[CaptionDecoder]] = {"sat": sat.Decoder, "spatial": spatial.Decoder}


def build_decoder(config: DecoderConfig) -> CaptionDecoder:
    """The decoder `config.architecture` names, freshly initialised."""
    if config.architecture not in DECODERS:
        raise ValueError(f"unknown decoder architecture {config.architecture!r}; "
                         f"expected one of {', '.join(DECODERS)}")
    return DECODERS[config.architecture](config)
