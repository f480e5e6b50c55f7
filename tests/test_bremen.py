"""BREMEN's own parts: conjugate gradient, the KL size of the TRPO step, the line search, GAE by hand, the
known rewards and terminations against the real environments; and its learning checks on Pendulum."""

import glob
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ROOT, load_script

bremen = load_script("bremen")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def toy_policy(seed: int = 0, obs_dim: int = 3, act_dim: int = 2):
    torch.manual_seed(seed)
    policy = bremen.GaussianPolicy(obs_dim, act_dim, 32, -np.ones(act_dim), np.ones(act_dim))
    for p in policy.parameters():  # away from the tiny initial output layer, so that the step is not trivial
        p.data.add_(0.3 * torch.randn_like(p))
    return policy


def toy_batch(policy, n: int = 512, seed: int = 0):
    """States, actions sampled from the policy, random advantages, the old (μ, log σ), and the surrogate."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, policy.obs_mean.shape[0], generator=g)
    with torch.no_grad():
        old_mean, old_log_std = policy(obs)
    actions = old_mean + old_log_std.exp() * torch.randn(old_mean.shape, generator=g)
    adv = torch.randn(n, generator=g)
    old_log_prob = bremen.gaussian_log_prob(actions, old_mean, old_log_std)

    def surrogate():
        return -(torch.exp(bremen.gaussian_log_prob(actions, *policy(obs)) - old_log_prob) * adv).mean()

    return obs, old_mean, old_log_std, surrogate


def test_conjugate_gradient_solves_a_spd_system():
    torch.manual_seed(0)
    q = torch.randn(6, 6, dtype=torch.float64)
    a = q @ q.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    x = bremen.conjugate_gradient(lambda v: a @ v, b, iters=10)  # more iterations than dimensions: stays put
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)
    few = bremen.conjugate_gradient(lambda v: a @ v, b, iters=3)  # partial solves decrease the A-norm error
    exact = torch.linalg.solve(a, b)
    assert (few - exact) @ a @ (few - exact) < exact @ a @ exact


def test_trpo_step_satisfies_the_kl_bound_before_the_line_search():
    """½ sᵀ(F + λI)s = δ for the returned step, and the true mean KL of the full step, before any line
    search, is about δ (the quadratic model holds for small δ), never above 1.5 δ."""
    for target_kl in (1e-3, 1e-2):
        policy = toy_policy()
        obs, old_mean, old_log_std, surrogate = toy_batch(policy)
        step, g = bremen.trpo_direction(policy, obs, surrogate, old_mean, old_log_std, target_kl, 10, 0.1)
        params = list(policy.parameters())
        mean, log_std = policy(obs)
        kl = bremen.gaussian_kl(old_mean, old_log_std, mean, log_std).mean()
        kl_grad = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, params, create_graph=True)])
        fisher_step = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl_grad @ step, params)])
        assert 0.5 * step @ (fisher_step + 0.1 * step) == pytest.approx(target_kl, rel=1e-3)
        assert -(g @ step) > 0  # a descent direction of the surrogate loss
        old = torch.nn.utils.parameters_to_vector(params).detach()
        torch.nn.utils.vector_to_parameters(old + step, params)
        with torch.no_grad():
            true_kl = bremen.gaussian_kl(old_mean, old_log_std, *policy(obs)).mean().item()
        assert 0.3 * target_kl < true_kl <= 1.5 * target_kl, (target_kl, true_kl)


def test_line_search_never_accepts_a_worse_surrogate():
    """An uphill step (and random ones) is rejected: the parameters stay and the fraction is 0. The TRPO step
    is accepted and lowers the surrogate loss; so does every accepted random step."""
    policy = toy_policy()
    obs, old_mean, old_log_std, surrogate = toy_batch(policy)
    step, g = bremen.trpo_direction(policy, obs, surrogate, old_mean, old_log_std, 0.01, 10, 0.1)
    params = list(policy.parameters())
    old = torch.nn.utils.parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        before = surrogate()
    frac = bremen.line_search(policy, surrogate, -step, g, before, 10, 0.1)  # uphill: expected < 0
    assert frac == 0.0 and torch.equal(torch.nn.utils.parameters_to_vector(params), old)
    torch.manual_seed(1)
    for _ in range(20):
        random_step = 0.5 * step.norm() * torch.randn_like(step) / step.norm()
        frac = bremen.line_search(policy, surrogate, random_step, g, before, 10, 0.1)
        with torch.no_grad():
            after = surrogate()
        assert after <= before if frac > 0 else torch.equal(torch.nn.utils.parameters_to_vector(params), old)
        torch.nn.utils.vector_to_parameters(old, params)
    frac = bremen.line_search(policy, surrogate, step, g, before, 10, 0.1)
    with torch.no_grad():
        assert frac > 0 and surrogate() < before


def test_gae_matches_a_hand_computation():
    """Two paths of 3 steps, γ 0.9, λ 0.8; path 1 terminates after its second step (its third is padding).
    No bootstrap past the last step, at the horizon either."""
    rewards = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [0.2, 0.3], [0.1, 0.4]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    adv, returns = bremen.gae(rewards, values, valid, 0.9, 0.8)
    # path 0: δ2 = 2 - 0.1 = 1.9; δ1 = 0 + 0.9·0.1 - 0.2 = -0.11; δ0 = 1 + 0.9·0.2 - 0.5 = 0.68; γλ = 0.72
    # path 1: δ1 = 1 - 0.3 = 0.7 (s2 is past the end); δ0 = 2 + 0.9·0.3 - 1.0 = 1.27
    expected = torch.tensor([[0.68 + 0.72 * (-0.11 + 0.72 * 1.9), 1.27 + 0.72 * 0.7], [-0.11 + 0.72 * 1.9, 0.7], [1.9, 0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(returns, expected + values * valid, atol=1e-6)


TASKS = [
    ("Pendulum-v1", {}),
    ("HalfCheetah-v4", {}),
    ("Hopper-v4", {}),
    ("Walker2d-v4", {}),
    ("Ant-v4", {"use_contact_forces": False}),
    ("Ant-v4", {"use_contact_forces": True}),
]


@pytest.mark.parametrize("env_id, kwargs", TASKS, ids=[f"{e}{'-contact' if k else ''}" for e, k in TASKS])
def test_known_rewards_and_terminations_match_the_environment(env_id, kwargs):
    """Five episodes (at most 1000 steps) of smooth random actions (a_t = 0.8 a_{t-1} + noise): the known
    termination agrees at every step, Pendulum's reward is exact, and the MuJoCo rewards (the forward velocity
    as the mean of s and s' velocities, not the simulator's finite difference) have a per-step error under a
    quarter of the rewards' std and episode returns within 3 %. Measured (seed 0): per-step error / std
    HalfCheetah 0.19, Ant 0.06, Walker2d 0.014, Hopper 0.005; returns within 1.6 % (HalfCheetah)."""
    reward_fn, done_fn, env = bremen.known_task(lambda: gym.make(env_id, **kwargs))
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    steps, returns, obs = [], [], env.reset(seed=0)[0]
    action, real, known, n = np.zeros_like(low), 0.0, 0.0, 0
    while len(returns) < 5:
        action = np.clip(0.8 * action + 0.5 * high * rng.standard_normal(low.shape), low, high).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        steps.append((obs, action, next_obs, reward, terminated))
        real += reward
        known += reward_fn(*(torch.as_tensor(x, dtype=torch.float32)[None] for x in (obs, action, next_obs))).item()
        obs, n = next_obs, n + 1
        if terminated or truncated or n == 1000:
            returns.append((real, known))
            obs, action, real, known, n = env.reset()[0], np.zeros_like(low), 0.0, 0.0, 0
    env.close()
    s, a, s2, r, d = (torch.as_tensor(np.array(x), dtype=torch.float32) for x in zip(*steps))
    assert torch.equal(done_fn(s2), d.bool())
    error = (reward_fn(s, a, s2) - r).abs()
    if env_id.startswith("Pendulum"):
        assert error.max() < 1e-4
    else:
        assert error.mean() < 0.25 * r.std(), (error.mean(), r.std())
        for real, known in returns:
            assert abs(known - real) <= 0.03 * max(abs(real), 10.0), returns


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="no known reward function"):
        bremen.known_task(lambda: gym.make("MountainCarContinuous-v0"))


def test_one_member_per_step_is_that_member_of_the_batched_ensemble():
    """The one-member path of the ensemble (one addmm per layer) gives the same as the batched computation's
    slice for that member."""
    torch.manual_seed(0)
    model = bremen.DeterministicEnsemble(3, 2, members=5, hidden_dim=16)
    obs, actions = torch.randn(7, 3), torch.randn(7, 2)
    every = model(obs, actions)
    for m in range(5):
        assert torch.allclose(model(obs, actions, torch.tensor(m)), every[m], atol=1e-6)
