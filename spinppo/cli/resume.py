"""``python -m spinppo.run ALGO --resume RUN_DIR``: continue a run from its last checkpoint.

The run's own config.json says how it was made; flags typed beside ``--resume`` must agree with it, except
``--epochs`` (to extend the run), ``--device`` (a GPU run resumes on the CPU and the reverse) and the Unity
launch options. The rank count must be the one the run was made with: the checkpoint holds every rank's
state.
"""

from __future__ import annotations

import json
import os.path as osp
from typing import Any

from spinppo.cli.flag_tables import AC_FLAGS
from spinppo.cli.flags import algo_function, algo_keywords, fits
from spinppo.cli.ranks import check_cpu_flag, check_device_flag
from spinppo.core.encoders import check_conv_filters
from spinppo.envs.registry import EnvFactory, saved_env_spec
from spinppo.utils.device import requested
from spinppo.utils.errors import UserError
from spinppo.utils.logx import read_run_config
from spinppo.utils.mpi_tools import broadcast, local_rank, mpi_fork, num_procs, proc_id, under_mpi_launcher

# Flags that say where a new run goes: a resumed run stays where it is.
NEW_RUN_FLAGS = ("exp_name", "data_dir", "datestamp", "overwrite", "tensorboard")


def resume_algo(algo: str, grid: dict[str, list[Any]], options: dict[str, Any]) -> str:
    """Continue the run in ``options["resume"]`` with its saved configuration; return its directory."""
    run_dir = options["resume"]
    config = read_saved_config(run_dir)
    where = osp.join(run_dir, "config.json")
    if config.get("algo", algo) != algo:
        raise UserError(
            f"{run_dir} is a {config['algo']} run: resume it with python -m spinppo.run {config['algo']}"
        )
    env = saved_env_spec(config, where)
    fn = algo_function(algo)
    kwargs = saved_algo_kwargs(fn, config, where)
    # A keyword an older config.json lacks (--eval_deterministic) runs with its default: compared as such.
    defaults = {name: keyword.default for name, keyword in algo_keywords(fn).items()}
    check_flags_agree(grid, options, config, env, {**defaults, **kwargs})
    start_ranks(options, config)
    if "epochs" in options["given"]:
        kwargs["epochs"] = grid["epochs"][0]
    unity_kwargs = dict(
        base_port=options["base_port"],
        worker_id=local_rank(),
        time_scale=options["time_scale"],
        no_graphics=options["no_graphics"],
        listen=options["unity_listen"],
        log_dir=run_dir,
    )
    name = f"unity:{env['env']}" if env["kind"] == "unity" else env["env"]
    if env["kind"] == "unity":
        unity_kwargs["run_seed"] = kwargs.get("seed", 0)
    kwargs["env_fn"] = EnvFactory(
        name,
        env["env_kwargs"],
        unity_kwargs=unity_kwargs,
        environment_parameters=env["environment_parameters"] or None,
        behavior=env["behavior"],
        where=where,
        frame_size=env["frame_size"] if env["kind"] == "atari" else None,
    )
    saved_logger = config.get("logger_kwargs") if isinstance(config.get("logger_kwargs"), dict) else {}
    kwargs["logger_kwargs"] = dict(
        output_dir=run_dir,
        exp_name=config.get("exp_name"),
        tensorboard=bool(saved_logger.get("tensorboard", True)),
        resume=True,
    )
    if proc_id() == 0:
        print(f"Resuming {run_dir} on {num_procs()} rank(s)", flush=True)
    with requested(options["device"]):
        fn(**kwargs)
    return run_dir


def read_saved_config(run_dir: str) -> dict[str, Any]:
    """The run's config.json. Under a launcher rank 0 reads it for every rank: other hosts need not share
    its disk."""
    if not (under_mpi_launcher() and num_procs() > 1):
        return read_run_config(run_dir)
    config, error = None, None
    if proc_id() == 0:
        try:
            config = read_run_config(run_dir)
        except UserError as e:
            error = str(e)
    config, error = broadcast((config, error))
    if error:
        raise UserError(error)
    return config


