"""MOBILE's own parts: the Bellman-inconsistency penalty against a hand computation, the penalty on
model transitions only, the lower bound and the deterministic backup of the critic target."""

import types

import numpy as np
import pytest
import torch
from conftest import load_script

mobile = load_script("mobile")


class Calls:
    """Wraps a callable and records the shapes of its first argument."""

    def __init__(self, fn):
        self.fn, self.shapes = fn, []

    def __call__(self, x, *rest, **kw):
        self.shapes.append(tuple(x.shape))
        return self.fn(x, *rest, **kw)


def toy_model(deltas, elites, std=0.0):
    """A 1-d ensemble whose member i predicts Δs = deltas[i] with the given std (0: the samples are the
    means), reward 0, whatever (s, a)."""
    members = len(deltas)
    model = mobile.EnsembleDynamics(1, 1, members=members, elites=len(elites), hidden_dim=8, hidden_layers=1)
    model.elite_idx.copy_(torch.tensor(elites))

    def forward(obs, actions, members=None):
        mean = torch.zeros(len(deltas), len(obs), 2)
        mean[..., 0] = torch.tensor(deltas, dtype=torch.float32)[:, None]
        logvar = torch.full_like(mean, 2 * np.log(std) if std > 0 else -1e4)
        return (mean, logvar) if members is None else (mean[members], logvar[members])

    model.forward = Calls(forward)
    return model


def linear_critics(obs, actions):
    """Two critics, Q_1 = 2 s and Q_2 = 2 s + 1: their minimum is 2 s, whatever the action."""
    return torch.stack([2 * obs[:, 0], 2 * obs[:, 0] + 1])


def test_penalty_by_hand_with_zero_std():
    """Elites predict Δs = 0, 1, 3 (a fourth member, not an elite, 100): next states s, s + 1, s + 3;
    min_k Q = 2 s' at each; the std over the elites (unbiased, as torch.std and the authors) of
    2 (s + Δ_i) is 2 · std(0, 1, 3) = 2 sqrt(7/3), the same for every s."""
    model = toy_model([0.0, 1.0, 100.0, 3.0], elites=[0, 1, 3])
    actor = Calls(lambda obs: (torch.zeros(len(obs), 1), torch.zeros(len(obs))))
    critic = Calls(linear_critics)
    obs, actions = torch.tensor([[0.0], [5.0], [-2.0], [1.5]]), torch.zeros(4, 1)
    u = mobile.bellman_inconsistency(model, actor, critic, obs, actions, num_samples=10)
    assert u.shape == (4,)
    assert torch.allclose(u, torch.full((4,), 2 * np.sqrt(7 / 3)), atol=1e-5)
    # one batched pass each: the ensemble on the batch (elites only), actor and critics on samples x elites x batch
    assert model.forward.shapes == [(4, 1)]
    assert actor.shapes == [(10 * 3 * 4, 1)] and critic.shapes == [(10 * 3 * 4, 1)]


def test_penalty_averages_the_samples_of_each_elite():
    """With std 0.5 each elite's estimate is a mean of N draws of 2 s'; for large N it tends to 2 (s + Δ_i),
    and u to the zero-std value, while a single draw per elite leaves it noisy."""
    torch.manual_seed(0)
    model = toy_model([0.0, 1.0, 3.0], elites=[0, 1, 2], std=0.5)
    actor = lambda obs: (torch.zeros(len(obs), 1), torch.zeros(len(obs)))  # noqa: E731
    obs, actions = torch.zeros(256, 1), torch.zeros(256, 1)
    many = mobile.bellman_inconsistency(model, actor, linear_critics, obs, actions, num_samples=2000)
    assert many.mean().item() == pytest.approx(2 * np.sqrt(7 / 3), abs=0.02)
    one = mobile.bellman_inconsistency(model, actor, linear_critics, obs, actions, num_samples=1)
    assert one.std().item() > 10 * many.std().item()


def test_next_states_stay_in_the_data_range():
    """A sampled next state beyond the model's observation bounds is clipped to them, as in rollouts."""
    model = toy_model([0.0, 50.0], elites=[0, 1])
    model.obs_low.fill_(-1.0)
    model.obs_high.fill_(2.0)
    actor = lambda obs: (torch.zeros(len(obs), 1), torch.zeros(len(obs)))  # noqa: E731
    u = mobile.bellman_inconsistency(model, actor, linear_critics, torch.zeros(3, 1), torch.zeros(3, 1), 4)
    assert torch.allclose(u, torch.full((3,), 4 / np.sqrt(2)))  # 2 · std(0, 2)


