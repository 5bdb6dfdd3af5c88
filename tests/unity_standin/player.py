"""A stand-in for a Unity ML-Agents player: the real gRPC protocol, gymnasium bodies as the agents.

``mlagents_envs.environment.UnityEnvironment`` starts a gRPC server on ``base_port + worker_id`` and
launches its ``file_name`` with ``[-nographics -batchmode] --mlagents-port PORT [-logFile PATH]``. A build
written by ``build.py`` is a small executable script that runs this file with its configuration. Like
the C# side of ML-Agents (com.unity.ml-agents 2.x, communication version 1.5.0) it is the gRPC client of
``UnityToExternalProto.Exchange``:

1. it sends the academy's name, versions and capabilities and receives Python's seed and versions;
2. it sends an empty message, whose answer is Python's first command (a RESET);
3. from then on every answer is a command (RESET, STEP with one action per agent that asked for a
   decision, QUIT) plus side-channel bytes, and every request carries the agents' infos;
4. a header status other than 200 (Python's ``close()``) ends the player.

The academy advances "physics steps" (one step of each agent's gymnasium body) and talks to Python only
when some agent asks for a decision (every ``decision_period`` academy steps, as a DecisionRequester
does) or ends an episode. Between decisions an agent repeats its last action. An episode ends when the
body terminates (``done``) or after ``max_step`` physics steps (``done`` with ``max_step_reached``); the
agent then starts a new episode under a NEW id, and its first decision comes at the next decision step.
Brain parameters go with the first infos of each behavior, as Unity sends them.

Side channels: the EngineConfigurationChannel's time scale paces the academy (``fixed_dt`` seconds of
simulated time per physics step, at most ``time_scale`` times real time). The EnvironmentParametersChannel
works as com.unity.ml-agents' does: a float parameter or a sampler (uniform, gaussian, multirangeuniform,
each with its seed) replaces the parameter's value function, and every read of the parameter calls it, so
a sampler gives a new value at each read (and a sampler received again starts its sequence again from its
seed). The stand-in's "game" reads every parameter it has received when an agent's episode begins (as
OnEpisodeBegin does): ``reward_scale`` multiplies the episode's rewards and ``gravity`` sets the MuJoCo
model's or CartPole's. Everything received, and each episode's values (``episode ID behavior NAME lineage
L parameters {JSON}``), is written to the log file, which is how tests see what arrived. The samplers draw
from Python's ``random.Random(seed)``, not C#'s ``System.Random``: same distributions, other numbers.

Visual observations (``visual``): a camera sensor after the vector ones, HxWxC floats in [0, 1] sent as
float data or, with ``png``, PNG-compressed as Unity's CameraSensor sends them by default (RGB; one channel
goes as equal R, G and B, which mlagents_envs averages back). What it shows depends on the task: "side"
draws the square whose side the agent must name (the only place that says it), "script" fills channel c
with the agent's c-th observation (lineage, id, episode step) / 255 (mod 256) so that tests can tell whose
image a slot shows, the other tasks show a flat 0.5. Under ``-nographics`` the camera renders nothing, as
Unity's do: every image is black (zeros).

Configuration (JSON, ``--standin-config FILE`` or the STANDIN_CONFIG variable) — see DEFAULTS.
"""

from __future__ import annotations

import json
import os
import random
import struct
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# gRPC's C core logs a GOAWAY line to stderr when Python closes the connection; that is no news here.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

# Only the message modules: mlagents_envs.envs and .registry reach the internet when imported.
from mlagents_envs.communicator_objects.brain_parameters_pb2 import ActionSpecProto, BrainParametersProto
from mlagents_envs.communicator_objects.capabilities_pb2 import UnityRLCapabilitiesProto
from mlagents_envs.communicator_objects.command_pb2 import QUIT, RESET
from mlagents_envs.communicator_objects.header_pb2 import HeaderProto
from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
from mlagents_envs.communicator_objects.unity_rl_initialization_output_pb2 import (
    UnityRLInitializationOutputProto,
)
from mlagents_envs.side_channel.incoming_message import IncomingMessage

