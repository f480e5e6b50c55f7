"""The model-based core made faithful (issue 13): HALT's value whatever the rewards' sign, the
disagreements without the reward dimension, MOPO's penalty over all members, a calibrated learned
termination, the stand-in next observations left out of dynamics training, and the divergence rule."""

import json
import os

import h5py
import numpy as np
import pytest
import torch
from conftest import SHIPPED, load_script

mopo = load_script("mopo")
morel = load_script("morel")


def test_halt_is_never_better_than_a_known_state_with_negative_rewards():
    """Pendulum-like rewards, all in [-16, -1]: entering HALT must be worth no more than the worst
    policy in known states (-16 / (1 - γ)); the paper's fixed -κ on one step would be worth -κ."""
    gamma, rewards = 0.99, torch.tensor([-16.0, -1.0, -5.0])
    worst_known = rewards.min().item() / (1 - gamma)
    for kappa in (0.0, 1.0, 10.0):
        assert morel.halt_value(rewards.min().item(), kappa, gamma) <= worst_known + 1e-6
    assert morel.halt_value(-16.0, 0.0, gamma) == pytest.approx(-1600.0)
    # with positive rewards too (Hopper-like), HALT stays below every known state
    assert morel.halt_value(0.5, 0.0, gamma) == pytest.approx(50.0) and morel.halt_value(0.5, 1.0, gamma) < 0
    reward, done, unknown = morel.halt(
        torch.tensor([-1.0, -2.0]),
        torch.tensor([False, False]),
        torch.tensor([5.0, 0.1]),
        threshold=1.0,
        halt_q=-1600.0,
    )
    assert reward.tolist() == [-1600.0, -2.0] and done.tolist() == [True, False] and unknown.tolist() == [True, False]


def test_disagreement_ignores_the_reward_dimension():
    """Members that agree on the next state and differ only in the reward show no disagreement."""
    mean = torch.tensor([[[1.0, 2.0, 0.0]], [[1.0, 2.0, 100.0]]])  # [members, batch, obs 2 + reward]
    std = torch.tensor([[[0.1, 0.1, 50.0]], [[0.1, 0.1, 0.1]]])
    assert morel.disagreement_of(mean, std, "epistemic").item() == pytest.approx(0.0, abs=1e-5)
    assert morel.disagreement_of(mean, std, "aleatoric").item() == pytest.approx(np.hypot(0.1, 0.1), abs=1e-5)
    assert mopo.uncertainty_of(mean, std, "epistemic").item() == pytest.approx(0.0, abs=1e-5)
    # MOPO's aleatoric penalty is the official one: all outputs, reward included
    assert mopo.uncertainty_of(mean, std, "aleatoric").item() == pytest.approx(np.sqrt(0.02 + 2500), abs=1e-3)


def test_mopo_penalty_is_over_all_members_not_only_the_elites():
    """A non-elite member with a large predicted std sets the penalty (tianheyu927/mopo, OfflineRL-Kit),
    while the sampled transition still comes from an elite."""
    model = mopo.EnsembleDynamics(1, 1, members=3, elites=2, hidden_dim=8, hidden_layers=1, weight_decays=(0.0, 0.0))
    mean = torch.zeros(3, 4, 2)
    mean[2] = 50.0  # the non-elite's prediction would be far away
    std = torch.full((3, 4, 2), 0.01)
    std[2] = 3.0
    model.forward = lambda obs, act, members=None: (
        (mean, 2 * torch.log(std)) if members is None else (mean[members], 2 * torch.log(std[members]))
    )
    model.elite_idx.copy_(torch.tensor([0, 1]))
    actor = mopo.TanhGaussianActor(1, 1, 8, np.array([-1.0]), np.array([1.0]))
    never = lambda next_obs: torch.zeros(len(next_obs), dtype=torch.bool)  # noqa: E731
    (obs, _, rewards, next_obs, _), stats = mopo.rollout(model, actor, torch.zeros(4, 1), 1, never, 1.0, "aleatoric")
    assert stats["rollout/uncertainty"].item() == pytest.approx(3.0 * np.sqrt(2), rel=1e-4)
    assert (next_obs.abs() < 1).all()  # sampled from the elites (mean 0), not from the member at 50
    # the pairwise measure through the same rollout: it divides by the model's observation std (input_std)
    model.input_std.copy_(torch.tensor([2.0, 1.0]))
    _, stats = mopo.rollout(model, actor, torch.zeros(4, 1), 1, never, 1.0, "pairwise")
    assert stats["rollout/uncertainty"].item() == pytest.approx(50.0 / 2.0, rel=1e-4)  # members 0 and 2, Δs 50


