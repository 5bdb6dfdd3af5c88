"""ML-Agents trainer configs (``mlagents-learn Walker.yaml``) as spinppo's PPO flags.

The file is read as mlagents-learn (release 19/20, ``mlagents/trainers/settings.py``) reads it: one
behavior's settings, over ``default_settings``, with ML-Agents' defaults for every trainer key the file
leaves out. Each key becomes the spinppo flag that means the same (the table in docs/config.md, which
also says where a meaning differs). What spinppo does not do (curiosity, GAIL, RND, self-play, behavioral
cloning, SAC or POCA, visual encoders other than the default) and any key ML-Agents does not know
is a one-line error naming the key and the file: nothing is silently ignored. A trainer section's
``framework``, which ML-Agents itself drops with a deprecation warning, is dropped with a note.

``network_settings.memory`` (ML-Agents' recurrent policies) becomes ``--memory_size`` and
``--sequence_length``, with ML-Agents' defaults (memory_size 128, sequence_length 64 for a key the section
leaves out) and its checks (memory_size greater than 0 and even, sequence_length at most batch_size);
``memory`` null or absent is ``--memory_size 0``.

ML-Agents' PPO, written in spinppo's flags (its ``ppo/optimizer_torch.py`` and ``ppo/trainer.py``):
separate actor and critic networks with Swish activations (``--act silu``), a state-independent Gaussian
whose log standard deviation starts at 0, advantages normalised over the buffer, the value loss clipped
by epsilon and weighted 0.5 as ``0.5 * mean(max(...))`` (spinppo's ``vf_coef * 0.5 * mean(max(...))``
with ``vf_coef 1``), no gradient clipping, no reward scaling, no early stop on KL.
"""

from __future__ import annotations

import math
import os.path as osp
from collections.abc import Mapping
from typing import Any

from spinppo.utils.device import DEVICE_CHOICES, parse_device
from spinppo.utils.errors import UserError

# ML-Agents' defaults (release 20 settings.py and ppo/optimizer_torch.py PPOSettings).
TRAINER_DEFAULTS: dict[str, Any] = {
    "trainer_type": "ppo",
    "hyperparameters": {},
    "network_settings": {},
    "reward_signals": {"extrinsic": {}},
    "init_path": None,
    "keep_checkpoints": 5,
    "checkpoint_interval": 500000,
    "max_steps": 500000,
    "time_horizon": 64,
    "summary_freq": 50000,
    "threaded": False,
    "self_play": None,
    "behavioral_cloning": None,
}
HYPER_DEFAULTS: dict[str, Any] = {
    "batch_size": 1024,
    "buffer_size": 10240,
    "learning_rate": 3.0e-4,
    "learning_rate_schedule": "linear",
    "beta": 5.0e-3,
    "epsilon": 0.2,
    "lambd": 0.95,
    "num_epoch": 3,
    "shared_critic": False,
    "beta_schedule": None,  # ML-Agents: learning_rate_schedule's value
    "epsilon_schedule": None,  # likewise
}
NETWORK_DEFAULTS: dict[str, Any] = {
    "normalize": False,
    "hidden_units": 128,
    "num_layers": 2,
    "vis_encode_type": "simple",
    "memory": None,
    "goal_conditioning_type": "hyper",
    "deterministic": False,
}
# network_settings.memory: ML-Agents' NetworkSettings.MemorySettings (a section without a key gets these).
MEMORY_DEFAULTS: dict[str, Any] = {"sequence_length": 64, "memory_size": 128}
SIGNAL_DEFAULTS: dict[str, Any] = {"gamma": 0.99, "strength": 1.0, "network_settings": None}
ENV_SETTINGS = {
    "env_path": None,
    "env_args": None,
    "base_port": 5005,
    "num_envs": 1,
    "num_areas": 1,
    "seed": -1,
    "max_lifetime_restarts": 10,
    "restarts_rate_limit_n": 1,
    "restarts_rate_limit_period_s": 60,
}
ENGINE_SETTINGS = {
    "width": 84,
    "height": 84,
    "quality_level": 5,
    "time_scale": 20.0,
    "target_frame_rate": -1,
    "capture_frame_rate": 60,
    "no_graphics": False,
}
CHECKPOINT_SETTINGS = {
    "run_id": "ppo",
    "initialize_from": None,
    "load_model": False,
    "resume": False,
    "force": False,
    "train_model": False,
    "inference": False,
    "results_dir": "results",
}
# Top-level sections that make a file an ML-Agents trainer config (with environment_parameters and debug).
ML_AGENTS_SECTIONS = (
    "behaviors",
    "default_settings",
    "env_settings",
    "engine_settings",
    "checkpoint_settings",
    "torch_settings",
)
UNSUPPORTED_SIGNALS = {
    "curiosity": "curiosity (an intrinsic reward)",
    "gail": "GAIL (imitation from demonstrations)",
    "rnd": "RND (an intrinsic reward)",
}


