"""ReBRAC: the critic's BC penalty in the target, the actor loss, the dataset's next actions, and learning."""

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

m = load_script("rebrac")


def test_penalised_target_on_a_hand_case():
    next_q = torch.tensor([[1.0, 5.0, 7.0], [3.0, 2.0, 9.0]])  # 2 critics, 3 transitions: min [1, 2, 7]
    next_actions = torch.tensor([[0.5, 0.0], [1.0, 1.0], [1.0, 1.0]])
    dataset_next = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # squared distances 0.25, 1, 2
    has_next = torch.tensor([1.0, 0.0, 1.0])  # the second transition has no a'_D: no penalty
    rewards, terminals = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 0.0, 1.0])
    y = m.penalised_target(
        rewards, terminals, next_q, next_actions, dataset_next, has_next, gamma=0.5, critic_bc_coef=2.0
    )
    # 1 + 0.5 (1 - 2 * 0.25) = 1.25;  0 + 0.5 (2 - 0) = 1;  the third ends the episode: 3
    torch.testing.assert_close(y, torch.tensor([1.25, 1.0, 3.0]))


class FixedActor(nn.Module):
    def __init__(self, action):
        super().__init__()
        self.action = action
        self.register_buffer("action_scale", torch.ones(action.shape[-1]))
        self.register_buffer("action_bias", torch.zeros(action.shape[-1]))

    def forward(self, obs):
        return self.action


class FixedQ(nn.Module):
    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, obs, action):
        return self.q


def test_critic_loss_penalises_the_target_by_the_distance_to_the_dataset_next_action():
    target_action = torch.tensor([[0.5], [-0.5]])
    batch = (
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.tensor([1.0, 0.0]),
        torch.zeros(2, 1),
        torch.zeros(2),
        torch.tensor([[0.0], [0.5]]),
        torch.ones(2),
    )  # a'_D; penalties 0.25 and 1
    q = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    target_q = torch.tensor([[4.0, 2.0], [3.0, 6.0]])  # min [3, 2]
    loss, _ = m.critic_loss_fn(
        FixedQ(q),
        FixedQ(target_q),
        FixedActor(target_action),
        batch,
        gamma=0.5,
        critic_bc_coef=4.0,
        policy_noise=0.0,
        noise_clip=0.5,
    )
    y = torch.tensor([1.0 + 0.5 * (3.0 - 4.0 * 0.25), 0.0 + 0.5 * (2.0 - 4.0 * 1.0)])  # [2, -1]
    expected = ((q - y) ** 2).mean(1).sum()  # ((1 + 4) + (0 + 1)) / 2 = 3
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss, torch.tensor(3.0))


