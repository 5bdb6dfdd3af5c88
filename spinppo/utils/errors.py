"""The one exception type for bad user input: the command line prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a flag, a path, an environment name).

    The message names the problem and the fix; ``python -m spinppo.run`` prints it on one line,
    without a traceback, and exits with code 2.
    """
