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
import yaml
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


def test_batch_softmax_weights_hand_case():
    """rlkit's form: softmax(A / λ) over the minibatch times its size, no clip, blind to a shift of A."""
    q_data = torch.tensor([0.0, math.log(2.0), math.log(5.0)])
    q_policy = torch.zeros(3)
    # λ = 1: exp(A) = [1, 2, 5], softmax = [1, 2, 5] / 8, times 3
    w = m.awac_weights(q_data, q_policy, awac_lambda=1.0, max_weight=1.0, weight_form="batch_softmax")
    assert torch.allclose(w, torch.tensor([3 / 8, 6 / 8, 15 / 8]))  # 15/8 > max_weight = 1: not clipped
    assert math.isclose(w.mean().item(), 1.0, rel_tol=1e-6)
    shifted = m.awac_weights(q_data + 50.0, q_policy, awac_lambda=1.0, max_weight=1.0, weight_form="batch_softmax")
    assert torch.allclose(shifted, w)
    # λ = 2 halves every A: exp(A / 2) = [1, √2, √5]
    half = m.awac_weights(q_data, q_policy, awac_lambda=2.0, max_weight=100.0, weight_form="batch_softmax")
    root = torch.tensor([1.0, math.sqrt(2.0), math.sqrt(5.0)])
    assert torch.allclose(half, 3 * root / root.sum())
    # a huge advantage puts all the batch's weight on its action, finitely
    huge = m.awac_weights(torch.tensor([0.0, 1e4]), torch.zeros(2), 1.0, 100.0, "batch_softmax")
    assert torch.allclose(huge, torch.tensor([0.0, 2.0]))
    # the exp form of the same A is clipped, and moves with a shift of A
    assert torch.allclose(m.awac_weights(q_data, q_policy, 1.0, 4.0, "exp"), torch.tensor([1.0, 2.0, 4.0]))


def test_defaults_are_corls_and_the_rlkit_config_is_the_authors():
    args = m.Args()
    corl = (args.awac_lambda, args.batch_size, args.actor_layers, args.critic_layers, args.actor_weight_decay)
    assert corl == (0.3333, 256, 3, 3, 0.0)
    assert (args.weight_form, args.max_weight, args.normalize_observations, args.eval_every) == (
        "exp",
        100.0,
        True,
        1000,
    )
    rlkit = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "configs", "awac", "variants", "rlkit.yaml")))
    assert rlkit["weight_form"] == "batch_softmax" and rlkit["awac_lambda"] == 2.0
    assert (rlkit["num_updates"], rlkit["batch_size"], rlkit["actor_layers"], rlkit["critic_layers"]) == (
        50000,
        128,
        4,
        2,
    )
    assert rlkit["actor_weight_decay"] == 1e-4 and rlkit["normalize_observations"] is False


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
    """AWAC with its defaults (CORL's: λ = 1/3, batch 256, 3 layers, standardised observations) but 64
    units wide, as the CPU benchmark's rule has it, on shipped/pendulum-medium-replay (3k transitions,
    behaviour score 2.2) for 4000 updates, against BC's defaults at 3000 updates (AWAC's paper reports
    it above BC offline).

    Runs made: the CPU benchmark's cells (`bash benchmarks/cpu/run.sh`, the same settings with 10,000
    updates and evaluations every 1000; AWAC has no schedule over the budget, so its first 4000 updates
    are this test's), scores at 1000/2000/3000/4000 updates: seed 0: -19.1, 24.7, 32.4, 72.8; seed 1:
    -29.1, 23.1, 41.7, 70.1; seed 2: -31.9, 25.2, 43.3, 78.9 (this test re-made seed 0 exactly). BC, seed 0:
    -1.4, 16.6, -1.5. At 3x256 (CORL's width) 3000 updates gave 80.2 / 48.8 / 61.7 at the end but
    took 180-290 s a run here, so the check uses the benchmark's width. Thresholds: 50 on the best
    and 20 above BC's best. The seed is fixed at 0.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    best = {}
    for algo in ("awac", "bc"):
        command = [sys.executable, os.path.join(ROOT, "algorithms", f"{algo}.py")]
        budget = ["--num-updates", "4000", "--hidden-dim", "64"] if algo == "awac" else ["--num-updates", "3000"]
        command += ["--dataset", "shipped/pendulum-medium-replay", *budget, "--eval-every", "1000"]
        command += ["--eval-episodes", "10", "--seed", "0", "--threads", "1", "--device", "cpu"]
        done = subprocess.run(
            command + ["--runs-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-2000:]
        (results,) = glob.glob(str(tmp_path / f"{algo}__*" / "results.json"))
        results = json.load(open(results))
        print_scores(algo, results)
        best[algo] = results["best_normalized_score"]
    assert best["awac"] > 50.0 and best["awac"] > best["bc"] + 20.0, best