def make_agent(**kw):
    torch.manual_seed(0)
    return mobile.SAC(1, 1, np.array([-1.0]), np.array([1.0]), hidden_dim=8, gamma=0.99, **kw)


def test_only_model_transitions_are_penalised():
    """penalized_update hands SAC the real rewards unchanged and the model ones minus λ u."""
    model = toy_model([0.0, 1.0, 3.0], elites=[0, 1, 2])
    seen = {}

    def update(obs, actions, rewards, next_obs, terminals):
        seen["rewards"] = rewards
        return {}

    actor = make_agent().actor
    agent = types.SimpleNamespace(actor=actor, critic_target=linear_critics, update=update)  # u = 2 sqrt(7/3)
    real = (torch.zeros(3, 1), torch.zeros(3, 1), torch.tensor([1.0, -2.0, 0.5]), torch.zeros(3, 1), torch.zeros(3))
    imagined = (torch.ones(5, 1), torch.zeros(5, 1), torch.arange(5.0), torch.ones(5, 1), torch.zeros(5))
    logs = mobile.penalized_update(agent, model, real, imagined, penalty_coef=0.5, num_samples=10)
    u = 2 * np.sqrt(7 / 3)
    assert seen["rewards"][:3].tolist() == [1.0, -2.0, 0.5]
    assert torch.allclose(seen["rewards"][3:], torch.arange(5.0) - 0.5 * u)
    assert logs["rollout/penalty"].item() == pytest.approx(u, rel=1e-5)
    assert logs["low"].item() == pytest.approx(-0.5 * u, rel=1e-5)


def constant_critics(agent, q, target_q):
    """Critics that output q everywhere and target critics that output target_q."""
    with torch.no_grad():
        for net, value in ((agent.critic.net, q), (agent.critic_target.net, target_q)):
            net[-1].weight.zero_()
            net[-1].bias.fill_(value)


def test_target_lower_bound_and_deterministic_backup():
    """Q = 0, Q' = -500, r = -1: the deterministic target is -1 + 0.99 · (-500) = -496, a squared error of
    496² per critic; bounded below at 0 (the authors' clamp) the target is 0 and the error vanishes;
    the soft target (no deterministic backup) adds -α log π and differs."""
    batch = (torch.zeros(4, 1), torch.zeros(4, 1), -torch.ones(4), torch.zeros(4, 1), torch.zeros(4))
    for kw, expected in (({"deterministic_backup": True}, 2 * 496.0**2), ({"target_min": 0.0}, 0.0)):
        agent = make_agent(**kw)
        constant_critics(agent, 0.0, -500.0)
        loss = agent.update(*batch)["losses/critic_loss"].item()
        assert loss == pytest.approx(expected, rel=1e-6), kw
    agent = make_agent()
    constant_critics(agent, 0.0, -500.0)
    assert agent.update(*batch)["losses/critic_loss"].item() != pytest.approx(2 * 496.0**2, rel=1e-6)
    # a bound below the target changes nothing
    agent = make_agent(deterministic_backup=True, target_min=-1000.0)
    constant_critics(agent, 0.0, -500.0)
    assert agent.update(*batch)["losses/critic_loss"].item() == pytest.approx(2 * 496.0**2, rel=1e-6)


def test_default_bound_is_the_lowest_return():
    """The authors' 0 where rewards are >= 0 (D4RL locomotion); min reward / (1 - γ) where some are
    negative (Pendulum: every reward <= 0, where 0 would lift every target); an explicit value wins."""
    assert mobile.q_target_floor(None, 0.3, 0.99) == 0.0
    assert mobile.q_target_floor(None, -16.0, 0.99) == pytest.approx(-1600.0)
    assert mobile.q_target_floor(0.0, -16.0, 0.99) == 0.0
    assert mobile.q_target_floor(float("-inf"), 0.3, 0.99) == float("-inf")


def test_value_range_of_a_deterministic_backup_has_no_entropy_term():
    """Without -α log π in the target, Q is a plain return: the check's range is [r_low, r_high] / (1 - γ)
    whatever the policy's entropy."""
    agent = make_agent(deterministic_backup=True)
    low, high = agent.q_range(-16.0, 0.0, entropy=-3.0)
    assert (low, high) == (pytest.approx(-1600.0), pytest.approx(0.0))
