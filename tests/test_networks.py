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
    action, value, logp, memory = ac.step(obs)
    assert value.shape == (64,) and logp.shape == (64,) and memory is None
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
    assert torch.equal(ac.act(obs, deterministic=True).action, twin.act(obs, deterministic=True).action)


CONFIGS = {
    "default": dict(),
    "relu-3-layers": dict(activation="relu", hidden_sizes=(16, 8, 4)),
    "elu": dict(activation="elu"),
    "silu": dict(activation="silu"),
    "leaky_relu": dict(activation="leaky_relu"),
    "gelu-torch": dict(activation="gelu"),  # numpy has no erf: runs ac.step
    "layer-norm-torch": dict(layer_norm=True),
    "shared-trunk-torch": dict(shared_trunk=True),
    "no-obs-norm": dict(norm_obs=False),
}


def random_policy(kind: str, **kwargs) -> MLPActorCritic:
    """An actor-critic with non-trivial weights and observation statistics."""
    ac = MLPActorCritic(OBS, SPACES[kind], **kwargs)
    for p in ac.parameters():  # not the initial weights (small output layer, zero biases)
        p.data.normal_(0, 0.5)
    ac.obs_rms._merge(np.linspace(-1, 1, 5), np.linspace(0.5, 4.0, 5), 100.0)
    return ac


