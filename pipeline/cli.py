"""Running a stage from the command line: an expected failure is one line on stderr, not a traceback.

    if __name__ == "__main__":
        run(main, "prepare")   # on an expected error: `prepare: <message>` on stderr, exit status 1

Expected errors are the ones whose message says what to fix: a bad params key (ConfigError), bad
data (DatasetError), a corrupt input file (InputError), a full disk (OutputError), a missing file,
an unreadable image or feature cache. Any other exception is a bug and keeps its traceback. With
PIPELINE_DEBUG=1 the traceback of an expected error is printed too. Ctrl-C prints `<stage>: interrupted`
and exits with 130.
"""
from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

DEBUG_ENV = "PIPELINE_DEBUG"

# (module, class) of the project's errors that carry a message for the user. Only modules already
# imported are looked at: an error class whose module was never imported cannot have been raised.
EXPECTED_ERRORS = (
    ("pipeline.config", "ConfigError"),
    ("pipeline.datasets.report", "DatasetError"),
    ("pipeline.files", "OutputError"),
    ("pipeline.files", "InputError"),
    ("pipeline.encoder.images", "ImageReadError"),
    ("pipeline.encoder.feature_cache", "FeatureStoreError"),
    ("pipeline.encoder.extraction", "FeatureExtractionError"),
    ("pipeline.encoder.resnet", "EncoderError"),
    ("pipeline.evaluation.scoring", "JavaError"),
)

# Operating-system errors whose message names the path: missing inputs, wrong kinds of path, permissions.
EXPECTED_OS_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                       PermissionError)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The error classes `run` reports as one line (those of the project's modules imported so far)."""
    classes = [getattr(importlib.import_module(module), name)
               for module, name in EXPECTED_ERRORS if module in sys.modules]
    return (*classes, *EXPECTED_OS_ERRORS)


def one_line(error: BaseException) -> str:
    """The error's message; an OSError without its own text gets its strerror and file name."""
    message = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in message:
        message = f"{error.filename}: {error.strerror or message}"
    return message or type(error).__name__


def run(main: Callable[[], object], stage: str | None = None) -> NoReturn:
    """Call `main()`; exit 0, or print `stage: message` on stderr and exit 1 on an expected error."""
    stage = stage or main.__module__.rpartition(".")[2]
    try:
        main()
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if not isinstance(error, expected_errors()):
            raise
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        message = one_line(error)
        prefix = "" if message.startswith((f"{stage}: ", f"{stage} ")) else f"{stage}: "
        print(prefix + message, file=sys.stderr)
        sys.exit(1)
    sys.exit(0)
