"""Flags for the training commands, made from the algorithms' signatures and docstrings.

Every keyword of ``spinppo.algos.<algo>.<algo>`` is a flag (``--seed 3``), with its docstring's
``Args:`` entry as help and its default's type as the parser of its values: user input is never evaluated
as Python. Several values make a grid (``--seed 0 10 20``). The actor-critic's options (``--hid``,
``--act``...) fill ``ac_kwargs``; ``RUN_FLAGS`` are about where and how to run, not the algorithm.
Bad input is a ``UserError``: one line, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from spinppo.utils.errors import OneLineParser, UserError
from spinppo.utils.mpi_tools import available_cores, num_procs, proc_id, under_mpi_launcher

ALGOS = ("ppo", "vpg", "a2c", "a3c")
# Keywords of an algorithm that are not flags: the command line builds them.
NOT_FLAGS = ("env_fn", "actor_critic", "ac_kwargs", "logger_kwargs")

# Flags that fill ac_kwargs, with their defaults and meaning.
AC_FLAGS: dict[str, tuple[str, Any, str]] = {
    "hid": ("hidden_sizes", (64, 64), "hidden layer sizes, e.g. --hid 64 64 (a grid: --hid [32,32] [64,64])"),
    "act": ("activation", "tanh", "activation: tanh, relu, elu, gelu, silu, leaky_relu"),
    "layer_norm": ("layer_norm", False, "LayerNorm after each hidden layer (ML-Agents-style nets)"),
    "shared_trunk": ("shared_trunk", False, "one trunk for policy and value instead of two"),
    "log_std_init": ("log_std_init", -0.5, "initial log standard deviation of the Gaussian policy"),
    "norm_obs": ("norm_obs", True, "normalise observations with running statistics merged over ranks"),
    "encoder": (
        "encoder",
        "nature_cnn",
        "image encoder: nature_cnn, simple or resnet (ML-Agents' vis_encode_type), or rllib (RLlib's "
        "VisionNetwork: --conv_filters, --conv_activation); vector observations ignore it",
    ),
    "conv_filters": (
        "conv_filters",
        None,
        "--encoder rllib: its convolutions as RLlib's model.conv_filters, JSON, e.g. "
        "'[[32,[3,3],2],[32,[3,3],2],[32,[3,3],2],[32,[3,3],2]]' ([out_channels, [kernel_h, kernel_w], "
        "stride] each; 'same' padding but the last); None: RLlib's default for 42x42 or 84x84 images",
    ),
    "conv_activation": (
        "conv_activation",
        "relu",
        "--encoder rllib: the activation after each convolution (RLlib's model.conv_activation): tanh, "
        "relu, elu, gelu, silu, leaky_relu",
    ),
    "memory_size": (
        "memory_size",
        0,
        "recurrent policy: an LSTM whose memory (hidden and cell state) has this many floats, even, e.g. "
        "128 (ML-Agents' memory_size); 0: no memory",
    ),
    "sequence_length": (
        "sequence_length",
        64,
        "with --memory_size: steps per sequence the update backpropagates through (ML-Agents' name); "
        "when it does not divide each environment's rollout, the last sequence is padded and masked",
    ),
}
# Flags that are not algorithm keywords.
RUN_FLAGS: dict[str, tuple[Any, str]] = {
    "env": (None, "environment: a gymnasium id, a short name (Walker, Hopper, CartPole...) or unity:PATH"),
    "config": (
        None,
        "read flags from a YAML/JSON file: spinppo's (keys are these flags), a run's config.json, or an "
        "ML-Agents trainer config; several files apply in order, each over the ones before; flags typed "
        "here override them",
    ),
    "print_config": (False, "print the complete resolved configuration as a --config file and exit"),
    "behavior": (None, "Unity: the behavior to train (and, in an ML-Agents config, whose settings to use)"),
    "resume": (None, "continue the run in this directory from its last checkpoint (other flags: as saved)"),
    "env_kwargs": (
        {},
        "environment keyword arguments as JSON or key=value pairs, e.g. forward_reward_weight=-1",
    ),
    "frame_size": (
        None,
        "Atari: height and width of the grayscale frames, 84 (the default: DQN's, CleanRL's) or 42 (RLlib's "
        "dim: 42); saved with the run, so replay, evaluation and --resume make the same frames",
    ),
    "exp_name": (None, "experiment name; ALGO-ENV when not given"),
    "data_dir": (None, "where runs go; $SPINPPO_DATA_DIR or data/ when not given"),
    "datestamp": (False, "put a date and time in the run directory's name"),
    "overwrite": (False, "replace a run already in the run directory"),
    "cpu": (1, "MPI ranks to start on this host (runs itself under mpirun); 'auto' for one per core"),
    "tensorboard": (True, "also write TensorBoard event files in the run directory"),
    "pictures": (
        False,
        "at the end, write the learning curve (curve.png) and a deterministic replay video (replay.mp4) "
        "into the run directory",
    ),
    "unity_file": (None, "a Unity ML-Agents build to use for --env Walker (or set SPINPPO_UNITY_FILE)"),
    "base_port": (5005, "Unity: base port; rank r on a host uses worker_id r"),
    "time_scale": (20.0, "Unity: simulation speed-up"),
    "no_graphics": (
        None,
        "Unity: true starts the player with -nographics -batchmode (cameras then render nothing), false "
        "with graphics (ML-Agents' default); auto (not given): without, unless the trained behavior has a "
        "camera",
    ),
    "unity_listen": (
        "localhost",
        "Unity: the address the trainer's gRPC server listens on for its player: localhost (loopback only: "
        "the player spinppo starts on the rank's host), an address of this host, or 0.0.0.0 or :: for every "
        "interface (a player reached from elsewhere)",
    ),
}


def algo_function(name: str) -> Callable[..., Any]:
    """The training function ``spinppo.algos.<name>.<name>``."""
    return getattr(importlib.import_module(f"spinppo.algos.{name}"), name)


def check_algo_flags(name: str, config: dict[str, Any]) -> None:
    """``spinppo.algos.<name>.check_flags(config)``: the algorithm's own checks, without running it."""
    importlib.import_module(f"spinppo.algos.{name}").check_flags(config)


