"""IQL: the expectile value loss, the advantage weights and their clip, reward scaling by dataset kind, learning."""

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

m = load_script("iql")


def test_expectile_loss_hand_case():
    # u = Q - V = [2, -1] with τ = 0.7: weights 0.7 (V below Q) and 0.3 (V above Q)
    diff = torch.tensor([2.0, -1.0])
    assert torch.isclose(m.expectile_loss(diff, 0.7), torch.tensor((0.7 * 4 + 0.3 * 1) / 2))
    # τ = 0.5 is half the mean squared error
    assert torch.isclose(m.expectile_loss(diff, 0.5), 0.5 * (diff**2).mean())


def test_expectile_loss_minimiser_is_the_expectile():
    """Minimising the loss over a constant v gives the τ-expectile: the mean at τ = 0.5, above it for τ > 0.5."""
    q = torch.tensor([0.0, 1.0, 5.0])
    for tau in (0.5, 0.7, 0.9):
        v = torch.zeros((), requires_grad=True)
        opt = torch.optim.SGD([v], lr=0.2)
        for _ in range(2000):
            opt.zero_grad()
            m.expectile_loss(q - v, tau).backward()
            opt.step()
        # the τ-expectile solves τ Σ_{q>v} (q - v) = (1 - τ) Σ_{q<v} (v - q)
        balance = tau * (q - v).clamp(min=0).sum() - (1 - tau) * (v - q).clamp(min=0).sum()
        assert abs(balance.item()) < 1e-4
        if tau == 0.5:
            assert math.isclose(v.item(), 2.0, abs_tol=1e-4)
    # τ = 0.9 on [0, 1, 5]: v between 1 and 5, 0.9 (5 - v) = 0.1 (v + v - 1)  =>  v = 4.6 / 1.1
    assert math.isclose(v.item(), 4.6 / 1.1, abs_tol=1e-4)


def test_value_loss_uses_min_of_target_q():
    critic = m.DoubleCritic(2, 1, 8)
    value = m.ValueNet(2, 8)
    obs, actions = torch.randn(5, 2), torch.randn(5, 1)
    loss, target_q = m.value_loss_fn(value, critic, obs, actions, 0.7)
    assert torch.allclose(target_q, critic(obs, actions).min(0).values)
    assert torch.isclose(loss, m.expectile_loss(target_q - value(obs), 0.7))
    assert not target_q.requires_grad  # the target Q is not trained by the value loss


def test_advantage_weights_and_clip():
    advantage = torch.tensor([0.0, 1.0, 2.0, -1.0, 1000.0])
    w = m.advantage_weights(advantage, beta=3.0, max_weight=100.0)
    expected = torch.tensor(
        [1.0, math.exp(3.0), 100.0, math.exp(-3.0), 100.0]
    )  # exp(6) = 403 and exp(3000) = inf clip to 100
    assert torch.allclose(w, expected)
    assert torch.isfinite(w).all()
    # β = 0 is behaviour cloning: every weight is 1
    assert torch.equal(m.advantage_weights(advantage, 0.0, 100.0), torch.ones(5))


def test_actor_log_prob_and_loss_hand_case():
    actor = m.Actor(2, 2, 8, np.array([-2.0, -1.0]), np.array([2.0, 1.0]))
    obs, actions = torch.randn(3, 2), torch.tensor([[0.5, -0.2], [1.9, 0.9], [-1.0, 0.0]])
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-0.5, 0.3]))
    mean = actor(obs)
    std = torch.exp(torch.tensor([-0.5, 0.3])) * torch.tensor([2.0, 1.0])  # σ in units of the box's half-width
    expected = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    assert torch.allclose(actor.log_prob(obs, actions), expected, atol=1e-5)
    weights = torch.tensor([1.0, 100.0, 0.5])
    assert torch.isclose(m.actor_loss_fn(actor, obs, actions, weights), -(weights * expected).mean(), atol=1e-5)
    # the mean stays inside the action box
    assert (actor(100 * torch.randn(64, 2)).abs() <= torch.tensor([2.0, 1.0])).all()


def test_actor_log_std_is_clipped():
    actor = m.Actor(1, 1, 4, np.array([-1.0]), np.array([1.0]))
    with torch.no_grad():
        actor.log_std.fill_(-20.0)
    obs = torch.zeros(1, 1)
    mean = actor(obs)
    expected = torch.distributions.Normal(mean, math.exp(-5.0)).log_prob(mean + 0.01).sum(-1)
    assert torch.allclose(actor.log_prob(obs, mean + 0.01), expected, rtol=1e-4)


def test_critic_loss_hand_case():
    critic = m.DoubleCritic(1, 1, 4)
    obs, actions = torch.randn(2, 1), torch.randn(2, 1)
    rewards, terminals, next_v = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0])
    loss, q = m.critic_loss_fn(critic, obs, actions, rewards, terminals, next_v, gamma=0.9)
    target = torch.tensor([1.0 + 0.9 * 10.0, 2.0])  # the terminal step does not bootstrap
    assert torch.isclose(loss, ((q - target) ** 2).mean(1).sum())


def offline_data(name="test", env_id="", reward_scaling=None, rewards=(1.0, 2.0), episode_returns=(10.0, -30.0, 70.0)):
    """An OfflineData with only what the reward scaling reads."""
    n = len(rewards)
    return m.OfflineData(
        name=name,
        observations=torch.zeros(n, 1),
        actions=torch.zeros(n, 1),
        rewards=torch.tensor(rewards),
        next_observations=torch.zeros(n, 1),
        terminals=torch.zeros(n),
        episode_returns=np.array(episode_returns),
        make_env=None,
        ref_min_score=None,
        ref_max_score=None,
        env_id=env_id,
        reward_scaling=reward_scaling,
    )


