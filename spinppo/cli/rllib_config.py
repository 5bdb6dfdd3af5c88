"""RLlib tuned-example YAML (``rllib train -f pong-ppo.yaml``) as spinppo flags.

The file is read as ``rllib train -f`` reads it: ``NAME: {env, run, stop, config}`` (one experiment),
RLlib's defaults (Ray 2.x, the "old API stack" that the tuned examples were written for) for every key
of ``config`` the file leaves out, old and new key names alike (``num_workers`` and ``num_env_runners``,
``sgd_minibatch_size`` and ``minibatch_size``, ...). ``run`` chooses the algorithm: PPO, A2C, A3C and PG
(spinppo's VPG). Each key becomes the spinppo flag that means the same; docs/config.md has the table,
and says where a meaning differs. A key of Ray's own machinery that changes nothing in the training
(``framework``, ``log_level``...) is dropped with a one-line note; an algorithm spinppo lacks, a key that
would change training in a way spinppo cannot follow, and a key RLlib does not know are one-line errors
naming the key and the file. ``{grid_search: [...]}`` anywhere makes a grid, as ``rllib train`` does.

Loss scales, written in spinppo's flags: RLlib's PPO value loss is ``vf_loss_coeff * (V - R)^2``, where
spinppo's is ``vf_coef * 0.5 * (V - R)^2``, so ``vf_coef = 2 * vf_loss_coeff``; RLlib's A2C and A3C
take ``vf_loss_coeff * 0.5 * (V - R)^2`` where spinppo's take ``vf_coef * (V - R)^2``, so
``vf_coef = vf_loss_coeff / 2``. RLlib keeps the learning rate and
entropy bonus constant (``--anneal_lr false --anneal_ent false``), normalises PPO's advantages over the
batch and no rewards (``--norm_reward false``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from spinppo.utils.device import cuda_count
from spinppo.utils.errors import UserError

RUN_TO_ALGO = {"PPO": "ppo", "A2C": "a2c", "A3C": "a3c", "PG": "vpg"}
# RLlib algorithms spinppo does not have (a `run` naming one is an error that says so).
OTHER_RUNS = (
    "APEX",
    "APEX_DDPG",
    "APPO",
    "ARS",
    "BC",
    "CQL",
    "DDPG",
    "DDPPO",
    "DQN",
    "DreamerV3",
    "ES",
    "IMPALA",
    "MADDPG",
    "MARWIL",
    "QMIX",
    "R2D2",
    "SAC",
    "SimpleQ",
    "SlateQ",
    "TD3",
)

# RLlib's defaults (old API stack, Ray 2.x AlgorithmConfig and each algorithm's config class).
COMMON_DEFAULTS: dict[str, Any] = {
    "gamma": 0.99,
    "lr": 0.001,
    "num_workers": 0,
    "num_envs_per_worker": 1,
    "rollout_fragment_length": 200,
    "train_batch_size": 200,
    "grad_clip": None,
    "clip_rewards": None,
    "observation_filter": "NoFilter",
    "batch_mode": "truncate_episodes",
    "env_config": {},
    "seed": None,
    "lr_schedule": None,
    "model": {},
}
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "lr": 5e-5,
        "rollout_fragment_length": "auto",
        "train_batch_size": 4000,
        "use_critic": True,
        "use_gae": True,
        "lambda": 1.0,
        "use_kl_loss": True,
        "kl_coeff": 0.2,
        "kl_target": 0.01,
        "sgd_minibatch_size": 128,
        "num_sgd_iter": 30,
        "shuffle_sequences": True,
        "vf_loss_coeff": 1.0,
        "entropy_coeff": 0.0,
        "entropy_coeff_schedule": None,
        "clip_param": 0.3,
        "vf_clip_param": 10.0,
        "num_workers": 2,
    },
    "a3c": {
        "use_critic": True,
        "use_gae": True,
        "lambda": 1.0,
        "grad_clip": 40.0,
        "vf_loss_coeff": 0.5,
        "entropy_coeff": 0.01,
        "entropy_coeff_schedule": None,
        "sample_async": True,
        "num_workers": 2,
        "rollout_fragment_length": 10,
        "lr": 0.0001,
    },
    "vpg": {"lr": 0.0004, "rollout_fragment_length": "auto", "train_batch_size": 200},
}
ALGO_DEFAULTS["a2c"] = {
    **ALGO_DEFAULTS["a3c"],
    "microbatch_size": None,
    "rollout_fragment_length": "auto",
    "sample_async": False,
}
# RLlib's MODEL_DEFAULTS (the catalog's), for the keys spinppo reads; PPO overrides vf_share_layers.
MODEL_DEFAULTS: dict[str, Any] = {
    "fcnet_hiddens": [256, 256],
    "fcnet_activation": "tanh",
    "conv_filters": None,
    "conv_activation": "relu",
    "post_fcnet_hiddens": [],
    "post_fcnet_activation": "relu",
    "free_log_std": False,
    "no_final_linear": False,
    "vf_share_layers": True,
    "use_lstm": False,
    "max_seq_len": 20,
    "lstm_cell_size": 256,
    "lstm_use_prev_action": False,
    "lstm_use_prev_reward": False,
    "framestack": True,
    "dim": 84,
    "grayscale": False,
    "zero_mean": True,
    "custom_model": None,
    "custom_model_config": {},
    "custom_action_dist": None,
}
# New names (Ray 2.10+) for old ones: the file may use either.
NEW_NAMES = {
    "num_env_runners": "num_workers",
    "num_rollout_workers": "num_workers",
    "num_envs_per_env_runner": "num_envs_per_worker",
    "minibatch_size": "sgd_minibatch_size",
    "num_epochs": "num_sgd_iter",
    "lambda_": "lambda",
}
# Keys of Ray's own machinery: they change nothing in what is trained.
MACHINERY = (
    "framework",
    "eager_tracing",
    "log_level",
    "log_sys_usage",
    "enable_connectors",
    "num_cpus_per_worker",
    "num_cpus_per_env_runner",
    "num_cpus_for_driver",
    "num_cpus_for_main_process",
    "num_gpus_per_worker",
    "num_gpus_per_env_runner",
    "num_learners",
    "num_learner_workers",
    "min_time_s_per_iteration",
    "min_time_s_per_reporting",
    "min_sample_timesteps_per_iteration",
    "min_train_timesteps_per_iteration",
    "metrics_num_episodes_for_smoothing",
    "metrics_smoothing_episodes",
    "ignore_worker_failures",
    "recreate_failed_workers",
    "recreate_failed_env_runners",
    "restart_failed_sub_environments",
    "compress_observations",
    "remote_worker_envs",
    "create_env_on_driver",
    "sample_async",
    "simple_optimizer",
    "shuffle_sequences",
    "_disable_preprocessor_api",
    "_enable_new_api_stack",
    "_enable_rl_module_api",
    "_enable_learner_api",
    "enable_rl_module_and_learner",
    "enable_env_runner_and_connector_v2",
    "api_stack",
    "tf_session_args",
    "local_tf_session_args",
    "disable_env_checking",
    "callbacks",
    "logger_config",
)
# Top-level keys of an experiment (Ray Tune's), besides env, run, stop and config.
EXPERIMENT_KEYS = ("checkpoint_freq", "checkpoint_at_end", "local_dir", "storage_path", "num_samples")
# stop keys: timesteps (old and new names) and the mean training return.
STOP_TIMESTEPS = ("timesteps_total", "num_env_steps_sampled_lifetime", "num_env_steps_sampled")
STOP_RETURN = (
    "episode_reward_mean",
    "episode_return_mean",
    "env_runners/episode_return_mean",
    "sampler_results/episode_reward_mean",
)
ACTIVATIONS = {"tanh": "tanh", "relu": "relu", "elu": "elu", "swish": "silu", "silu": "silu", "gelu": "gelu"}


def is_rllib_file(doc: Any) -> bool:
    """Whether a parsed file is RLlib's ``NAME: {run: ..., ...}`` form."""
    return (
        isinstance(doc, dict)
        and len(doc) >= 1
        and all(isinstance(v, dict) and "run" in v for v in doc.values())
    )


