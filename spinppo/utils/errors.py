"""Bad user input, stopped and diverged runs: the exceptions the command line turns into exit codes.

``UserError`` is printed as one line (no traceback) with exit code 2; ``first_line`` is how any other
exception is quoted inside such a line; ``OneLineParser`` makes argparse's own errors UserErrors.
"""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input from the user (a flag, a path, an environment name).

    The message names the problem and the fix; ``python -m spinppo.run`` prints it on one line,
    without a traceback, and exits with code 2.
    """


class TrainingStopped(Exception):
    """SIGINT or SIGTERM reached a rank: every rank stopped at the end of an epoch and a checkpoint was saved.

    The command line prints the message (how to resume) and exits 128 + ``signum`` (130 for SIGINT, 143
    for SIGTERM), as a shell reports a command a signal stopped: a job script can tell it from a finished
    run.
    """

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(Exception):
    """A loss or a parameter became NaN or infinite; the last good checkpoint is kept. Exit code 1."""


def first_line(e: BaseException) -> str:
    """``"TypeName: first line of the message"`` (or the type name alone): an exception quoted in one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (one line, exit 2) instead of usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see python -m spinppo.run {self.prog.split()[-1]} --help)")