def test_scale_rewards_each_rule():
    data = offline_data()  # episode returns span 70 - (-30) = 100
    m.scale_rewards(data, "return_range")
    assert torch.allclose(data.rewards, torch.tensor([10.0, 20.0]))  # times 1000 / 100
    data = offline_data()
    m.scale_rewards(data, "minus_one")
    assert torch.allclose(data.rewards, torch.tensor([0.0, 1.0]))
    data = offline_data()
    m.scale_rewards(data, "none")
    assert torch.equal(data.rewards, torch.tensor([1.0, 2.0]))
    for returns in ([5.0], [3.0, 3.0], []):  # no spread: the scale is undefined, one clear error
        with pytest.raises(m.DatasetError, match="--reward-scaling none"):
            m.scale_rewards(offline_data(episode_returns=returns), "return_range")


@pytest.mark.parametrize(
    "name, env_id, attribute, rule",
    [
        # the official code's rule by kind of task (ikostrikov/implicit_q_learning train_offline.py)
        ("hopper-medium-v2", "Hopper-v4", None, "return_range"),
        ("halfcheetah-random-v2", "HalfCheetah-v4", None, "return_range"),
        ("walker2d-medium-expert-v2", "Walker2d-v4", None, "return_range"),
        ("ant-medium-v2", "Ant-v4", None, "none"),  # locomotion, but not among the official code's three
        ("antmaze-umaze-v2", "", None, "minus_one"),
        ("D4RL/antmaze/umaze-v1", "", None, "minus_one"),  # a Minari id: its name says the task
        ("mujoco/hopper/medium-v0", "", None, "return_range"),
        ("runs/data.hdf5", "Hopper-v4", None, "return_range"),  # a file: its env_id says the task
        ("shipped/hopper-medium", "Hopper-v4", None, "return_range"),
        ("runs/data.hdf5", "Pendulum-v1", None, "none"),
        ("mujoco/pen/human-v0", "", None, "none"),
        # a file's own rule wins over its kind
        ("runs/data.hdf5", "Pendulum-v1", "return_range", "return_range"),
        ("runs/hopper.hdf5", "Hopper-v4", "none", "none"),
    ],
)
def test_reward_scaling_rule_by_dataset_kind(name, env_id, attribute, rule):
    assert m.reward_scaling_rule(offline_data(name, env_id, attribute)) == rule


@pytest.mark.parametrize(
    "name, rule",
    [
        ("pendulum-medium", "return_range"),
        ("pendulum-medium-replay", "return_range"),
        ("hopper-medium", "return_range"),
    ],
)
def test_shipped_datasets_reward_scaling(name, rule):
    """The shipped Pendulum files ask for return_range themselves (attribute reward_scaling), which keeps IQL on
    them as it was; the Hopper files get it by their kind."""
    data = m.load_dataset("shipped/" + name, torch.device("cpu"))
    assert data.reward_scaling == ("return_range" if name.startswith("pendulum") else None)
    assert m.reward_scaling_rule(data) == rule


def test_reward_scale_from_the_loader_episodes():
    """Episode returns come from the dataset's episodes (terminals and timeouts both end one)."""
    rewards = np.array([1.0, 1.0, 1.0, 5.0, 5.0, 0.5, 0.5, 0.5], dtype=np.float32)
    terminals = np.array([0, 0, 1, 0, 0, 0, 0, 0], dtype=bool)
    timeouts = np.array([0, 0, 0, 0, 1, 0, 0, 1], dtype=bool)
    data = m.transitions_from_arrays(
        {
            "observations": np.zeros((8, 1)),
            "actions": np.zeros((8, 1)),
            "rewards": rewards,
            "terminals": terminals,
            "timeouts": timeouts,
        },
        "test",
    )
    np.testing.assert_allclose(data["episode_returns"], [3.0, 10.0, 1.5])
    scaled = offline_data(rewards=(1.0,), episode_returns=data["episode_returns"])
    m.scale_rewards(scaled, "return_range")
    assert math.isclose(scaled.rewards.item(), 1000.0 / 8.5, rel_tol=1e-6)


@pytest.mark.learning
def test_learns(tmp_path):
    """IQL on shipped/pendulum-medium-replay (3k transitions, behaviour score 2.2) for 3000 updates.

    Runs made (1 thread on the shared 2-core machine, 27-60 updates/s depending on the load, so
    50-120 s each), scores at 1000/2000/3000 updates: seed 0: -21.7, 16.3, 48.6; seed 1: -24.6,
    15.8, 49.0; seed 2: -32.1, 18.6, 47.3. Threshold 30 on the best: far above the behaviour
    data's 2.2; with β = 0 (weighted regression becomes behaviour cloning) the same run scored 0.3,
    1.4, -6.3. The seed is fixed at 0.
    With the current code (fused Adam) seed 0 scores -21.8, 16.9, 43.4 at the same
    evaluations (`pytest -m learning -rP` prints them). Since rewards are scaled by dataset kind,
    the file's attribute reward_scaling = return_range keeps that scaling here (seed 0: -21.7, 17.1,
    44.3); without any (--reward-scaling none) seed 0 scored -20.8, 17.7, 43.7, since the scale on
    this file is only 1000 / (max - min episode return) = 1.35.
    """
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "iql.py"),
        "--dataset",
        "shipped/pendulum-medium-replay",
        "--num-updates",
        "3000",
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
    (results,) = glob.glob(str(tmp_path / "iql__*" / "results.json"))
    results = json.load(open(results))
    print_scores("iql", results)
    assert results["best_normalized_score"] > 30.0, results["evaluations"]