def write_file_without_next_observations(path, n_episodes=60, length=10):
    """A 1-d task with s' = s + 1 every step, where each episode ends in a terminal: the file has no
    next_observations, so every terminal step gets its own observation as a stand-in (Δ = 0)."""
    obs = np.concatenate([np.arange(length, dtype=np.float32) for _ in range(n_episodes)])[:, None] / length
    terminals = np.tile(np.arange(length) == length - 1, n_episodes)
    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([obs, obs, obs], 1)  # Pendulum's 3-d observations
        f["actions"] = np.zeros((len(obs), 1), np.float32)
        f["rewards"] = np.zeros(len(obs), np.float32)
        f["terminals"] = terminals
        f["timeouts"] = np.zeros(len(obs), bool)
        f.attrs["env_id"] = "Pendulum-v1"
    return path


def test_stand_in_next_observations_are_marked_and_left_out_of_dynamics_training(tmp_path):
    data = mopo.load_dataset(str(write_file_without_next_observations(tmp_path / "d.hdf5")), torch.device("cpu"))
    stand_in = ~data.next_observed
    assert stand_in.sum() == 60 and torch.equal(stand_in, data.terminals.bool())
    assert torch.equal(data.next_observations[stand_in], data.observations[stand_in])  # Δ = 0 there
    # the ensemble learns Δ = 1/length everywhere: the stand-ins (Δ = 0 at the last state) are not its data
    torch.manual_seed(0)
    model = mopo.EnsembleDynamics(3, 1, members=2, elites=2, hidden_dim=32, hidden_layers=2, weight_decays=(0, 0, 0))
    mopo.train_dynamics(model, data, holdout_size=100, patience=20, max_epochs=150)
    with torch.no_grad():
        delta = model(data.observations[stand_in], data.actions[stand_in])[0][..., 0]
    assert (delta - 0.1).abs().max() < 0.03, delta  # with the stand-ins it would be pulled toward 0


def test_learned_termination_is_calibrated_for_rare_terminals():
    """Terminal where s'[0] > 0.95 (a few percent of the states): the classifier ends rollouts there and
    almost nowhere else, not at about half the states as a class-balanced one would."""
    data = mopo.load_dataset(os.path.join(SHIPPED, "pendulum-medium.hdf5"), torch.device("cpu"))
    data.terminals = (data.next_observations[:, 0] > 0.95).float()
    rate = data.terminals.mean().item()
    assert 0.005 < rate < 0.2
    torch.manual_seed(0)
    fn = mopo.learned_termination(data)
    predicted = fn(data.next_observations).float()
    assert abs(predicted.mean().item() - rate) < 0.25 * rate + 0.005
    assert (predicted == data.terminals).float().mean() > 0.98


def make_agent():
    torch.manual_seed(0)
    return mopo.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=16, gamma=0.99)


def test_q_range_by_hand():
    """Rewards in [-16, 0], α = 1, actions in [-2, 2]: the highest soft value is γ α log 4 / (1 - γ)
    (the uniform policy's entropy every step), the lowest (-16 + γ α H_min) / (1 - γ)."""
    agent = make_agent()
    low, high = agent.q_range(-16.0, 0.0)
    assert high == pytest.approx(0.99 * np.log(4.0) / 0.01, rel=1e-5)
    h_min = -5.0 + 0.5 * np.log(2 * np.pi * np.e) + np.log(2.0)
    assert low == pytest.approx((-16.0 + 0.99 * h_min) / 0.01, rel=1e-5)
    # for a policy as random as the current one (mean entropy -1): both ends at that entropy
    low, high = agent.q_range(-16.0, 0.0, entropy=-1.0)
    assert high == pytest.approx(-0.99 / 0.01, rel=1e-5) and low == pytest.approx((-16.0 - 0.99) / 0.01, rel=1e-5)


def test_q_range_when_episodes_can_end():
    """Rewards in [0, 1] (survival's) and a policy of entropy 1, α = 1: the endless sums give
    [0.99 / 0.01, (1 + 0.99) / 0.01], but an imagined episode that ends at once is worth its one reward, 0."""
    agent = make_agent()
    low, high = agent.q_range(0.0, 1.0, entropy=1.0)
    assert low == pytest.approx(99.0, rel=1e-5) and high == pytest.approx(199.0, rel=1e-5)
    low, high = agent.q_range(0.0, 1.0, entropy=1.0, can_end=True)
    assert low == 0.0 and high == pytest.approx(199.0, rel=1e-5)
    # negative per-step terms (Pendulum's rewards): one step is the highest value, the endless sum the lowest
    low, high = agent.q_range(-16.0, -1.0, entropy=-1.0, can_end=True)
    assert high == -1.0 and low == pytest.approx((-16.0 - 0.99) / 0.01, rel=1e-5)