def arg_docs(fn: Callable[..., Any]) -> dict[str, str]:
    """Each argument's text in the ``Args:`` section of ``fn``'s (Google-style) docstring.

    An entry is ``name: text`` at the section's indentation; deeper lines continue it.
    """
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(fn.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:") + 1
    except StopIteration:
        return docs
    indent, current = None, None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent or depth == 0:
            break  # the next section
        m = re.match(r"(\w+)(?: \(.*?\))?: (.*)", line.strip())
        if depth == indent and m:
            current = m[1]
            docs[current] = m[2]
        elif current:
            docs[current] += " " + line.strip()
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
    if isinstance(default, int) or "int" in {part.strip() for part in annotation.split("|")}:
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
            # None turns an optional number off (--target_kl none); a text flag takes "none" as text
            # (--exp_name none), and only the exact None (what --print_config writes) as None.
            if optional and (tok == "None" if kind is str else tok.lower() == "none"):
                out.append(None)
            else:
                out.append(_parse_scalar(tok, kind))
        except ValueError:
            name = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
            raise UserError(f"--{flag} takes {name}, not {tok!r}") from None
    return out


def parse_hid(tokens: list[str]) -> list[tuple[int, ...]]:
    """``--hid 64 64`` is one architecture; ``--hid [32,32] [64,64]`` is a grid of two. (The sizes are
    checked by the network's ``check_ac_kwargs``.)"""
    try:
        if any(t.startswith("[") or t.startswith("(") for t in tokens):
            return [tuple(int(x) for x in re.findall(r"-?\d+", t)) for t in tokens]
        return [tuple(int(t) for t in tokens)]
    except ValueError:
        raise UserError(f"--hid takes layer sizes such as '64 64', not {' '.join(tokens)!r}") from None


def parse_conv_filters(tokens: list[str]) -> list[Any]:
    """``--conv_filters`` values: each token one JSON stack (several: a grid), ``None`` for RLlib's default;
    tokens that are one stack only together (a stack typed with spaces, unquoted) are one value. The
    layers are checked by the network's ``check_ac_kwargs``."""
    values: list[Any] = []
    try:
        for tok in tokens:
            values.append(None if tok.lower() == "none" else json.loads(tok))
        if all(isinstance(v, list) or v is None for v in values):
            return values
    except json.JSONDecodeError:
        pass
    try:
        return [json.loads(" ".join(tokens))]
    except json.JSONDecodeError as e:
        raise UserError(
            f"--conv_filters takes JSON such as '[[16,[4,4],2],[32,[4,4],2],[256,[11,11],1]]', not "
            f"{' '.join(tokens)!r} ({e.msg})"
        ) from None


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


# Run flags that are true, false or None (auto, the default); bare (``--no_graphics``) they mean true.
AUTO_BOOL_FLAGS = ("no_graphics",)


def _nargs(default: Any, flag: str = "") -> str:
    # A bare boolean flag (--datestamp) means true, as Spinning Up's users type it.
    return "*" if isinstance(default, bool) or flag in AUTO_BOOL_FLAGS else "+"


def parse_auto_bool(flag: str, tokens: list[str]) -> bool | None:
    """An ``AUTO_BOOL_FLAGS`` flag's value: true when bare, None for ``auto`` (or None, as --print_config
    writes it), else true or false."""
    if not tokens:
        return True
    if len(tokens) != 1:
        raise UserError(f"--{flag} takes one value, not {len(tokens)}")
    if tokens[0].lower() in ("auto", "none"):
        return None
    try:
        return parse_bool(tokens[0])
    except ValueError:
        raise UserError(f"--{flag} takes true, false or auto, not {tokens[0]!r}") from None


def build_parser(algo: str) -> tuple[OneLineParser, dict[str, inspect.Parameter]]:
    """The argparse parser for an algorithm, from its signature and docstring."""
    fn = algo_function(algo)
    params = {name: p for name, p in inspect.signature(fn).parameters.items() if name not in NOT_FLAGS}
    docs = arg_docs(fn)
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
            nargs=_nargs(default, flag),
            default=default,
            help=help_text,
            metavar="V",
            # --config A --config B: both files (any other flag typed twice keeps its last value).
            action="extend" if flag == "config" else None,
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
    extras: dict[str, Any] = {}
    from_file: dict[str, str] = {}  # flag -> the file that set it, for error messages
    if "config" in given:
        given, extras, from_file = _merge_config_file(
            algo, given, set(params) | set(AC_FLAGS) | set(RUN_FLAGS)
        )

    @contextlib.contextmanager
    def file_named(flag: str) -> Iterator[None]:
        """A bad value from the config file names the file."""
        try:
            yield
        except UserError as e:
            if flag not in from_file:
                raise
            raise UserError(f"{from_file[flag]}: {e}") from None

    grid: dict[str, list[Any]] = {}
    for name, p in params.items():
        with file_named(name):
            annotation = str(p.annotation)
            grid[name] = (
                parse_values(name, given[name], p.default, annotation) if name in given else [p.default]
            )
    for flag, (_, default, _) in AC_FLAGS.items():
        with file_named(flag):
            if flag not in given:
                grid[f"ac:{flag}"] = [default]
            elif flag == "hid":
                grid["ac:hid"] = parse_hid(given[flag])
            elif flag in ("act", "conv_activation"):
                grid[f"ac:{flag}"] = given[flag]
            elif flag == "conv_filters":
                grid["ac:conv_filters"] = parse_conv_filters(given[flag])
            else:
                grid[f"ac:{flag}"] = parse_values(flag, given[flag], default)
    options: dict[str, Any] = {"given": given, "notes": extras.get("notes", []), "from_file": from_file}
    options["environment_parameters"] = extras.get("environment_parameters")
    options["environment_parameters_file"] = extras.get("environment_parameters_file")
    if "resume" not in given and "env" not in given:
        raise UserError("the following arguments are required: --env (see python -m spinppo.run ppo --help)")
    grid["env"] = given.get("env", [])
    for flag, (default, _) in RUN_FLAGS.items():
        if flag == "env":
            continue
        with file_named(flag):
            if flag not in given:
                options[flag] = default
            elif flag == "env_kwargs":
                options[flag] = parse_env_kwargs(given[flag])
            elif flag == "config":
                options[flag] = list(given[flag])  # the files, in the order they apply
            elif flag == "cpu" and given[flag] == ["auto"]:
                options[flag] = available_cores()
            elif flag in AUTO_BOOL_FLAGS:
                options[flag] = parse_auto_bool(flag, given[flag])
            else:
                # --frame_size is a number (or None: the environment's own); other None defaults are text.
                annotation = "int | None" if flag == "frame_size" else "str | None" if default is None else ""
                values = parse_values(flag, given[flag], default, annotation)
                if len(values) != 1:
                    raise UserError(f"--{flag} takes one value, not {len(values)}")
                options[flag] = values[0]
    if options["behavior"] is None:  # an ML-Agents config names the behavior its settings are for
        options["behavior"] = extras.get("behavior")
    if options["cpu"] < 1:
        raise UserError(f"--cpu must be at least 1, not {options['cpu']}")
    from spinppo.envs.unity.launch import listen_host

    listen_host(options["unity_listen"])  # a bad address fails before any rank starts
    # The network's options are checked by the network's own check, here already so that a typo fails
    # before --cpu starts any rank (the grid's pre-check runs it again with the other flags).
    from spinppo.core.encoders import check_conv_filters
    from spinppo.core.networks import check_ac_kwargs

    for hidden_sizes in grid["ac:hid"]:
        for activation in grid["ac:act"]:
            check_ac_kwargs(hidden_sizes=hidden_sizes, activation=activation)
    for conv_filters in grid["ac:conv_filters"]:
        for conv_activation in grid["ac:conv_activation"]:
            if conv_filters is not None:
                check_conv_filters(conv_filters)
            check_ac_kwargs(conv_activation=conv_activation, encoder="rllib")
    return grid, options


def _merge_config_file(
    algo: str, given: dict[str, list[str]], flags: set[str]
) -> tuple[dict[str, list[str]], dict[str, Any], dict[str, str]]:
    """The command line's flags over those of its ``--config`` files (each file over the ones before it):
    (merged flags as tokens, the files' extras, flag -> the file that set it)."""
    from spinppo.cli.config_file import read_config_file

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
            if not (flag in RUN_FLAGS and RUN_FLAGS[flag][0] is None and value == ["None"])
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
        import math

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


def check_cpu_flag(options: dict[str, Any]) -> None:
    """--cpu starts ranks on this host; under a user's launcher (mpirun, srun) the launcher decides."""
    cpu = options["cpu"]
    if under_mpi_launcher() and not os.environ.get("IN_MPI") and cpu > 1 and cpu != num_procs():
        path = options.get("from_file", {}).get("cpu")
        if path is not None:  # a shipped config's rank count: the user's launcher chose another
            if proc_id() == 0:
                print(
                    f"spinppo: note: {path}: cpu: {cpu} does not apply under mpirun/mpiexec/srun, which "
                    f"started {num_procs()} rank(s): running with those",
                    flush=True,
                )
            options["cpu"] = 1
            return
        raise UserError(
            f"--cpu {cpu} does not apply under mpirun/mpiexec/srun, which started {num_procs()} rank(s): "
            "drop --cpu and choose the number of ranks with the launcher"
        )
