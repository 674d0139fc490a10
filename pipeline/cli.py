"""Running a stage or a command: an expected failure is one line on stderr, not a traceback.

    if __name__ == "__main__":
        run(main, "prepare")   # on an expected error: `prepare: <message>` on stderr, exit status 2

Expected errors are `pipeline.errors.PipelineError` and its subclasses (a bad params key or option,
bad data, a corrupt input file, a full disk, a missing Java runtime...), whose message says what to
fix, and the operating system's errors that name a path (a missing file, a folder where a file was
expected, a permission). Any other exception is a bug and keeps its traceback. With
PIPELINE_DEBUG=1 the traceback of an expected error is printed too. Ctrl-C prints `<stage>:
interrupted` and exits with 130. `main` may return an exit status (a command whose every input
failed returns 1); None is 0.

Exit statuses of every stage and command: 0 done; 1 done, but some inputs failed and were reported
(the caption command's unreadable photos), or a bug (a traceback); 2 an expected error; 130 interrupted.

Library modules log through `logging` (the `pipeline` logger and its children) and never print;
`configure_logging`, which `exit_status` calls first, shows their messages the way a stage or command
shows its own: the text alone, information on stdout, warnings and errors on stderr. A program that
imports the library and configures nothing sees warnings only (Python's last-resort handler).
"""
from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from pipeline.errors import EXIT_CODE, PipelineError

DEBUG_ENV = "PIPELINE_DEBUG"

# Operating-system errors whose message names the path: missing inputs, wrong kinds of path, permissions.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (PipelineError, FileNotFoundError, NotADirectoryError,
                                                    IsADirectoryError, PermissionError)


class ConsoleHandler(logging.Handler):
    """A record's message alone: below WARNING on stdout, the rest on stderr (the streams of the moment)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: logging's own policy
            self.handleError(record)


def configure_logging(level: int = logging.INFO) -> None:
    """Show the library's log messages as the stages and commands print theirs (once per process)."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(level)
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(ConsoleHandler())
        logger.propagate = False  # shown once, whatever the root logger does


def one_line(error: BaseException) -> str:
    """The error's message; an OSError without its own text gets its strerror and file name."""
    message = str(error).strip()
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in message:
        message = f"{error.filename}: {error.strerror or message}"
    return " ".join(message.split()) or type(error).__name__


def report(error: BaseException, name: str) -> None:
    """Print an expected error as `name: message` on stderr (and its traceback with PIPELINE_DEBUG=1)."""
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(error)
    message = one_line(error)
    prefix = "" if message.startswith((f"{name}: ", f"{name} ")) else f"{name}: "
    print(prefix + message, file=sys.stderr)


def exit_status(main: Callable[[], int | None], name: str) -> int:
    """Call `main()`; its status (None: 0), or EXIT_CODE after printing an expected error in one line."""
    configure_logging()
    try:
        status = main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as error:
        report(error, name)
        return EXIT_CODE
    return status or 0


def run(main: Callable[[], int | None], stage: str | None = None) -> NoReturn:
    """Exit with `exit_status(main, stage)`: what every stage's and command's `__main__` calls."""
    sys.exit(exit_status(main, stage or main.__module__.rpartition(".")[2]))
