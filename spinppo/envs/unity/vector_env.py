"""``UnityVectorEnv``: the agents of a Unity ML-Agents behavior as a gymnasium vector environment.

Each agent of the behavior is one sub-environment, and the environment behaves like gymnasium's
SAME_STEP autoreset mode, which is what spinppo's rollout expects:

- ``num_envs`` is the number of agents that ask for a decision in the first exchange after the first
  reset; each gets a slot (a row of every batch) and keeps it until its episode ends.
- ``step(actions)`` returns, per slot, the summed reward of the step, ``terminated`` when the agent's
  episode ended (a TerminalSteps entry without ``interrupted``), ``truncated`` when it was interrupted
  (Unity's max step reached; the rollout bootstraps it with V(final_obs)), and as observation the first
  one of the slot's next episode; the finished episode's last observation is in ``info["final_obs"]``
  (an object array, as gymnasium's) where ``info["_final_obs"]`` is True.
- Observations (``SensorLayout``): a behavior with vector sensors only gives a flat float32 Box, the
  sensors concatenated in Unity's order. One with a visual sensor (a 3-D observation, HxWxC floats in
  [0, 1], PNG-compressed or not on the wire) gives a gymnasium ``Dict`` with one entry per sensor, keyed
  ``obs_0``, ``obs_1``, ... in Unity's sensor order (the input names of ML-Agents' exported models):
  images as uint8 ``Box(0, 255, (H, W, C))`` (round(255 x value)), vectors as float32 Boxes.

Rules for what Unity does that gymnasium cannot express:

- Unity gives a new episode a new agent id. When a slot's agent ends, the slot waits for an agent id it
  has not seen and takes it (slots.py: new ids fill free slots in lowest-slot-first order, in the order
  Unity lists them). A terminal entry for the old id and a decision for the new id may come in the same
  exchange.
- A step lasts until every slot's agent has asked for a decision after receiving the step's action (or,
  after an episode end, until the slot's new agent has asked for its first decision). Until then the
  adapter calls Unity's ``step()`` again: an agent that asks meanwhile gets its slot's action again
  (action repeat; an agent of a new episode gets zeros, as Unity does before a first decision), its
  rewards are added to the slot's reward and its latest observation is the one returned. With Unity's
  usual DecisionRequester (all agents on one period) a step is one decision period, plus one extra
  exchange when an agent ends between two decisions. Rewards a new episode collects before its first
  observation is returned are dropped (ML-Agents' own trainer drops them too); an episode that ends
  before the policy acted in it at all is dropped.
- An agent that neither asks for a decision nor ends for ``patience`` (100) exchanges has disappeared:
  its slot's episode ends as truncated with its last observation as final_obs and the slot waits for a
  new agent. A slot that finds no new agent within another ``patience`` exchanges is a UserError,
  because the number of sub-environments cannot change.
- Agents beyond ``num_envs`` are ignored (they get zero actions, with one warning) until a slot is free.
- Several behaviors: ``behavior_name`` chooses the one to train (``Walker`` also matches Unity's
  ``Walker?team=0``), else the first one Unity lists is trained, with a warning naming the others; the
  others get zero actions. Continuous actions are clipped to [-1, 1]; action masks are not applied; group
  rewards are ignored. The seed goes to Unity at launch; ``reset(seed=...)`` cannot reseed a running player.

Environment parameters (``env_kwargs``, numbers) go through the EnvironmentParametersChannel and the time
scale through the EngineConfigurationChannel, both with the first reset (launch.py). So do ML-Agents'
``environment_parameters`` (params.py: constants, samplers, curricula): their current lessons' values go
with the first reset and again with every later reset, as mlagents-learn sends them, and
``apply_lessons`` sends them after ``parameter_manager.update`` moved a lesson on.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from spinppo.envs.unity.launch import (
    DEFAULT_LISTEN,
    UnityPlayer,
    mpi_rank,
    player_log_path,
    queue_environment_parameters,
    resolve_build,
    settings_channels,
    timeout_from_environment,
)
from spinppo.envs.unity.params import EnvironmentParameterManager, behavior_base_name
from spinppo.envs.unity.slots import AgentSlots
from spinppo.utils.errors import UserError

logger = logging.getLogger(__name__)

# Builds (resolved paths) whose trained behavior turned out to have a camera in this process: later players
# of the same build (evaluation, replay) start with graphics at once instead of being started twice.
_CAMERA_BUILDS: set[str] = set()
_SAID: set[tuple[str, bool]] = set()  # (build, no_graphics) whose graphics line this process printed


def make_unity_env(
    file_name: str,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    base_port: int = 5005,
    worker_id: int = 0,
    time_scale: float = 20.0,
    no_graphics: bool | None = None,
    log_dir: str | None = None,
    environment_parameters: dict[str, Any] | None = None,
    behavior_name: str | None = None,
    run_seed: int | None = None,
    lessons: dict[str, int] | None = None,
    listen: str = DEFAULT_LISTEN,
) -> UnityVectorEnv:
    """Launch the Unity build ``file_name`` and return it as a SAME_STEP ``VectorEnv`` (see the module doc).

    ``worker_id`` is the MPI rank's local rank on its host: the player talks on ``base_port + worker_id``.
    ``env_kwargs`` are Unity environment parameters (name to number); ``log_dir`` is the run directory,
    where the player's log goes (``unity_logs/rank<N>.log``). ``environment_parameters``, ``behavior_name``,
    ``run_seed``, ``lessons`` and ``listen`` as for ``UnityVectorEnv``. The SPINPPO_UNITY_TIMEOUT variable
    sets how many seconds to wait for the player (default 60). Bad input is a one-line UserError.
    """
    return UnityVectorEnv(
        file_name,
        seed=seed,
        env_kwargs=env_kwargs,
        base_port=base_port,
        worker_id=worker_id,
        time_scale=time_scale,
        no_graphics=no_graphics,
        log_dir=log_dir,
        timeout_wait=timeout_from_environment(),
        environment_parameters=environment_parameters,
        behavior_name=behavior_name,
        run_seed=run_seed,
        lessons=lessons,
        listen=listen,
    )


class UnityVectorEnv(VectorEnv):
    """The agents of one Unity behavior as a gymnasium ``VectorEnv`` in SAME_STEP autoreset mode.

    Construction launches the player, sends the time scale and environment parameters, resets it and
    fixes ``num_envs`` and the spaces; the first ``reset()`` returns that first observation without
    resetting Unity again. ``timeout_wait`` is how long to wait for the player (seconds), ``patience`` how
    many exchanges an agent may stay silent before it counts as gone. ``close()`` stops the player.

    ``environment_parameters``: an ML-Agents ``environment_parameters`` section, as
    ``params.check_environment_parameters`` returns it (checked again here); ``parameter_manager`` is then
    its ``EnvironmentParameterManager`` (None without parameters), whose samplers without a seed are seeded
    from ``run_seed`` (None: ``seed``; pass the run's ``--seed``, the same on every rank, to seed them as
    mlagents-learn does), starting at ``lessons`` (name -> lesson number; None: the first lessons). Their
    names may not repeat ``env_kwargs``'. Every lesson's completion_criteria must measure the trained
    behavior. ``behavior_name``: the behavior to train (a UserError listing the build's behaviors when it
    has none of that name); None: the first. ``no_graphics``: True starts the player with ``-nographics
    -batchmode`` (cameras then render nothing: blank images), False with graphics (ML-Agents' default),
    None (auto) without graphics unless the trained behavior has a camera (a visual observation): the
    player is then started again with graphics, and one line says so. ``listen``: the address the
    trainer's gRPC server listens on for the player (``--unity_listen``): ``localhost`` (loopback only, the
    default), an address of one of this host's interfaces, or ``0.0.0.0`` / ``::`` for all of them.
    """

    def __init__(
        self,
        file_name: str,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        base_port: int = 5005,
        worker_id: int = 0,
        time_scale: float = 20.0,
        no_graphics: bool | None = None,
        log_dir: str | None = None,
        timeout_wait: float = 60.0,
        patience: int = 100,
        environment_parameters: dict[str, Any] | None = None,
        behavior_name: str | None = None,
        run_seed: int | None = None,
        lessons: dict[str, int] | None = None,
        listen: str = DEFAULT_LISTEN,
    ) -> None:
        self._env = None  # mlagents_envs' UnityEnvironment, once launched; close() may run before that
        self.patience = patience
        self.behavior_name = behavior_name
        self.parameter_manager: EnvironmentParameterManager | None = None
        if environment_parameters:
            self.parameter_manager = EnvironmentParameterManager(
                environment_parameters, seed if run_seed is None else run_seed, lessons
            )
            both = sorted(set(self.parameter_manager.settings) & set(env_kwargs or {}))
            if both:
                raise UserError(
                    f"environment parameters {both} are given twice, in env_kwargs and in "
                    "environment_parameters: keep one"
                )
        self.timeout_wait = timeout_wait
        self._player = UnityPlayer(
            file_name=resolve_build(file_name),
            base_port=base_port,
            worker_id=worker_id,
            timeout_wait=timeout_wait,
            log_path=player_log_path(log_dir, worker_id),
            listen=listen,
        )
        self.file_name = self._player.file_name
        self.port = self._player.port
        self.log_path = self._player.log_path
        self._launch_settings = (seed, time_scale, env_kwargs)
        # Auto: without graphics, unless the build is known to need them (a camera, seen earlier).
        auto = no_graphics is None
        self.no_graphics = (self.file_name not in _CAMERA_BUILDS) if auto else bool(no_graphics)
        self._launch()
        try:
            self._setup()
            if self.sensors.cameras and self.no_graphics and auto:
                # A camera renders nothing without graphics: start the player again with them.
                _CAMERA_BUILDS.add(self.file_name)
                self.close_extras()  # (not close(): that would mark this environment closed)
                self.no_graphics = False
                self._launch()
                self._setup()
            if self.sensors.cameras and mpi_rank(self._player.worker_id) == 0:
                self._say_graphics(auto)
        except BaseException:
            self.close()
            raise

    def _launch(self) -> None:
        """Start the player (``self.no_graphics``) with the time scale and the environment parameters."""
        seed, time_scale, env_kwargs = self._launch_settings
        samplers = self.parameter_manager.current_samplers() if self.parameter_manager else None
        channels = settings_channels(time_scale, env_kwargs, samplers)
        self._parameters_channel = channels[1]  # later lessons go through it
        self._env = self._player.launch(seed=seed, no_graphics=self.no_graphics, side_channels=channels)

    def _say_graphics(self, auto: bool) -> None:
        """The one line about graphics for a behavior with a camera (once per build and process): it runs
        with graphics, or, when --no_graphics true asked for none, that its images will be blank."""
        key = (self.file_name, self.no_graphics)
        if key in _SAID:
            return
        _SAID.add(key)
        cameras = ", ".join(self.sensors.cameras)
        if self.no_graphics:
            print(
                f"spinppo: warning: Unity behavior {self.behavior!r} has a camera ({cameras}) but "
                "--no_graphics true starts its player without graphics, where cameras render nothing: it "
                "will see blank images (leave --no_graphics out, or false)",
                file=sys.stderr,
                flush=True,
            )
        else:
            how = "auto: graphics for a camera" if auto else "--no_graphics false"
            print(
                f"spinppo: note: Unity behavior {self.behavior!r} has a camera ({cameras}): its player runs "
                f"with graphics ({how}), as ML-Agents' do",
                flush=True,
            )

    # ----------------------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        """Reset the player, check its behavior's spec, make the spaces and give the first agents slots."""
        from mlagents_envs.base_env import ActionTuple

        self._ActionTuple = ActionTuple
        self._call(self._env.reset)
        for _ in range(self.patience):
            names = list(self._env.behavior_specs)
            # A behavior shows up once its agents first ask: wait for the one asked for, if it comes.
            if names and (self.behavior_name is None or _matching(names, self.behavior_name)):
                break
            self._call(self._env.step)
        if not self._env.behavior_specs:
            raise UserError(
                f"the Unity build {self.file_name} has no agent asking for decisions after a reset: "
                "check its agents' Behavior Type (Default) and DecisionRequester"
            )
        names = list(self._env.behavior_specs)
        self.behavior = choose_behavior(names, self.behavior_name, self.file_name)
        if len(names) > 1 and self.behavior_name is None:
            logger.warning(
                "Unity build has behaviors %s: training %r, the others get zero actions", names, self.behavior
            )
        else:
            logger.info("Unity behavior %r", self.behavior)
        if self.parameter_manager is not None:
            self._check_curriculum_behaviors(names)
        spec = self._env.behavior_specs[self.behavior]

        self.sensors = SensorLayout(self.behavior, spec.observation_specs)
        # One shape per sensor, in the order Unity lists them (for vectors their concatenation is the
        # observation): an exported model takes them as separate inputs, as ML-Agents' does.
        self.observation_shapes = self.sensors.shapes
        self.obs_dim = self.sensors.vector_dim  # the vector sensors' numbers (all of a flat observation)

        action_spec = spec.action_spec
        self.num_continuous = action_spec.continuous_size
        self.branches = tuple(int(b) for b in action_spec.discrete_branches)
        if self.num_continuous and self.branches:
            raise UserError(
                f"behavior {self.behavior!r} has hybrid actions ({self.num_continuous} continuous and "
                f"{len(self.branches)} discrete branches): not supported yet; use only one kind"
            )
        if self.num_continuous:
            single_action: gym.Space = gym.spaces.Box(-1.0, 1.0, (self.num_continuous,), np.float32)
        elif len(self.branches) == 1:
            single_action = gym.spaces.Discrete(self.branches[0])
        else:
            single_action = gym.spaces.MultiDiscrete(np.array(self.branches, dtype=np.int64))

        self._make_slots(0)  # the number of slots is known once the first agents ask
        num_envs = self._gather_agents(None)
        self.num_envs = num_envs
        self.single_observation_space = self.sensors.space
        self.single_action_space = single_action
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
        self._fresh_reset = True
        self._warned_extra = False
        logger.info(
            "Unity behavior %r: %d agents, observations %s, action space %s",
            self.behavior,
            num_envs,
            self.sensors.describe(),
            single_action,
        )

    def _check_curriculum_behaviors(self, names: list[str]) -> None:
        """Every completion_criteria must measure the trained behavior: spinppo trains one, and a lesson that
        waits for another behavior's episodes would never end (mlagents-learn trains every behavior)."""
        trained = behavior_base_name(self.behavior)
        for name, parameter in self.parameter_manager.settings.items():
            for i, lesson in enumerate(parameter["curriculum"][:-1]):
                wanted = lesson["completion_criteria"]["behavior"]
                if wanted != trained:
                    raise UserError(
                        f"environment_parameters.{name}.curriculum[{i}].completion_criteria.behavior is "
                        f"{wanted!r}, but spinppo trains {trained!r} (the build's behaviors: "
                        f"{', '.join(names)}): measure the trained behavior, or train {wanted!r} "
                        "(behavior)"
                    )

    def _make_slots(self, num_envs: int) -> None:
        """``num_envs`` free slots, with the per-slot observation and action buffers."""
        self._slots = AgentSlots(num_envs)
        self._obs = self.sensors.zeros(num_envs)  # each slot's latest observation
        self._act_cont = np.zeros((num_envs, self.num_continuous), np.float32)  # each slot's action
        self._act_disc = np.zeros((num_envs, len(self.branches)), np.int32)

    def _gather_agents(self, num_envs: int | None) -> int:
        """After a Unity reset, give slots to agents as they ask for decisions until every slot has one.

        With ``num_envs`` None (the first reset) the number of slots is the number of agents in the
        first exchange that has any. Returns the number of slots; a UserError when they do not fill up
        within ``patience`` exchanges.
        """
        self._slots.clear()
        for exchange in range(self.patience + 1):
            dec, term = self._env.get_steps(self.behavior)
            for aid in term.agent_id:  # an agent ending while the reset is still gathering: forget it
                self._slots.release(int(aid))
            if num_envs is None and len(dec) > 0:
                num_envs = len(dec)
                self._make_slots(num_envs)
            if num_envs is not None and len(dec) > 0:
                obs = self.sensors.convert(dec.obs)
                for k, aid in enumerate(dec.agent_id):
                    slot = self._slots.slot_of(int(aid))
                    if slot is None:
                        slot = self._slots.take_free_slot(int(aid))
                        if slot is None:
                            continue  # more agents than slots: ignored until one is free
                    self.sensors.put(self._obs, slot, obs, k)
                if self._slots.all_taken():
                    return num_envs
            if exchange < self.patience:
                self._exchange(np.zeros(0, bool))
        raise UserError(
            f"after a reset of the Unity build only {self._slots.num_taken()} of {num_envs or 'any'} agents "
            f"asked for a decision within {self.patience} exchanges: spinppo needs a fixed number of agents"
        )

    # -------------------------------------------------------------------------------------- gymnasium

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Reset Unity (not on the first call, which returns the launch's first observation).

        Returns ``(obs, {})``: ``obs`` is ``[num_envs, obs_dim]`` float32, or with visual sensors a dict of
        ``[num_envs, *shape]`` arrays (``observation_space``); Unity was seeded at launch, so ``seed`` only
        seeds this object's ``np_random``.
        """
        super().reset(seed=seed, options=options)
        if not self._fresh_reset:
            self._reset_unity()
        self._fresh_reset = False
        return self.sensors.copy(self._obs), {}

    def _reset_unity(self) -> None:
        """Reset the player, sending the current lessons' values with the reset as mlagents-learn does, and
        give every slot a new agent."""
        if self.parameter_manager is not None:
            queue_environment_parameters(self._parameters_channel, self.parameter_manager.current_samplers())
        self._act_cont[:] = 0  # agents asking while the reset gathers get zeros, as in Unity
        self._act_disc[:] = 0
        self._call(self._env.reset)
        self._call(self._gather_agents, self.num_envs)

    def apply_lessons(self, reset: bool) -> tuple[Any, dict[str, Any]] | None:
        """Send the current lessons' values (``parameter_manager.current_samplers()``, every parameter's,
        as mlagents-learn does when a lesson changes) to the player; call it when
        ``parameter_manager.update`` returned ``changed`` True, with ``reset`` its second value.

        ``reset`` False: the values are queued and reach the player with the next ``step``'s first exchange;
        episodes already running keep what they read at their start, episodes that start from then on read
        the new values (Unity games read parameters in OnEpisodeBegin). Returns None.

        ``reset`` True (a completed lesson's ``require_reset``): the values go with a Unity reset now, as
        mlagents-learn's ``_reset_env``. Every slot's episode in progress is abandoned without a final step
        (no terminal entry, not a finished episode: count neither its return nor its length) and every slot
        gets a new agent, as after ``reset()``. Returns ``(obs, {})`` as ``reset()`` does: ``obs`` is the
        first observation of each slot's new episode, which replaces the rollout's current observation.
        Call it between rollouts (after the epoch's last step), when the buffer has already bootstrapped
        the episodes it cut.
        """
        if self.parameter_manager is None:
            raise ValueError("apply_lessons: this environment has no environment_parameters")
        if reset:
            self._fresh_reset = False
            self._reset_unity()
            return self.sensors.copy(self._obs), {}
        queue_environment_parameters(self._parameters_channel, self.parameter_manager.current_samplers())
        return None

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One decision of every agent: ``(obs, reward, terminated, truncated, info)`` as the module doc says.

        ``actions`` is one action per slot (``action_space``); continuous actions are clipped to [-1, 1].
        """
        n = self.num_envs
        self._fresh_reset = False
        self._set_policy_actions(actions)
        reward = np.zeros(n, np.float64)
        terminated = np.zeros(n, bool)
        truncated = np.zeros(n, bool)
        final_obs = np.full(n, None, dtype=object)
        received = np.zeros(n, bool)  # the slot's agent was sent this step's action
        ready = np.zeros(n, bool)  # ... and asked for a decision since (or a new episode's agent asked)
        ended = np.zeros(n, bool)  # the slot's episode ended in this step: its agent is a new one
        silent = np.zeros(n, np.int64)  # exchanges since the slot's agent (or a new one for it) was seen

        while True:
            self._call(self._exchange, ended, received)
            dec, term = self._env.get_steps(self.behavior)
            seen = np.zeros(n, bool)
            if len(term) > 0:
                term_obs = self.sensors.convert(term.obs)
                for k, aid in enumerate(term.agent_id):
                    slot = self._slots.release(int(aid))
                    if slot is None:
                        continue  # an agent without a slot
                    seen[slot] = True
                    if ended[slot]:
                        # A new episode that ended before the policy acted in it: nothing to learn; drop it.
                        ready[slot] = False
                        continue
                    reward[slot] += term.reward[k]
                    final_obs[slot] = self.sensors.single(term_obs, k)
                    truncated[slot] = bool(term.interrupted[k])
                    terminated[slot] = not truncated[slot]
                    ended[slot] = True
            if len(dec) > 0:
                dec_obs = self.sensors.convert(dec.obs)
                for k, aid in enumerate(dec.agent_id):
                    aid = int(aid)
                    slot = self._slots.slot_of(aid)
                    if slot is None:
                        slot = self._take_free_slot(aid)
                        if slot is None:
                            continue
                        ended[slot] = True  # a free slot's episode ended in this step
                    elif not ended[slot]:
                        reward[slot] += dec.reward[k]
                        if received[slot]:
                            ready[slot] = True
                    if ended[slot]:
                        ready[slot] = True
                    self.sensors.put(self._obs, slot, dec_obs, k)
                    seen[slot] = True
            silent = np.where(seen, 0, silent + 1)
            if np.all(ready):
                break
            for slot in np.flatnonzero(~ready & (silent > self.patience)):
                self._agent_gone(int(slot), final_obs, truncated, ended, silent)
        info: dict[str, Any] = {}
        done = terminated | truncated
        if done.any():
            info = {"final_obs": final_obs, "_final_obs": done, "final_info": {}, "_final_info": done.copy()}
        return self.sensors.copy(self._obs), reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        """Stop the Unity player (it gets ``timeout_wait`` seconds to quit, then it is killed)."""
        if self._env is not None:
            env, self._env = self._env, None
            try:
                env.close()
            except Exception as e:  # closing a player that already died must not hide the first error
                logger.debug("closing Unity: %s", e)

    # -------------------------------------------------------------------------------------- internals

    def _set_policy_actions(self, actions: Any) -> None:
        a = np.asarray(actions)
        n = self.num_envs
        if self.num_continuous:
            a = a.reshape(n, self.num_continuous)
            if not np.all(np.isfinite(a)):
                raise ValueError("Unity actions must be finite")
            self._act_cont[:] = np.clip(a, -1.0, 1.0)  # Unity agents expect [-1, 1]
        else:
            self._act_disc[:] = a.reshape(n, len(self.branches))

    def _exchange(self, ended: np.ndarray, received: np.ndarray | None = None) -> None:
        """Answer the agents that asked for a decision (their slot's action, zeros for new episodes'
        agents and agents without a slot) and let Unity run to the next exchange."""
        dec, _ = self._env.get_steps(self.behavior)
        k = len(dec)
        if k > 0:
            slots = self._slots.slots_of(dec.agent_id)
            use = slots >= 0
            if len(ended):
                use &= ~ended[np.maximum(slots, 0)]
            cont = np.zeros((k, self.num_continuous), np.float32)
            disc = np.zeros((k, len(self.branches)), np.int32)
            if use.any():
                cont[use] = self._act_cont[slots[use]]
                disc[use] = self._act_disc[slots[use]]
                if received is not None:
                    received[slots[use]] = True
            self._env.set_actions(self.behavior, self._ActionTuple(continuous=cont, discrete=disc))
        self._env.step()

    def _take_free_slot(self, aid: int) -> int | None:
        """A free slot for the new agent ``aid`` during a step; None (with one warning) when all are taken."""
        slot = self._slots.take_free_slot(aid)
        if slot is None and not self._warned_extra:
            logger.warning(
                "Unity behavior %r has more agents than its %d slots: agent %d and later extra agents "
                "are ignored (zero actions) until a slot is free",
                self.behavior,
                self.num_envs,
                aid,
            )
            self._warned_extra = True
        return slot

    def _agent_gone(
        self, slot: int, final_obs: np.ndarray, truncated: np.ndarray, ended: np.ndarray, silent: np.ndarray
    ) -> None:
        """The slot's agent stayed silent too long: truncate its episode and free the slot."""
        aid = self._slots.agent_in(slot)
        if aid is None or ended[slot]:
            # The slot has waited for a new agent as long as it may.
            raise UserError(
                f"Unity behavior {self.behavior!r}: slot {slot} has had no agent for {self.patience} "
                f"exchanges; spinppo needs a fixed number of agents ({self.num_envs}): make the scene "
                "respawn its agents"
            )
        logger.warning("Unity agent %d vanished without ending its episode: truncating slot %d", aid, slot)
        self._slots.release(aid)
        final_obs[slot] = self.sensors.single(self._obs, slot)
        truncated[slot] = True
        ended[slot] = True
        silent[slot] = 0

    def _call(self, fn: Any, *args: Any) -> Any:
        """Call into mlagents_envs, turning a dead or silent player into a one-line UserError."""
        return self._player.call(fn, *args)


def choose_behavior(names: list[str], wanted: str | None, file_name: str) -> str:
    """The behavior to train among Unity's ``names``: ``wanted`` by its full name (``Walker?team=0``) or by
    the name before ``?`` (``Walker``), or the first one when ``wanted`` is None. A UserError listing the
    build's behaviors when none or several match."""
    if wanted is None:
        return names[0]
    if wanted in names:
        return wanted
    matches = _matching(names, wanted)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UserError(
            f"behavior {wanted!r} matches several of the Unity build's behaviors ({', '.join(matches)}): "
            "name one in full"
        )
    raise UserError(
        f"the Unity build {file_name} has no behavior {wanted!r}; its behaviors: {', '.join(names)}"
    )


def _matching(names: list[str], wanted: str) -> list[str]:
    return [n for n in names if n == wanted or behavior_base_name(n) == wanted]


class SensorLayout:
    """How a behavior's sensors become the vector environment's observations (the module doc's rule).

    ``space`` is the single observation space; ``shapes`` one shape per sensor, in Unity's order. Agents'
    observations as mlagents_envs gives them (one array per sensor, agents first) go through ``convert``
    (a [agents, obs_dim] float32 array for vector sensors only, else a dict of arrays by key); ``put``,
    ``single`` and ``copy`` move them between those and the slots' store (``zeros``), which has the same
    form. A visual observation with fewer rows than channels is a UserError (spinppo would read it as
    CxHxW), so is one of another rank (a variable-length observation).
    """

    def __init__(self, behavior: str, observation_specs: Any) -> None:
        self.shapes = [tuple(int(n) for n in s.shape) for s in observation_specs]
        self.names = [str(s.name) for s in observation_specs]
        for name, shape in zip(self.names, self.shapes, strict=True):
            if len(shape) == 3 and shape[0] < shape[2]:
                raise UserError(
                    f"behavior {behavior!r} has a visual observation {name!r} {shape} (HxWxC) with fewer "
                    "rows than channels, which spinppo would read as CxHxW: make the image taller"
                )
            if len(shape) not in (1, 3):
                raise UserError(
                    f"behavior {behavior!r} has a variable-length observation {name!r} "
                    f"{shape}: not supported yet; use vector or visual observations"
                )
        self.vector_dim = int(sum(s[0] for s in self.shapes if len(s) == 1))
        self.is_dict = any(len(s) == 3 for s in self.shapes)
        # The visual sensors (cameras, render textures), described as in describe(): they need graphics.
        self.cameras = [
            f"{n or '?'} {s}" for n, s in zip(self.names, self.shapes, strict=True) if len(s) == 3
        ]
        if not self.is_dict:
            self.space: gym.Space = gym.spaces.Box(-np.inf, np.inf, (self.vector_dim,), np.float32)
            return
        # Zero-padded indices, so that sorting the keys (gymnasium's Dict and batch_space do) keeps Unity's
        # order: obs_0 ... obs_9, or obs_00 ... obs_11 for 12 sensors.
        width = len(str(len(self.shapes) - 1))
        self.keys = [f"obs_{i:0{width}d}" for i in range(len(self.shapes))]
        self.images = [len(s) == 3 for s in self.shapes]
        self.space = gym.spaces.Dict(
            {
                key: gym.spaces.Box(0, 255, shape, np.uint8)
                if image
                else gym.spaces.Box(-np.inf, np.inf, shape, np.float32)
                for key, shape, image in zip(self.keys, self.shapes, self.images, strict=True)
            }
        )
        assert list(self.space.spaces) == self.keys

    def describe(self) -> str:
        """The sensors for a log line: ``Camera (84, 84, 3), Body (12,)``."""
        return ", ".join(f"{n or '?'} {s}" for n, s in zip(self.names, self.shapes, strict=True))

    def zeros(self, n: int) -> Any:
        """The store of ``n`` slots' observations."""
        if not self.is_dict:
            return np.zeros((n, self.vector_dim), np.float32)
        return {k: np.zeros((n, *s.shape), s.dtype) for k, s in self.space.spaces.items()}

    def convert(self, obs_list: list[np.ndarray]) -> Any:
        """mlagents_envs' observations of some agents in this layout's form (images to uint8)."""
        if not self.is_dict:
            return concat_observations(obs_list)
        return {
            key: to_uint8(obs) if image else np.asarray(obs, np.float32).reshape(len(obs), -1)
            for key, image, obs in zip(self.keys, self.images, obs_list, strict=True)
        }

    def put(self, store: Any, slot: int, obs: Any, k: int) -> None:
        """Make agent ``k`` of ``obs`` (``convert``'s) the observation of ``slot`` in ``store``."""
        if not self.is_dict:
            store[slot] = obs[k]
            return
        for key in self.keys:
            store[key][slot] = obs[key][k]

    def single(self, obs: Any, k: int) -> Any:
        """A copy of row ``k`` of ``obs`` (a store or ``convert``'s): one observation, as final_obs holds."""
        if not self.is_dict:
            return obs[k].copy()
        return {key: obs[key][k].copy() for key in self.keys}

    def copy(self, store: Any) -> Any:
        """A copy of every slot's observation: what ``reset`` and ``step`` return."""
        if not self.is_dict:
            return store.copy()
        return {key: store[key].copy() for key in self.keys}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """mlagents_envs' float pixels in [0, 1] (a PNG's k/255, or Unity's floats) as uint8 round(255 x value):
    exact for PNG-compressed observations."""
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def concat_observations(obs_list: list[np.ndarray]) -> np.ndarray:
    """mlagents_envs' observations (one array per sensor, agents first) as one [agents, features] array."""
    if len(obs_list) == 1:
        return obs_list[0].reshape(len(obs_list[0]), -1)
    return np.concatenate([o.reshape(len(o), -1) for o in obs_list], axis=1)
