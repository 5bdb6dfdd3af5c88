"""The one exception type for bad user input: the command line prints it as one line and exits 2."""


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
