"""SAC-N: the pessimistic soft target, the critic and actor losses on hand-checked cases, and learning."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import ROOT, SHIPPED, load_script, print_scores

m = load_script("sac_n")


def test_soft_target_takes_the_minimum_over_the_ensemble():
    next_q = torch.tensor([[1.0, 5.0], [3.0, 2.0], [2.0, 4.0]])  # 3 members, 2 transitions
    rewards, terminals = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    next_logp = torch.tensor([0.5, -1.0])
    y = m.soft_target(rewards, terminals, next_q, next_logp, gamma=0.9, alpha=0.2)
    # min is 1 for the first transition: 1 + 0.9 (1 - 0.2 * 0.5) = 1.81; the second ends the episode
    torch.testing.assert_close(y, torch.tensor([1.81, 0.5]))


class FixedQ(nn.Module):
    """A stand-in critic whose Q-values do not depend on the input."""

    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, obs, action):
        return self.q

    frozen = forward


def test_critic_loss_sums_members_and_averages_the_batch():
    q = torch.tensor([[1.0, 2.0], [0.0, 4.0]])  # 2 members, 2 transitions
    target_q = torch.tensor([[3.0, 1.0], [2.0, 6.0]])  # min over members: [2, 1]
    actor = lambda obs: (torch.zeros(2, 1), torch.zeros(2))  # noqa: E731  (log π = 0: no entropy term)
    batch = (
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.tensor([1.0, 0.0]),
        torch.zeros(2, 1),
        torch.tensor([0.0, 1.0]),
    )
    loss, _ = m.critic_loss_fn(FixedQ(q), FixedQ(target_q), actor, batch, gamma=0.5, alpha=1.0)
    y = torch.tensor([1.0 + 0.5 * 2.0, 0.0])  # [2, 0]
    expected = ((1 - 2) ** 2 + (2 - 0) ** 2) / 2 + ((0 - 2) ** 2 + (4 - 0) ** 2) / 2  # 2.5 + 10
    assert torch.isclose(loss, torch.tensor(expected)), (loss, y)


def test_actor_loss_uses_the_minimum_and_the_entropy_term():
    class FixedActor(nn.Module):
        def forward(self, obs):
            return torch.zeros(2, 1), torch.tensor([1.0, -2.0])

    q = torch.tensor([[4.0, -1.0], [2.0, 3.0]])  # min over members: [2, -1]
    loss, _, _ = m.actor_loss_fn(FixedActor(), FixedQ(q), torch.zeros(2, 1), alpha=0.5)
    assert torch.isclose(loss, torch.tensor(((0.5 * 1 - 2) + (0.5 * -2 + 1)) / 2))


def test_frozen_critic_matches_forward_and_gives_action_gradients_only():
    torch.manual_seed(0)
    critic = m.EnsembleCritic(obs_dim=4, act_dim=2, hidden_dim=16, members=5)
    obs, action = torch.randn(7, 4), torch.randn(7, 2, requires_grad=True)
    q = critic.frozen(obs, action)
    torch.testing.assert_close(q, critic(obs, action))
    assert q.shape == (5, 7)
    q.sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    actor = m.Actor(
        obs_dim=3, act_dim=2, hidden_dim=32, action_low=np.array([-2.0, -1.0]), action_high=np.array([2.0, 1.0])
    )
    for head in (actor.mean, actor.log_std):  # a policy far from its near-zero initialisation
        nn.init.normal_(head.weight)
    obs = torch.randn(5, 3)
    torch.manual_seed(1)
    action, log_prob = actor(obs)
    h = actor.trunk(obs)
    base = torch.distributions.Normal(actor.mean(h), actor.log_std(h).clamp(actor.LOG_STD_MIN, actor.LOG_STD_MAX).exp())
    dist = torch.distributions.TransformedDistribution(
        base,
        [
            torch.distributions.TanhTransform(),
            torch.distributions.AffineTransform(actor.action_bias, actor.action_scale),
        ],
    )
    torch.testing.assert_close(log_prob, dist.log_prob(action).sum(-1), rtol=1e-4, atol=1e-3)
    assert (action.abs() <= actor.action_scale).all()


def test_alpha_rises_when_entropy_is_below_target():
    log_alpha = torch.zeros((), requires_grad=True)
    logp = torch.tensor([2.0, 3.0])  # entropy about -2.5, below the target -1
    m.alpha_loss_fn(log_alpha, logp, target_entropy=-1.0).backward()
    assert log_alpha.grad < 0  # gradient descent raises log α


@pytest.mark.learning
def test_learns(tmp_path):
    """SAC-N learns Pendulum from the 3k-transition medium-replay data, whose behaviour scores 2.

    The paper's 3x256 networks run about 10 updates/s on this 2-core machine, too slow for a
    one-minute test, so this run narrows them to 3x64 and raises the learning rates to 1e-3
    (N = 10 critics as the default). 4000 updates, 5 evaluation episodes every 1000.
    Runs made (best normalised score, seeds 0, 1, 2): 101.3, 97.0, 101.3 (60-130 s wall, contended
    machine; all three over 88 by update 3000). Threshold 60: far above the
    behaviour data's 2.2 and pendulum-medium's 32.6.
    With the current code (fused Adam) seed 0 scores -5.0, 33.1, 91.1, 101.3 at the same
    evaluations (`pytest -m learning -rP` prints them).
    """
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "sac_n.py"),
        "--dataset",
        os.path.join(SHIPPED, "pendulum-medium-replay.hdf5"),
        "--num-updates",
        "4000",
        "--eval-every",
        "1000",
        "--eval-episodes",
        "5",
        "--hidden-dim",
        "64",
        "--actor-lr",
        "1e-3",
        "--critic-lr",
        "1e-3",
        "--alpha-lr",
        "1e-3",
        "--checkpoint-every",
        "100000",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--runs-dir",
        str(tmp_path),
        "--seed",
        "0",
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (path,) = glob.glob(str(tmp_path / "sac_n__*" / "results.json"))
    results = json.load(open(path))
    print_scores("sac_n", results)
    assert results["best_normalized_score"] > 60, results["evaluations"]