DEFAULTS: dict[str, Any] = {
    # pendulum | hopper | walker | cartpole | script (deterministic, for tests) | side (a bright square
    # on the left or right of the camera's image, drawn anew every physics step; discrete action 0 left,
    # 1 right earns 1 when it names the side shown at the decision, else 0; episodes of 10 steps end
    # terminated; the vector observation is only [episode step / 10]: the side is in the image alone)
    "task": "pendulum",
    "agents": 4,  # agents of the main behavior after each reset
    "behavior_name": "StandIn",
    "decision_period": 5,  # academy steps between decisions (DecisionRequester.DecisionPeriod)
    "max_step": 1000,  # physics steps per episode before an interruption (Agent.MaxStep); 0: none
    "obs_pad": 0,  # extra observations (zeros, a second sensor), e.g. to mimic Walker's 243
    "act_pad": 0,  # extra continuous actions, ignored, e.g. to mimic Walker's 39
    "branches": [2],  # cartpole: discrete branch sizes; the first drives the cart, the rest are ignored
    "hybrid": False,  # add a discrete branch (continuous tasks) or a continuous action (cartpole)
    # add a camera observation: true (8x8x3) or {"height": H, "width": W, "channels": C, "png": bool}
    # (defaults 8, 8, 3, false; png takes 1 or 3 channels)
    "visual": False,
    "second_behavior": False,  # a second behavior with one agent: true (named "Spectator") or its name
    "communication_version": "1.5.0",
    "package_version": "2.2.1-exp.1",
    "hang": None,  # "init": never connect; N: stop answering after N exchanges
    "fixed_dt": 0.02,  # simulated seconds per physics step (Unity's fixedDeltaTime)
    "first_id": 0,  # the first agent (episode) id
    # task "script": observations [lineage, id] + [episode step, action]; reward per physics step is
    # reward_scale * action; lineage i's episode k terminates after lengths[i][k] physics steps (no entry:
    # only max_step ends it); vanish {lineage: academy step}: the agent disappears without a terminal
    # info; spawn [academy step, ...]: a new lineage appears; periods [per lineage]: its decision period.
    "script": {},
}

ENGINE_CHANNEL = uuid.UUID("e951342c-4f7e-11ea-b238-784f4387d1f7")
PARAMETERS_CHANNEL = uuid.UUID("534c891e-810f-11ea-a9d0-822485860400")
ENGINE_FIELDS = {0: "screen_resolution", 1: "quality_level", 2: "time_scale", 3: "target_frame_rate"}


class Log:
    """Unity's -logFile: one line per event, flushed at once so that a killed player leaves its log."""

    def __init__(self, path: str | None) -> None:
        self.file = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115

    def __call__(self, line: str) -> None:
        self.file.write(f"standin: {line}\n")
        self.file.flush()


class Body:
    """One agent's simulated body: a gymnasium environment with Unity-style [-1, 1] actions."""

    GYM_IDS = {"pendulum": "InvertedPendulum-v5", "hopper": "Hopper-v5", "walker": "Walker2d-v5"}

    def __init__(self, task: str, cfg: dict[str, Any]) -> None:
        import gymnasium as gym

        self.task = task
        if task == "cartpole":
            self.env = gym.make("CartPole-v1").unwrapped  # no TimeLimit: max_step interrupts instead
            self.num_continuous, self.branches = 0, list(cfg["branches"])
            if cfg["hybrid"]:
                self.num_continuous = 1
        else:
            self.env = gym.make(self.GYM_IDS[task]).unwrapped
            space = self.env.action_space
            self.low, self.high = space.low, space.high
            self.num_continuous = space.shape[0] + cfg["act_pad"]
            self.branches = [2] if cfg["hybrid"] else []
        self.obs_dim = self.env.observation_space.shape[0]

    def reset(self, seed: int | None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, np.float32)

    def step(self, cont: np.ndarray, disc: np.ndarray) -> tuple[np.ndarray, float, bool]:
        if self.task == "cartpole":
            action = int(disc[0])
        else:
            n = self.low.shape[0]
            # Unity agents get actions in [-1, 1]; map them onto the body's own range.
            action = self.low + (np.clip(cont[:n], -1, 1) + 1) * 0.5 * (self.high - self.low)
        obs, reward, terminated, _, _ = self.env.step(action)
        return np.asarray(obs, np.float32), float(reward), bool(terminated)

    def set_gravity(self, g: float) -> None:
        if self.task == "cartpole":
            self.env.gravity = abs(g)
        else:
            self.env.model.opt.gravity[2] = g