def translate(
    doc: dict[str, Any], where: str, algo: str, behavior: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The spinppo flags (name to value) an ML-Agents trainer config means, and the extras:
    ``environment_parameters`` (checked), ``behavior`` (the behavior trained) and ``notes`` (lines to
    print). ``behavior`` picks one of several behaviors (``--behavior``)."""
    if algo != "ppo":
        raise UserError(
            f"{where} is an ML-Agents trainer config, which configures PPO: run python -m spinppo.run ppo "
            f"--config {where}"
        )
    known = set(ML_AGENTS_SECTIONS) | {"environment_parameters", "debug"}
    for key in doc:
        if key not in known:
            raise UserError(
                f"{where}: unknown top-level key {key!r} (ML-Agents knows {', '.join(sorted(known))})"
            )
    name, settings = _pick_behavior(doc, where, behavior)
    values: dict[str, Any] = {}
    notes: list[str] = []
    derived: dict[str, Any] = {}
    _trainer(settings, where, f"behaviors.{name}" if name else "default_settings", values, notes, derived)
    _env_settings(_section(doc, "env_settings", where), where, values)
    _engine_settings(_section(doc, "engine_settings", where), where, values)
    _checkpoint_settings(_section(doc, "checkpoint_settings", where), where, values, derived)
    torch_settings = _section(doc, "torch_settings", where)
    _known(torch_settings, {"device": None}, where, "torch_settings")
    device = torch_settings.get("device")
    if device is not None:  # (null: ML-Agents' own choice, a GPU when there is one; spinppo's auto)
        try:
            parse_device(device)
        except UserError:
            raise UserError(
                f"{where}: torch_settings.device {device!r}: spinppo trains on {DEVICE_CHOICES}"
            ) from None
        values["device"] = str(device)
    if doc.get("debug") not in (None, False):
        raise UserError(f"{where}: debug: {doc['debug']!r} is not supported (spinppo has no debug mode)")
    extras: dict[str, Any] = {"notes": notes, "behavior": name, "mlagents": derived}
    if doc.get("environment_parameters") is not None:
        from spinppo.envs.unity.params import check_environment_parameters

        extras["environment_parameters"] = check_environment_parameters(doc["environment_parameters"], where)
    return values, extras


def _pick_behavior(
    doc: dict[str, Any], where: str, behavior: str | None
) -> tuple[str | None, dict[str, Any]]:
    """(name, settings) of the behavior to train: its section over ``default_settings``."""
    behaviors = doc.get("behaviors") or {}
    if not isinstance(behaviors, dict):
        raise UserError(f"{where}: behaviors must map behavior names to their settings")
    defaults = doc.get("default_settings") or {}
    if not isinstance(defaults, dict):
        raise UserError(f"{where}: default_settings must be a mapping of trainer settings")
    if behavior is None:
        if len(behaviors) > 1:
            raise UserError(
                f"{where} has {len(behaviors)} behaviors ({', '.join(behaviors)}): choose one with "
                "--behavior NAME"
            )
        if not behaviors and not defaults:
            raise UserError(f"{where} has no behaviors and no default_settings: nothing to train")
        behavior = next(iter(behaviors), None)
    elif behavior not in behaviors and not defaults:
        raise UserError(
            f"--behavior {behavior}: {where} has no settings for it (it has "
            f"{', '.join(behaviors) or 'none'}) and no default_settings"
        )
    own = behaviors.get(behavior) if behavior is not None else {}
    if own is not None and not isinstance(own, dict):
        raise UserError(f"{where}: behaviors.{behavior} must be a mapping of trainer settings")
    settings: dict[str, Any] = {}
    _deep_update(settings, defaults)
    _deep_update(settings, own or {})
    return behavior, settings


def _deep_update(d: dict[str, Any], update: Mapping[str, Any]) -> None:
    """ML-Agents' deep_update_dict: nested mappings merge, anything else replaces."""
    for key, value in update.items():
        if key in d and isinstance(d[key], dict) and isinstance(value, Mapping):
            _deep_update(d[key], value)
        else:
            d[key] = dict(value) if isinstance(value, Mapping) else value


def _section(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: {key} must be a mapping, not {value!r}")
    return value


def _known(section: Mapping[str, Any], defaults: Mapping[str, Any], where: str, path: str) -> None:
    for key in section:
        if key not in defaults:
            raise UserError(
                f"{where}: unknown key {path}.{key} (ML-Agents' {path} has {', '.join(sorted(defaults))})"
            )


def _with_defaults(section: Any, defaults: Mapping[str, Any], where: str, path: str) -> dict[str, Any]:
    """A trainer section (None: empty) checked for unknown keys, over ML-Agents' ``defaults``."""
    section = section or {}
    if not isinstance(section, dict):
        raise UserError(f"{where}: {path} must be a mapping")
    _known(section, defaults, where, path)
    return {**defaults, **section}


def _number(value: Any, where: str, path: str, kind: type = float, minimum: float | None = None) -> Any:
    """``value`` as an int or float, else a UserError naming the key. Text that is a number (PyYAML reads
    ``3e-4`` as a string) counts, as ML-Agents' converters take it."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok or (minimum is not None and value < minimum):
        what = "a whole number" if kind is int else "a number"
        bound = f" of at least {minimum}" if minimum is not None else ""
        raise UserError(f"{where}: {path} must be {what}{bound}, not {value!r}")
    return kind(value)


def _bool(value: Any, where: str, path: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where}: {path} must be true or false, not {value!r}")
    return value


def _schedule(value: Any, where: str, path: str) -> bool:
    """True for ``linear``, False for ``constant``."""
    if value not in ("linear", "constant"):
        raise UserError(f"{where}: {path} must be linear or constant, not {value!r}")
    return value == "linear"


def _trainer(
    settings: dict[str, Any],
    where: str,
    path: str,
    values: dict[str, Any],
    notes: list[str],
    derived: dict[str, Any],
) -> None:
    """The flags of one behavior's trainer settings (``derived``: the file's step counts behind them)."""
    if "framework" in settings:
        # ML-Agents' TrainerSettings.structure drops it ("Framework option was deprecated but was
        # specified"): any value, in a behavior's section or default_settings. spinppo trains in PyTorch.
        settings = {key: value for key, value in settings.items() if key != "framework"}
        notes.append(f"{path}.framework is ignored (deprecated in ML-Agents, which trains with PyTorch only)")
    _known(settings, TRAINER_DEFAULTS, where, path)
    s = {**TRAINER_DEFAULTS, **settings}
    if s["trainer_type"] != "ppo":
        raise UserError(
            f"{where}: {path}.trainer_type {s['trainer_type']!r} is not supported: spinppo trains with ppo"
        )
    for key, what in (("self_play", "self-play"), ("behavioral_cloning", "behavioral cloning")):
        if s[key] is not None:
            raise UserError(f"{where}: {path}.{key}: {what} is not supported by spinppo; remove the section")

    hp = f"{path}.hyperparameters"
    h = _with_defaults(s["hyperparameters"], HYPER_DEFAULTS, where, hp)
    buffer_size = _number(h["buffer_size"], where, f"{hp}.buffer_size", int, 1)
    batch_size = _number(h["batch_size"], where, f"{hp}.batch_size", int, 1)
    lr_linear = _schedule(h["learning_rate_schedule"], where, f"{hp}.learning_rate_schedule")
    values["steps_per_epoch"] = buffer_size
    values["minibatch_size"] = batch_size
    values["lr"] = _number(h["learning_rate"], where, f"{hp}.learning_rate")
    values["anneal_lr"] = lr_linear
    values["ent_coef"] = _number(h["beta"], where, f"{hp}.beta")
    values["anneal_ent"] = (
        lr_linear
        if h["beta_schedule"] is None
        else _schedule(h["beta_schedule"], where, f"{hp}.beta_schedule")
    )
    values["clip_ratio"] = _number(h["epsilon"], where, f"{hp}.epsilon")
    values["anneal_clip"] = (
        lr_linear
        if h["epsilon_schedule"] is None
        else _schedule(h["epsilon_schedule"], where, f"{hp}.epsilon_schedule")
    )
    values["lam"] = _number(h["lambd"], where, f"{hp}.lambd")
    values["update_epochs"] = _number(h["num_epoch"], where, f"{hp}.num_epoch", int, 1)
    values["shared_trunk"] = _bool(h["shared_critic"], where, f"{hp}.shared_critic")

    net_path = f"{path}.network_settings"
    net = s["network_settings"] or {}
    n = _with_defaults(net, NETWORK_DEFAULTS, where, net_path)
    values["norm_obs"] = _bool(n["normalize"], where, f"{net_path}.normalize")
    units = _number(n["hidden_units"], where, f"{net_path}.hidden_units", int, 1)
    layers = _number(n["num_layers"], where, f"{net_path}.num_layers", int, 1)
    values["hid"] = [units] * layers
    values["memory_size"] = 0  # memory null or absent: no memory
    if n["memory"] is not None:
        mem = f"{net_path}.memory"
        if not isinstance(n["memory"], dict):  # memory: false would otherwise read as {} (128 floats)
            raise UserError(f"{where}: {mem} must be a mapping (memory_size, sequence_length) or null")
        m = _with_defaults(n["memory"], MEMORY_DEFAULTS, where, mem)
        memory_size = _number(m["memory_size"], where, f"{mem}.memory_size", int)
        if memory_size <= 0 or memory_size % 2:  # ML-Agents' MemorySettings validator
            raise UserError(
                f"{where}: {mem}.memory_size must be greater than 0 and divisible by 2 (the LSTM's hidden "
                f"and cell states, half each), not {memory_size}; for no memory remove memory"
            )
        sequence_length = _number(m["sequence_length"], where, f"{mem}.sequence_length", int, 1)
        if sequence_length > batch_size:  # ML-Agents' TrainerSettings validator
            raise UserError(
                f"{where}: {mem}.sequence_length {sequence_length} must be at most {hp}.batch_size "
                f"{batch_size}"
            )
        values["memory_size"] = memory_size
        values["sequence_length"] = sequence_length
    if n["vis_encode_type"] not in ("simple", "nature_cnn", "resnet"):
        raise UserError(
            f"{where}: {net_path}.vis_encode_type {n['vis_encode_type']!r} is not supported (spinppo has "
            "simple, nature_cnn and resnet)"
        )
    values["encoder"] = n["vis_encode_type"]  # vector observations ignore it
    if n["goal_conditioning_type"] not in ("hyper", "none"):
        raise UserError(f"{where}: {net_path}.goal_conditioning_type must be hyper or none")
    if n["goal_conditioning_type"] == "hyper" and "goal_conditioning_type" in net:
        notes.append(
            f"{net_path}.goal_conditioning_type hyper: spinppo has no hypernetwork; goal signals are "
            "observations"
        )
    if _bool(n["deterministic"], where, f"{net_path}.deterministic"):
        raise UserError(
            f"{where}: {net_path}.deterministic: true is not supported (spinppo samples while training; "
            "test_policy and export act deterministically)"
        )

    signals = s["reward_signals"] or {}
    if not isinstance(signals, dict):
        raise UserError(f"{where}: {path}.reward_signals must be a mapping")
    for key in signals:
        if key in UNSUPPORTED_SIGNALS:
            raise UserError(
                f"{where}: {path}.reward_signals.{key}: {UNSUPPORTED_SIGNALS[key]} is not supported by "
                "spinppo; remove it (extrinsic only)"
            )
        if key != "extrinsic":
            raise UserError(f"{where}: unknown reward signal {path}.reward_signals.{key}")
    if "extrinsic" not in signals:
        raise UserError(
            f"{where}: {path}.reward_signals has no extrinsic: spinppo learns the extrinsic reward"
        )
    e = _with_defaults(signals["extrinsic"], SIGNAL_DEFAULTS, where, f"{path}.reward_signals.extrinsic")
    values["gamma"] = _number(e["gamma"], where, f"{path}.reward_signals.extrinsic.gamma")
    values["reward_scale"] = _number(e["strength"], where, f"{path}.reward_signals.extrinsic.strength")

    max_steps = _number(s["max_steps"], where, f"{path}.max_steps", float, 1)
    values["epochs"] = max(1, math.ceil(max_steps / buffer_size))
    derived["max_steps"] = max_steps  # epochs and save_freq follow a --steps_per_epoch typed over the file
    values["time_horizon"] = _number(s["time_horizon"], where, f"{path}.time_horizon", int, 1)
    values["keep_checkpoints"] = _number(s["keep_checkpoints"], where, f"{path}.keep_checkpoints", int, 1)
    interval = _number(s["checkpoint_interval"], where, f"{path}.checkpoint_interval", int, 1)
    values["save_freq"] = max(1, round(interval / buffer_size))
    derived["checkpoint_interval"] = interval
    _number(s["summary_freq"], where, f"{path}.summary_freq", int, 1)
    if "summary_freq" in settings:
        notes.append(f"{path}.summary_freq: spinppo writes a row every epoch (every buffer_size steps)")
    if _bool(s["threaded"], where, f"{path}.threaded"):
        notes.append(f"{path}.threaded: spinppo updates between rollouts (as threaded: false)")
    if s["init_path"] is not None:
        values["initialize_from"] = str(s["init_path"])
    # What ML-Agents' PPO does that spinppo's defaults do differently (module docstring).
    values.update(
        ent_mean_over_dims=True,  # ML-Agents' Gaussian entropy is the mean over action dimensions
        act="silu",
        log_std_init=0.0,
        vf_coef=1.0,
        clip_vloss=True,
        max_grad_norm=0.0,
        norm_reward=False,
        norm_adv=True,
        target_kl=None,
    )


def _env_settings(section: dict[str, Any], where: str, values: dict[str, Any]) -> None:
    _known(section, ENV_SETTINGS, where, "env_settings")
    s = {**ENV_SETTINGS, **section}
    if s["env_path"] is not None:
        if not isinstance(s["env_path"], str) or not s["env_path"]:
            raise UserError(f"{where}: env_settings.env_path must be the path of a Unity build")
        values["env"] = "unity:" + s["env_path"]
    if s["env_args"] not in (None, []):
        raise UserError(
            f"{where}: env_settings.env_args is not supported (spinppo passes no arguments to the player)"
        )
    values["base_port"] = _number(s["base_port"], where, "env_settings.base_port", int, 1)
    num_envs = _number(s["num_envs"], where, "env_settings.num_envs", int, 1)
    if num_envs > 1:
        values["cpu"] = num_envs  # one player per rank: ML-Agents' num_envs players are spinppo's ranks
    if _number(s["num_areas"], where, "env_settings.num_areas", int, 1) != 1:
        raise UserError(f"{where}: env_settings.num_areas is not supported (set the areas in the build)")
    seed = _number(s["seed"], where, "env_settings.seed", int)
    if seed != -1:
        values["seed"] = seed  # -1 (ML-Agents: random) keeps spinppo's reproducible default seed
    for key in ("max_lifetime_restarts", "restarts_rate_limit_n", "restarts_rate_limit_period_s"):
        if key in section and section[key] != ENV_SETTINGS[key]:
            raise UserError(
                f"{where}: env_settings.{key}: spinppo does not restart a crashed player (a crash stops "
                "the run; resume it from its checkpoint); remove the key"
            )


def _engine_settings(section: dict[str, Any], where: str, values: dict[str, Any]) -> None:
    _known(section, ENGINE_SETTINGS, where, "engine_settings")
    for key in ("width", "height", "quality_level", "target_frame_rate", "capture_frame_rate"):
        if key in section and section[key] != ENGINE_SETTINGS[key]:
            raise UserError(
                f"{where}: engine_settings.{key} is not supported (spinppo sets only time_scale and "
                "no_graphics); remove it"
            )
    if "time_scale" in section:
        values["time_scale"] = _number(section["time_scale"], where, "engine_settings.time_scale", float)
    if "no_graphics" in section:
        values["no_graphics"] = _bool(section["no_graphics"], where, "engine_settings.no_graphics")


def _checkpoint_settings(
    section: dict[str, Any], where: str, values: dict[str, Any], derived: dict[str, Any]
) -> None:
    """run_id is the experiment name, results_dir the data directory; resume continues that run (its
    directory is made from the seed once the command line's flags are in: ``derived["resume"]``)."""
    from spinppo.utils.logx import default_data_dir

    _known(section, CHECKPOINT_SETTINGS, where, "checkpoint_settings")
    for key in ("load_model", "train_model", "inference"):
        if section.get(key):
            raise UserError(
                f"{where}: checkpoint_settings.{key} is not supported (use resume, or test_policy to watch "
                "a trained policy)"
            )
    run_id = section.get("run_id")
    if run_id is not None:
        values["exp_name"] = str(run_id)
    results_dir = section.get("results_dir")
    if results_dir is not None:
        results_dir = osp.expanduser(str(results_dir))
        values["data_dir"] = results_dir
    if _bool(section.get("force", False), where, "checkpoint_settings.force"):
        values["overwrite"] = True
    init = section.get("initialize_from")
    if init is not None:
        values["initialize_from"] = _run_of(str(init), results_dir or default_data_dir(), where)
    if _bool(section.get("resume", False), where, "checkpoint_settings.resume"):
        if run_id is None:
            raise UserError(f"{where}: checkpoint_settings.resume needs checkpoint_settings.run_id")
        derived["resume"] = (results_dir or default_data_dir(), str(run_id))
        for key in ("exp_name", "data_dir", "overwrite"):  # they name a new run; a resume stays in place
            values.pop(key, None)


def _run_of(run_id: str, results_dir: str, where: str) -> str:
    """The run directory ``initialize_from: RUN_ID`` means: a path as it is, else the one run under
    ``results_dir/RUN_ID``."""
    import glob

    if osp.exists(run_id):
        return run_id
    runs = sorted(
        osp.dirname(osp.dirname(m))
        for m in glob.glob(osp.join(results_dir, run_id, "*", "pyt_save", "model.pt"))
    )
    if len(runs) == 1:
        return runs[0]
    if not runs:
        raise UserError(
            f"{where}: checkpoint_settings.initialize_from {run_id!r}: no run of that name in {results_dir}"
        )
    raise UserError(
        f"{where}: checkpoint_settings.initialize_from {run_id!r} has {len(runs)} runs in {results_dir} "
        f"({', '.join(osp.basename(r) for r in runs)}): give one as --initialize_from RUN_DIR"
    )