class LinearFrozenQ(nn.Module):
    """Q_j(s, a) = <w_j, a>, exposed as `frozen` like DoubleCritic."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def frozen(self, obs, action):
        return (action[None] * self.w[:, None, :]).sum(-1)


def test_actor_loss_value_and_gradient():
    pi = torch.tensor([[0.5, -0.5]], requires_grad=True)
    actor = lambda obs: pi  # noqa: E731
    critic = LinearFrozenQ(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # Q1 = 0.5, Q2 = -0.5: the min is Q2
    data_action = torch.zeros(1, 2)
    loss, bc = m.actor_loss_fn(actor, critic, torch.zeros(1, 3), data_action, actor_bc_coef=0.1)
    # λ = 1 / |−0.5| = 2; loss = 0.1 (0.25 + 0.25) − 2 (−0.5) = 1.05
    assert torch.isclose(loss, torch.tensor(1.05)) and torch.isclose(bc, torch.tensor(0.5))
    loss.backward()
    # λ is a constant: d/dπ = 0.1 · 2 π − λ w₂ = [0.1, −0.1] − [0, 2]
    torch.testing.assert_close(pi.grad, torch.tensor([[0.1, -2.1]]))


def test_dataset_next_actions_follow_the_episode():
    observations = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    next_observations = torch.tensor([[1.0], [2.0], [3.0], [11.0], [11.0]])  # row 2 is cut (next row starts anew)
    actions = torch.tensor([[0.1], [0.2], [0.3], [0.4], [0.5]])
    terminals = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])
    data = m.OfflineData(
        name="toy",
        observations=observations,
        actions=actions,
        rewards=torch.zeros(5),
        next_observations=next_observations,
        terminals=terminals,
        episode_returns=np.zeros(2),
        make_env=None,
        ref_min_score=0.0,
        ref_max_score=1.0,
    )
    next_actions, has_next = m.dataset_next_actions(data)
    torch.testing.assert_close(has_next, torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(next_actions, torch.tensor([[0.2], [0.3], [0.3], [0.5], [0.5]]))


def test_dataset_next_actions_on_a_shipped_dataset():
    data = m.load_dataset(os.path.join(SHIPPED, "pendulum-medium-replay.hdf5"), torch.device("cpu"))
    next_actions, has_next = m.dataset_next_actions(data)
    assert has_next.mean() > 0.99  # only the last step of each episode lacks a successor
    rows = has_next[:-1].bool()
    torch.testing.assert_close(next_actions[:-1][rows], data.actions[1:][rows])


def test_layer_norm_critic_frozen_matches_forward_and_members_are_independent():
    torch.manual_seed(0)
    critic = m.DoubleCritic(obs_dim=4, act_dim=2, hidden_dim=16, layer_norm=True)
    for p in critic.parameters():
        nn.init.normal_(p)
    obs, action = torch.randn(5, 4), torch.randn(5, 2, requires_grad=True)
    q = critic.frozen(obs, action)
    torch.testing.assert_close(q, critic(obs, action))
    q.sum().backward()
    assert action.grad.abs().sum() > 0 and all(p.grad is None for p in critic.parameters())
    # the ensemble LayerNorm is one nn.LayerNorm per member
    norm = critic.net[2]
    x = torch.randn(2, 5, 16)
    for j in range(2):
        single = nn.LayerNorm(16)
        single.weight.data, single.bias.data = norm.weight[j, 0], norm.bias[j, 0]
        torch.testing.assert_close(norm(x)[j], single(x[j]))


@pytest.mark.learning
def test_learns(tmp_path):
    """ReBRAC learns Pendulum from the 3k-transition medium-replay data, whose behaviour scores 2.

    The paper's setting (3x256, batch 1024) runs about 9 updates/s on this 2-core machine, too
    slow for a one-minute test, so this run narrows the networks to 3x64 and the minibatch to
    256 (β₁ = 0.001, β₂ = 0.01, the defaults). 10000 updates, 5 evaluation episodes every 2500.
    Runs made (normalised score at 2500, 5000, 7500, 10000; seeds 0, 1, 2): [17.7, 57.2, 99.8,
    105.0], [30.1, 90.8, 98.9, 103.0], [20.9, 60.1, 98.2, 100.9], 38-60 s wall on the contended
    machine. Threshold 80: far above the behaviour data's 2.2 and pendulum-medium's 32.6.
    With the current code (fused Adam) seed 0 scores 15.6, 67.9, 99.8, 104.9 at the same
    evaluations (`pytest -m learning -rP` prints them).
    """
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "rebrac.py"),
        "--dataset",
        os.path.join(SHIPPED, "pendulum-medium-replay.hdf5"),
        "--num-updates",
        "10000",
        "--eval-every",
        "2500",
        "--eval-episodes",
        "5",
        "--hidden-dim",
        "64",
        "--batch-size",
        "256",
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
    (path,) = glob.glob(str(tmp_path / "rebrac__*" / "results.json"))
    results = json.load(open(path))
    print_scores("rebrac", results)
    assert results["best_normalized_score"] > 80, results["evaluations"]
