"""The command line's flags that are not an algorithm's keywords: data only, no parsing.

``AC_FLAGS`` fill the actor-critic's ``ac_kwargs``; ``RUN_FLAGS`` say where and how to run. Each row holds
its default, the type of its values (as an annotation would say it, and parsed as ``flags.parse_values``
parses an algorithm keyword of that type) and its ``--help`` text. An algorithm's own keywords are read
from its signature by ``flags``; this module imports nothing of the command line, so that ``flags`` and
``config_file`` can both read it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

ALGOS = ("ppo", "vpg", "a2c", "a3c", "trpo", "npg")
# Keywords of an algorithm that are not flags: the command line builds them.
NOT_FLAGS = ("env_fn", "actor_critic", "ac_kwargs", "logger_kwargs")


class AcFlag(NamedTuple):
    """A flag that fills ``ac_kwargs[kwarg]``."""

    kwarg: str
    default: Any
    type: Any
    help: str


class RunFlag(NamedTuple):
    """A flag about where and how to run."""

    default: Any
    type: Any
    help: str


AC_FLAGS: dict[str, AcFlag] = {
    "hid": AcFlag(
        "hidden_sizes",
        (64, 64),
        tuple[int, ...],
        "hidden layer sizes, e.g. --hid 64 64 (a grid: --hid [32,32] [64,64])",
    ),
    "act": AcFlag("activation", "tanh", str, "activation: tanh, relu, elu, gelu, silu, leaky_relu"),
    "layer_norm": AcFlag(
        "layer_norm", False, bool, "LayerNorm after each hidden layer (ML-Agents-style nets)"
    ),
    "shared_trunk": AcFlag("shared_trunk", False, bool, "one trunk for policy and value instead of two"),
    "log_std_init": AcFlag(
        "log_std_init", -0.5, float, "initial log standard deviation of the Gaussian policy"
    ),
    "norm_obs": AcFlag(
        "norm_obs", True, bool, "normalise observations with running statistics merged over ranks"
    ),
    "encoder": AcFlag(
        "encoder",
        "nature_cnn",
        str,
        "image encoder: nature_cnn, simple or resnet (ML-Agents' vis_encode_type), or rllib (RLlib's "
        "VisionNetwork: --conv_filters, --conv_activation); vector observations ignore it",
    ),
    "conv_filters": AcFlag(
        "conv_filters",
        None,
        list[list[Any]] | None,  # a list of layers: JSON
        "--encoder rllib: its convolutions as RLlib's model.conv_filters, JSON, e.g. "
        "'[[32,[3,3],2],[32,[3,3],2],[32,[3,3],2],[32,[3,3],2]]' ([out_channels, [kernel_h, kernel_w], "
        "stride] each; 'same' padding but the last); None: RLlib's default for 42x42 or 84x84 images",
    ),
    "conv_activation": AcFlag(
        "conv_activation",
        "relu",
        str,
        "--encoder rllib: the activation after each convolution (RLlib's model.conv_activation): tanh, "
        "relu, elu, gelu, silu, leaky_relu",
    ),
    "pixel_scale": AcFlag(
        "pixel_scale",
        None,
        float | None,
        "what image pixels are multiplied by before the encoder; None: 1/255 for uint8 images (to [0, 1]), "
        "1 for float images; 1 feeds Atari frames' 0-255 values unscaled, as RLlib's networks take them",
    ),
    "weight_init": AcFlag(
        "weight_init",
        "orthogonal",
        str,
        "initial weights: orthogonal (CleanRL's layer_init) or rllib (RLlib's VisionNetwork: Xavier-uniform "
        "convolutions and logits, normc 0.01 value head, or Xavier with an LSTM; needs --encoder rllib)",
    ),
    "memory_size": AcFlag(
        "memory_size",
        0,
        int,
        "recurrent policy: an LSTM whose memory (hidden and cell state) has this many floats, even, e.g. "
        "128 (ML-Agents' memory_size); 0: no memory",
    ),
    "sequence_length": AcFlag(
        "sequence_length",
        64,
        int,
        "with --memory_size: steps per sequence the update backpropagates through (ML-Agents' name); "
        "when it does not divide each environment's rollout, the last sequence is padded and masked",
    ),
}

# One value each, except --env (several: a grid) and --config (several files, in order). A ``bool | None``
# flag is true, false or None (auto); bare (``--no_graphics``) it means true.
RUN_FLAGS: dict[str, RunFlag] = {
    "env": RunFlag(
        None,
        str,
        "environment: a gymnasium id, a short name (Walker, Hopper, CartPole...) or unity:PATH",
    ),
    "config": RunFlag(
        None,
        list[str],
        "read flags from a YAML/JSON file: spinppo's (keys are these flags), a run's config.json, or an "
        "ML-Agents trainer config; several files apply in order, each over the ones before; flags typed "
        "here override them",
    ),
    "print_config": RunFlag(
        False, bool, "print the complete resolved configuration as a --config file and exit"
    ),
    "behavior": RunFlag(
        None,
        str | None,
        "Unity: the behavior to train (and, in an ML-Agents config, whose settings to use)",
    ),
    "resume": RunFlag(
        None,
        str | None,
        "continue the run in this directory from its last checkpoint (other flags: as saved)",
    ),
    "env_kwargs": RunFlag(
        {},
        dict[str, Any],
        "environment keyword arguments as JSON or key=value pairs, e.g. forward_reward_weight=-1",
    ),
    "frame_size": RunFlag(
        None,
        int | None,
        "Atari: height and width of the grayscale frames, 84 (the default: DQN's, CleanRL's) or 42 (RLlib's "
        "dim: 42); saved with the run, so replay, evaluation and --resume make the same frames",
    ),
    "exp_name": RunFlag(None, str | None, "experiment name; ALGO-ENV when not given"),
    "data_dir": RunFlag(None, str | None, "where runs go; $SPINPPO_DATA_DIR or data/ when not given"),
    "datestamp": RunFlag(False, bool, "put a date and time in the run directory's name"),
    "overwrite": RunFlag(False, bool, "replace a run already in the run directory"),
    "cpu": RunFlag(
        1, int, "MPI ranks to start on this host (runs itself under mpirun); 'auto' for one per core"
    ),
    "device": RunFlag(
        "auto",
        str,
        "where each rank trains: cpu; cuda (GPU local rank mod GPU count, DD-PPO's rule) or cuda:N; auto: "
        "a GPU for image and recurrent policies when CUDA is present, else the CPU",
    ),
    "tensorboard": RunFlag(True, bool, "also write TensorBoard event files in the run directory"),
    "pictures": RunFlag(
        False,
        bool,
        "at the end, write the learning curve (curve.png) and a deterministic replay video (replay.mp4) "
        "into the run directory",
    ),
    "unity_file": RunFlag(
        None, str | None, "a Unity ML-Agents build to use for --env Walker (or set SPINPPO_UNITY_FILE)"
    ),
    "base_port": RunFlag(5005, int, "Unity: base port; rank r on a host uses worker_id r"),
    "time_scale": RunFlag(20.0, float, "Unity: simulation speed-up"),
    "no_graphics": RunFlag(
        None,
        bool | None,
        "Unity: true starts the player with -nographics -batchmode (cameras then render nothing), false "
        "with graphics (ML-Agents' default); auto (not given): without, unless the trained behavior has a "
        "camera",
    ),
    "unity_listen": RunFlag(
        "localhost",
        str,
        "Unity: the address the trainer's gRPC server listens on for its player: localhost (loopback only: "
        "the player spinppo starts on the rank's host), an address of this host, or 0.0.0.0 or :: for every "
        "interface (a player reached from elsewhere)",
    ),
}