class ScriptBody:
    """The deterministic body of task "script": it counts steps and echoes the action it applies."""

    obs_dim = 4
    num_continuous = 1
    branches: list[int] = []

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.num_continuous = 1 + cfg["act_pad"]
        self.lengths: list[list[int]] = cfg["script"].get("lengths", [])
        self.agent: Agent | None = None

    def reset(self, seed: int | None) -> np.ndarray:
        return self._obs(0.0)

    def _obs(self, a: float) -> np.ndarray:
        ag = self.agent
        return np.array([ag.lineage, ag.id, ag.ep_step, a], np.float32)

    def step(self, cont: np.ndarray, disc: np.ndarray) -> tuple[np.ndarray, float, bool]:
        ag = self.agent
        a = float(cont[0])
        lengths = self.lengths[ag.lineage] if ag.lineage < len(self.lengths) else []
        ends = ag.episode < len(lengths) and ag.ep_step + 1 >= lengths[ag.episode]
        # The agent's ep_step is incremented by the academy after this call; report the new count.
        obs = np.array([ag.lineage, ag.id, ag.ep_step + 1, a], np.float32)
        return obs, a, ends

    def set_gravity(self, g: float) -> None:
        pass


class SideBody:
    """Task "side": name the side (0 left, 1 right) of the square in the image; see DEFAULTS."""

    obs_dim = 1
    num_continuous = 0
    branches = [2]
    length = 10

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.side, self.row, self.t = 0, 0.0, 0

    def _draw(self) -> None:
        self.side, self.row = int(self.rng.integers(2)), float(self.rng.random())

    def reset(self, seed: int | None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t = 0
        self._draw()
        return np.array([0.0], np.float32)

    def step(self, cont: np.ndarray, disc: np.ndarray) -> tuple[np.ndarray, float, bool]:
        reward = float(int(disc[0]) == self.side)
        self.t += 1
        self._draw()
        return np.array([self.t / self.length], np.float32), reward, self.t >= self.length

    def image(self, h: int, w: int, c: int) -> np.ndarray:
        """A dark HxWxC image with a bright square of side min(h, w) // 3 in the half to name."""
        img = np.zeros((h, w, c), np.float32)
        size = max(1, min(h, w) // 3)
        top = int(self.row * (h - size + 1))
        left = 1 if self.side == 0 else w - size - 1
        img[top : top + size, max(left, 0) : max(left, 0) + size] = 1.0
        return img

    def set_gravity(self, g: float) -> None:
        pass


class Agent:
    """A Unity Agent: a lineage (one GameObject) whose episodes each carry a new id."""

    def __init__(self, behavior: str, lineage: int, body: Body | ScriptBody | SideBody, period: int) -> None:
        self.behavior, self.lineage, self.body, self.period = behavior, lineage, body, period
        self.reward_scale = 1.0  # read from the environment parameters at each episode's start
        self.id = -1
        self.episode = -1
        self.ep_step = 0
        self.reward = 0.0
        self.cont = np.zeros(body.num_continuous, np.float32)
        self.disc = np.zeros(len(body.branches), np.int32)
        self.obs = np.zeros(body.obs_dim, np.float32)

    def begin(self, agent_id: int, seed: int | None) -> None:
        """A new episode: a new id, a reset body, no action yet (Unity clears stored actions)."""
        self.id, self.episode, self.ep_step, self.reward = agent_id, self.episode + 1, 0, 0.0
        self.cont[:] = 0
        self.disc[:] = 0
        if isinstance(self.body, ScriptBody):
            self.body.agent = self
        self.obs = self.body.reset(seed)


class Academy:
    """The scene: behaviors of agents, stepped a physics step at a time."""

    def __init__(self, cfg: dict[str, Any], seed: int, log: Log) -> None:
        self.cfg, self.seed, self.log = cfg, seed, log
        self.script = cfg["script"] if cfg["task"] == "script" else {}
        # Environment parameters: name -> the function each read calls (Unity's m_Parameters).
        self.parameters: dict[str, Callable[[], float]] = {}
        self.next_id = cfg["first_id"]
        second = cfg["second_behavior"]
        self.names = [cfg["behavior_name"]] + (
            [second if isinstance(second, str) else "Spectator"] if second else []
        )
        self.agents: dict[str, list[Agent]] = {n: [] for n in self.names}
        self.pending: dict[str, list[Agent]] = {n: [] for n in self.names}  # asked for a decision
        self.bodies: dict[tuple[str, int], Body | ScriptBody | SideBody] = {}
        self.sent_brains: set[str] = set()
        self.step_count = 0
        self.just_reset = False
        self.lineages = 0

    def _body(self, name: str, lineage: int) -> Body | ScriptBody | SideBody:
        key = (name, lineage)
        if key not in self.bodies:  # bodies persist across resets, like a scene's GameObjects
            task = self.cfg["task"]
            if task == "script":
                self.bodies[key] = ScriptBody(self.cfg)
            elif task == "side":
                self.bodies[key] = SideBody()
            else:
                self.bodies[key] = Body(task, self.cfg)
        return self.bodies[key]

    def _new_agent(self, name: str, lineage: int) -> Agent:
        periods = self.script.get("periods", [])
        period = periods[lineage] if lineage < len(periods) else self.cfg["decision_period"]
        agent = Agent(name, lineage, self._body(name, lineage), period)
        self._begin(agent)
        return agent

    def _begin(self, agent: Agent) -> None:
        # Each body's first episode is seeded from Python's seed; later ones continue its generator.
        seed = self.seed * 1000 + agent.lineage if agent.episode < 0 else None
        agent.begin(self.next_id, seed)
        self.next_id += 1
        if self.parameters:  # OnEpisodeBegin: the game reads its parameters, a sampler draws anew
            values = {key: read() for key, read in self.parameters.items()}
            agent.reward_scale = values.get("reward_scale", 1.0)
            if "gravity" in values:
                agent.body.set_gravity(values["gravity"])
            self.log(
                f"episode {agent.id} behavior {agent.behavior} lineage {agent.lineage} "
                f"parameters {json.dumps(values)}"
            )

    def reset(self) -> None:
        self.step_count = 0
        self.just_reset = True
        self.pending = {n: [] for n in self.names}
        self.agents = {n: [] for n in self.names}
        for lineage in range(self.cfg["agents"]):
            self.agents[self.names[0]].append(self._new_agent(self.names[0], lineage))
        self.lineages = self.cfg["agents"]
        if len(self.names) > 1:
            self.agents[self.names[1]].append(self._new_agent(self.names[1], 0))
        self.log(f"reset: {self.cfg['agents']} agents, ids {[a.id for a in self.agents[self.names[0]]]}")

    def set_parameter(self, key: str, value: float) -> None:
        """A float parameter: every read returns ``value``."""
        self.log(f"environment parameter {key}={value:g}")
        self.parameters[key] = lambda: value

    def set_sampler(self, key: str, kind: int, seed: int, numbers: list[float]) -> None:
        """A sampler (SamplerFactory): a new generator from ``seed``, drawn from at every read."""
        rng = random.Random(seed)
        read: Callable[[], float]
        if kind == 0:
            low, high = numbers
            described = {"sampler_type": "uniform", "min_value": low, "max_value": high}
            read = lambda: low + rng.random() * (high - low)  # noqa: E731
        elif kind == 1:
            mean, st_dev = numbers
            described = {"sampler_type": "gaussian", "mean": mean, "st_dev": st_dev}
            read = lambda: rng.gauss(mean, st_dev)  # noqa: E731
        elif kind == 2:
            intervals = [numbers[i : i + 2] for i in range(0, len(numbers), 2)]
            described = {"sampler_type": "multirangeuniform", "intervals": intervals}
            sizes = [high - low for low, high in intervals]
            pick = random.Random(seed + 1)  # Unity picks the interval with a second generator, seed + 1

            def read() -> float:
                low, high = pick.choices(intervals, weights=sizes)[0]
                return low + rng.random() * (high - low)
        else:
            self.log(f"environment parameter {key}: unknown sampler type {kind} ignored")
            return
        self.log(f"environment parameter {key} sampler {json.dumps({**described, 'seed': seed})}")
        self.parameters[key] = read

    def apply_actions(self, agent_actions: Any) -> None:
        """STEP: the actions answer, in order, the agents that asked for a decision."""
        for name in self.names:
            actions = agent_actions[name].value if name in agent_actions else []
            pending = self.pending[name]
            if len(actions) == 0:
                continue
            if len(actions) != len(pending):
                raise RuntimeError(f"{name}: {len(actions)} actions for {len(pending)} decisions")
            for agent, action in zip(pending, actions):
                if agent.cont.size:
                    agent.cont[:] = np.asarray(action.continuous_actions, np.float32)
                if agent.disc.size:
                    agent.disc[:] = np.asarray(action.discrete_actions, np.int32)

    def advance(self) -> bytes:
        """Run physics steps until some agent asks for a decision or ends, and return the infos."""
        infos: dict[str, list[bytes]] = {n: [] for n in self.names}
        pending: dict[str, list[Agent]] = {n: [] for n in self.names}
        if self.just_reset:  # decisions at academy step 0, before any physics
            self._decisions(infos, pending)
            self.just_reset = False
        while not any(infos.values()):
            self._physics_step(infos)
            self.step_count += 1
            self._events()
            self._decisions(infos, pending)
        self.pending = pending
        return self._output(infos)

    def _physics_step(self, infos: dict[str, list[bytes]]) -> None:
        max_step = self.cfg["max_step"]
        for name in self.names:
            for agent in self.agents[name]:
                agent.obs, r, terminated = agent.body.step(agent.cont, agent.disc)
                agent.reward += r * agent.reward_scale
                agent.ep_step += 1
                interrupted = not terminated and 0 < max_step <= agent.ep_step
                if terminated or interrupted:
                    # EndEpisode: the terminal info goes out at the next exchange, then a new episode.
                    infos[name].append(self._info(agent, done=True, max_step_reached=interrupted))
                    self._begin(agent)

    def _events(self) -> None:
        """Scripted disappearances (no terminal info) and new lineages."""
        main = self.names[0]
        for lineage, at in self.script.get("vanish", {}).items():
            if at == self.step_count:
                gone = [a for a in self.agents[main] if a.lineage == int(lineage)]
                self.agents[main] = [a for a in self.agents[main] if a.lineage != int(lineage)]
                self.log(f"agent {[a.id for a in gone]} vanished at step {self.step_count}")
        for at in self.script.get("spawn", []):
            if at == self.step_count:
                agent = self._new_agent(main, self.lineages)
                self.lineages += 1
                self.agents[main].append(agent)
                self.log(f"agent {agent.id} spawned at step {self.step_count}")

    def _decisions(self, infos: dict[str, list[bytes]], pending: dict[str, list[Agent]]) -> None:
        for name in self.names:
            for agent in self.agents[name]:
                if self.step_count % agent.period == 0:
                    infos[name].append(self._info(agent, done=False, max_step_reached=False))
                    pending[name].append(agent)

    def _info(self, agent: Agent, done: bool, max_step_reached: bool) -> bytes:
        info = encode_agent_info(agent.reward, done, max_step_reached, agent.id, self._observations(agent))
        agent.reward = 0.0
        return info

    def _observations(self, agent: Agent) -> list[tuple[str, list[int], np.ndarray]]:
        obs = agent.obs
        if self.cfg["task"] == "script":  # two sensors, so that Python has to concatenate them
            sensors = [("Identity", [2], obs[:2]), ("Progress", [2], obs[2:])]
        else:
            sensors = [("Body", [len(obs)], obs)]
        if self.cfg["obs_pad"]:
            sensors.append(("Padding", [self.cfg["obs_pad"]], np.zeros(self.cfg["obs_pad"], np.float32)))
        if self.cfg["visual"]:
            sensors.append(self._camera(agent))
        return sensors

    def _camera(self, agent: Agent) -> tuple[str, list[int], Any]:
        """The camera sensor: (name, [H, W, C], floats in HWC order or PNG bytes); see the module doc."""
        visual = self.cfg["visual"] if isinstance(self.cfg["visual"], dict) else {}
        h, w, c = visual.get("height", 8), visual.get("width", 8), visual.get("channels", 3)
        if not self.cfg["rendering"]:  # -nographics: Unity's cameras render nothing
            img = np.zeros((h, w, c), np.float32)
        elif isinstance(agent.body, SideBody):
            img = agent.body.image(h, w, c)
        elif self.cfg["task"] == "script":
            img = np.zeros((h, w, c), np.float32)
            for ch in range(min(c, 3)):
                img[..., ch] = (int(agent.obs[ch]) % 256) / 255.0
        else:
            img = np.full((h, w, c), 0.5, np.float32)
        if not visual.get("png"):
            return ("Camera", [h, w, c], img.reshape(-1))
        from io import BytesIO

        from PIL import Image

        pixels = np.rint(img * 255).astype(np.uint8)
        if c == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        elif c != 3:
            raise SystemExit(f"standin: png takes 1 or 3 channels, not {c}")
        out = BytesIO()
        Image.fromarray(pixels, "RGB").save(out, format="PNG")
        return ("Camera", [h, w, c], out.getvalue())

    def _brain(self, name: str) -> BrainParametersProto:
        body = self.agents[name][0].body
        spec = ActionSpecProto(
            num_continuous_actions=body.num_continuous,
            num_discrete_actions=len(body.branches),
            discrete_branch_sizes=body.branches,
        )
        return BrainParametersProto(brain_name=name, is_training=True, action_spec=spec)

    def _output(self, infos: dict[str, list[bytes]]) -> bytes:
        """The UnityMessageProto (status 200) carrying these infos and any brain parameters not yet sent."""
        init = UnityRLInitializationOutputProto()
        for name, values in infos.items():
            if values and name not in self.sent_brains:
                init.brain_parameters.append(self._brain(name))
                self.sent_brains.add(name)
        return encode_output(infos, init.SerializeToString())


# Wire encoding of the messages sent at every exchange. Unity's C# protobuf is fast; Python's pure-Python
# protobuf 3.20 is not, and building the infos with it would make the stand-in, not the protocol, the cost
# measured by scripts/bench_unity.py. Field numbers are those of mlagents_envs' .proto files (proto3:
# repeated scalars packed); tests/test_unity.py checks the result against the protobuf classes.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_agent_info(
    reward: float,
    done: bool,
    max_step_reached: bool,
    agent_id: int,
    sensors: list[tuple[str, list[int], Any]],
) -> bytes:
    """An AgentInfoProto: reward=7 (float), done=8, max_step_reached=9, id=10, observations=13. A sensor's
    values are floats, or bytes: a PNG-compressed image."""
    parts = [_varint(7 << 3 | 5) + struct.pack("<f", reward), _varint(8 << 3) + _varint(int(done))]
    parts.append(_varint(9 << 3) + _varint(int(max_step_reached)))
    parts.append(_varint(10 << 3) + _varint(agent_id))
    for name, shape, values in sensors:
        # ObservationProto: shape=1 (packed int32), compression_type=2 (1: PNG), compressed_data=3,
        # float_data=4 (FloatData: data=1, packed float), name=8
        obs = _field(1, b"".join(_varint(d) for d in shape))
        if isinstance(values, bytes):
            obs += _varint(2 << 3) + _varint(1) + _field(3, values)
        else:
            obs += _field(4, _field(1, np.asarray(values, dtype="<f4").tobytes()))
        parts.append(_field(13, obs + _field(8, name.encode())))
    return b"".join(parts)


def encode_output(infos: dict[str, list[bytes]], init: bytes = b"") -> bytes:
    """A UnityMessageProto: header=1 (status=1: 200), unity_output=2 (UnityOutputProto: rl_output=1,
    UnityRLOutputProto: agentInfos=2, a map entry key=1 value=2 per behavior, ListAgentInfoProto: value=1;
    rl_initialization_output=2)."""
    entries = b"".join(
        _field(2, _field(1, name.encode()) + _field(2, b"".join(_field(1, info) for info in values)))
        for name, values in infos.items()
        if values
    )
    output = _field(1, entries) + (_field(2, init) if init else b"")
    return _field(1, _varint(1 << 3) + _varint(200)) + _field(2, output)


def read_side_channels(data: bytes, academy: Academy, log: Log, state: dict[str, float]) -> None:
    """Unpack Python's side-channel bytes: 16-byte channel id, int32 length, payload, repeated."""
    offset = 0
    while offset < len(data):
        channel = uuid.UUID(bytes_le=bytes(data[offset : offset + 16]))
        (length,) = struct.unpack_from("<i", data, offset + 16)
        payload = bytes(data[offset + 20 : offset + 20 + length])
        offset += 20 + length
        msg = IncomingMessage(payload)
        if channel == ENGINE_CHANNEL:
            kind = msg.read_int32()
            if kind == 2:
                state["time_scale"] = msg.read_float32()
                log(f"engine configuration time_scale={state['time_scale']:g}")
            else:
                log(f"engine configuration {ENGINE_FIELDS.get(kind, kind)} ignored")
        elif channel == PARAMETERS_CHANNEL:
            key = msg.read_string()
            if msg.read_int32() == 0:
                academy.set_parameter(key, msg.read_float32())
            else:  # a sampler: seed, sampler type, then its numbers
                seed, kind = msg.read_int32(), msg.read_int32()
                numbers = msg.read_float32_list() if kind == 2 else [msg.read_float32(), msg.read_float32()]
                academy.set_sampler(key, kind, seed, numbers)
        else:
            log(f"side channel {channel} ({length} bytes) ignored")


def parse_args(argv: list[str]) -> tuple[dict[str, Any], int, str | None, list[str]]:
    """The configuration and what UnityEnvironment passes: the port, the log file, the rest."""
    cfg = dict(DEFAULTS)
    port, log_file, rest = 5004, None, []
    raw = os.environ.get("STANDIN_CONFIG")
    it = iter(argv)
    for arg in it:
        if arg == "--standin-config":
            raw = Path(next(it)).read_text()
        elif arg == "--mlagents-port":
            port = int(next(it))
        elif arg.lower() == "-logfile":
            log_file = next(it)
        else:
            rest.append(arg)
    if raw:
        extra = json.loads(raw)
        unknown = set(extra) - set(DEFAULTS)
        if unknown:
            raise SystemExit(f"standin: unknown configuration keys {sorted(unknown)}")
        cfg.update(extra)
    return cfg, port, log_file, rest


def hang(log: Log, why: str) -> None:
    log(f"hanging: {why}")
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> int:
    cfg, port, log_file, rest = parse_args(argv)
    cfg["rendering"] = "-nographics" not in rest  # Unity renders cameras only with graphics
    log = Log(log_file)
    log(f"started pid {os.getpid()} port {port} args {rest} task {cfg['task']} agents {cfg['agents']}")
    if cfg["hang"] == "init":
        hang(log, "before the handshake (hang=init)")

    # The stub's own serializer would re-encode; requests here are already encoded (see encode_output).
    exchange_rpc = grpc.insecure_channel(f"localhost:{port}").unary_unary(
        "/communicator_objects.UnityToExternalProto/Exchange",
        request_serializer=bytes,
        response_deserializer=UnityMessageProto.FromString,
    )

    def exchange(request: bytes) -> UnityMessageProto:
        return exchange_rpc(request, wait_for_ready=True)

    caps = UnityRLCapabilitiesProto(
        baseRLCapabilities=True,
        concatenatedPngObservations=True,
        compressedChannelMapping=True,
        hybridActions=True,
        trainingAnalytics=True,
        variableLengthObservation=True,
        multiAgentGroups=True,
    )
    init = UnityRLInitializationOutputProto(
        name="StandIn",
        communication_version=cfg["communication_version"],
        package_version=cfg["package_version"],
        capabilities=caps,
        log_path=log_file or "",
    )
    try:
        hello = UnityMessageProto(header=HeaderProto(status=200))
        hello.unity_output.rl_initialization_output.CopyFrom(init)
        reply = exchange(hello.SerializeToString())
        if reply.header.status != 200:
            log(f"handshake refused (status {reply.header.status})")
            return 0
        py = reply.unity_input.rl_initialization_input
        log(f"handshake: python communication {py.communication_version}, package {py.package_version}")
        academy = Academy(cfg, py.seed, log)
        state = {"time_scale": 1.0}
        reply = exchange(encode_output({}))  # answered by Python's first command
        exchanges = 0
        sim_time, wall0, scale = 0.0, time.monotonic(), state["time_scale"]
        while True:
            if reply.header.status != 200:
                log(f"close received (status {reply.header.status}); quitting")
                return 0
            rl_in = reply.unity_input.rl_input
            read_side_channels(rl_in.side_channel, academy, log, state)
            if rl_in.command == QUIT:
                log("quit command; quitting")
                return 0
            if rl_in.command == RESET:
                academy.reset()
            else:
                academy.apply_actions(rl_in.agent_actions)
            before = academy.step_count
            output = academy.advance()
            # Pace the physics at no more than time_scale times real time (Unity's Time.timeScale).
            if state["time_scale"] != scale:
                sim_time, wall0, scale = 0.0, time.monotonic(), state["time_scale"]
            sim_time += (academy.step_count - before) * cfg["fixed_dt"]
            delay = wall0 + sim_time / max(scale, 1e-6) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            exchanges += 1
            if cfg["hang"] is not None and exchanges > int(cfg["hang"]):
                hang(log, f"after {cfg['hang']} exchanges (hang={cfg['hang']})")
            reply = exchange(output)
    except grpc.RpcError as e:
        # Python went away without closing (killed): there is nobody left to talk to.
        log(f"connection lost: {e.code()}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
