"""Actor-critics: sampling and evaluation agree, for every kind of action space."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from spinppo.core.networks import MLPActorCritic, build_actor_critic

OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)
SPACES = {
    "box": gym.spaces.Box(-1, 1, (3,), np.float32),
    "discrete": gym.spaces.Discrete(4),
    "multidiscrete": gym.spaces.MultiDiscrete([3, 2, 5]),
}


@pytest.mark.parametrize("kind", list(SPACES))
def test_step_logp_equals_evaluate_logp_and_actions_fit_the_space(kind):
    torch.manual_seed(0)
    space = SPACES[kind]
    ac = MLPActorCritic(OBS, space, hidden_sizes=(16, 16))
    obs = torch.randn(64, 5)
    action, value, logp = ac.step(obs)
    assert value.shape == (64,) and logp.shape == (64,)
    if kind == "box":  # Gaussian samples are unbounded; the rollout clips them when it sends them
        assert action.shape == (64, 3)
    else:
        for a in action.numpy():
            assert space.contains(a.astype(space.dtype) if kind == "multidiscrete" else int(a))
    logp2, entropy, value2 = ac.evaluate(obs, action)
    torch.testing.assert_close(logp2, logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(value2, value)
    assert torch.all(entropy > 0)
    if kind != "box":  # probabilities of all joint actions sum to one
        branches = ac.branches
        grids = np.stack(np.meshgrid(*[np.arange(n) for n in branches], indexing="ij"), -1).reshape(
            -1, len(branches)
        )
        acts = torch.as_tensor(grids if kind == "multidiscrete" else grids[:, 0])
        total = ac.evaluate(obs[:1].expand(len(acts), 5), acts)[0].exp().sum()
        torch.testing.assert_close(total, torch.tensor(1.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", list(SPACES))
def test_rebuilt_from_ctor_spec_acts_identically(kind):
    ac = MLPActorCritic(OBS, SPACES[kind], hidden_sizes=(8,), layer_norm=True)
    twin = build_actor_critic(ac.ctor_spec)
    twin.load_state_dict(ac.state_dict())
    obs = torch.randn(10, 5)
    assert torch.equal(ac.act(obs, deterministic=True), twin.act(obs, deterministic=True))
