"""CQL: the importance-sampled log-sum-exp, the penalty and its gradient, the Lagrange step, and learning."""

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

m = load_script("cql")


def test_logsumexp_with_importance_weights_hand_case():
    # two sampled actions with Q = 1 and 2, drawn from densities with log μ = 0 and log 2
    q = torch.tensor([[1.0, 2.0]])
    log_density = torch.tensor([[0.0, math.log(2.0)]])
    expected = math.log(math.exp(1.0) + math.exp(2.0) / 2.0)  # Σ_j exp(Q_j) / μ_j
    assert math.isclose(m.cql_logsumexp(q, log_density, 1.0).item(), expected, rel_tol=1e-6)
    # temperature T: T log Σ_j exp((Q_j - log μ_j) / T)
    expected_t = 2.0 * math.log(math.exp(1.0 / 2.0) + math.exp((2.0 - math.log(2.0)) / 2.0))
    assert math.isclose(m.cql_logsumexp(q, log_density, 2.0).item(), expected_t, rel_tol=1e-6)


def test_importance_sampling_estimates_the_integral():
    """(1/N) Σ exp(Q(a_j) - log μ(a_j)) → ∫ exp Q(a) da for the uniform and the policy proposals,
    so the densities the script attaches to its samples (box volume, tanh and scale Jacobians) are right."""
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    q_fn = lambda a: 0.5 * a[..., 0]  # noqa: E731  ∫_{-2}^{2} exp(a / 2) da = 2 (e - 1/e)
    exact = math.log(2.0 * (math.e - 1.0 / math.e))
    n = 200_000
    actions, log_density = m.uniform_actions(low, high, 1, n)
    assert torch.allclose(log_density, torch.full((1, n), -math.log(4.0)))
    assert ((actions >= -2.0) & (actions <= 2.0)).all()
    estimate = m.cql_logsumexp(q_fn(actions), log_density, 1.0).item() - math.log(n)
    assert math.isclose(estimate, exact, abs_tol=0.01)
    actor = m.Actor(3, 1, 8, 1, np.array([-2.0]), np.array([2.0]))
    mean, log_std = torch.tensor([[0.3]]), torch.tensor([[0.2]])  # a wide tanh-Gaussian covers the box
    actions, log_density = actor.sample(mean, log_std, n)
    assert actions.shape == (1, n, 1) and log_density.shape == (1, n)
    estimate = m.cql_logsumexp(q_fn(actions), log_density, 1.0).item() - math.log(n)
    assert math.isclose(estimate, exact, abs_tol=0.03)


def test_penalty_hand_case():
    q_data = torch.tensor([[1.0, 3.0], [0.0, 0.0]])  # [members, batch]
    q_sampled = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]])  # [members, batch, samples]
    log_density = torch.zeros(2, 2)
    penalty = m.cql_penalty(q_data, q_sampled, log_density, 1.0)
    lse = lambda x: math.log(2 * math.exp(x))  # noqa: E731  log(e^x + e^x)
    expected = torch.tensor([(lse(0.0) + lse(1.0)) / 2 - 2.0, lse(2.0) - 0.0])
    assert torch.allclose(penalty, expected)


def test_penalty_gradient_pushes_sampled_q_down_and_data_q_up():
    batch, samples = 4, 6
    q_data = torch.randn(2, batch, requires_grad=True)
    q_sampled = torch.randn(2, batch, samples, requires_grad=True)
    log_density = torch.randn(batch, samples)
    m.cql_penalty(q_data, q_sampled, log_density, 1.0).sum().backward()
    # minimising the penalty raises Q on the data: dP/dQ(s, a_data) = -1 / batch
    assert torch.allclose(q_data.grad, torch.full((2, batch), -1.0 / batch))
    # ... and lowers it on every sampled action, most where exp(Q - log μ) is largest (softmax weights)
    assert (q_sampled.grad > 0).all()
    assert torch.allclose(q_sampled.grad.sum(-1), torch.full((2, batch), 1.0 / batch))
    weights = torch.softmax(q_sampled.detach() - log_density, -1) / batch
    assert torch.allclose(q_sampled.grad, weights)


def test_penalty_step_lowers_q_off_data_relative_to_data():
    """One gradient step on the penalty alone, through a real critic, widens Q(data) - Q(sampled)."""
    torch.manual_seed(0)
    critic = m.DoubleCritic(3, 2, 32, 2)
    obs, data_actions = torch.randn(16, 3), torch.zeros(16, 2)
    sampled, log_density = m.uniform_actions(torch.full((2,), -1.0), torch.full((2,), 1.0), 16, 10)

    def gap():
        q_data = critic(obs, data_actions)
        q_sampled = critic(obs.unsqueeze(1).expand(-1, 10, -1).reshape(-1, 3), sampled.reshape(-1, 2)).view(2, 16, 10)
        return q_data, q_sampled, (q_data.unsqueeze(-1) - q_sampled).mean()

    q_data, q_sampled, before = gap()
    opt = torch.optim.SGD(critic.parameters(), lr=1e-2)
    m.cql_penalty(q_data, q_sampled, log_density, 1.0).sum().backward()
    opt.step()
    assert gap()[2] > before


