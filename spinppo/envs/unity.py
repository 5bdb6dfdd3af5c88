"""Unity ML-Agents builds as gymnasium vector environments: each agent of the behavior is one sub-environment.

``make_unity_env`` launches one Unity player (``mlagents_envs.environment.UnityEnvironment``, gRPC on port
``base_port + worker_id``) and returns a ``gymnasium.vector.VectorEnv`` that behaves like gymnasium's
SAME_STEP autoreset mode, which is what spinppo's rollout expects:

- ``num_envs`` is the number of agents that ask for a decision in the first exchange after the first
  reset; each gets a slot (a row of every batch) and keeps it until its episode ends.
- ``step(actions)`` returns, per slot, the summed reward of the step, ``terminated`` when the agent's
  episode ended (a TerminalSteps entry without ``interrupted``), ``truncated`` when it was interrupted
  (Unity's max step reached; the rollout bootstraps it with V(final_obs)), and as observation the first
  one of the slot's next episode; the finished episode's last observation is in ``info["final_obs"]``
  (an object array, as gymnasium's) where ``info["_final_obs"]`` is True.

Rules for what Unity does that gymnasium cannot express:

- Unity gives a new episode a new agent id. When a slot's agent ends, the slot waits for an agent id it
  has not seen and takes it (new ids fill free slots in lowest-slot-first order, in the order Unity lists
  them). A terminal entry for the old id and a decision for the new id may come in the same exchange.
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
- Several behaviors: the first one Unity lists is trained, with a warning naming the others (they get
  zero actions). Continuous actions are clipped to [-1, 1]; action masks are not applied; group rewards
  are ignored. The seed goes to Unity at launch; ``reset(seed=...)`` cannot reseed a running player.

Environment parameters (``env_kwargs``, numbers) go through the EnvironmentParametersChannel and the time
scale through the EngineConfigurationChannel, both with the first reset. ``mlagents_envs`` is imported
only inside functions, and never its ``envs`` or ``registry`` modules (they reach the internet).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from spinppo.utils.errors import UserError

logger = logging.getLogger(__name__)


def make_unity_env(
    file_name: str,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    base_port: int = 5005,
    worker_id: int = 0,
    time_scale: float = 20.0,
    no_graphics: bool = True,
    log_dir: str | None = None,
) -> UnityVectorEnv:
    """Launch the Unity build ``file_name`` and return it as a SAME_STEP ``VectorEnv`` (see the module doc).

    ``worker_id`` is the MPI rank's local rank on its host: the player talks on ``base_port + worker_id``.
    ``env_kwargs`` are Unity environment parameters (name to number); ``log_dir`` is the run directory,
    where the player's log goes (``unity_logs/rank<N>.log``). The SPINPPO_UNITY_TIMEOUT variable sets how
    many seconds to wait for the player (default 60).
    """
    raw = os.environ.get("SPINPPO_UNITY_TIMEOUT", "60")
    try:
        timeout = float(raw)
    except ValueError:
        raise UserError(
            f"SPINPPO_UNITY_TIMEOUT={raw!r} is not a number of seconds: fix or unset it"
        ) from None
    return UnityVectorEnv(
        file_name,
        seed=seed,
        env_kwargs=env_kwargs,
        base_port=base_port,
        worker_id=worker_id,
        time_scale=time_scale,
        no_graphics=no_graphics,
        log_dir=log_dir,
        timeout_wait=timeout,
    )


def _resolve_build(file_name: str) -> str:
    """The player executable's absolute path, or a UserError saying what is wrong with it."""
    from mlagents_envs.env_utils import validate_environment_path

    path = Path(file_name).expanduser()
    if path.is_dir() and path.suffix != ".app":
        raise UserError(
            f"Unity build {file_name} is a folder: pass the player executable in it, "
            f"e.g. {path / 'Walker.x86_64'}"
        )
    if not path.is_file():
        # Like mlagents, accept a build named without its extension (Walker for Walker.x86_64) or a .app.
        found = validate_environment_path(str(path))
        if found is None:
            raise UserError(
                f"Unity build {file_name} not found: pass the path of a built player, "
                "e.g. --env unity:/path/to/Walker.x86_64"
            )
        path = Path(found)
    if not os.access(path, os.X_OK):
        raise UserError(f"Unity build {path} is not executable: run chmod +x {path}")
    return str(path.resolve())


