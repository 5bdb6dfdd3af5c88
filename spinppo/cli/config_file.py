"""``--config FILE``: a training command's flags read from a file.

Three kinds of file are read, told apart by their keys:

- spinppo's own: YAML or JSON whose keys are the command's flags (``lr: 3e-4``, ``hid: [256, 256]``,
  ``env_kwargs: {ctrl_cost_weight: 0.01}``); a list is a grid, as several values on the command line are
  (``seed: [0, 10, 20]``, ``hid: [[32, 32], [64, 64]]``). ``--print_config`` writes this form.
- a run's ``config.json``: its flags, so that ``--config data/x/x_s0/config.json`` repeats the run.
- an ML-Agents trainer config (``behaviors:`` ...), translated by ``cli/mlagents_config.py``;
- an RLlib tuned example (``pong-ppo: {env, run, stop, config}``, what ``rllib train -f`` reads),
  translated by ``cli/rllib_config.py``.

Every value becomes the text tokens the command line would have given, and goes through the same typed
parsing (``flags.parse_values``): a value means in a file what it means on the command line. Flags typed
on the command line override the file's (``merge_config_files``, which ``flags.parse_algo_args`` calls).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import os.path as osp
from collections.abc import Iterable
from typing import Any

from spinppo.cli import rllib_config
from spinppo.cli.flag_tables import AC_FLAGS, RUN_FLAGS
from spinppo.cli.mlagents_config import ML_AGENTS_SECTIONS, translate
from spinppo.utils.errors import UserError
from spinppo.utils.mpi_tools import under_mpi_launcher

# Keys a file may hold that are not command-line flags: they have no one-line form.
FILE_ONLY_KEYS = ("environment_parameters",)
# Keys of a run's config.json that say how it was made but are not flags.
RUN_RECORD_KEYS = (
    "actor_critic",
    "algo",
    "env_fn",
    "logger_kwargs",
    "num_procs",
    "observation_shapes",
    "exp_name",
)
# Flags whose values are paths: ``~`` in a file means the home directory, as in a shell.
PATH_FLAGS = ("data_dir", "resume", "initialize_from", "unity_file")


def algo_of_file(path: str) -> str:
    """The algorithm a config file names itself (an RLlib tuned example's ``run``), for ``python -m
    spinppo.run --config FILE``; a UserError for a file that names none."""
    doc = load_file(path)
    if rllib_config.is_rllib_file(doc):
        return rllib_config.file_algo(doc, path)
    raise UserError(
        f"--config {path} does not name its algorithm: python -m spinppo.run ppo --config {path} (or vpg, "
        "a2c, a3c, trpo, npg)"
    )


def load_file(path: str) -> Any:
    """The parsed content of a YAML or JSON file (JSON is YAML); a UserError when it cannot be read."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot read it ({type(e).__name__})") from None
    if text.lstrip().startswith("{"):  # JSON (a run's config.json is indented with tabs, which YAML refuses)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--config {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise UserError(f"--config {path}: not valid YAML or JSON ({problem}{at})") from None


