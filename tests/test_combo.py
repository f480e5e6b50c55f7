"""COMBO: the conservative term against a hand computation, its sign, the states it pushes down, the one
batched pass over the sampled actions, their importance weights, the Lagrange step and the logs of a run."""

import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script
from scripts import tiny_args

m = load_script("combo")


def known_critic(obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Two Q-functions with known values: Q1(s, a) = s + a, Q2(s, a) = 2a (1-d states and actions), [2, batch]."""
    return torch.stack([obs[:, 0] + actions[:, 0], 2 * actions[:, 0]])


# a minibatch of 2 real rows (first) and 1 model row, with 2 sampled actions per push-down state
OBS = torch.tensor([[0.0], [1.0], [2.0]])
ACTIONS = torch.tensor([[0.5], [-0.5], [1.0]])
SAMPLED = torch.tensor([[[1.0], [0.0]], [[0.0], [-1.0]], [[1.0], [1.0]]])
LOG_DENSITY = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0], [math.log(2.0), 0.0]])


def gap_of(which: str, temperature: float = 1.0) -> torch.Tensor:
    rows = m.push_down_rows(3, 2, which)
    q, q_sampled = m.critic_values(known_critic, OBS, ACTIONS, OBS[rows], SAMPLED[rows])
    return m.conservative_gap(q[:, :2], q_sampled, LOG_DENSITY[rows], temperature)


def test_conservative_gap_hand_case():
    """log Σ_j exp(Q(s, a_j) - log μ_j) averaged over the push-down states, minus the mean Q on the real (s, a)."""
    lse = lambda *terms: math.log(sum(math.exp(q) / mu for q, mu in terms))  # noqa: E731  Σ exp(Q) / μ
    # Q1 = s + a at the sampled actions: row 0 (1, 0), row 1 (1, 0), row 2 (3, 3); on the real rows 0.5 and 0.5
    q1 = [lse((1, 1), (0, 2)), lse((1, 1), (0, 1)), lse((3, 2), (3, 1))]
    # Q2 = 2a: row 0 (2, 0), row 1 (0, -2), row 2 (2, 2); on the real rows 1 and -1
    q2 = [lse((2, 1), (0, 2)), lse((0, 1), (-2, 1)), lse((2, 2), (2, 1))]
    expected_mixed = torch.tensor([sum(q1) / 3 - 0.5, sum(q2) / 3 - 0.0])
    assert torch.allclose(gap_of("mixed"), expected_mixed)
    # the model states only: row 2; the push-up still on the two real rows
    assert torch.allclose(gap_of("model"), torch.tensor([q1[2] - 0.5, q2[2] - 0.0]))
    # temperature T: T log Σ exp((Q - log μ) / T)
    t = 2.0
    row2 = t * math.log(math.exp((3 - math.log(2)) / t) + math.exp(3 / t))
    assert math.isclose(gap_of("model", t)[0].item(), row2 - 0.5, rel_tol=1e-6)


def test_push_down_rows():
    """ "mixed" pushes down every state of the minibatch, "model" the model part (after the real rows) only."""
    assert m.push_down_rows(256, 128, "mixed") == slice(0, 256)
    assert m.push_down_rows(256, 128, "model") == slice(128, 256)
    rows = torch.arange(256)
    assert rows[m.push_down_rows(256, 128, "model")].tolist() == list(range(128, 256))


def test_gap_gradient_lowers_sampled_q_and_raises_data_q():
    push, real, samples = 5, 3, 6
    q_data = torch.randn(2, real, requires_grad=True)
    q_sampled = torch.randn(2, push, samples, requires_grad=True)
    log_density = torch.randn(push, samples)
    m.conservative_gap(q_data, q_sampled, log_density, 1.0).sum().backward()
    assert torch.allclose(q_data.grad, torch.full((2, real), -1.0 / real))  # minimising raises Q on the data
    weights = torch.softmax(q_sampled.detach() - log_density, -1) / push  # and lowers it on every sampled action
    assert (q_sampled.grad > 0).all() and torch.allclose(q_sampled.grad, weights)


def test_gap_step_lowers_q_off_data_and_raises_it_on_data():
    """Gradient steps on β times the gap alone, through the script's critic, lower Q at the sampled actions and
    raise it at the data's."""
    torch.manual_seed(0)
    agent = m.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=32, hidden_layers=3)
    obs, actions = torch.randn(16, 3), torch.full((16, 1), 0.5)
    rows = m.push_down_rows(16, 8, "mixed")
    sampled, log_density = m.sampled_actions(agent.actor, obs[rows], obs[rows] + 0.1, 10)
    before_q, before_sampled = (x.detach() for x in m.critic_values(agent.critic, obs, actions, obs[rows], sampled))
    for _ in range(5):
        q, q_sampled = m.critic_values(agent.critic, obs, actions, obs[rows], sampled)
        loss = 5.0 * m.conservative_gap(q[:, :8], q_sampled, log_density, 1.0).sum()
        agent.critic_opt.zero_grad()
        loss.backward()
        agent.critic_opt.step()
    q, q_sampled = (x.detach() for x in m.critic_values(agent.critic, obs, actions, obs[rows], sampled))
    assert (q[:, :8].mean(1) > before_q[:, :8].mean(1)).all()
    assert (q_sampled.mean((1, 2)) < before_sampled.mean((1, 2))).all()


