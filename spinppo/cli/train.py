"""``python -m spinppo.run ppo|vpg|a2c ...``: plan the grid of runs, start the ranks, train each run.

Every run directory of a grid is known, and checked, before the first run starts, and so is every
variant's set of flags: a clash or a bad value found after an hour of training would cost the user that
hour (and with --overwrite, the old run).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from spinppo.cli.config_file import dump_config, resolved_config
from spinppo.cli.flag_tables import AC_FLAGS
from spinppo.cli.flags import algo_function, check_algo_flags, parse_algo_args
from spinppo.cli.grid import ExperimentGrid
from spinppo.cli.ranks import check_cpu_flag, check_device_flag
from spinppo.cli.resume import resume_algo
from spinppo.envs.registry import EnvFactory
from spinppo.utils.device import requested
from spinppo.utils.errors import UserError
from spinppo.utils.logx import existing_run_message, run_files, setup_logger_kwargs
from spinppo.utils.mpi_tools import broadcast, local_rank, mpi_fork, proc_id


def _grid_name(algo: str, env: str, exp_name: str | None) -> str:
    return exp_name or f"{algo}-{re.sub(r'[^A-Za-z0-9._-]+', '-', env.split('/')[-1]).strip('-').lower()}"


def run_algo(algo: str, argv: Sequence[str]) -> list[str]:
    """Parse, fork under MPI if asked (--cpu), and run every variant of the grid; return the run dirs."""
    grid, options = parse_algo_args(algo, argv)
    if options["print_config"]:
        if proc_id() == 0:
            print(dump_config(resolved_config(algo, grid, options), algo), end="", flush=True)
        return []
    if proc_id() == 0 and not os.environ.get("IN_MPI"):  # once, not once per rank
        for note in options["notes"]:
            print(f"spinppo: note: {note}", flush=True)
    if options["resume"]:
        dirs = [resume_algo(algo, grid, options)]
        if options["pictures"]:
            write_pictures(dirs)
        _print_next_steps(dirs)
        return dirs
    exp_name = options["exp_name"]
    if exp_name is not None and (not exp_name.strip() or "/" in exp_name or exp_name in (".", "..")):
        raise UserError(f"--exp_name must be a plain name, not {exp_name!r} (use --data_dir for where)")
    for env in grid["env"]:  # unknown environments fail before any process is started
        EnvFactory(
            env,
            options["env_kwargs"],
            options["unity_file"],
            frame_size=options["frame_size"],
            **_unity_options(env, options),
        )
    check_cpu_flag(options)
    check_device_flag(options, algo)
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
            ac_kwargs = {AC_FLAGS[flag].kwarg: value for flag, value in ac.items()}
            unity_kwargs = dict(
                base_port=options["base_port"],
                worker_id=local_rank(),
                time_scale=options["time_scale"],
                no_graphics=options["no_graphics"],
                listen=options["unity_listen"],
                log_dir=logger_kwargs["output_dir"],
                run_seed=variant["seed"],  # ML-Agents seeds its samplers from the run's seed
            )
            env_fn = EnvFactory(
                env,
                options["env_kwargs"],
                options["unity_file"],
                unity_kwargs,
                frame_size=options["frame_size"],
                **_unity_options(env, options),
            )
            plan.append((env_fn, variant, ac_kwargs, logger_kwargs))
    # Every variant's flags too: with --overwrite, a bad value in a later variant found only when it
    # starts would come after the earlier variants had replaced their old runs.
    for env_fn, variant, ac_kwargs, _ in plan:
        check_algo_flags(algo, {**variant, "ac_kwargs": ac_kwargs, "env_fn": env_fn})
    check_run_dirs([p[3]["output_dir"] for p in plan], options["overwrite"])

    fn = algo_function(algo)
    dirs = []
    for env_fn, variant, ac_kwargs, logger_kwargs in plan:
        if proc_id() == 0:
            print(f"Environment: {env_fn.describe()}", flush=True)
        with requested(options["device"]):
            fn(env_fn=env_fn, ac_kwargs=ac_kwargs, logger_kwargs=logger_kwargs, **variant)
        dirs.append(logger_kwargs["output_dir"])
    if options["pictures"]:
        write_pictures(dirs)
    _print_next_steps(dirs)
    return dirs


def _unity_options(env: str, options: dict[str, Any]) -> dict[str, Any]:
    """EnvFactory's Unity keywords: the environment parameters and the behavior to train. An ML-Agents
    config names its behavior for any environment; only a Unity build uses it (a --behavior typed for a
    gymnasium environment is an error)."""
    behavior = options["behavior"]
    if behavior is not None and "behavior" not in options["given"]:
        if EnvFactory(env, options["env_kwargs"], options["unity_file"]).choice.kind != "unity":
            behavior = None
    return dict(
        environment_parameters=options["environment_parameters"],
        behavior=behavior,
        where=options.get("environment_parameters_file") or "environment_parameters",
    )


def check_run_dirs(dirs: list[str], overwrite: bool) -> None:
    """A UserError when two runs of a grid share a directory, or (without ``overwrite``) a later run's
    directory already holds a run. Rank 0 looks; every rank gets its verdict.

    The first run's directory is left to its logger, which looks after the algorithm has checked its
    flags: a bad flag is reported before a directory clash.
    """
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


def write_pictures(dirs: list[str]) -> None:
    """``--pictures``: each run's learning curve (``curve.png``) and one deterministic episode of its
    final policy (``replay.mp4``; not for Unity builds, which test_policy cannot film) into its run
    directory, by the plot and test_policy commands; rank 0 makes them, and prints where they are."""
    if proc_id() != 0:
        return
    from spinppo.tools import plot, test_policy
    from spinppo.tools.replay import read_env_spec

    for d in dirs:
        curve, video = os.path.join(d, "curve.png"), os.path.join(d, "replay.mp4")
        plot.main([d, "--out", curve])
        made = [f"learning curve: {curve}"]
        if read_env_spec(d)["kind"] in ("gym", "atari"):
            test_policy.main([d, "--deterministic", "--episodes", "1", "--video", video])
            made.append(f"replay video: {video}")
        print("\n" + "\n".join(made), flush=True)


def _print_next_steps(dirs: list[str]) -> None:
    if proc_id() == 0:
        for d in dirs:
            rel = os.path.relpath(d)
            shown = rel if not rel.startswith("..") else d
            print(f"\nRun saved in {shown}\n  plot it:    python -m spinppo.run plot {shown}")
            print(f"  replay it:  python -m spinppo.run test_policy {shown}", flush=True)