def test_offline_mbrl_modes_by_hand():
    """Mr-Pepe's modes on four rows: disagreement 0.1, 0.5, 0.9, 2.0 against threshold 1.0 (the last row
    unknown), exploration threshold 0.4, model rewards -3 each, the second row terminal in the model."""
    reward, done = torch.full((4,), -3.0), torch.tensor([False, True, False, False])
    u = torch.tensor([0.1, 0.5, 0.9, 2.0])
    r, d, unknown = morel.mode_reward("survival", reward, done, u, 1.0, 2.0, 0.4)
    assert r.tolist() == [1.0, 1.0, 1.0, 0.0] and d.tolist() == [False, True, False, True]
    assert unknown.tolist() == [False, False, False, True]
    # the bonus is paid on the unknown step too, and the task reward is gone
    r, d, _ = morel.mode_reward("exploration-penalty", reward, done, u, 1.0, 2.0, 0.4)
    assert r.tolist() == pytest.approx([0.2, 1.0, 1.8, 4.0]) and d.tolist() == [False, True, False, True]
    r, d, _ = morel.mode_reward("exploration-partitioning", reward, done, u, 1.0, 2.0, 0.4)
    assert r.tolist() == [-3.0, 1.0, 1.0, 0.0] and d.tolist() == [False, True, False, True]


def toy_ensemble():
    """Two members on a 1-d state: both predict no change and reward -1 below 0; above 0 the second
    predicts a change of 2, so there they disagree by 2."""
    model = morel.EnsembleDynamics(1, 1, members=2, elites=2, hidden_dim=8, hidden_layers=1, weight_decays=(0.0, 0.0))

    def forward(obs, actions, members=None):
        zero, spread = torch.zeros_like(obs[:, :1]), 2.0 * (obs[:, :1] > 0).float()
        mean = torch.stack([torch.cat([zero, zero - 1], -1), torch.cat([spread, zero - 1], -1)])
        logvar = torch.full_like(mean, -30.0)
        return (mean, logvar) if members is None else (mean[members], logvar[members])

    model.forward = forward
    return model


@pytest.mark.parametrize(
    "mode,rewards",
    [
        ("survival", [1.0, 0.0, 1.0]),
        ("exploration-penalty", [0.0, 6.0, 0.0]),
        ("exploration-partitioning", [-1.0, 0.0, -1.0]),
    ],
)
def test_modes_roll_out_on_a_toy_ensemble(mode, rewards):
    """Two rollouts of 2 steps, from -1 (the members agree: known) and +1 (they disagree by 2, beyond the
    threshold 1: unknown). The unknown one ends at its first step with the mode's reward (0; the bonus 3 x 2;
    0); the known one goes on, paid 1, the bonus 3 x 0, or the model's -1 below the exploration threshold."""
    never_done = lambda next_obs: torch.zeros(len(next_obs), dtype=torch.bool)  # noqa: E731
    still = lambda obs: (torch.zeros(len(obs), 1), None)  # noqa: E731
    (obs, _, reward, _, terminal), stats = morel.rollout(
        toy_ensemble(),
        still,
        torch.tensor([[-1.0], [1.0]]),
        2,
        never_done,
        1.0,
        -100.0,
        "epistemic",
        mode=mode,
        exploration=(3.0, 0.5),
    )
    assert obs[:, 0].tolist() == pytest.approx([-1.0, 1.0, -1.0], abs=1e-5)
    assert reward.tolist() == pytest.approx(rewards) and terminal.tolist() == [0.0, 1.0, 0.0]
    assert stats["rollout/halt_rate"].item() == pytest.approx(1 / 3)


def test_normalised_disagreement_is_in_dataset_state_units():
    """Mr-Pepe's u_epi: the members' next-state means divided by the dataset's state std before the
    largest pairwise distance. Means (0, 0) and (3, 4) with stds (3, 2) per dimension: ||(1, 2)|| = √5."""
    mean = torch.tensor([[[0.0, 0.0, 7.0]], [[3.0, 4.0, -7.0]]])  # [members, batch, obs 2 + reward]
    std = torch.full_like(mean, 0.1)
    assert morel.disagreement_of(mean, std, "epistemic").item() == pytest.approx(5.0, abs=1e-5)
    scale = torch.tensor([3.0, 2.0])
    assert morel.disagreement_of(mean, std, "epistemic", scale).item() == pytest.approx(np.sqrt(5.0), abs=1e-5)
    assert morel.disagreement_of(mean, std, "aleatoric", scale).item() == pytest.approx(np.hypot(0.1 / 3, 0.05))