def test_sampled_actions_and_one_batched_pass():
    """3N actions per push-down state ([push, 3N, act_dim]) with their log-densities, the uniform ones in the box;
    the critics' values on the minibatch and on every sampled action come from one pass and equal separate calls."""
    torch.manual_seed(0)
    agent = m.SAC(3, 2, np.array([-2.0, -1.0]), np.array([2.0, 1.0]), hidden_dim=16, hidden_layers=3)
    obs, next_obs, actions = torch.randn(12, 3), torch.randn(12, 3), torch.rand(12, 2) - 0.5
    rows = m.push_down_rows(12, 6, "model")
    sampled, log_density = m.sampled_actions(agent.actor, obs[rows], next_obs[rows], 10)
    assert sampled.shape == (6, 30, 2) and log_density.shape == (6, 30) and not sampled.requires_grad
    uniform = sampled[:, :10]
    assert (uniform.abs() <= torch.tensor([2.0, 1.0])).all()
    assert torch.allclose(log_density[:, :10], torch.full((6, 10), -math.log(4.0 * 2.0)))
    calls = []
    critic = lambda o, a: calls.append(len(o)) or agent.critic(o, a)  # noqa: E731
    q, q_sampled = m.critic_values(critic, obs, actions, obs[rows], sampled)
    assert calls == [12 + 6 * 30]  # one pass of both members over the minibatch and the 3N actions of each state
    assert q.shape == (2, 12) and q_sampled.shape == (2, 6, 30)
    assert torch.allclose(q, agent.critic(obs, actions), atol=1e-5)
    separate = agent.critic(obs[rows].repeat_interleave(30, 0), sampled.reshape(-1, 2)).view(2, 6, 30)
    assert torch.allclose(q_sampled, separate, atol=1e-5)


class StateActor:
    """A stand-in policy whose action and log-density are the state's first coordinate: which state each block of
    sampled actions came from can be read off the actions."""

    action_scale, action_bias = torch.tensor([10.0]), torch.tensor([0.0])

    def __call__(self, obs):
        return obs[..., :1], obs[..., 0] - 100.0


def test_sampled_actions_come_from_uniform_then_pi_at_s_then_pi_at_next_s():
    obs, next_obs = torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.tensor([[5.0, 0.0], [6.0, 0.0]])
    sampled, log_density = m.sampled_actions(StateActor(), obs, next_obs, 4)
    assert torch.equal(sampled[:, 4:8, 0], torch.tensor([[1.0] * 4, [2.0] * 4]))  # π(·|s)
    assert torch.equal(sampled[:, 8:, 0], torch.tensor([[5.0] * 4, [6.0] * 4]))  # π(·|s'), evaluated at s later
    assert torch.equal(log_density[:, 4:], torch.tensor([[-99.0] * 4 + [-95.0] * 4, [-98.0] * 4 + [-94.0] * 4]))
    assert torch.allclose(log_density[:, :4], torch.full((2, 4), -math.log(20.0)))  # uniform on [-10, 10]


