"""AWAC: the advantage weights and their clip, the weighted likelihood loss on a hand case, and learning."""

import glob
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script, print_scores

m = load_script("awac")


def test_weights_hand_case_and_clip():
    q_data = torch.tensor([1.0, 2.0, 0.0, 10.0, 1e4])
    q_policy = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    # A = [0, 2, -1, 10, 1e4]; λ = 2: exp(A / 2) = [1, e, e^-0.5, e^5 = 148 -> 100, inf -> 100]
    w = m.awac_weights(q_data, q_policy, awac_lambda=2.0, max_weight=100.0)
    assert torch.allclose(w, torch.tensor([1.0, math.e, math.exp(-0.5), 100.0, 100.0]))
    assert torch.isfinite(w).all()
    # a smaller λ sharpens the weights toward the best actions
    sharp = m.awac_weights(q_data[:3], q_policy[:3], awac_lambda=0.5, max_weight=100.0)
    assert torch.allclose(sharp, torch.tensor([1.0, math.exp(4.0), math.exp(-2.0)]))


def test_gaussian_log_prob_matches_torch():
    mean, log_std = torch.randn(4, 3), torch.randn(3)
    actions = torch.randn(4, 3)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    assert torch.allclose(m.gaussian_log_prob(mean, log_std, actions), expected, atol=1e-5)


def test_actor_loss_hand_case():
    # one action dimension, unit std: log π(a|s) = -0.5 (a - μ)² - 0.5 log 2π
    mean, log_std = torch.tensor([[0.0], [1.0]]), torch.zeros(1)
    actions = torch.tensor([[1.0], [1.0]])
    log_prob = m.gaussian_log_prob(mean, log_std, actions)
    c = 0.5 * math.log(2 * math.pi)
    assert torch.allclose(log_prob, torch.tensor([-0.5 - c, -c]))
    weights = torch.tensor([2.0, 0.5])
    loss = m.actor_loss_fn(log_prob, weights)
    assert math.isclose(loss.item(), (2.0 * (0.5 + c) + 0.5 * c) / 2, rel_tol=1e-6)


def test_actor_gradient_pulls_the_mean_toward_high_weight_actions():
    """Weighted maximum likelihood: the mean moves toward the action with the larger weight."""
    mean = torch.zeros(2, 1, requires_grad=True)
    actions = torch.tensor([[1.0], [-1.0]])
    weights = torch.tensor([100.0, 1.0])
    m.actor_loss_fn(m.gaussian_log_prob(mean, torch.zeros(1), actions), weights).backward()
    # d loss / d μ_i = -w_i (a_i - μ_i) / (σ² · batch)
    assert torch.allclose(mean.grad, torch.tensor([[-50.0], [0.5]]))


def test_actor_std_range_and_sample_in_box():
    actor = m.Actor(2, 2, 8, 2, np.array([-2.0, -1.0]), np.array([2.0, 1.0]))
    # log σ = -6 + 6 sigmoid(ℓ): -3 at ℓ = 0, in units of the box's half-width (2 and 1)
    assert torch.allclose(actor.log_std(), torch.tensor([-3.0 + math.log(2.0), -3.0]))
    with torch.no_grad():
        actor.log_std_logit.fill_(50.0)
    assert torch.allclose(actor.log_std(), torch.tensor([math.log(2.0), 0.0]))
    samples = actor.sample(actor(torch.randn(1000, 2)))
    assert (samples.abs() <= torch.tensor([2.0, 1.0])).all()


def test_critic_target_uses_min_of_target_q_and_no_bootstrap_at_terminals():
    torch.manual_seed(0)
    actor = m.Actor(2, 1, 8, 2, np.array([-1.0]), np.array([1.0]))
    critic, critic_target = m.DoubleCritic(2, 1, 8, 2), m.DoubleCritic(2, 1, 8, 2)
    obs, actions, next_obs = torch.randn(3, 2), torch.rand(3, 1), torch.randn(3, 2)
    rewards, terminals = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 0.0])
    torch.manual_seed(1)
    loss, q = m.critic_loss_fn(critic, critic_target, actor, (obs, actions, rewards, next_obs, terminals), gamma=0.9)
    torch.manual_seed(1)
    next_actions = actor.sample(actor(next_obs))
    target = rewards + 0.9 * (1 - terminals) * critic_target(next_obs, next_actions).min(0).values
    assert torch.isclose(target[1], torch.tensor(2.0))
    assert torch.allclose(loss, ((q - target) ** 2).mean(1).sum())


@pytest.mark.learning
def test_learns(tmp_path):
    """AWAC on shipped/pendulum-medium-replay (3k transitions, behaviour score 2.2), 3000 updates at batch 256.

    The default batch of 1024 (4x the work per update) reaches only ~1000 updates in the time
    budget, too few here (seed 0: -22.2 at 500, -9.8 at 1000 updates), so the test uses 256.
    Runs made (1 thread on the shared 2-core machine: 52 updates/s alone, 22-27 under load, so
    60-145 s each), scores at 1000/2000/3000 updates: seed 0: -22.1, 21.0, 35.9; seed 1: -18.1,
    19.1, 33.4; seed 2: -26.7, 17.1, 40.7. Threshold 20 on the best: far above the behaviour
    data's 2.2. The seed is fixed at 0.
    With the current code (fused Adam) seed 0 scores -22.3, 21.0, 33.7 at the same
    evaluations (`pytest -m learning -rP` prints them).
    """
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "awac.py"),
        "--dataset",
        "shipped/pendulum-medium-replay",
        "--num-updates",
        "3000",
        "--batch-size",
        "256",
        "--eval-every",
        "1000",
        "--eval-episodes",
        "10",
        "--seed",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--runs-dir",
        str(tmp_path),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = glob.glob(str(tmp_path / "awac__*" / "results.json"))
    results = json.load(open(results))
    print_scores("awac", results)
    assert results["best_normalized_score"] > 20.0, results["evaluations"]