def test_lagrange_step_signs():
    log_alpha_prime = torch.zeros((), requires_grad=True)
    penalty = torch.tensor([12.0, 14.0], requires_grad=True)
    critic_term, alpha_prime_loss = m.lagrange_losses(penalty, log_alpha_prime, threshold=10.0)
    assert torch.allclose(critic_term, torch.tensor([2.0, 4.0]))  # α' = 1 at log α' = 0
    alpha_prime_loss.backward()
    assert log_alpha_prime.grad < 0  # penalty above τ: gradient descent raises α'
    assert penalty.grad is None  # α''s loss does not train the critics
    log_alpha_prime.grad = None
    m.lagrange_losses(torch.tensor([8.0, 8.0]), log_alpha_prime, threshold=10.0)[1].backward()
    assert log_alpha_prime.grad > 0  # penalty below τ: α' shrinks


def test_many_is_the_critic_on_every_action_set():
    torch.manual_seed(0)
    critic = m.DoubleCritic(3, 2, 16, 3)
    obs, actions = torch.randn(5, 3), torch.randn(5, 4, 2)
    expected = torch.stack([critic(obs, actions[:, j]) for j in range(4)], -1)
    assert torch.allclose(critic.many(obs, actions), expected, atol=1e-6)


def test_frozen_critic_matches_forward_without_weight_gradients():
    critic = m.DoubleCritic(3, 2, 16, 3)
    obs, actions = torch.randn(5, 3), torch.randn(5, 2, requires_grad=True)
    assert torch.allclose(critic.frozen(obs, actions), critic(obs, actions), atol=1e-6)
    critic.frozen(obs, actions).sum().backward()
    assert actions.grad is not None and all(p.grad is None for p in critic.parameters())


def test_actor_sample_log_prob_hand_formula():
    """log π(a|s) = log N(u; μ, σ) - Σ log(1 - tanh(u)²) - Σ log(scale), a = tanh(u) · scale + bias."""
    actor = m.Actor(2, 2, 8, 1, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    mean, log_std = torch.randn(4, 2), 0.3 * torch.randn(4, 2)
    torch.manual_seed(3)
    actions, log_prob = actor.sample(mean, log_std)
    torch.manual_seed(3)
    u = mean + log_std.exp() * torch.randn(4, 2)
    scale, bias = torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.5])
    assert torch.allclose(actions, torch.tanh(u) * scale + bias)
    expected = (
        torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
        - torch.log(1 - torch.tanh(u) ** 2)
        - torch.log(scale)
    ).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-4)