def _log_file(log_dir: str | None, worker_id: int) -> str | None:
    """``log_dir/unity_logs/rank<N>.log`` with N the MPI rank (the local rank without MPI), or None."""
    if not log_dir:
        return None
    mpi = sys.modules.get("mpi4py.MPI")  # only ask MPI when the program already started it
    rank = mpi.COMM_WORLD.Get_rank() if mpi is not None else worker_id
    path = Path(log_dir).expanduser().resolve() / "unity_logs" / f"rank{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


class UnityVectorEnv(VectorEnv):
    """The agents of one Unity behavior as a gymnasium ``VectorEnv`` in SAME_STEP autoreset mode.

    Construction launches the player, sends the time scale and environment parameters, resets it and
    fixes ``num_envs`` and the spaces; the first ``reset()`` returns that first observation without
    resetting Unity again. ``timeout_wait`` is how long to wait for the player (seconds), ``patience`` how
    many exchanges an agent may stay silent before it counts as gone. ``close()`` stops the player.
    """

    def __init__(
        self,
        file_name: str,
        seed: int = 0,
        env_kwargs: dict[str, Any] | None = None,
        base_port: int = 5005,
        worker_id: int = 0,
        time_scale: float = 20.0,
        no_graphics: bool = True,
        log_dir: str | None = None,
        timeout_wait: float = 60.0,
        patience: int = 100,
    ) -> None:
        from mlagents_envs.environment import UnityEnvironment
        from mlagents_envs.exception import (
            UnityEnvironmentException,
            UnityTimeOutException,
            UnityWorkerInUseException,
        )
        from mlagents_envs.side_channel.engine_configuration_channel import EngineConfigurationChannel
        from mlagents_envs.side_channel.environment_parameters_channel import EnvironmentParametersChannel

        self._env = None
        self.patience = patience
        self.timeout_wait = timeout_wait
        self.file_name = _resolve_build(file_name)
        self.port = base_port + worker_id
        self.log_path = _log_file(log_dir, worker_id)

        engine = EngineConfigurationChannel()
        engine.set_configuration_parameters(time_scale=float(time_scale))
        parameters = EnvironmentParametersChannel()
        for key, value in (env_kwargs or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(
                    f"env_kwargs for a Unity build are environment parameters and must be numbers; "
                    f"{key}={value!r} is not: fix --env_kwargs"
                )
            parameters.set_float_parameter(str(key), float(value))

        try:
            self._env = _queue_unity_environment()(
                file_name=self.file_name,
                worker_id=worker_id,
                base_port=base_port,
                seed=seed,
                no_graphics=no_graphics,
                # mlagents polls the player every timeout_wait // 10 seconds, so it wants an int.
                timeout_wait=max(1, round(timeout_wait)),
                additional_args=["-logFile", self.log_path] if self.log_path else [],
                side_channels=[engine, parameters],
            )
        except UnityWorkerInUseException:
            raise UserError(
                f"port {self.port} (base_port {base_port} + worker {worker_id}) is in use, by another run "
                f"or a leftover Unity player: pass another --base_port, e.g. --base_port {base_port + 100}"
            ) from None
        except UnityTimeOutException:
            raise UserError(
                f"the Unity player {self.file_name} did not connect on port {self.port} within "
                f"{timeout_wait:g} s: {self._see_log()} (a slow machine: raise SPINPPO_UNITY_TIMEOUT)"
            ) from None
        except UnityEnvironmentException as e:
            version = re.search(r"Unity API: (\d+(?:\.\d+)*)", str(e))
            if version:
                raise UserError(
                    f"the Unity build speaks ML-Agents communication version {version[1]} but mlagents_envs "
                    f"{_mlagents_version()} speaks {UnityEnvironment.API_VERSION}: rebuild it with the "
                    "matching com.unity.ml-agents package (release 19, 2.x) or install the matching "
                    "mlagents_envs"
                ) from None
            raise UserError(
                f"the Unity player {self.file_name} failed to start ({_one_line(e)}): {self._see_log()}"
            ) from None

        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------------------- set-up

    def _setup(self) -> None:
        from mlagents_envs.base_env import ActionTuple

        self._ActionTuple = ActionTuple
        self._call(self._env.reset)
        for _ in range(self.patience):
            if len(self._env.behavior_specs) > 0:
                break
            self._call(self._env.step)
        else:
            raise UserError(
                f"the Unity build {self.file_name} has no agent asking for decisions after a reset: "
                "check its agents' Behavior Type (Default) and DecisionRequester"
            )
        names = list(self._env.behavior_specs)
        self.behavior = names[0]
        if len(names) > 1:
            logger.warning(
                "Unity build has behaviors %s: training %r, the others get zero actions", names, self.behavior
            )
        else:
            logger.info("Unity behavior %r", self.behavior)
        spec = self._env.behavior_specs[self.behavior]

        for obs_spec in spec.observation_specs:
            if len(obs_spec.shape) == 3:
                raise UserError(
                    f"behavior {self.behavior!r} has a visual observation {obs_spec.name!r} "
                    f"{obs_spec.shape}: visual observations are not supported yet; use vector observations "
                    "(remove the camera or render-texture sensors)"
                )
            if len(obs_spec.shape) != 1:
                raise UserError(
                    f"behavior {self.behavior!r} has a variable-length observation {obs_spec.name!r} "
                    f"{obs_spec.shape}: not supported yet; use vector observations"
                )
        self.obs_dim = int(sum(s.shape[0] for s in spec.observation_specs))

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

        num_envs = self._gather_agents(None)
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32)
        self.single_action_space = single_action
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
        self._fresh_reset = True
        self._warned_extra = False
        logger.info(
            "Unity behavior %r: %d agents, %d observations, action space %s",
            self.behavior,
            num_envs,
            self.obs_dim,
            single_action,
        )

    def _gather_agents(self, num_envs: int | None) -> int:
        """After a Unity reset, give slots to agents as they ask for decisions until every slot has one.

        With ``num_envs`` None (the first reset) the number of slots is the number of agents in the
        first exchange that has any.
        """
        self._id_slot: dict[int, int] = {}
        for exchange in range(self.patience + 1):
            dec, term = self._env.get_steps(self.behavior)
            for aid in term.agent_id:  # an agent ending while the reset is still gathering: forget it
                slot = self._id_slot.pop(int(aid), None)
                if slot is not None:
                    self._slot_agent[slot] = -1
            if num_envs is None and len(dec) > 0:
                num_envs = len(dec)
                self._slot_agent = np.full(num_envs, -1, np.int64)
                self._obs = np.zeros((num_envs, self.obs_dim), np.float32)
                self._act_cont = np.zeros((num_envs, self.num_continuous), np.float32)
                self._act_disc = np.zeros((num_envs, len(self.branches)), np.int32)
            if num_envs is not None and len(dec) > 0:
                obs = self._concat(dec.obs)
                for k, aid in enumerate(dec.agent_id):
                    slot = self._id_slot.get(int(aid))
                    if slot is None:
                        free = np.flatnonzero(self._slot_agent < 0)
                        if len(free) == 0:
                            continue
                        slot = int(free[0])
                        self._id_slot[int(aid)] = slot
                        self._slot_agent[slot] = int(aid)
                    self._obs[slot] = obs[k]
                if np.all(self._slot_agent >= 0):
                    return num_envs
            if exchange < self.patience:
                self._exchange(np.zeros(0, bool))
        have = 0 if num_envs is None else int(np.sum(self._slot_agent >= 0))
        raise UserError(
            f"after a reset of the Unity build only {have} of {num_envs or 'any'} agents asked for a "
            f"decision within {self.patience} exchanges: spinppo needs a fixed number of agents"
        )

    # -------------------------------------------------------------------------------------- gymnasium

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset Unity (not on the first call, which returns the launch's first observation).

        Returns ``(obs[num_envs, obs_dim] float32, {})``; Unity was seeded at launch, so ``seed`` only
        seeds this object's ``np_random``.
        """
        super().reset(seed=seed, options=options)
        if not self._fresh_reset:
            self._act_cont[:] = 0  # agents asking while the reset gathers get zeros, as in Unity
            self._act_disc[:] = 0
            self._call(self._env.reset)
            self._slot_agent[:] = -1
            self._call(self._gather_agents, self.num_envs)
        self._fresh_reset = False
        return self._obs.copy(), {}

    def step(self, actions: Any):
        """One decision of every agent: ``(obs, reward, terminated, truncated, info)`` as documented above."""
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
                term_obs = self._concat(term.obs)
                for k, aid in enumerate(term.agent_id):
                    slot = self._id_slot.pop(int(aid), None)
                    if slot is None:
                        continue  # an agent without a slot
                    self._slot_agent[slot] = -1
                    seen[slot] = True
                    if ended[slot]:
                        # A new episode that ended before the policy acted in it: nothing to learn; drop it.
                        ready[slot] = False
                        continue
                    reward[slot] += term.reward[k]
                    final_obs[slot] = term_obs[k]
                    truncated[slot] = bool(term.interrupted[k])
                    terminated[slot] = not truncated[slot]
                    ended[slot] = True
            if len(dec) > 0:
                dec_obs = self._concat(dec.obs)
                for k, aid in enumerate(dec.agent_id):
                    aid = int(aid)
                    slot = self._id_slot.get(aid)
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
                    self._obs[slot] = dec_obs[k]
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
        return self._obs.copy(), reward, terminated, truncated, info

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
            slots = np.array([self._id_slot.get(int(aid), -1) for aid in dec.agent_id], np.int64)
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
        free = np.flatnonzero(self._slot_agent < 0)
        if len(free) == 0:
            if not self._warned_extra:
                logger.warning(
                    "Unity behavior %r has more agents than its %d slots: agent %d and later extra agents "
                    "are ignored (zero actions) until a slot is free",
                    self.behavior,
                    self.num_envs,
                    aid,
                )
                self._warned_extra = True
            return None
        slot = int(free[0])
        self._id_slot[aid] = slot
        self._slot_agent[slot] = aid
        return slot

    def _agent_gone(
        self, slot: int, final_obs: np.ndarray, truncated: np.ndarray, ended: np.ndarray, silent: np.ndarray
    ) -> None:
        aid = int(self._slot_agent[slot])
        if aid < 0 or ended[slot]:
            # The slot has waited for a new agent as long as it may.
            raise UserError(
                f"Unity behavior {self.behavior!r}: slot {slot} has had no agent for {self.patience} "
                f"exchanges; spinppo needs a fixed number of agents ({self.num_envs}): make the scene "
                "respawn its agents"
            )
        logger.warning("Unity agent %d vanished without ending its episode: truncating slot %d", aid, slot)
        del self._id_slot[aid]
        self._slot_agent[slot] = -1
        final_obs[slot] = self._obs[slot].copy()
        truncated[slot] = True
        ended[slot] = True
        silent[slot] = 0

    def _concat(self, obs_list: list[np.ndarray]) -> np.ndarray:
        if len(obs_list) == 1:
            return obs_list[0].reshape(len(obs_list[0]), -1)
        return np.concatenate([o.reshape(len(o), -1) for o in obs_list], axis=1)

    def _see_log(self) -> str:
        if self.log_path:
            return f"see the player's log {self.log_path}"
        return (
            "see the player's log (Unity's default Player.log; with a run directory, unity_logs/rank<N>.log)"
        )

    def _call(self, fn: Any, *args: Any) -> Any:
        """Call into mlagents_envs, turning a dead or silent player into a one-line UserError."""
        from mlagents_envs.exception import (
            UnityCommunicatorStoppedException,
            UnityEnvironmentException,
            UnityTimeOutException,
        )

        try:
            return fn(*args)
        except UnityTimeOutException:
            raise UserError(
                f"the Unity player {self.file_name} stopped answering for {self.timeout_wait:g} s: "
                f"{self._see_log()}"
            ) from None
        except (UnityEnvironmentException, UnityCommunicatorStoppedException) as e:
            raise UserError(
                f"the Unity player {self.file_name} quit ({_one_line(e)}): {self._see_log()}"
            ) from None


class _QueueEnd:
    """One end of a pair of queues with the three methods of ``multiprocessing.Connection`` that
    mlagents_envs' RpcCommunicator uses (send, poll, recv, plus close).

    mlagents_envs hands every message between its gRPC thread and the main thread through a
    ``multiprocessing.Pipe``, which pickles it: with the pure-Python protobuf that mlagents_envs 0.28
    needs, that is one more serialisation and one more parse of every message, most of the trainer's
    time at Walker's size (docs/unity.md). Both threads are in one process, so a queue hands over the
    message object itself.
    """

    def __init__(self, inbox: queue.SimpleQueue, outbox: queue.SimpleQueue) -> None:
        self._inbox, self._outbox = inbox, outbox
        self._held: list[Any] = []

    def send(self, obj: Any) -> None:
        self._outbox.put(obj)

    def poll(self, timeout: float = 0.0) -> bool:
        if not self._held:
            try:
                self._held.append(
                    self._inbox.get(timeout=timeout) if timeout > 0 else self._inbox.get_nowait()
                )
            except queue.Empty:
                return False
        return True

    def recv(self) -> Any:
        return self._held.pop() if self._held else self._inbox.get()

    def close(self) -> None:
        pass


# Longest wait, when closing, for the gRPC call that carries the close message to reach the player.
_CLOSE_GRACE_S = 5.0


def _queue_unity_environment() -> type:
    """``UnityEnvironment`` whose communicator passes messages between its threads through queues.

    Only the servicer's two pipe ends are swapped (before the player is launched, so before any message);
    the protocol, the gRPC server and every check stay mlagents_envs' own.
    """
    from mlagents_envs.communicator_objects.unity_message_pb2 import UnityMessageProto
    from mlagents_envs.environment import UnityEnvironment
    from mlagents_envs.rpc_communicator import RpcCommunicator

    class QueueCommunicator(RpcCommunicator):
        def create_server(self) -> None:
            super().create_server()
            to_python, to_unity = queue.SimpleQueue(), queue.SimpleQueue()
            self.unity_to_external.parent_conn = _QueueEnd(to_python, to_unity)
            self.unity_to_external.child_conn = _QueueEnd(to_unity, to_python)

        def close(self) -> None:
            # The stock close stops the gRPC server with no grace period, which can abort the Exchange
            # that carries the close message (status 400) before the player has it: the player then sees
            # the connection drop instead of being told to quit. The grace lets that last reply go out;
            # the server stops as soon as no call is running.
            if self.is_open:
                message = UnityMessageProto()
                message.header.status = 400
                self.unity_to_external.parent_conn.send(message)
                self.unity_to_external.parent_conn.close()
                self.server.stop(grace=_CLOSE_GRACE_S).wait()
                self.is_open = False

    class QueueUnityEnvironment(UnityEnvironment):
        @staticmethod
        def _get_communicator(worker_id: int, base_port: int, timeout_wait: int) -> RpcCommunicator:
            return QueueCommunicator(worker_id, base_port, timeout_wait)

        def _close(self, timeout: int | None = None) -> None:
            # UnityEnvironment registers _close with atexit before it has a communicator: when the port
            # is taken it has none, and the stock _close would print a traceback at exit.
            if hasattr(self, "_communicator"):
                super()._close(timeout)

    return QueueUnityEnvironment


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _mlagents_version() -> str:
    import mlagents_envs

    return mlagents_envs.__version__
