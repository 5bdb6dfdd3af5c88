"""Flags for the training commands, made from the algorithms' signatures and docstrings.

Every keyword of ``spinppo.algos.<algo>.<algo>`` is a flag (``--seed 3``): its annotation is the type its
values are parsed as (``parse_values``; user input is never evaluated as Python), its docstring's ``Args:``
entry its help. Several values make a grid (``--seed 0 10 20``). The actor-critic's options (``--hid``,
``--act``...) and the run's (``--env``, ``--cpu``...) are the tables of ``flag_tables``, typed the same way.
``--config`` files come in through ``config_file.merge_config_files`` as the tokens the command line would
have given, so a value means in a file what it means here. Bad input is a ``UserError``: one line, exit
code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import operator
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

from spinppo.cli.config_file import merge_config_files
from spinppo.cli.flag_tables import AC_FLAGS, NOT_FLAGS, RUN_FLAGS
from spinppo.utils.device import parse_device
from spinppo.utils.errors import OneLineParser, UserError
from spinppo.utils.mpi_tools import available_cores


def algo_function(name: str) -> Callable[..., Any]:
    """The training function ``spinppo.algos.<name>.<name>``."""
    return getattr(importlib.import_module(f"spinppo.algos.{name}"), name)


def check_algo_flags(name: str, config: dict[str, Any]) -> None:
    """``spinppo.algos.<name>.check_flags(config)``: the algorithm's own checks, without running it."""
    importlib.import_module(f"spinppo.algos.{name}").check_flags(config)


class Keyword(NamedTuple):
    """An algorithm keyword that is a flag: its default, the type its values have, its help text."""

    default: Any
    type: Any
    help: str | None


def algo_keywords(fn: Callable[..., Any]) -> dict[str, Keyword]:
    """``fn``'s keywords that are flags (all but ``NOT_FLAGS``), in signature order."""
    docs = arg_docs(fn)
    return {
        name: Keyword(p.default, keyword_type(fn, p), docs.get(name))
        for name, p in inspect.signature(fn).parameters.items()
        if name not in NOT_FLAGS
    }


def keyword_type(fn: Callable[..., Any], param: inspect.Parameter) -> Any:
    """The type ``param`` of ``fn`` is annotated with (``float | None``, ``list[int]``...), the string
    annotations of ``from __future__ import annotations`` evaluated in ``fn``'s module as
    ``typing.get_type_hints`` does; without an annotation, the type of its default (str for None)."""
    annotation = param.annotation
    if annotation is inspect.Parameter.empty:
        return str if param.default is None else type(param.default)
    if isinstance(annotation, str):
        # The source's own annotation, one keyword at a time: a keyword that is no flag (env_fn) may be
        # annotated with a name imported only for type checkers.
        annotation = eval(annotation, inspect.unwrap(fn).__globals__)
    return annotation


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

SCALARS = (bool, int, float, str)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "true or false values", int: "integers", float: "numbers", str: "strings"}


def parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0, on/off (any case)."""
    low = text.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise ValueError("expected true or false")


def without_none(tp: Any) -> tuple[Any, bool]:
    """(``tp`` without None, whether None is one of its values): ``float | None`` is (float, True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = tuple(a for a in args if a is not type(None))
        if len(rest) < len(args):
            return functools.reduce(operator.or_, rest), True
    return tp, False


def _sequence_items(tp: Any) -> tuple[Any, ...] | None:
    """The item types of ``list[X]`` / ``tuple[X, ...]`` (``(X,)``) or of ``tuple[X, Y]`` (``(X, Y)``), when
    every one is a scalar; None for any other type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and len(args) == 1:
        items = args
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = args[:1]
    elif origin is tuple and args:
        items = args
    else:
        return None
    return items if all(item in SCALARS for item in items) else None


def _parse_scalar(text: str, kind: Any) -> Any:
    if kind is bool:
        return parse_bool(text)
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if typing.get_origin(kind) is Literal:
        for choice in typing.get_args(kind):
            if text == str(choice):
                return choice
        raise ValueError(text)
    return text


def parse_values(flag: str, tokens: list[str], tp: Any) -> list[Any]:
    """The values ``tokens`` give the flag ``flag`` of type ``tp``; several values make a grid.

    - ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``: one value a token; a bare boolean is true.
    - ``X | None``: also ``none`` (any case) for None; a text flag takes only the exact ``None`` (what
      --print_config writes), so that ``--exp_name none`` is a name. ``bool | None`` also takes ``auto``.
    - ``list[int]``, ``tuple[int, ...]`` (any scalar items): the tokens are one value (``--hid 64 64``),
      or each bracketed token is one (``--hid [32,32] [64]``: a grid of two).
    - ``dict[str, ...]``: one value, JSON (``'{"a": 1}'``) or key=value pairs with JSON values.
    - anything else (``list[list[Any]]``): JSON, a value a token, or the tokens together as one value.
    """
    kind, optional = without_none(tp)
    if _sequence_items(kind) is not None:
        return _parse_sequence(flag, tokens, kind, optional)
    if typing.get_origin(kind) is dict:
        return [_parse_mapping(flag, tokens)]
    if not (kind in SCALARS or typing.get_origin(kind) is Literal):
        return _parse_json(flag, tokens, kind, optional)
    if kind is bool and not tokens:
        return [True]
    out = []
    for tok in tokens:
        try:
            if optional and (tok == "None" if kind is str else tok.lower() == "none"):
                out.append(None)
            elif optional and kind is bool and tok.lower() == "auto":
                out.append(None)
            else:
                out.append(_parse_scalar(tok, kind))
        except ValueError:
            if kind is bool and optional:
                name = "true, false or auto"
            elif typing.get_origin(kind) is Literal:
                name = "one of " + ", ".join(str(choice) for choice in typing.get_args(kind))
            else:
                name = _NAMES[kind]
            raise UserError(f"--{flag} takes {name}, not {tok!r}") from None
    return out


def _parse_sequence(flag: str, tokens: list[str], kind: Any, optional: bool) -> list[Any]:
    items = _sequence_items(kind)
    assert items is not None
    origin = typing.get_origin(kind)
    fixed = origin is tuple and typing.get_args(kind)[-1] is not Ellipsis

    def value(parts: list[str]) -> Any:
        if fixed and len(parts) != len(items):
            raise ValueError(f"{len(items)} items")
        return origin(_parse_scalar(p, items[i if fixed else 0]) for i, p in enumerate(parts))

    try:
        if any(t.startswith("[") or t.startswith("(") for t in tokens):
            out = []
            for tok in tokens:
                if optional and tok.lower() == "none":
                    out.append(None)
                else:
                    inner = tok.strip().lstrip("[(").rstrip("])").strip()
                    out.append(value([p for p in re.split(r"[\s,]+", inner) if p]))
            return out
        if optional and [t.lower() for t in tokens] == ["none"]:
            return [None]
        return [value(tokens)]
    except ValueError:
        kinds = _PLURALS[items[0]] if len(set(items)) == 1 else ", ".join(k.__name__ for k in items)
        raise UserError(
            f"--{flag} takes {kinds}, e.g. --{flag} 64 64 (several: a grid, --{flag} [32,32] [64,64]), "
            f"not {' '.join(tokens)!r}"
        ) from None


def _parse_mapping(flag: str, tokens: list[str]) -> dict[str, Any]:
    """JSON (``'{"ctrl_cost_weight": 0.01}'``) or key=value pairs with JSON values (strings may be bare)."""
    text = " ".join(tokens).strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--{flag} is not valid JSON ({e.msg}); or use key=value pairs") from None
        if not isinstance(value, dict):
            raise UserError(f"--{flag} must be a JSON object or key=value pairs")
        return value
    out: dict[str, Any] = {}
    for tok in tokens:
        key, sep, raw = tok.partition("=")
        if not sep or not key.isidentifier():
            raise UserError(f"--{flag} takes key=value pairs, not {tok!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# An example value for the error message of a flag whose value is JSON.
JSON_EXAMPLES = {"conv_filters": "'[[16,[4,4],2],[32,[4,4],2],[256,[11,11],1]]'"}


def _parse_json(flag: str, tokens: list[str], kind: Any, optional: bool) -> list[Any]:
    """Each token one JSON value (a grid), ``None`` for None; tokens that are one value only together (a
    list typed with spaces, unquoted) are that value. What the values mean is the algorithm's check."""
    container = typing.get_origin(kind) or kind
    container = container if isinstance(container, type) else object
    values: list[Any] = []
    try:
        for tok in tokens:
            values.append(None if optional and tok.lower() == "none" else json.loads(tok))
        if all(isinstance(v, container) or v is None for v in values):
            return values
    except json.JSONDecodeError:
        pass
    text = " ".join(tokens)
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as e:
        such_as = f"such as {JSON_EXAMPLES[flag]}" if flag in JSON_EXAMPLES else "(see --help)"
        raise UserError(f"--{flag} takes JSON {such_as}, not {text!r} ({e.msg})") from None


def fits(value: Any, tp: Any) -> bool:
    """Whether ``value``, read from JSON (a run's config.json), is a value of the type ``tp``: an int passes
    for a float, a list for a tuple; a bool is no number."""
    kind, optional = without_none(tp)
    if value is None:
        return optional
    origin = typing.get_origin(kind)
    if kind is Any:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is Literal:
        return value in typing.get_args(kind)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    return isinstance(value, kind) if isinstance(kind, type) else True


# -------------------------------------------------------------------------------------------- the parser


def _nargs(tp: Any) -> str:
    # A bare boolean flag (--datestamp) means true, as Spinning Up's users type it.
    return "*" if without_none(tp)[0] is bool else "+"


def build_parser(algo: str) -> tuple[OneLineParser, dict[str, Keyword]]:
    """The argparse parser for an algorithm, and its keywords that are flags (``algo_keywords``)."""
    fn = algo_function(algo)
    keywords = algo_keywords(fn)
    parser = OneLineParser(
        prog=f"python -m spinppo.run {algo}",
        usage=f"python -m spinppo.run {algo} --env ENV [--FLAG VALUE [VALUE ...]] ...",
        description=(fn.__doc__ or "").strip().splitlines()[0],
        epilog="Several values for one flag run a grid, e.g. --env Walker Hopper --seed 0 10 20.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    group = parser.add_argument_group("environment and run")
    for flag, spec in RUN_FLAGS.items():
        group.add_argument(
            f"--{flag}",
            nargs=_nargs(spec.type),
            default=spec.default,
            help=spec.help,
            metavar="V",
            # --config A --config B: both files (any other flag typed twice keeps its last value).
            action="extend" if flag == "config" else None,
        )
    group = parser.add_argument_group(f"{algo} (keywords of spinppo.algos.{algo}.{algo})")
    for name, kw in keywords.items():
        group.add_argument(f"--{name}", nargs=_nargs(kw.type), default=kw.default, help=kw.help, metavar="V")
    group = parser.add_argument_group("actor-critic (ac_kwargs)")
    for flag, ac in AC_FLAGS.items():
        group.add_argument(f"--{flag}", nargs=_nargs(ac.type), default=ac.default, help=ac.help, metavar="V")
    return parser, keywords


def parse_algo_args(algo: str, argv: Sequence[str]) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Parse an algorithm's command line into (grid: flag -> list of values, run options).

    The grid's keys are the algorithm's keywords, ``ac:FLAG`` for ``AC_FLAGS`` and ``env``; the options
    are ``RUN_FLAGS``' values and ``given`` (flag -> the tokens typed or read from a file), ``notes``,
    ``from_file`` (flag -> the file that set it) and a file's ``environment_parameters``.
    """
    parser, keywords = build_parser(algo)
    ns = vars(parser.parse_args(list(argv)))
    given = {k: v for k, v in ns.items() if isinstance(v, list)}  # flags the user typed come as lists
    extras: dict[str, Any] = {}
    from_file: dict[str, str] = {}  # flag -> the file that set it, for error messages
    if "config" in given:
        given, extras, from_file = merge_config_files(
            algo, given, set(keywords) | set(AC_FLAGS) | set(RUN_FLAGS)
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
    for name, kw in keywords.items():
        with file_named(name):
            grid[name] = parse_values(name, given[name], kw.type) if name in given else [kw.default]
    for flag, ac in AC_FLAGS.items():
        with file_named(flag):
            grid[f"ac:{flag}"] = parse_values(flag, given[flag], ac.type) if flag in given else [ac.default]
    options: dict[str, Any] = {"given": given, "notes": extras.get("notes", []), "from_file": from_file}
    options["environment_parameters"] = extras.get("environment_parameters")
    options["environment_parameters_file"] = extras.get("environment_parameters_file")
    if "resume" not in given and "env" not in given:
        raise UserError("the following arguments are required: --env (see python -m spinppo.run ppo --help)")
    grid["env"] = given.get("env", [])
    for flag, spec in RUN_FLAGS.items():
        if flag == "env":
            continue
        with file_named(flag):
            if flag not in given:
                options[flag] = spec.default
            elif flag == "config":
                options[flag] = list(given[flag])  # the files, in the order they apply
            elif flag == "cpu" and given[flag] == ["auto"]:
                options[flag] = available_cores()
            else:
                values = parse_values(flag, given[flag], spec.type)
                if len(values) != 1:
                    raise UserError(f"--{flag} takes one value, not {len(values)}")
                options[flag] = values[0]
    if options["behavior"] is None:  # an ML-Agents config names the behavior its settings are for
        options["behavior"] = extras.get("behavior")
    if options["cpu"] < 1:
        raise UserError(f"--cpu must be at least 1, not {options['cpu']}")
    from spinppo.envs.unity.launch import listen_host

    listen_host(options["unity_listen"])  # a bad address fails before any rank starts
    with file_named("device"):  # (its spelling; whether this host has the device: before ranks start)
        parse_device(options["device"])
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
    for pixel_scale in grid["ac:pixel_scale"]:
        check_ac_kwargs(pixel_scale=pixel_scale)
    for weight_init in grid["ac:weight_init"]:
        for encoder in grid["ac:encoder"]:
            check_ac_kwargs(weight_init=weight_init, encoder=encoder)
    return grid, options
