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
    expected = torch.tensor(
        [[0.68 + 0.72 * (-0.11 + 0.72 * 1.9), 1.27 + 0.72 * 0.7], [-0.11 + 0.72 * 1.9, 0.7], [1.9, 0]]
    )
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


# ---------------------------------------------------------------------------- learning checks (Pendulum, CPU scale)
# The CPU settings of benchmarks/cpu/configs/bremen/shipped/pendulum-eps1.yaml: a 2x200 ensemble, 5,000 cloning
# steps, 50 paths of 100 imagined steps per TRPO iteration, Fisher-vector products on every 5th state, δ = 0.05,
# log σ >= -2.
CPU = [
    "--dynamics-hidden-dim", "200", "--bc-steps", "5000", "--horizon", "100", "--rollout-batch-size", "50",
    "--fvp-every", "5", "--target-kl", "0.05", "--log-std-min", "-2",
]  # fmt: skip


def train(runs_dir, *argv: str, timeout: int = 900) -> dict:
    command = [sys.executable, os.path.join(ROOT, "algorithms", "bremen.py"), "--seed", "0", "--threads", "1"]
    command += ["--device", "cpu", "--runs-dir", str(runs_dir), *CPU, *argv]
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = glob.glob(str(runs_dir / "bremen__*" / "results.json"))
    return json.load(open(path))


@pytest.mark.learning
def test_offline_bremen_beats_cloning_of_the_same_data(tmp_path):
    """shipped/pendulum-eps1 (BRAC's eps1 mixture from a partially trained SAC policy, datasets/generate.py:
    behaviour data 26.7), 300 TRPO iterations from the clone, the ensemble capped at 50 epochs.

    Our runs (one thread; the file as regenerated with BRAC's mixture of policy samples), normalised score every 25
    iterations, with the policy's mean KL to the clone on imagined states. On an AMD EPYC machine (2026-12-06, 150
    iterations): seed 0 (129 s) 18.6, 19.9, 31.6, 39.5, 46.7, 53.2, KL 3.3 to 10.3, clone 20.3; seed 1 (140 s)
    20.7, 33.1, 31.5, 51.5, 63.4, 95.6, KL 2.5 to 10.1, clone 15.9. On an Intel Xeon machine (2026-12-07) the same
    seeds give other numbers (floating point differs between the CPUs' kernels) and learn more slowly, so 150
    iterations failed there: seed 0 21.4, 17.6, 24.7, 16.4, 13.9, 24.3, then (300 iterations, 100 s) 32.4, 23.6,
    26.5, 30.8, 35.3, 41.7, KL at most 14.1, clone 19.9; seed 1 15.7, 36.0, 10.8, 12.9, 9.2, 20.5, 18.9, 25.6, 28.4,
    38.8, 25.2, 36.2, KL up to 29.9, clone 15.8; seed 2 (150 iterations) best 29.1, clone 11.4. Thresholds: the best
    10 above the clone and the data, and the KL to the clone under 20 at every evaluation (seed 0; seed 1 on the
    Intel machine would fail the KL bound, which TRPO's per-step bound of 1.5 δ does not imply for the KL to the
    clone).
    """
    results = train(tmp_path, "--dataset", "shipped/pendulum-eps1", "--num-updates", "300", "--eval-every", "25",
                    "--dynamics-max-epochs", "50")  # fmt: skip
    scores = [e["normalized_score"] for e in results["evaluations"]]
    print(
        "bremen offline:",
        scores,
        "clone",
        results["bc_normalized_score"],
        [e["kl_to_bc"] for e in results["evaluations"]],
    )
    assert results["best_normalized_score"] > results["bc_normalized_score"] + 10.0, scores
    assert results["best_normalized_score"] > results["behaviour_normalized_score"] + 10.0, scores
    assert max(e["kl_to_bc"] for e in results["evaluations"]) < 20.0, results["evaluations"]


@pytest.mark.learning
def test_deployment_mode_return_rises_over_deployments(tmp_path):
    """Pendulum-v1 from scratch: 5 deployments of 2,000 real steps (the first with uniformly random actions),
    30 TRPO iterations each, the ensemble re-fitted for at most 30 epochs each time.

    Our runs (one thread), return at the end of deployments 1..5: seed 0 (127 s) -1167, -954, -896, -863,
    -828 (the deployments' own data -1206, -1067, -1052, -956, -832; 176 s on a rerun beside other jobs); seed 1
    (123 s) -1114, -1024, -947, -810, -774 (data -1130, -1147, -1130, -986, -832). Thresholds: the last evaluation 150
    above the first, and above the first deployment's (random) data by 200.
    """
    results = train(tmp_path, "--mode", "deployment", "--env-id", "Pendulum-v1", "--num-updates", "150",
                    "--deploy-every", "30", "--deployment-steps", "2000", "--eval-every", "30",
                    "--dynamics-max-epochs", "30", "--bc-steps", "3000")  # fmt: skip
    returns = [e["return"] for e in results["evaluations"]]
    print("bremen deployments:", returns, [d["data_return"] for d in results["deployments"]])
    assert len(results["deployments"]) == 5
    assert returns[-1] > returns[0] + 150.0, returns
    assert returns[-1] > results["deployments"][0]["data_return"] + 200.0, returns