def read_config_file(
    algo: str, path: str, flags: Iterable[str], behavior: str | None = None
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Read ``path`` for the command ``algo`` whose flags are ``flags``.

    Returns ``(given, extras)``: ``given`` maps each flag the file sets to its tokens (as the command line
    would give them); ``extras`` holds what has no flag (``environment_parameters``, ``behavior``,
    ``notes`` to print). Unknown keys and values that no flag takes are UserErrors naming the file.
    """
    doc = load_file(path)
    if not isinstance(doc, dict):
        raise UserError(f"--config {path}: expected a mapping of flags to values, not {type(doc).__name__}")
    flags = set(flags)
    extras: dict[str, Any] = {"notes": []}
    if any(key in doc for key in ML_AGENTS_SECTIONS):
        values, extras = translate(doc, path, algo, behavior)
    elif rllib_config.is_rllib_file(doc):
        values, notes = rllib_config.translate(doc, path, algo)
        extras["notes"] = notes
    elif "env_fn" in doc and "algo" in doc:
        values = from_run_config(doc, path, algo, flags)
    else:
        values = dict(doc)
    given: dict[str, list[str]] = {}
    for key, value in values.items():
        if key == "environment_parameters" and "environment_parameters" not in extras:
            from spinppo.envs.unity.params import check_environment_parameters

            extras[key] = check_environment_parameters(value, path)
            continue
        if key in FILE_ONLY_KEYS:
            extras[key] = value
            continue
        if key in PATH_FLAGS and isinstance(value, str):
            value = osp.expanduser(value)
        if key not in flags:
            close = difflib.get_close_matches(key, sorted(flags), n=1)
            hint = (
                f"; did you mean {close[0]}?"
                if close
                else f" (python -m spinppo.run {algo} --help lists them)"
            )
            raise UserError(f"{path}: unknown key {key!r}: not a flag of {algo}{hint}")
        given[key] = tokens_for(key, value, path)
    return given, extras


def merge_config_files(
    algo: str, given: dict[str, list[str]], flags: set[str]
) -> tuple[dict[str, list[str]], dict[str, Any], dict[str, str]]:
    """The command line's flags (``given``: flag -> tokens, ``config`` among them) over those of its
    ``--config`` files, each file over the ones before it; ``flags`` are every flag of ``algo``.

    Returns (merged flags as tokens, the files' extras: ``notes``, ``environment_parameters``, ``behavior``
    ..., flag -> the file that set it). ML-Agents' step counts keep their meaning under a changed
    ``--steps_per_epoch``.
    """
    # Several files apply in order, each over the ones before (a shipped config, then one's own changes).
    from_file_tokens: dict[str, list[str]] = {}
    from_file: dict[str, str] = {}
    extras: dict[str, Any] = {"notes": []}
    over_mlagents: dict[str, list[str]] = {}  # flags set after the (last) ML-Agents file, by later files
    for path in given["config"]:
        # The behavior whose ML-Agents settings to read: the command line's, else an earlier file's.
        behavior = (given.get("behavior") or from_file_tokens.get("behavior") or [None])[0]
        tokens, file_extras = read_config_file(algo, path, flags - {"config", "print_config"}, behavior)
        # A run option the file leaves at None (as --print_config writes it) is not given.
        tokens = {
            flag: value
            for flag, value in tokens.items()
            if not (flag in RUN_FLAGS and RUN_FLAGS[flag].default is None and value == ["None"])
        }
        from_file_tokens.update(tokens)
        from_file.update(dict.fromkeys(tokens, path))
        over_mlagents = {} if "mlagents" in file_extras else {**over_mlagents, **tokens}
        if "environment_parameters" in file_extras:  # named in the messages about them
            extras["environment_parameters_file"] = path
        notes = extras["notes"] + file_extras.get("notes", [])
        extras.update(file_extras)
        extras["notes"] = notes
    merged = {**from_file_tokens, **given}
    derived = extras.get("mlagents") or {}
    over = {**over_mlagents, **given}  # what the command line or a later file sets over the ML-Agents file
    if "steps_per_epoch" in over and "max_steps" in derived:
        # ML-Agents counts max_steps and checkpoint_interval in steps: they keep their meaning when
        # --steps_per_epoch (buffer_size) is set over the file.
        try:
            steps = int(over["steps_per_epoch"][0])
        except ValueError:
            steps = 0  # parse_values reports it
        if steps > 0:
            if "epochs" not in over:
                merged["epochs"] = [str(max(1, math.ceil(derived["max_steps"] / steps)))]
            if "save_freq" not in over:
                merged["save_freq"] = [str(max(1, round(derived["checkpoint_interval"] / steps)))]
    if "resume" in derived and "resume" not in over:
        # checkpoint_settings.resume: the run of run_id with this seed (the command line's, if typed).
        results_dir, run_id = derived["resume"]
        seed = merged.get("seed", ["0"])[0]
        merged["resume"] = [os.path.join(results_dir, run_id, f"{run_id}_s{seed}")]
    return merged, extras, {flag: path for flag, path in from_file.items() if flag not in given}


def tokens_for(flag: str, value: Any, where: str) -> list[str]:
    """The command-line tokens that give ``flag`` the file's ``value`` (a list is a grid)."""
    if flag == "env_kwargs":
        if not isinstance(value, dict):
            raise UserError(f"{where}: env_kwargs must be a mapping of keyword to value, not {value!r}")
        return [json.dumps(value)]
    if flag == "conv_filters" and isinstance(value, list):
        # One stack is a list of layers, [[16, [4, 4], 2], ...]; a grid is a list of stacks (its first
        # item's first item a list, where a layer's is its number of channels).
        grid = bool(value) and isinstance(value[0], list) and bool(value[0]) and isinstance(value[0][0], list)
        return [json.dumps(v) for v in value] if grid else [json.dumps(value)]
    if flag == "hid" and value == []:  # no hidden layer: linear policy and value heads, as --hid [] says
        return ["[]"]
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        # A list of lists is a grid of list values (hid: [[32, 32], [64]]), as --hid [32,32] [64] says.
        return ["[" + ",".join(_scalar(flag, x, where) for x in item) + "]" for item in value]
    if isinstance(value, list):
        if not value:
            raise UserError(f"{where}: {flag} is an empty list: give a value, or several for a grid")
        return [_scalar(flag, x, where) for x in value]
    return [_scalar(flag, value, where)]


def _scalar(flag: str, value: Any, where: str) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UserError(f"{where}: {flag} is {json.dumps(value)}: expected a number, string or true/false")


def from_run_config(config: dict[str, Any], where: str, algo: str, flags: set[str]) -> dict[str, Any]:
    """The flags recorded in a run's config.json (``--config RUN/config.json`` repeats the run)."""
    from spinppo.envs.atari import SCREEN
    from spinppo.envs.registry import saved_env_spec

    if config.get("algo") != algo:
        raise UserError(
            f"{where} is the config of a {config.get('algo')} run: repeat it with "
            f"python -m spinppo.run {config.get('algo')} --config {where}"
        )
    if config.get("actor_critic", "MLPActorCritic") != "MLPActorCritic":
        raise UserError(f"{where}: the run used its own actor_critic class; repeat it from Python")
    env = saved_env_spec(config, where)
    values: dict[str, Any] = {
        "env": f"unity:{env['env']}"
        if env["kind"] == "unity" and not env["name"].startswith("unity:")
        else env["name"],
        "env_kwargs": env["env_kwargs"],
    }
    for key in ("environment_parameters", "behavior"):  # Unity runs record these with their environment
        if env.get(key) is not None:
            values[key] = env[key]
    if env["kind"] == "atari" and env["frame_size"] != SCREEN:  # 42-pixel frames (84: the default)
        values["frame_size"] = env["frame_size"]
    for key, value in config.items():
        if key in RUN_RECORD_KEYS or key == "ac_kwargs":
            continue
        if key not in flags:
            raise UserError(
                f"{where}: {key!r} is not a flag of {algo}: the file was edited or is from another version"
            )
        values[key] = value
    by_kwarg = {ac.kwarg: flag for flag, ac in AC_FLAGS.items()}
    for kwarg, value in (config.get("ac_kwargs") or {}).items():
        if kwarg not in by_kwarg:
            raise UserError(f"{where}: ac_kwargs has an unknown key {kwarg!r}: the file was edited")
        values[by_kwarg[kwarg]] = value
    logger_kwargs = config.get("logger_kwargs") if isinstance(config.get("logger_kwargs"), dict) else {}
    if logger_kwargs.get("exp_name"):
        values["exp_name"] = logger_kwargs["exp_name"]
        output_dir = logger_kwargs.get("output_dir")
        if isinstance(output_dir, str) and osp.basename(osp.dirname(output_dir)) == logger_kwargs["exp_name"]:
            values["data_dir"] = osp.dirname(osp.dirname(output_dir))
    if "tensorboard" in logger_kwargs:
        values["tensorboard"] = bool(logger_kwargs["tensorboard"])
    # The same rank count repeats the run exactly; under a launcher the launcher decides.
    if isinstance(config.get("num_procs"), int) and not under_mpi_launcher() and not os.environ.get("IN_MPI"):
        values["cpu"] = config["num_procs"]
    return values


def resolved_config(algo: str, grid: dict[str, list[Any]], options: dict[str, Any]) -> dict[str, Any]:
    """The complete configuration of a parsed command line, as a spinppo config file holds it: every flag
    with its value (a list where the grid has several), ``environment_parameters`` when set."""
    if options.get("resume"):  # a resume is its run's saved configuration and the flags typed with it
        out = {"resume": options["resume"]}
        for key, values in grid.items():
            name = key.split(":")[-1]
            if name in options["given"] and name != "env":
                values = [list(v) if isinstance(v, tuple) else v for v in values]
                out[name] = values[0] if len(values) == 1 else values
        return out
    out: dict[str, Any] = {"env": grid["env"][0] if len(grid["env"]) == 1 else list(grid["env"])}
    for key, values in grid.items():
        if key == "env":
            continue
        name = key.split(":")[-1]
        values = [list(v) if isinstance(v, tuple) else v for v in values]
        out[name] = values[0] if len(values) == 1 else values
    for flag in RUN_FLAGS:
        if flag in ("env", "config", "print_config"):
            continue
        out[flag] = options.get(flag)
    if options.get("environment_parameters"):
        out["environment_parameters"] = options["environment_parameters"]
    return out


def dump_config(config: dict[str, Any], algo: str) -> str:
    """``config`` (``resolved_config``'s answer) as YAML that ``--config`` reads back."""
    import yaml

    header = (
        f"# spinppo {algo} configuration: python -m spinppo.run {algo} --config THIS_FILE\n"
        "# A list is a grid (seed: [0, 10] runs two seeds); flags on the command line override the file.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)
