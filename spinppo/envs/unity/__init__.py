"""Unity ML-Agents builds as gymnasium vector environments: each agent of the behavior is one sub-environment.

``make_unity_env`` launches one Unity player (``mlagents_envs.environment.UnityEnvironment``, gRPC on port
``base_port + worker_id``) and returns a ``UnityVectorEnv``, a ``gymnasium.vector.VectorEnv`` in SAME_STEP
autoreset mode. The package, by concern:

- ``vector_env``: ``UnityVectorEnv`` and ``make_unity_env``; how Unity's agents and episodes become
  gymnasium steps (its module doc has the rules);
- ``slots``: ``AgentSlots``, which agent id holds which slot (row of every batch);
- ``launch``: the build's path, the player's log, its side channels, starting it and turning its errors
  into one-line UserErrors;
- ``mlagents_patch``: the overrides of mlagents_envs 0.28.0 internals (its communicator's pipes).

Importing this package does not import ``mlagents_envs``: only making an environment does.
"""

from spinppo.envs.unity.vector_env import UnityVectorEnv, make_unity_env

__all__ = ["UnityVectorEnv", "make_unity_env"]
