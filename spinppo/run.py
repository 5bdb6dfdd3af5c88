"""The command line: ``python -m spinppo.run {ppo,vpg,a2c,a3c,trpo,npg,plot,test_policy,export} ...``.

    python -m spinppo.run ppo --env Walker --cpu 2
    mpirun -np 8 python -m spinppo.run ppo --env Walker --hid 256 256 --seed 0 10 20
    python -m spinppo.run ppo --help
    python -m spinppo.run --config pong-ppo.yaml            # an RLlib tuned example: its run: chooses

This module only dispatches; each job lives in ``spinppo.cli`` (flags, training and grids, resume,
exits) or ``spinppo.tools`` (plot, test_policy, export). Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence

from spinppo.cli import exits
from spinppo.cli.flag_tables import ALGOS
from spinppo.utils.errors import TrainingDiverged, TrainingStopped, UserError
from spinppo.utils.mpi_tools import proc_id

TOOLS = ("plot", "test_policy", "export")

USAGE = """usage: python -m spinppo.run COMMAND [flags]

commands:
  ppo           train with Proximal Policy Optimization
  vpg           train with Vanilla Policy Gradient
  a2c           train with Advantage Actor-Critic
  a3c           train with Asynchronous Advantage Actor-Critic (2 or more MPI ranks)
  trpo          train with Trust Region Policy Optimization
  npg           train with the Natural Policy Gradient (TRPO without the line search)
  plot          plot runs' progress.txt files
  test_policy   replay a saved policy (a run directory or an exported .onnx file)
  export        write a run's policy as an ONNX file (ML-Agents' form for Unity runs)

python -m spinppo.run COMMAND --help lists a command's flags.
python -m spinppo.run --config FILE [flags] trains what an RLlib tuned example (rllib train -f FILE) names."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for bad input, 1 for a crash or a diverged run,
    128 + the signal for a run stopped by SIGINT or SIGTERM, 141 when the reader of the output is gone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    exits.prepare()
    try:
        if cmd == "--config" or cmd.startswith("--config="):  # the file's own algorithm (RLlib's run:)
            from spinppo.cli.config_file import algo_of_file

            path = cmd.partition("=")[2] if "=" in cmd else (rest[0] if rest else "")
            if not path:
                raise UserError("--config needs a file: python -m spinppo.run --config FILE")
            cmd, rest = algo_of_file(path), argv
        if cmd in ALGOS:
            from spinppo.cli.train import run_algo

            run_algo(cmd, rest)
            return 0
        if cmd in TOOLS:
            return importlib.import_module(f"spinppo.tools.{cmd}").main(rest)
        close = difflib.get_close_matches(cmd, ALGOS + TOOLS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown command {cmd!r}: choose one of {', '.join(ALGOS + TOOLS)}{hint}")
    except UserError as e:
        return exits.exit_with(f"spinppo: error: {e}", 2)
    except TrainingDiverged as e:
        return exits.exit_with(f"spinppo: error: {e}", 1)
    except TrainingStopped as e:
        if proc_id() == 0:
            print(f"spinppo: {e}", flush=True)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``| head``): end quietly, as Unix tools do, and keep the
        # interpreter's final flush from printing a second error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.exit_quietly(141)
    except Exception:
        exits.report_crash()
        return 1


if __name__ == "__main__":
    sys.exit(main())