def file_algo(doc: dict[str, Any], where: str) -> str:
    """The spinppo algorithm the file's ``run`` names (a UserError for one spinppo lacks)."""
    _, experiment = _experiment(doc, where)
    run = experiment["run"]
    if run in RUN_TO_ALGO:
        return RUN_TO_ALGO[run]
    if run in OTHER_RUNS or isinstance(run, str):
        raise UserError(
            f"{where}: run: {run}: spinppo trains {', '.join(RUN_TO_ALGO)} (PG is spinppo's vpg), not {run}"
        )
    raise UserError(f"{where}: run must name an algorithm such as PPO, not {run!r}")


def translate(doc: dict[str, Any], where: str, algo: str) -> tuple[dict[str, Any], list[str]]:
    """The spinppo flags (name to value; a list is a grid) an RLlib tuned example means, and notes to
    print. ``algo`` is the command typed; it must be the file's ``run``."""
    own = file_algo(doc, where)
    if own != algo:
        raise UserError(
            f"{where} trains {_experiment(doc, where)[1]['run']}: run it with python -m spinppo.run {own} "
            f"--config {where}, not {algo}"
        )
    _, experiment = _experiment(doc, where)
    variants = list(_grid_variants(experiment, where))
    notes: list[str] = []
    flags_by_variant = []
    for variant in variants:
        variant_notes: list[str] = []
        flags_by_variant.append(_experiment_flags(variant, where, algo, variant_notes))
        for note in variant_notes:
            if note not in notes:
                notes.append(note)
    return _merge_variants(flags_by_variant, where), notes