def test_importance_weights_estimate_the_integral():
    """(1/N) Σ exp(Q(a_j) - log μ(a_j)) → ∫ exp Q(a) da for each proposal, so the densities attached to the uniform
    and the policy samples (box volume; the block's tanh and scale Jacobians) are right."""
    torch.manual_seed(0)
    agent = m.SAC(3, 1, np.array([-2.0]), np.array([2.0]), hidden_dim=8)
    n = 100_000
    sampled, log_density = m.sampled_actions(agent.actor, torch.zeros(1, 3), torch.zeros(1, 3), n)
    exact = math.log(2.0 * (math.e - 1.0 / math.e))  # ∫_{-2}^{2} exp(a / 2) da
    q = 0.5 * sampled[..., 0]
    for part in range(3):  # uniform, π(·|s), π(·|s')
        block = slice(part * n, (part + 1) * n)
        estimate = torch.logsumexp(q[:, block] - log_density[:, block], -1).item() - math.log(n)
        assert math.isclose(estimate, exact, abs_tol=0.03), part


def test_lagrange_step():
    """α' rises while β·gap exceeds τ and falls below it; the critics see α' (gap - τ) with α' fixed."""
    log_alpha_prime = torch.zeros((), requires_grad=True)
    critic_loss, alpha_loss = m.lagrange_losses(torch.tensor([12.0, 14.0]), log_alpha_prime, 10.0)
    assert torch.allclose(critic_loss, torch.tensor([2.0, 4.0]))
    alpha_loss.backward()
    assert log_alpha_prime.grad < 0  # a descent step raises log α'
    log_alpha_prime.grad = None
    m.lagrange_losses(torch.tensor([8.0, 8.0]), log_alpha_prime, 10.0)[1].backward()
    assert log_alpha_prime.grad > 0


def test_run_logs_the_conservative_term(tmp_path):
    """A tiny run writes the gap and Q on the data and at the policy's actions to tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    argv = tiny_args("combo", runs_dir=str(tmp_path)) + ["--push-down-states", "model", "--lagrange-threshold", "1"]
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "algorithms", "combo.py"), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / "combo__*"))
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in ("losses/cql_term", "values/q_data", "values/q_policy", "values/q_model", "charts/cql_alpha_prime"):
        assert tag in tags, sorted(tags)
    assert all(math.isfinite(e.value) for e in events.Scalars("losses/cql_term"))


def test_conservative_gap_over_kinds_is_offlinerl_kits_per_draw_logsumexp():
    """--lse-over kinds: one log-sum-exp per draw j over its uniform, π(s) and π(s') values (OfflineRL-Kit as it
    runs), averaged over states and draws; the default's one over all 3N is larger (a log-sum-exp of more terms)."""
    x = torch.tensor(
        [[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]]
    )  # 1 member, 1 state, K = 6: uniform 0, 1; π(s) 2, 3; π(s') 4, 5
    zero = torch.zeros(1, 6)
    kinds = m.conservative_gap(torch.zeros(1, 1), x, zero, 1.0, "kinds")
    per_draw = [math.log(math.exp(0) + math.exp(2) + math.exp(4)), math.log(math.exp(1) + math.exp(3) + math.exp(5))]
    assert kinds.item() == pytest.approx(sum(per_draw) / 2, abs=1e-5)
    every = m.conservative_gap(torch.zeros(1, 1), x, zero, 1.0, "all")
    assert every.item() == pytest.approx(math.log(sum(math.exp(v) for v in range(6))), abs=1e-5)
    assert every.item() > kinds.item()