def test_log_prob_of_given_actions_is_the_samples_own():
    """The warm start's log π(a|s) of the data's actions: the same density the sampler gives its own actions."""
    actor = m.Actor(2, 2, 8, 1, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    mean, log_std = torch.randn(64, 2), 0.3 * torch.randn(64, 2)
    actions, log_prob = actor.sample(mean, log_std)
    inside = (actions - actor.action_bias).abs() < 0.99 * actor.action_scale  # away from the 1e-6 clamp
    both = inside.all(-1)
    assert both.sum() > 40
    assert torch.allclose(actor.log_prob(mean, log_std, actions)[both], log_prob[both], atol=1e-3)
    edges = torch.tensor([[-2.0, 0.0], [2.0, 1.0]])  # a data action on the box's edge stays finite
    assert torch.isfinite(actor.log_prob(mean[:2], log_std[:2], edges)).all()


def test_warm_start_loss_is_behaviour_cloning():
    """During the warm start the actor's loss is α log π(ã|s) - log π(a|s), no Q: descending it raises the
    likelihood of the data's action, which pulls the mean toward it."""
    actor = m.Actor(1, 1, 8, 1, np.array([-1.0]), np.array([1.0]))
    mean = torch.zeros(1, 1, requires_grad=True)
    (-actor.log_prob(mean, torch.full((1, 1), -1.0), torch.tensor([[0.5]]))).mean().backward()
    assert mean.grad.item() < 0  # gradient descent raises the mean toward atanh(0.5)


def test_warm_start_switches_at_the_right_step(tmp_path):
    """--bc-steps 3: updates 1, 2 and 3 clone the data's actions, update 4 on is SAC's actor loss (CORL's count;
    the authors' launcher, comparing with `<`, clones one update fewer)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "cql.py"),
        "--dataset",
        os.path.join(ROOT, "datasets", "shipped", "pendulum-medium-replay.hdf5"),
        *("--num-updates", "6", "--bc-steps", "3", "--log-every", "1", "--eval-every", "6", "--eval-episodes", "1"),
        *("--checkpoint-every", "6", "--batch-size", "16", "--hidden-dim", "16", "--num-sampled-actions", "2"),
        *("--threads", "1", "--device", "cpu", "--runs-dir", str(tmp_path)),
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_dir,) = glob.glob(str(tmp_path / "cql__*"))
    events = EventAccumulator(run_dir)
    events.Reload()
    flags = {e.step: e.value for e in events.Scalars("charts/bc_warm_start")}
    assert flags == {1: 1.0, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.0, 6: 0.0}


def test_corl_init():
    """CORL's initialisation: orthogonal Q-function layers (gain √2, 0.01 on the last) with zero biases, per
    member; the actor's output layers Xavier-uniform with gain 0.01 and zero biases."""
    torch.manual_seed(0)
    actor, critic = m.Actor(3, 2, 16, 2, np.array([-1.0] * 2), np.array([1.0] * 2)), m.DoubleCritic(3, 2, 16, 2)
    m.corl_init(actor, critic)
    first, hidden, last = [layer for layer in critic.net if isinstance(layer, m.EnsembleLinear)]
    for member in range(2):
        w = first.weight[member]  # [5, 16]: orthonormal rows times √2
        assert torch.allclose(w @ w.T, 2.0 * torch.eye(5), atol=1e-5)
        assert torch.allclose(hidden.weight[member] @ hidden.weight[member].T, 2.0 * torch.eye(16), atol=1e-5)
        assert math.isclose(last.weight[member].norm().item(), 0.01, rel_tol=1e-4)  # one unit column times 0.01
    assert not torch.equal(first.weight[0], first.weight[1])  # members differ
    assert all((layer.bias == 0).all() for layer in (first, hidden, last))
    bound = 0.01 * math.sqrt(6 / (16 + 2))
    for head in (actor.mean, actor.log_std):
        assert head.weight.abs().max() <= bound and (head.bias == 0).all()


def test_defaults_are_corls_and_the_official_config_is_the_launchers():
    args = m.Args()
    corl = (args.cql_alpha, args.actor_lr, args.critic_lr, args.layers, args.hidden_dim, args.bc_steps)
    assert corl == (10.0, 3e-5, 3e-4, 3, 256, 0)
    assert args.normalize_observations and args.orthogonal_init and args.num_updates == 1_000_000
    assert (args.lagrange_threshold, args.reward_scaling) == (-1.0, "none")
    official = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "configs", "cql", "variants", "official.yaml")))
    # policy_eval_start 40000 compared with `<` after the count: updates 1 to 39,999 clone the data
    assert (official["bc_steps"], official["num_updates"], official["actor_lr"]) == (39999, 3_000_000, 1e-4)
    assert official["normalize_observations"] is False and official["orthogonal_init"] is False
    hopper = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "configs", "cql", "hopper-medium-v2.yaml")))
    assert hopper["reward_scaling"] == "return_range"  # CORL's normalize_reward, on there only


@pytest.mark.learning
def test_learns(tmp_path):
    """CQL with its defaults (CORL's: α = 10, actor lr 3e-5, standardised observations, orthogonal
    init, 3 layers, batch 256) but 64 units wide (as the CPU benchmark's rule has it; 3x256 with 31
    action sets per state is ~13 GFLOP an update, a few updates/s here) on
    shipped/pendulum-medium-replay (3k transitions, behaviour score 2.2) for 4000 updates.

    Runs made (1 thread; 13-14 updates/s on the loaded shared 2-core machine, 450-480 s; 82/s idle,
    76 s), scores at 1000, ..., 6000 updates: seed 0: -5.7, 1.8, 3.5, 26.8, 22.5, 30.2; seed 1:
    -10.4, 0.7, 2.1, 31.4, 25.4, 33.6; seed 2: -7.8, -1.4, 2.7, 28.1, 25.9, 28.0. The slower actor
    (3e-5) needs the longer budget: at 3000 updates (2x128, batch 128, the old test's budget) the
    best of seeds 0-2 was only 11.5, 2.1, 3.3, and 6000 updates at 2x128 gave seed 0 24.3. The old
    defaults (actor lr 1e-4, α 5, raw observations) reached 23.9-34.9 in 3000. Threshold 20 on
    the best, far above the behaviour data's 2.2. The seed is fixed at 0. The budget was 6000 until 2026-12-07;
    every seed above crosses 20 by 4000 (no setting follows the budget), so the check stops there, 40 s
    less of CI. At 4000 (seed 0, 2026-12-07): -5.7, 1.8, 3.5, 26.8, the first four of the
    6000-update run.
    """
    command = [sys.executable, os.path.join(ROOT, "algorithms", "cql.py")]
    command += ["--dataset", "shipped/pendulum-medium-replay", "--num-updates", "4000", "--hidden-dim", "64"]
    command += ["--eval-every", "1000", "--eval-episodes", "10", "--seed", "0", "--threads", "1", "--device", "cpu"]
    command += ["--runs-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (results,) = glob.glob(str(tmp_path / "cql__*" / "results.json"))
    results = json.load(open(results))
    print_scores("cql", results)
    assert results["best_normalized_score"] > 20.0, results["evaluations"]