def test_divergence_rule_on_a_critic_made_to_diverge():
    agent = make_agent()
    obs, actions = torch.randn(64, 3), torch.rand(64, 1) * 4 - 2
    logs, problem = agent.check_values({"real": (obs, actions), "model": (obs, actions)}, -16.0, 0.0)
    assert problem is None and set(logs) >= {"values/q_real", "values/q_model"}
    with torch.no_grad():
        agent.critic.net[-1].bias.fill_(500.0)  # Q near +500: more than any policy can earn with rewards <= 0
    logs, problem = agent.check_values({"real": (obs, actions), "model": (obs, actions)}, -16.0, 0.0)
    assert problem is not None and "diverged" in problem and "real" in problem
    with torch.no_grad():
        agent.critic.net[-1].bias.fill_(-50.0)  # -50: possible for a uniform policy, not for one of entropy -1
    assert agent.check_values({"model": (obs, actions)}, -16.0, 0.0)[1] is None
    assert agent.check_values({"model": (obs, actions)}, -16.0, 0.0, entropy=-1.0)[1] is not None
    with torch.no_grad():
        agent.critic.net[-1].bias.fill_(float("nan"))
    assert agent.check_values({"model": (obs, actions)}, -16.0, 0.0)[1] is not None


def test_stop_run_records_why_and_keeps_what_was_written(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run_dir = str(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"previous")
    (tmp_path / "results.json").write_text(json.dumps({"algo": "mopo", "evaluations": [{"step": 1000}]}))
    with pytest.raises(SystemExit) as stop:
        mopo.stop_run(run_dir, SummaryWriter(run_dir), "the critic diverged: mean Q on model data is 512")
    assert str(stop.value).startswith("stopped: the critic diverged")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["stopped"].startswith("the critic diverged") and results["evaluations"] == [{"step": 1000}]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"previous"


def test_critic_layer_norm_and_members():
    agent = mopo.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=16, critic_members=5, critic_layer_norm=True)
    q = agent.critic(torch.randn(7, 3), torch.rand(7, 1))
    assert q.shape == (5, 7)
    assert any(isinstance(m, torch.nn.LayerNorm) for m in agent.critic.net)
    batch = (torch.randn(32, 3), torch.rand(32, 1), torch.randn(32), torch.randn(32, 3), torch.zeros(32))
    assert torch.isfinite(agent.update(*batch)["losses/critic_loss"])


def test_cosine_actor_learning_rate_and_alpha_cap():
    agent = mopo.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=16, actor_lr=1e-3, cosine_actor_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(agent.actor_opt.param_groups[0]["lr"])
        agent.actor_schedule.step()
    assert (
        lrs[0] == pytest.approx(1e-3)
        and lrs[50] == pytest.approx(5e-4)
        and agent.actor_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    )
    capped = mopo.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=16, alpha_max=0.5)
    with torch.no_grad():
        capped.log_alpha.fill_(np.log(3.0))
    batch = (torch.randn(8, 3), torch.rand(8, 1), torch.randn(8), torch.randn(8, 3), torch.zeros(8))
    assert capped.update(*batch)["charts/alpha"].item() == pytest.approx(0.5)


def test_failed_dynamics_cache_write_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch):
    """A full disk while the trained ensemble is saved: one line naming the file, no .tmp left."""
    data = mopo.load_dataset(os.path.join(SHIPPED, "pendulum-medium-replay.hdf5"), torch.device("cpu"))
    settings = {
        "members": 2,
        "elites": 1,
        "hidden_dim": 8,
        "hidden_layers": 1,
        "batch_size": 256,
        "lr": 1e-3,
        "holdout_size": 100,
        "patience": 1,
        "max_epochs": 1,
    }

    def full_disk(obj, path, *args, **kwargs):
        open(path, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mopo.torch, "save", full_disk)
    with pytest.raises(SystemExit) as stop:
        mopo.load_or_train_dynamics(data, settings, 0, str(tmp_path), None, torch.device("cpu"))
    message = str(stop.value)
    assert message.startswith("error: could not write the trained dynamics ensemble") and str(tmp_path) in message
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
