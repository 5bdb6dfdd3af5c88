"""The command line: ``python -m spinppo.run {ppo,vpg,a2c,plot,test_policy} ...``.

    python -m spinppo.run ppo --env Walker --cpu 2
    mpirun -np 8 python -m spinppo.run ppo --env Walker --hid 256 256 --seed 0 10 20
    python -m spinppo.run ppo --help

Every keyword of an algorithm is a flag, parsed by its type (user input is never evaluated as Python).
Several values for a flag run a grid of experiments, one after another, each in its own run directory.
Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from spinppo.utils.errors import UserError

ALGOS = ("ppo", "vpg", "a2c")
TOOLS = ("plot", "test_policy")

# Flags that fill ac_kwargs, with their defaults and meaning.
AC_FLAGS: dict[str, tuple[str, Any, str]] = {
    "hid": ("hidden_sizes", (64, 64), "hidden layer sizes, e.g. --hid 64 64 (a grid: --hid [32,32] [64,64])"),
    "act": ("activation", "tanh", "activation: tanh, relu, elu, gelu, silu, leaky_relu"),
    "layer_norm": ("layer_norm", False, "LayerNorm after each hidden layer (ML-Agents-style nets)"),
    "shared_trunk": ("shared_trunk", False, "one trunk for policy and value instead of two"),
    "log_std_init": ("log_std_init", -0.5, "initial log standard deviation of the Gaussian policy"),
    "norm_obs": ("norm_obs", True, "normalise observations with running statistics merged over ranks"),
}
# Flags that are not algorithm keywords.
RUN_FLAGS: dict[str, tuple[Any, str]] = {
    "env": (None, "environment: a gymnasium id, a short name (Walker, Hopper, CartPole...) or unity:PATH"),
    "resume": (None, "continue the run in this directory from its last checkpoint (other flags: as saved)"),
    "env_kwargs": (
        {},
        "environment keyword arguments as JSON or key=value pairs, e.g. forward_reward_weight=-1",
    ),
    "exp_name": (None, "experiment name; ALGO-ENV when not given"),
    "data_dir": (None, "where runs go; $SPINPPO_DATA_DIR or data/ when not given"),
    "datestamp": (False, "put a date and time in the run directory's name"),
    "overwrite": (False, "replace a run already in the run directory"),
    "cpu": (1, "MPI ranks to start on this host (runs itself under mpirun); 'auto' for one per core"),
    "tensorboard": (True, "also write TensorBoard event files in the run directory"),
    "unity_file": (None, "a Unity ML-Agents build to use for --env Walker (or set SPINPPO_UNITY_FILE)"),
    "base_port": (5005, "Unity: base port; rank r on a host uses worker_id r"),
    "time_scale": (20.0, "Unity: simulation speed-up"),
    "no_graphics": (True, "Unity: run the player without graphics"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors (one line, exit 2) instead of usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see python -m spinppo.run {self.prog.split()[-1]} --help)")


def _algo(name: str) -> Callable[..., Any]:
    module = __import__(f"spinppo.algos.{name}", fromlist=[name])
    return getattr(module, name)


def _arg_docs(fn: Callable[..., Any]) -> dict[str, str]:
    docs, current = {}, None
    for line in (fn.__doc__ or "").splitlines():
        m = re.match(r"\s{8}(\w+): (.*)", line)
        if m:
            current = m[1]
            docs[current] = m[2]
        elif current and line.startswith(" " * 12):
            docs[current] += " " + line.strip()
        else:
            current = None
    return docs


# ------------------------------------------------------------------------------------- typed value parsing


def parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0, on/off (any case)."""
    low = text.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_scalar(text: str, kind: Any) -> Any:
    if kind is bool:
        return parse_bool(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    return text


def _kind(default: Any, annotation: str) -> Any:
    if isinstance(default, bool) or annotation == "bool":
        return bool
    if isinstance(default, int) or annotation == "int":
        return int
    if isinstance(default, float) or "float" in annotation:
        return float
    return str


def parse_values(flag: str, tokens: list[str], default: Any, annotation: str = "") -> list[Any]:
    """The values of one flag, by the type of its default; several values make a grid."""
    kind = _kind(default, annotation)
    optional = default is None or "None" in annotation
    if kind is bool and not tokens:
        return [True]
    out = []
    for tok in tokens:
        try:
            if optional and tok.lower() == "none":
                out.append(None)
            else:
                out.append(_parse_scalar(tok, kind))
        except ValueError:
            name = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
            raise UserError(f"--{flag} takes {name}, not {tok!r}") from None
    return out


def parse_hid(tokens: list[str]) -> list[tuple[int, ...]]:
    """``--hid 64 64`` is one architecture; ``--hid [32,32] [64,64]`` is a grid of two."""
    try:
        if any(t.startswith("[") or t.startswith("(") for t in tokens):
            archs = [tuple(int(x) for x in re.findall(r"-?\d+", t)) for t in tokens]
        else:
            archs = [tuple(int(t) for t in tokens)]
    except ValueError:
        raise UserError(f"--hid takes layer sizes such as '64 64', not {' '.join(tokens)!r}") from None
    if any(size < 1 for arch in archs for size in arch):
        raise UserError(f"--hid takes positive layer sizes such as '64 64', not {' '.join(tokens)!r}")
    return archs


def parse_env_kwargs(tokens: list[str]) -> dict[str, Any]:
    """JSON (``'{"ctrl_cost_weight": 0.01}'``) or key=value pairs with JSON values (strings may be bare)."""
    text = " ".join(tokens).strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--env_kwargs is not valid JSON ({e.msg}); or use key=value pairs") from None
        if not isinstance(value, dict):
            raise UserError("--env_kwargs must be a JSON object or key=value pairs")
        return value
    out: dict[str, Any] = {}
    for tok in tokens:
        key, sep, raw = tok.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--env_kwargs takes key=value pairs, not {tok!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# -------------------------------------------------------------------------------------------- the parser


def _nargs(default: Any) -> str:
    # A bare boolean flag (--datestamp) means true, as Spinning Up's users type it.
    return "*" if isinstance(default, bool) else "+"


def build_parser(algo: str) -> tuple[OneLineParser, dict[str, inspect.Parameter]]:
    """The argparse parser for an algorithm, from its signature and docstring."""
    fn = _algo(algo)
    params = {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if name not in ("env_fn", "actor_critic", "ac_kwargs", "logger_kwargs")
    }
    docs = _arg_docs(fn)
    parser = OneLineParser(
        prog=f"python -m spinppo.run {algo}",
        usage=f"python -m spinppo.run {algo} --env ENV [--FLAG VALUE [VALUE ...]] ...",
        description=(fn.__doc__ or "").strip().splitlines()[0],
        epilog="Several values for one flag run a grid, e.g. --env Walker Hopper --seed 0 10 20.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("environment and run")
    for flag, (default, help_text) in RUN_FLAGS.items():
        group.add_argument(
            f"--{flag}",
            nargs=_nargs(default),
            default=default,
            help=help_text,
            metavar="V",
        )
    group = parser.add_argument_group(f"{algo} (keywords of spinppo.algos.{algo}.{algo})")
    for name, p in params.items():
        group.add_argument(
            f"--{name}", nargs=_nargs(p.default), default=p.default, help=docs.get(name), metavar="V"
        )
    group = parser.add_argument_group("actor-critic (ac_kwargs)")
    for flag, (_, default, help_text) in AC_FLAGS.items():
        group.add_argument(f"--{flag}", nargs=_nargs(default), default=default, help=help_text, metavar="V")
    return parser, params


def parse_algo_args(algo: str, argv: Sequence[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Parse an algorithm's command line into (grid: flag -> list of values, run options)."""
    parser, params = build_parser(algo)
    ns = vars(parser.parse_args(list(argv)))
    given = {k: v for k, v in ns.items() if isinstance(v, list)}  # flags the user typed come as lists
    grid: dict[str, list[Any]] = {}
    for name, p in params.items():
        annotation = str(p.annotation)
        grid[name] = parse_values(name, given[name], p.default, annotation) if name in given else [p.default]
    for flag, (_, default, _) in AC_FLAGS.items():
        if flag not in given:
            grid[f"ac:{flag}"] = [default]
        elif flag == "hid":
            grid["ac:hid"] = parse_hid(given[flag])
        elif flag == "act":
            from spinppo.core.networks import ACTIVATIONS

            for name in given[flag]:
                if name not in ACTIVATIONS:
                    raise UserError(f"--act must be one of {', '.join(ACTIVATIONS)}, not {name!r}")
            grid["ac:act"] = given[flag]
        else:
            grid[f"ac:{flag}"] = parse_values(flag, given[flag], default)
    options: dict[str, Any] = {"given": given}
    if "resume" not in given and "env" not in given:
        raise UserError("the following arguments are required: --env (see python -m spinppo.run ppo --help)")
    grid["env"] = given.get("env", [])
    for flag, (default, _) in RUN_FLAGS.items():
        if flag == "env":
            continue
        if flag not in given:
            options[flag] = default
        elif flag == "env_kwargs":
            options[flag] = parse_env_kwargs(given[flag])
        elif flag == "cpu" and given[flag] == ["auto"]:
            from spinppo.utils.mpi_pytorch import available_cores

            options[flag] = available_cores()
        else:
            values = parse_values(flag, given[flag], default, "str | None" if default is None else "")
            if len(values) != 1:
                raise UserError(f"--{flag} takes one value, not {len(values)}")
            options[flag] = values[0]
    if options["cpu"] < 1:
        raise UserError(f"--cpu must be at least 1, not {options['cpu']}")
    return grid, options


def _grid_name(algo: str, env: str, exp_name: str | None) -> str:
    return exp_name or f"{algo}-{re.sub(r'[^A-Za-z0-9._-]+', '-', env.split('/')[-1]).strip('-').lower()}"


def check_cpu_flag(options: dict[str, Any]) -> None:
    """--cpu starts ranks on this host; under a user's launcher (mpirun, srun) the launcher decides."""
    from spinppo.utils.mpi_tools import num_procs, under_mpi_launcher

    cpu = options["cpu"]
    if under_mpi_launcher() and not os.environ.get("IN_MPI") and cpu > 1 and cpu != num_procs():
        raise UserError(
            f"--cpu {cpu} does not apply under mpirun/mpiexec/srun, which started {num_procs()} rank(s): "
            "drop --cpu and choose the number of ranks with the launcher"
        )


def read_run_config(run_dir: str) -> dict[str, Any]:
    """A run's config.json; a UserError when ``run_dir`` is not a run."""
    path = os.path.join(run_dir, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a spinppo run (no config.json): check the --resume path") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}): is this a spinppo run?") from None


def resume_algo(algo: str, grid: dict[str, list[Any]], options: dict[str, Any]) -> str:
    """Continue a run from its last checkpoint, with its saved configuration; return its directory."""
    from spinppo.envs.registry import EnvFactory
    from spinppo.utils.mpi_tools import (
        broadcast,
        local_rank,
        mpi_fork,
        num_procs,
        proc_id,
        under_mpi_launcher,
    )

    run_dir = options["resume"]
    if under_mpi_launcher() and num_procs() > 1:
        # Rank 0 reads the configuration for every rank: other hosts need not share its disk.
        config, error = None, None
        if proc_id() == 0:
            try:
                config = read_run_config(run_dir)
            except UserError as e:
                error = str(e)
        config, error = broadcast((config, error))
        if error:
            raise UserError(error)
    else:
        config = read_run_config(run_dir)
    given = options["given"]
    if config.get("algo", algo) != algo:
        raise UserError(
            f"{run_dir} is a {config['algo']} run: resume it with python -m spinppo.run {config['algo']}"
        )
    env = config.get("env_fn")
    if not isinstance(env, dict) or not {"name", "kind", "env"} <= set(env):
        raise UserError(
            f"{run_dir}/config.json does not name the run's environment (a run made from Python with its "
            "own env_fn?): resume it from Python with logger_kwargs=dict(output_dir=RUN, resume=True)"
        )
    # Flags typed with --resume must agree with the saved run; only --epochs may change (to extend it).
    saved_env = env["name"]
    if given.get("env") and given["env"] != [saved_env]:
        raise UserError(f"--env {' '.join(given['env'])} contradicts the run's saved env {saved_env}")
    saved_env_kwargs = env.get("env_kwargs") or {}
    if "env_kwargs" in given and options["env_kwargs"] != saved_env_kwargs:
        raise UserError(
            f"--env_kwargs {' '.join(given['env_kwargs'])} contradicts the run's saved env_kwargs "
            f"{json.dumps(saved_env_kwargs)}: drop the flag to resume"
        )
    for flag in ("exp_name", "data_dir", "datestamp", "overwrite", "tensorboard"):
        if flag in given:
            raise UserError(f"--{flag} does not apply to --resume, which continues the run in place: drop it")
    for key, values in grid.items():
        name = key.split(":")[-1]
        if name not in given or name in ("epochs", "env"):
            continue
        saved = config["ac_kwargs"].get(AC_FLAGS[name][0]) if key.startswith("ac:") else config.get(name)
        saved = tuple(saved) if isinstance(saved, list) else saved
        if len(values) != 1 or values[0] != saved:
            shown = " ".join(given[name])
            raise UserError(
                f"--{name} {shown} contradicts the run's saved {name} {saved}: drop the flag to resume"
            )
    cpu = options["cpu"] if "cpu" in given else config.get("num_procs", 1)
    if "cpu" in given:
        check_cpu_flag(options)
    # The checkpoint holds every rank's state: refuse another rank count before starting any rank.
    saved_procs = config.get("num_procs", 1)
    ranks = num_procs() if under_mpi_launcher() else cpu
    if ranks != saved_procs:
        how = "mpirun -np" if under_mpi_launcher() else "--cpu"
        raise UserError(
            f"the run was made with {saved_procs} ranks; resume it with the same number "
            f"({how} {saved_procs}), not {ranks}"
        )
    if not under_mpi_launcher():
        mpi_fork(cpu)
    fn = _algo(algo)
    params = inspect.signature(fn).parameters
    kwargs = {
        k: v
        for k, v in config.items()
        if k in params and k not in ("env_fn", "actor_critic", "logger_kwargs")
    }
    if "epochs" in given:
        kwargs["epochs"] = grid["epochs"][0]
    unity_kwargs = dict(
        base_port=options["base_port"],
        worker_id=local_rank(),
        time_scale=options["time_scale"],
        no_graphics=options["no_graphics"],
        log_dir=run_dir,
    )
    name = f"unity:{env['env']}" if env["kind"] == "unity" else env["env"]
    kwargs["env_fn"] = EnvFactory(name, env.get("env_kwargs"), unity_kwargs=unity_kwargs)
    saved_logger = config.get("logger_kwargs", {})
    kwargs["logger_kwargs"] = dict(
        output_dir=run_dir,
        exp_name=config.get("exp_name"),
        tensorboard=saved_logger.get("tensorboard", True),
        resume=True,
    )
    if proc_id() == 0:
        print(f"Resuming {run_dir} on {num_procs()} rank(s)", flush=True)
    fn(**kwargs)
    return run_dir


def run_algo(algo: str, argv: Sequence[str]) -> list[str]:
    """Parse, fork under MPI if asked (--cpu), and run every variant of the grid; return the run dirs."""
    grid, options = parse_algo_args(algo, argv)
    if options["resume"]:
        dirs = [resume_algo(algo, grid, options)]
        _print_next_steps(dirs)
        return dirs
    from spinppo.cli.grid import ExperimentGrid
    from spinppo.envs.registry import EnvFactory
    from spinppo.utils.logx import setup_logger_kwargs
    from spinppo.utils.mpi_tools import local_rank, mpi_fork, proc_id

    exp_name = options["exp_name"]
    if exp_name is not None and (not exp_name.strip() or "/" in exp_name or exp_name in (".", "..")):
        raise UserError(f"--exp_name must be a plain name, not {exp_name!r} (use --data_dir for where)")
    for env in grid["env"]:  # unknown environments fail before any process is started
        EnvFactory(env, options["env_kwargs"], options["unity_file"])
    check_cpu_flag(options)
    mpi_fork(options["cpu"])

    # Every run directory is known, and checked, before the first run starts: a clash found after an
    # hour of training would cost the user that hour.
    plan = []
    for env in grid["env"]:
        name = _grid_name(algo, env, exp_name)
        if exp_name and len(grid["env"]) > 1:  # one --exp_name for several environments
            name = f"{exp_name}-{_grid_name(algo, env, None).removeprefix(algo + '-')}"
        eg = ExperimentGrid(name)
        for key, values in grid.items():
            if key != "env":
                eg.add(key, values, shorthand=key.split(":")[-1])
        for variant in eg.variants():
            ac = variant.pop("ac")
            run_name = eg.variant_name({**variant, "ac": ac})
            logger_kwargs = setup_logger_kwargs(
                run_name, variant["seed"], options["data_dir"], options["datestamp"]
            )
            logger_kwargs.update(overwrite=options["overwrite"], tensorboard=options["tensorboard"])
            ac_kwargs = {AC_FLAGS[flag][0]: value for flag, value in ac.items()}
            plan.append((env, variant, ac_kwargs, logger_kwargs))
    check_run_dirs([p[3]["output_dir"] for p in plan], options["overwrite"])

    fn = _algo(algo)
    dirs = []
    for env, variant, ac_kwargs, logger_kwargs in plan:
        unity_kwargs = dict(
            base_port=options["base_port"],
            worker_id=local_rank(),
            time_scale=options["time_scale"],
            no_graphics=options["no_graphics"],
            log_dir=logger_kwargs["output_dir"],
        )
        env_fn = EnvFactory(env, options["env_kwargs"], options["unity_file"], unity_kwargs)
        if proc_id() == 0:
            print(f"Environment: {env_fn.choice.describe()}", flush=True)
        fn(env_fn=env_fn, ac_kwargs=ac_kwargs, logger_kwargs=logger_kwargs, **variant)
        dirs.append(logger_kwargs["output_dir"])
    _print_next_steps(dirs)
    return dirs


def check_run_dirs(dirs: list[str], overwrite: bool) -> None:
    """A UserError when two runs of a grid share a directory, or (without ``overwrite``) a later run's
    directory already holds a run. Rank 0 looks; every rank gets its verdict.

    The first run's directory is left to its logger, which looks after the algorithm has checked its
    flags: a bad flag is reported before a directory clash.
    """
    from spinppo.utils.logx import existing_run_message, run_files
    from spinppo.utils.mpi_tools import broadcast, proc_id

    error = None
    if proc_id() == 0:
        seen: set[str] = set()
        for i, d in enumerate(dirs):
            real = os.path.realpath(d)
            if real in seen:
                error = f"two runs of this grid would share {d}: give each value once (or drop --exp_name)"
                break
            seen.add(real)
            if i > 0 and not overwrite and run_files(d):
                error = existing_run_message(d)
                break
    error = broadcast(error)
    if error:
        raise UserError(error)


def _print_next_steps(dirs: list[str]) -> None:
    from spinppo.utils.mpi_tools import proc_id

    if proc_id() == 0:
        for d in dirs:
            rel = os.path.relpath(d)
            shown = rel if not rel.startswith("..") else d
            print(f"\nRun saved in {shown}\n  plot it:    python -m spinppo.run plot {shown}")
            print(f"  replay it:  python -m spinppo.run test_policy {shown}", flush=True)


USAGE = """usage: python -m spinppo.run COMMAND [flags]

commands:
  ppo           train with Proximal Policy Optimization
  vpg           train with Vanilla Policy Gradient
  a2c           train with Advantage Actor-Critic
  plot          plot runs' progress.txt files
  test_policy   replay a saved policy

python -m spinppo.run COMMAND --help lists a command's flags."""


_error_comm = None  # a duplicate of COMM_WORLD, so error agreement never meets a pending collective


def _exit_with(message: str, code: int) -> int:
    """End this rank with ``message`` on stderr and exit ``code``, without ever hanging the job.

    With several ranks, the failing ranks meet in a non-blocking barrier: if every rank failed the same
    way (bad input is seen by all), rank 0 prints once and all exit cleanly; if some rank is still at
    work, it would wait forever for this one, so this rank prints with its number and aborts the job.
    """
    from spinppo.utils.mpi_tools import num_procs, proc_id

    if num_procs() == 1 or _error_comm is None:
        print(message, file=sys.stderr, flush=True)
        return code
    import time

    request = _error_comm.Ibarrier()
    deadline = time.monotonic() + 3.0
    while not request.Test():
        if time.monotonic() > deadline:
            print(f"{message} (rank {proc_id()})", file=sys.stderr, flush=True)
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        time.sleep(0.01)
    if proc_id() == 0:
        print(message, file=sys.stderr, flush=True)
    return code


def _report_crash() -> None:
    """An unexpected error: name the rank, print the traceback, end every rank (no hang in collectives)."""
    from spinppo.utils.mpi_tools import num_procs, proc_id

    rank = proc_id()
    sys.stderr.write(f"spinppo: rank {rank} failed:\n{traceback.format_exc()}")
    sys.stderr.flush()
    if num_procs() > 1:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(1)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    global _error_comm
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    from spinppo.utils.errors import TrainingDiverged, TrainingStopped
    from spinppo.utils.mpi_tools import num_procs, proc_id

    if num_procs() > 1 and _error_comm is None:
        from mpi4py import MPI

        _error_comm = MPI.COMM_WORLD.Dup()
    try:
        if cmd in ALGOS:
            run_algo(cmd, rest)
            return 0
        if cmd in TOOLS:
            module = __import__(f"spinppo.tools.{cmd}", fromlist=["main"])
            return module.main(rest)
        import difflib

        close = difflib.get_close_matches(cmd, ALGOS + TOOLS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown command {cmd!r}: choose one of {', '.join(ALGOS + TOOLS)}{hint}")
    except UserError as e:
        return _exit_with(f"spinppo: error: {e}", 2)
    except TrainingDiverged as e:
        return _exit_with(f"spinppo: error: {e}", 1)
    except TrainingStopped as e:
        if proc_id() == 0:
            print(f"spinppo: {e}", flush=True)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except Exception:
        _report_crash()
        return 1


if __name__ == "__main__":
    sys.exit(main())