@pytest.mark.parametrize("kind", list(SPACES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_rollout_policy_logp_and_values_are_those_of_evaluate(kind, config):
    # The rollout's numpy policy stores (action, value, logp); the update recomputes them in torch. They
    # must agree, or PPO's ratio starts away from 1.
    torch.manual_seed(1)
    np.random.seed(1)
    ac = random_policy(kind, **CONFIGS[config])
    policy = ac.rollout_policy()
    assert policy.in_numpy == (not config.endswith("-torch"))
    obs = np.random.randn(64, 5).astype(np.float32) * 3
    action, value, logp, memory = policy.step(obs)
    assert memory is None and isinstance(action, np.ndarray) and value.shape == (64,) and logp.shape == (64,)
    assert logp.dtype == np.float32 and value.dtype == np.float32
    if kind != "box":
        assert action.dtype.kind == "i"
        for a in action:
            assert SPACES[kind].contains(a.astype(SPACES[kind].dtype) if kind == "multidiscrete" else int(a))
    logp2, _, value2 = ac.evaluate(torch.from_numpy(obs), torch.from_numpy(action))
    np.testing.assert_allclose(logp, logp2.detach().numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(value, value2.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(policy.value(obs), value, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", list(SPACES))
def test_rollout_policy_samples_the_policy_distribution(kind):
    torch.manual_seed(2)
    np.random.seed(2)
    ac = random_policy(kind)
    n = 40000
    obs = np.repeat(np.random.randn(1, 5).astype(np.float32), n, axis=0)
    action = ac.rollout_policy().step(obs).action
    if kind == "box":
        mean = ac.act(torch.from_numpy(obs[:1]), deterministic=True).action.numpy()[0]
        std = ac.log_std.exp().detach().numpy()
        np.testing.assert_allclose(action.mean(0), mean, atol=4 * std.max() / np.sqrt(n))
        np.testing.assert_allclose(action.std(0), std, rtol=0.03)
        return
    # every branch's action frequencies against its softmax probabilities
    cols = action.reshape(n, -1)
    offsets = np.cumsum([0, *ac.branches])
    logits = ac.pi(ac.normalize_obs(torch.from_numpy(obs[:1]))).detach()[0]
    for b, k in enumerate(ac.branches):
        probs = torch.softmax(logits[offsets[b] : offsets[b] + k], 0).numpy()
        freq = np.bincount(cols[:, b], minlength=k) / n
        np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs * (1 - probs) / n).max() + 1e-3)


def test_rollout_policy_draws_from_numpy_global_generator():
    # Checkpoints save numpy's global generator: a resumed run must draw the same actions.
    ac = random_policy("box")
    obs = np.random.randn(8, 5).astype(np.float32)
    np.random.seed(5)
    first = ac.rollout_policy().step(obs)[0]
    np.random.seed(5)
    np.testing.assert_array_equal(ac.rollout_policy().step(obs)[0], first)


def test_a_subclass_with_its_own_step_is_used_by_rollouts():
    class Greedy(MLPActorCritic):
        def step(self, obs):
            # a plain tuple, as a subclass written before PolicyStep returns it
            return self.act(obs, deterministic=True).action, self.value(obs).detach(), torch.zeros(len(obs))

    ac = Greedy(OBS, SPACES["discrete"])
    policy = ac.rollout_policy()
    assert not policy.in_numpy
    obs = np.random.randn(6, 5).astype(np.float32)
    np.testing.assert_array_equal(
        policy.step(obs).action, ac.act(torch.from_numpy(obs), deterministic=True).action.numpy()
    )


def nearly_deterministic(ac: MLPActorCritic) -> MLPActorCritic:
    """The same network with its sampling made (almost) deterministic: tiny std, very peaked logits."""
    with torch.no_grad():
        if ac.discrete:
            ac.pi[-1].weight.mul_(1e4)
            ac.pi[-1].bias.mul_(1e4)
        else:
            ac.log_std.fill_(-20.0)
    return ac


@pytest.mark.parametrize("kind", list(SPACES))
@pytest.mark.parametrize("config", [c for c in CONFIGS if not c.endswith("-torch")])
def test_known_options_run_in_numpy_and_act_as_torch(kind, config):
    torch.manual_seed(3)
    np.random.seed(3)
    ac = nearly_deterministic(random_policy(kind, **CONFIGS[config]))
    policy = ac.rollout_policy()
    assert policy.in_numpy
    obs = np.random.randn(32, 5).astype(np.float32) * 3
    action, value, _, _ = policy.step(obs)
    torch_action, torch_value, _, _ = ac.step(torch.from_numpy(obs))
    if kind == "box":
        np.testing.assert_allclose(action, torch_action.numpy(), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(action, torch_action.numpy())
    np.testing.assert_allclose(value, torch_value.numpy(), rtol=1e-5, atol=1e-5)


class WithDropout(MLPActorCritic):
    """A subclass with an option RolloutPolicy has never heard of (dropout after pi's first layer)."""

    def __init__(self, *args, dropout: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ctor_spec["dropout"] = float(dropout)
        if dropout > 0:
            self.pi.insert(1, torch.nn.Dropout(dropout))


def assert_runs_ac_step(ac: MLPActorCritic) -> None:
    """RolloutPolicy falls back to torch: its step is ac.step itself (same torch generator, same sample)."""
    policy = ac.rollout_policy()
    assert not policy.in_numpy, f"ran in numpy: {ac.ctor_spec}"
    obs = np.random.randn(6, 5).astype(np.float32)
    torch.manual_seed(7)
    got = policy.step(obs)
    torch.manual_seed(7)
    want = ac.step(torch.from_numpy(obs))
    assert got.memory is None and want.memory is None
    for g, w in zip(got[:3], want[:3], strict=True):
        np.testing.assert_array_equal(g, w.numpy())
    np.testing.assert_array_equal(policy.value(obs), ac.value(torch.from_numpy(obs)).detach().numpy())


# Changes to a network's ctor_spec that its description does not hold: each must send it to torch.
SPEC_CHANGES = {
    "extra key": lambda spec: spec.update(squash_actions=True),
    "unknown action space key": lambda spec: spec["action"].update(low=-1.0),
    "unknown observation kind": lambda spec: spec["observation"].update(kind="image"),
    "unknown class": lambda spec: spec.update({"class": "CNNActorCritic"}),
}


@pytest.mark.parametrize("change", list(SPEC_CHANGES))
def test_an_unknown_option_in_ctor_spec_fails_closed_to_torch(change):
    # RolloutPolicy must not run a network it does not fully know in numpy: it would silently sample a
    # different policy from the one the update evaluates.
    torch.manual_seed(4)
    np.random.seed(4)
    ac = random_policy("box")
    assert ac.rollout_policy().in_numpy
    SPEC_CHANGES[change](ac.ctor_spec)
    assert_runs_ac_step(ac)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_a_subclass_with_an_extra_option_fails_closed_to_torch(dropout):
    # dropout=0.0: the modules are the known ones, only ctor_spec has the extra key; 0.5 adds a module.
    torch.manual_seed(5)
    np.random.seed(5)
    assert_runs_ac_step(WithDropout(OBS, SPACES["discrete"], dropout=dropout))