def saved_algo_kwargs(fn: Any, config: dict[str, Any], where: str) -> dict[str, Any]:
    """The algorithm's keywords saved in config.json, each checked against its annotated type (and
    ``ac_kwargs`` against the actor-critic flags' types): an edited or damaged file is a one-line
    UserError."""
    kwargs: dict[str, Any] = {}
    for name, keyword in algo_keywords(fn).items():
        if name in config:
            kwargs[name] = _checked(name, config[name], keyword.type, where)
    ac_kwargs = config.get("ac_kwargs")
    if ac_kwargs is not None:
        if not isinstance(ac_kwargs, dict):
            raise UserError(f"{where}: ac_kwargs is {ac_kwargs!r}, not an object: the file was edited")
        types = {ac.kwarg: ac.type for ac in AC_FLAGS.values()}
        for key, value in ac_kwargs.items():
            if key not in types:
                raise UserError(f"{where}: ac_kwargs has an unknown key {key!r}: the file was edited")
            if key == "conv_filters" and value is not None:  # RLlib's nested lists
                try:
                    check_conv_filters(value)
                except UserError:
                    raise UserError(
                        f"{where}: ac_kwargs.conv_filters is {json.dumps(value)}, which is not a list of "
                        "conv layers: the file was edited"
                    ) from None
                continue
            _checked(f"ac_kwargs.{key}", value, types[key], where)
        kwargs["ac_kwargs"] = ac_kwargs
    return kwargs


def _checked(name: str, value: Any, tp: Any, where: str) -> Any:
    """``value`` when it is one of the type ``tp`` (``flags.fits``: ints pass for floats, lists for
    tuples), else a UserError."""
    if not fits(value, tp):
        raise UserError(
            f"{where}: {name} is {json.dumps(value)}, which does not fit its type: the file was edited"
        )
    return value


def check_flags_agree(
    grid: dict[str, list[Any]],
    options: dict[str, Any],
    config: dict[str, Any],
    env: dict[str, Any],
    saved: dict[str, Any],
) -> None:
    """A UserError for a flag typed beside --resume that contradicts the saved run (only --epochs may
    change) or that does not apply to a resume."""
    given = options["given"]
    if given.get("env") and given["env"] != [env["name"]]:
        raise UserError(f"--env {' '.join(given['env'])} contradicts the run's saved env {env['name']}")
    if "env_kwargs" in given and options["env_kwargs"] != env["env_kwargs"]:
        raise UserError(
            f"--env_kwargs {' '.join(given['env_kwargs'])} contradicts the run's saved env_kwargs "
            f"{json.dumps(env['env_kwargs'])}: drop the flag to resume"
        )
    if "frame_size" in given and options["frame_size"] != env.get("frame_size"):
        raise UserError(
            f"--frame_size {options['frame_size']} contradicts the run's saved frame_size "
            f"{env.get('frame_size')}: drop the flag to resume"
        )
    for flag in NEW_RUN_FLAGS:
        if flag in given:
            raise UserError(f"--{flag} does not apply to --resume, which continues the run in place: drop it")
    for key, values in grid.items():
        name = key.split(":")[-1]
        if name not in given or name in ("epochs", "env"):
            continue
        if key.startswith("ac:"):
            value = (saved.get("ac_kwargs") or {}).get(AC_FLAGS[name].kwarg)
        else:
            value = saved.get(name)
        if len(values) != 1 or _plain(values[0]) != _plain(value):
            shown = " ".join(given[name])
            raise UserError(
                f"--{name} {shown} contradicts the run's saved {name} {value}: drop the flag to resume"
            )


def _plain(value: Any) -> Any:
    """``value`` with every tuple a list (a parsed --hid is a tuple, config.json holds a list)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def start_ranks(options: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse a rank count other than the saved one before any rank starts; then, outside a launcher,
    start the ranks (``--cpu``, or the saved count when --cpu is not given)."""
    given = options["given"]
    saved_procs = config.get("num_procs", 1)
    if not isinstance(saved_procs, int) or isinstance(saved_procs, bool) or saved_procs < 1:
        raise UserError(f"config.json: num_procs is {saved_procs!r}, not a rank count: the file was edited")
    cpu = options["cpu"] if "cpu" in given else saved_procs
    if "cpu" in given:
        check_cpu_flag(options)
    ranks = num_procs() if under_mpi_launcher() else cpu
    if ranks != saved_procs:
        how = "mpirun -np" if under_mpi_launcher() else "--cpu"
        raise UserError(
            f"the run was made with {saved_procs} ranks; resume it with the same number "
            f"({how} {saved_procs}), not {ranks}"
        )
    check_device_flag(options, config.get("algo", "ppo"), cpu)
    if not under_mpi_launcher():
        mpi_fork(cpu)