def _experiment(doc: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    if len(doc) != 1:
        raise UserError(
            f"{where} holds {len(doc)} experiments ({', '.join(map(str, doc))}): spinppo runs one a file; "
            "keep one"
        )
    name, experiment = next(iter(doc.items()))
    return str(name), experiment


def _grid_variants(node: Any, where: str, path: str = ""):
    """Every combination of the ``{grid_search: [...]}`` values in ``node`` (itself if none)."""
    if isinstance(node, dict):
        if set(node) == {"grid_search"}:
            values = node["grid_search"]
            if not isinstance(values, list) or not values:
                raise UserError(f"{where}: {path}.grid_search must be a non-empty list of values")
            for value in values:
                yield from _grid_variants(value, where, path)
            return
        keys = list(node)
        options = [list(_grid_variants(node[k], where, f"{path}.{k}".lstrip("."))) for k in keys]
        for combo in itertools.product(*options):
            yield dict(zip(keys, combo, strict=True))
    elif isinstance(node, list):
        options = [list(_grid_variants(v, where, path)) for v in node]
        for combo in itertools.product(*options):
            yield list(combo)
    else:
        yield node


def _merge_variants(variants: list[dict[str, Any]], where: str) -> dict[str, Any]:
    """One flag dict whose lists are spinppo's grid, when the variants are exactly that grid's product."""
    if len(variants) == 1:
        return variants[0]
    keys = list(variants[0])
    values: dict[str, Any] = {}
    for key in keys:
        distinct: list[Any] = []
        for variant in variants:
            if variant.get(key) not in distinct:
                distinct.append(variant.get(key))
        values[key] = distinct[0] if len(distinct) == 1 else distinct
    combos = math.prod(
        len(v) if isinstance(v, list) and _varies(key, v, variants) else 1 for key, v in values.items()
    )
    if combos != len(variants):
        raise UserError(
            f"{where}: a grid_search here changes several spinppo flags together "
            f"({', '.join(k for k, v in values.items() if _varies(k, v, variants))}); spinppo's grid is "
            "every combination of its flags' values: give the grid with spinppo's flags instead"
        )
    return values


def _varies(key: str, value: Any, variants: list[dict[str, Any]]) -> bool:
    return any(variant.get(key) != variants[0].get(key) for variant in variants)


def _experiment_flags(experiment: dict[str, Any], where: str, algo: str, notes: list[str]) -> dict[str, Any]:
    """The flags of one experiment without grid_search."""
    for key in experiment:
        if key not in ("env", "run", "stop", "config", *EXPERIMENT_KEYS):
            raise UserError(
                f"{where}: unknown experiment key {key!r} (rllib train -f files hold env, run, stop, config"
                f", {', '.join(EXPERIMENT_KEYS)})"
            )
    config = experiment.get("config") or {}
    if not isinstance(config, dict):
        raise UserError(f"{where}: config must be a mapping of RLlib settings")
    config = {NEW_NAMES.get(k, k): v for k, v in config.items()}
    env = experiment.get("env", config.pop("env", None))
    if not isinstance(env, str) or not env:
        raise UserError(f"{where}: env must name an environment, such as PongNoFrameskip-v4")
    settings = {**COMMON_DEFAULTS, **ALGO_DEFAULTS[algo]}
    known = set(settings) | set(MACHINERY) | {"num_gpus", "env", "preprocessor_pref"}
    for key in config:
        if key not in known:
            raise UserError(
                f"{where}: config.{key}: not an RLlib {experiment['run']} setting spinppo can follow "
                "(docs/config.md lists the keys it reads)"
            )
    settings.update(config)
    model_defaults = {**MODEL_DEFAULTS, "vf_share_layers": algo != "ppo"}
    model = settings.get("model") or {}
    if not isinstance(model, dict):
        raise UserError(f"{where}: config.model must be a mapping")
    for key in model:
        if key not in model_defaults:
            raise UserError(f"{where}: config.model.{key}: not a model setting spinppo can follow")
    model = {**model_defaults, **model}

    pref = config.pop("preprocessor_pref", "deepmind")
    if pref not in ("deepmind", "rllib", None):
        raise UserError(f"{where}: preprocessor_pref must be deepmind, rllib or null, not {pref!r}")
    if pref == "rllib":
        notes.append(
            f"{where}: preprocessor_pref: rllib: spinppo preprocesses Atari frames DeepMind's way (4 frames "
            "stacked, 4-frame skip, a lost life ends a training episode), not as RLlib: one cropped frame"
        )
    ignored = [k for k in config if k in MACHINERY]
    if ignored:
        notes.append(f"{where}: ignored Ray settings that change nothing in training: {', '.join(ignored)}")
    gpus = config.get("num_gpus")
    if gpus is not None and not (isinstance(gpus, (int, float)) and not isinstance(gpus, bool) and gpus >= 0):
        raise UserError(f"{where}: num_gpus must be a number of GPUs (0, 1, 0.5...), not {gpus!r}")

    values: dict[str, Any] = {}
    if gpus == 0:
        values["device"] = "cpu"
    elif gpus and cuda_count():  # spinppo's GPU rule: each rank on one (DD-PPO's), not RLlib's learner
        values["device"] = "cuda"
    elif gpus:  # a shipped file on a machine without CUDA still trains, as before
        notes.append(f"{where}: num_gpus {gpus}: no CUDA device on this host: spinppo trains on the CPU")
    image = _environment(env, settings, where, values, notes)
    values["seed"] = settings["seed"] if settings["seed"] is not None else 0
    values["cpu"] = max(1, _int(settings["num_workers"], where, "num_workers", 0))
    values["num_envs"] = _int(settings["num_envs_per_worker"], where, "num_envs_per_worker", 1)
    values["gamma"] = _float(settings["gamma"], where, "gamma")
    values["lr"] = _float(settings["lr"], where, "lr")
    if settings["grad_clip"] is not None:
        values["max_grad_norm"] = _float(settings["grad_clip"], where, "grad_clip")
    elif algo != "vpg":
        values["max_grad_norm"] = 0.0
    values["norm_reward"] = False
    values["tensorboard"] = True
    _lr_schedule(settings, where, values)
    _rewards(settings, where, image)
    _observation_filter(settings, where, values, image)
    if settings["batch_mode"] != "truncate_episodes":
        raise UserError(
            f"{where}: batch_mode: {settings['batch_mode']}: spinppo's rollouts have a fixed length "
            "(truncate_episodes)"
        )
    _model(model, where, values, image, notes)
    _algorithm(settings, where, algo, values, notes)
    if algo != "ppo" and values.pop("anneal_lr"):
        raise UserError(f"{where}: lr_schedule: spinppo's {algo} keeps its learning rate constant")
    if algo == "vpg":  # Spinning Up's VPG: a policy rate and a value function fitted beside it
        values["pi_lr"] = values.pop("lr")
        if "max_grad_norm" in values:
            raise UserError(f"{where}: grad_clip: spinppo's vpg does not clip gradients")
        values["lam"] = 1.0
        # RLlib's PG has no value function to share layers with; spinppo's VPG fits its value function
        # with its own optimiser, on its own trunk.
        values["shared_trunk"] = False
        notes.append(
            f"{where}: PG is spinppo's vpg, Spinning Up's: its advantages subtract a learned value "
            "baseline (lam 1: the return minus V), where RLlib's PG uses the return itself"
        )
    _stop(experiment.get("stop") or {}, where, values)
    if "epochs" not in values:
        notes.append(
            f"{where} has no stop: the run ends after --epochs (the algorithm's default unless given)"
        )
    if experiment.get("checkpoint_freq"):
        values["save_freq"] = _int(experiment["checkpoint_freq"], where, "checkpoint_freq", 1)
    for key in ("storage_path", "local_dir"):
        if experiment.get(key):
            values["data_dir"] = experiment[key]
    samples = experiment.get("num_samples", 1)
    if samples != 1:
        values["seed"] = [values["seed"] + 10 * i for i in range(_int(samples, where, "num_samples", 1))]
    return values


def _environment(
    env: str, settings: dict[str, Any], where: str, values: dict[str, Any], notes: list[str]
) -> bool:
    """``env`` and ``env_config`` as spinppo's ``--env`` and ``--env_kwargs``; True for an Atari game."""
    from spinppo.envs.atari import is_atari_id, register_ale

    env_config = settings["env_config"] or {}
    if not isinstance(env_config, dict):
        raise UserError(f"{where}: env_config must be a mapping of environment keywords")
    env_config = dict(env_config)
    if env.endswith(("Deterministic-v4", "Deterministic-v0")) and register_ale():
        # Gym's fixed 4-frame skip ids; ale-py 0.12 no longer registers them. The NoFrameskip id of the
        # same version is the same game and sticky-action setting, which spinppo then skips 4 frames.
        same = env.replace("Deterministic-", "NoFrameskip-")
        if is_atari_id(same):
            notes.append(
                f"{where}: env {env} is {same} with spinppo's 4-frame skip (max-pooling the last two)"
            )
            env = same
    atari = register_ale() and is_atari_id(env)
    if atari:
        if env_config.pop("nondeterministic", False):
            raise UserError(f"{where}: env_config.nondeterministic: true: spinppo's Atari games are seeded")
        skip = env_config.pop("frameskip", None)
        if skip not in (None, 1, 4):
            raise UserError(
                f"{where}: env_config.frameskip {skip}: spinppo's Atari preprocessing repeats each action "
                "for 4 frames (frameskip 1 or 4 here)"
            )
        if skip == 4:
            notes.append(
                f"{where}: env_config.frameskip 4: spinppo repeats each action 4 frames, pooling the last two"
            )
    values["env"], values["env_kwargs"] = env, env_config
    return atari


def _lr_schedule(settings: dict[str, Any], where: str, values: dict[str, Any]) -> None:
    """RLlib's ``lr_schedule`` ([[timestep, lr], ...], linear between points) where spinppo has it: a
    constant rate, or one that falls linearly to 0 at the run's last step (``--anneal_lr``)."""
    values["anneal_lr"] = False
    schedule = settings["lr_schedule"]
    if schedule is None:
        return
    try:
        points = [(float(t), float(lr)) for t, lr in schedule]
    except (TypeError, ValueError):
        raise UserError(f"{where}: lr_schedule must be a list of [timestep, lr] pairs") from None
    if not points:
        return
    if all(lr == points[0][1] for _, lr in points):
        values["lr"] = points[0][1]
        return
    if len(points) == 2 and points[0][0] == 0 and points[1][1] == 0:
        values["lr"] = points[0][1]
        values["anneal_lr"] = True
        values["_lr_zero_at"] = points[1][0]
        return
    raise UserError(
        f"{where}: lr_schedule {schedule}: spinppo's learning rate is constant or falls linearly to 0 at "
        "the last step ([[0, lr], [timesteps_total, 0]])"
    )


def _rewards(settings: dict[str, Any], where: str, image: bool) -> None:
    clip = settings["clip_rewards"]
    if image:  # DeepMind's preprocessing clips Atari rewards to their sign (clip_rewards None or True)
        if clip not in (None, True):
            raise UserError(
                f"{where}: clip_rewards: {clip}: spinppo's Atari training clips rewards to their sign "
                "(clip_rewards true)"
            )
    elif clip not in (None, False):
        raise UserError(f"{where}: clip_rewards: {clip}: spinppo clips the rewards of Atari games only")


def _observation_filter(settings: dict[str, Any], where: str, values: dict[str, Any], image: bool) -> None:
    obs_filter = settings["observation_filter"]
    if obs_filter not in ("NoFilter", "MeanStdFilter"):
        raise UserError(f"{where}: observation_filter must be NoFilter or MeanStdFilter, not {obs_filter!r}")
    if not image:  # images are never normalised with running statistics
        values["norm_obs"] = obs_filter == "MeanStdFilter"


def _model(model: dict[str, Any], where: str, values: dict[str, Any], image: bool, notes: list[str]) -> None:
    for key in ("custom_model", "custom_action_dist"):
        if model[key] is not None:
            raise UserError(f"{where}: model.{key}: spinppo builds its own networks (no custom models)")
    for key in ("lstm_use_prev_action", "lstm_use_prev_reward", "no_final_linear"):
        if model[key]:
            raise UserError(f"{where}: model.{key}: true is not supported")
    if model["free_log_std"]:
        raise UserError(f"{where}: model.free_log_std: true is spinppo's only Gaussian: drop the key")
    if image:
        dim = model["dim"]
        if dim not in (42, 84):
            raise UserError(f"{where}: model.dim {dim}: spinppo's Atari frames are 42 or 84 pixels")
        if not model["framestack"]:
            raise UserError(f"{where}: model.framestack: false: spinppo's Atari frames are stacked 4 deep")
        if not model["vf_share_layers"]:
            raise UserError(
                f"{where}: model.vf_share_layers: false (RLlib's default for PPO): spinppo's image networks "
                "share their convolutions between policy and value: set vf_share_layers: true"
            )
        values["frame_size"] = dim
        values["encoder"] = "rllib"
        values["conv_filters"] = model["conv_filters"]
        values["conv_activation"] = _activation(model["conv_activation"], where, "conv_activation")
        values["hid"] = list(model["post_fcnet_hiddens"])
        values["act"] = _activation(model["post_fcnet_activation"], where, "post_fcnet_activation")
        # vf_share_layers: the value head on the policy's last dense layer (none without post_fcnet_hiddens,
        # where the flag changes nothing and is left false, as runs made before it have it)
        values["shared_trunk"] = bool(model["post_fcnet_hiddens"])
        # grayscale and zero_mean: DeepMind's preprocessing (RLlib's default for Atari) ignores them too.
        # Not RLlib's: its VisionNetwork takes the frames' 0-255 values unscaled into Xavier-initialised
        # layers (--pixel_scale 1 --weight_init rllib). spinppo's network scales them to [0, 1] and starts
        # orthogonal: with RLlib's start its first policy is one fixed action and does not learn, and
        # unscaled pixels alone give its value head targets past vf_clip_param (docs/config.md).
    else:
        if model["conv_filters"] is not None:
            raise UserError(f"{where}: model.conv_filters: {values['env']} does not give images")
        values["hid"] = list(model["fcnet_hiddens"])
        values["act"] = _activation(model["fcnet_activation"], where, "fcnet_activation")
        values["shared_trunk"] = bool(model["vf_share_layers"])
        values["log_std_init"] = 0.0  # RLlib's Gaussian starts at a standard deviation of 1
        values["layer_norm"] = False
    values["memory_size"] = 0
    if model["use_lstm"]:
        values["memory_size"] = 2 * _int(model["lstm_cell_size"], where, "model.lstm_cell_size", 1)
        values["sequence_length"] = _int(model["max_seq_len"], where, "model.max_seq_len", 1)


def _algorithm(
    settings: dict[str, Any], where: str, algo: str, values: dict[str, Any], notes: list[str]
) -> None:
    if not settings.get("use_critic", True) or not settings.get("use_gae", True):
        raise UserError(
            f"{where}: use_critic/use_gae false: spinppo's {algo} always learns a value function with GAE"
        )
    if settings.get("entropy_coeff_schedule") is not None:
        raise UserError(
            f"{where}: entropy_coeff_schedule: spinppo's entropy bonus is constant or falls linearly to 0"
        )
    envs = values["num_envs"] * values["cpu"]
    fragment = settings["rollout_fragment_length"]
    if fragment != "auto":
        fragment = _int(fragment, where, "rollout_fragment_length", 1)
    if algo != "vpg":
        values["lam"] = _float(settings["lambda"], where, "lambda")
    if algo == "ppo":
        values["steps_per_epoch"] = _int(settings["train_batch_size"], where, "train_batch_size", 1)
        values["minibatch_size"] = _int(settings["sgd_minibatch_size"], where, "sgd_minibatch_size", 1)
        values["update_epochs"] = _int(settings["num_sgd_iter"], where, "num_sgd_iter", 1)
        values["clip_ratio"] = _float(settings["clip_param"], where, "clip_param")
        values["vf_coef"] = 2 * _float(settings["vf_loss_coeff"], where, "vf_loss_coeff")
        values["vf_clip_param"] = _float(settings["vf_clip_param"], where, "vf_clip_param")
        values["ent_coef"] = _float(settings["entropy_coeff"], where, "entropy_coeff")
        values["anneal_ent"] = False
        values["anneal_clip"] = False
        values["clip_vloss"] = False
        values["target_kl"] = None
        values["norm_adv"] = True
        values["kl_coeff"] = (
            _float(settings["kl_coeff"], where, "kl_coeff") if settings["use_kl_loss"] else 0.0
        )
        values["kl_target"] = _float(settings["kl_target"], where, "kl_target")
    elif algo in ("a2c", "a3c"):
        if fragment == "auto":  # RLlib: the train batch shared out over the workers' environments
            fragment = max(1, _int(settings["train_batch_size"], where, "train_batch_size", 1) // envs)
        values["n_steps"] = fragment
        values["steps_per_epoch"] = fragment * envs * max(1, math.ceil(4000 / (fragment * envs)))
        # RLlib's A2C/A3C value loss is 0.5 x the squared error, spinppo's the whole squared error.
        values["vf_coef"] = 0.5 * _float(settings["vf_loss_coeff"], where, "vf_loss_coeff")
        values["ent_coef"] = _float(settings["entropy_coeff"], where, "entropy_coeff")
        values["norm_adv"] = False
        if settings.get("microbatch_size"):
            raise UserError(f"{where}: microbatch_size: spinppo's A2C takes one gradient step per rollout")
    else:
        values["steps_per_epoch"] = _int(settings["train_batch_size"], where, "train_batch_size", 1)


def _stop(stop: Any, where: str, values: dict[str, Any]) -> None:
    """``stop`` as ``--epochs`` (timesteps or training iterations, an iteration being an epoch) and
    ``--stop_at_train_return`` (the mean return of the last 100 training episodes)."""
    if not isinstance(stop, dict):
        raise UserError(f"{where}: stop must be a mapping such as {{timesteps_total: 10000000}}")
    lr_zero_at = values.pop("_lr_zero_at", None)  # set by _lr_schedule: checked against the run's end
    for key, value in stop.items():
        if key in STOP_TIMESTEPS:
            steps = _int(value, where, f"stop.{key}", 1)
            values["epochs"] = max(1, math.ceil(steps / values["steps_per_epoch"]))
        elif key in STOP_RETURN:
            values["stop_at_train_return"] = _float(value, where, f"stop.{key}")
        elif key == "training_iteration":
            values["epochs"] = _int(value, where, "stop.training_iteration", 1)
        else:
            raise UserError(
                f"{where}: stop.{key}: spinppo stops at a number of timesteps ({STOP_TIMESTEPS[0]}), "
                f"iterations (training_iteration) or a mean training return ({STOP_RETURN[0]})"
            )
    if lr_zero_at is not None:
        last = values.get("epochs", 0) * values["steps_per_epoch"]
        if "epochs" not in values or abs(lr_zero_at - last) > values["steps_per_epoch"]:
            raise UserError(
                f"{where}: lr_schedule reaches 0 at step {lr_zero_at:g}, not at the run's end: spinppo's "
                "rate falls linearly to 0 at the last step (stop: timesteps_total)"
            )


def _activation(name: Any, where: str, key: str) -> str:
    if name not in ACTIVATIONS:
        raise UserError(f"{where}: model.{key} {name!r}: one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _int(value: Any, where: str, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise UserError(f"{where}: {key} must be a whole number, not {value!r}")
    if value < minimum:
        raise UserError(f"{where}: {key} must be at least {minimum}, not {value!r}")
    return int(value)


def _float(value: Any, where: str, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a number, not {value!r}")
    return float(value)
