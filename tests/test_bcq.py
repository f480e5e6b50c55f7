"""BCQ: the VAE's ELBO and its latent clipping, the perturbation bound, the soft clipped double-Q
target over sampled actions, the evaluation's argmax over perturbed samples, and learning."""

import glob
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script, print_scores

m = load_script("bcq")


def small_nets(obs_dim=3, act_dim=2, low=(-1.0, -1.0), high=(1.0, 1.0), phi=0.05):
    low, high = np.array(low, dtype=np.float32), np.array(high, dtype=np.float32)
    vae = m.VAE(obs_dim, act_dim, 2 * act_dim, 16, 0.5, low, high)
    actor = m.Perturbation(obs_dim, act_dim, (16, 12), phi, low, high)
    critic = m.DoubleCritic(obs_dim, act_dim, (16, 12))
    return vae, actor, critic


# ---------------------------------------------------------------------------- the VAE
def test_elbo_terms_hand_case():
    recon, actions = torch.tensor([[0.5, -0.5]]), torch.tensor([[1.0, 0.0]])
    mean, log_std = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    recon_loss, kl = m.elbo_terms(recon, actions, mean, log_std)
    assert math.isclose(recon_loss.item(), (0.25 + 0.25) / 2, rel_tol=1e-6)  # mean over the action dimensions
    # KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² - 1 - log σ²): ½ (1 + 1 - 1 - 0) = 0.5 and ½ (0 + 4 - 1 - 2 log 2)
    expected_kl = (0.5 + 0.5 * (3.0 - 2.0 * math.log(2.0))) / 2  # mean over the latent dimensions
    assert math.isclose(kl.item(), expected_kl, rel_tol=1e-6)
    # the loss the script minimises: reconstruction + 0.5 KL
    assert math.isclose(recon_loss.item() + 0.5 * kl.item(), 0.25 + 0.5 * 0.6534264, rel_tol=1e-6)


def test_kl_term_is_the_gaussian_kl():
    torch.manual_seed(0)
    mean, log_std = torch.randn(6, 4), 0.5 * torch.randn(6, 4)
    standard = torch.distributions.Normal(torch.zeros(6, 4), torch.ones(6, 4))
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, log_std.exp()), standard).mean()
    assert torch.allclose(m.elbo_terms(mean, mean, mean, log_std)[1], expected, atol=1e-6)


def test_vae_loss_is_reconstruction_plus_weighted_kl_of_the_encoder():
    vae = small_nets()[0]
    obs, actions = torch.randn(5, 3), torch.rand(5, 2) * 2 - 1
    torch.manual_seed(1)
    loss, recon_loss, kl = m.vae_loss_fn(vae, obs, actions, kl_weight=0.5)
    torch.manual_seed(1)
    recon, mean, log_std = vae(obs, actions)
    assert torch.allclose(recon_loss, ((recon - actions) ** 2).mean())
    assert torch.allclose(kl, (0.5 * (mean**2 + (2 * log_std).exp() - 1 - 2 * log_std)).mean())
    assert torch.allclose(loss, recon_loss + 0.5 * kl)
    assert loss.requires_grad and not recon_loss.requires_grad


def test_encoder_log_std_is_clamped_and_training_latent_is_not_clipped():
    """The encoder's log σ is held in [-4, 15]; the training pass decodes z = μ + σ ε as it is (only
    sampling from the prior clips z)."""
    vae = small_nets()[0]
    obs, actions = torch.randn(4, 3), torch.zeros(4, 2)
    with torch.no_grad():
        vae.mean.weight.zero_()
        vae.mean.bias.fill_(3.0)  # far outside the clip range [-0.5, 0.5]
        vae.log_std.weight.zero_()
        vae.log_std.bias.fill_(-50.0)
    torch.manual_seed(2)
    recon, mean, log_std = vae(obs, actions)
    assert torch.all(log_std == -4.0)
    torch.manual_seed(2)
    z = 3.0 + math.exp(-4.0) * torch.randn(4, 4)
    assert torch.allclose(recon, vae.decode(obs, z), atol=1e-6)
    with torch.no_grad():
        vae.log_std.bias.fill_(50.0)
    assert torch.all(vae(obs, actions)[2] == 15.0)


def test_sampled_latent_is_clipped_at_decoding():
    vae = small_nets()[0]
    obs = torch.randn(64, 3)
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    assert (z.abs() > 0.5).any()  # the test is meaningful: many draws lie outside the clip range
    sampled = vae.sample(obs, torch.Generator().manual_seed(3))
    assert torch.allclose(sampled, vae.decode(obs, z.clamp(-0.5, 0.5)), atol=1e-6)
    assert not torch.allclose(sampled, vae.decode(obs, z), atol=1e-4)
    vae.latent_clip = 0.1
    assert torch.allclose(
        vae.sample(obs, torch.Generator().manual_seed(3)), vae.decode(obs, z.clamp(-0.1, 0.1)), atol=1e-6
    )


def test_decoder_stays_in_the_action_box():
    vae = small_nets(low=(-2.0, 0.0), high=(2.0, 1.0))[0]
    with torch.no_grad():
        vae.decoder[0][-1].weight.mul_(100.0)  # saturate the tanh
    actions = vae.decode(torch.randn(200, 3), 3 * torch.randn(200, 4))
    assert (actions[:, 0].abs() <= 2.0).all() and ((actions[:, 1] >= 0.0) & (actions[:, 1] <= 1.0)).all()
    assert actions[:, 0].abs().max() > 1.9  # the whole box is reachable


def test_vae_learns_a_deterministic_behaviour():
    """Fitted on a(s) = tanh(s₀ - s₁), the VAE's clipped-latent samples land near the data's action."""
    torch.manual_seed(0)
    vae = m.VAE(2, 1, 2, 32, 0.5, np.array([-1.0]), np.array([1.0]))
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    behaviour = lambda s: torch.tanh(s[:, :1] - s[:, 1:])  # noqa: E731
    for _ in range(300):
        obs = torch.randn(64, 2)
        loss = m.vae_loss_fn(vae, obs, behaviour(obs), 0.5)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    obs = torch.randn(500, 2)
    with torch.no_grad():
        error = (vae.sample(obs) - behaviour(obs)).abs().mean().item()
    assert error < 0.05, error  # 0.014 when written; 0.66 untrained


# ---------------------------------------------------------------------------- the perturbation model
def test_perturbation_is_bounded_by_phi_and_stays_in_the_box():
    low, high, phi = (-2.0, 0.0), (2.0, 1.0), 0.05
    actor = small_nets(low=low, high=high, phi=phi)[1]
    with torch.no_grad():
        actor.net[0][-1].weight.mul_(100.0)  # saturate the tanh: shifts of nearly ±Φ · scale
    torch.manual_seed(4)
    obs = torch.randn(500, 3)
    sampled = torch.tensor(low) + torch.rand(500, 2) * (torch.tensor(high) - torch.tensor(low))
    sampled[:10] = torch.tensor(high)  # on the edge: the shift outwards is clipped
    perturbed = actor(obs, sampled)
    bound = phi * (torch.tensor(high) - torch.tensor(low)) / 2  # Φ · max_action per dimension
    assert ((perturbed - sampled).abs() <= bound + 1e-6).all()
    assert ((perturbed >= torch.tensor(low)) & (perturbed <= torch.tensor(high))).all()
    inside = (sampled > torch.tensor(low) + bound) & (sampled < torch.tensor(high) - bound)
    reached = (perturbed - sampled).abs()[inside] > 0.9 * bound.expand(500, 2)[inside]
    assert reached.float().mean() > 0.5  # the bound is nearly reached: Φ is not smaller than it should be
    assert torch.allclose(m.Perturbation(3, 2, (16, 12), 0.0, low, high)(obs, sampled), sampled)  # Φ = 0: none


# ---------------------------------------------------------------------------- the target
def test_soft_clipped_double_q_hand_case():
    q = torch.tensor([[1.0, 4.0], [3.0, 2.0]])  # [critics, batch]
    # λ min + (1 - λ) max with λ = 0.75: 0.75·1 + 0.25·3 = 1.5 and 0.75·2 + 0.25·4 = 2.5
    assert torch.allclose(m.soft_clipped_double_q(q, 0.75), torch.tensor([1.5, 2.5]))
    assert torch.allclose(m.soft_clipped_double_q(q, 1.0), torch.tensor([1.0, 2.0]))  # clipped double Q
    assert torch.allclose(m.soft_clipped_double_q(q, 0.0), torch.tensor([3.0, 4.0]))


def test_target_takes_the_max_over_samples_of_each_next_state():
    """Two next states, n = 3 samples each: the stub VAE hands out actions 0, 0.1, ..., 0.5 in row
    order, the stub perturbation keeps them and the stub critics are Q1 = 10 s' + a, Q2 = 10 s' - a."""
    counter = torch.arange(6, dtype=torch.float32).unsqueeze(1) / 10
    vae = SimpleNamespace(sample=lambda obs: counter[: obs.shape[0]])
    actor = lambda obs, a: a  # noqa: E731
    critic = lambda obs, a: torch.stack([10 * obs[:, 0] + a[:, 0], 10 * obs[:, 0] - a[:, 0]])  # noqa: E731
    next_obs = torch.tensor([[0.0], [1.0]])  # repeated as rows s'0, s'0, s'0, s'1, s'1, s'1
    rewards, terminals = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    batch = (None, None, rewards, next_obs, terminals)
    target = m.critic_target_fn(critic, actor, vae, batch, 0.9, 0.75, 3)
    # per sample: λ (10 s' - a) + (1 - λ)(10 s' + a) = 10 s' - 0.5 a, largest at the smallest a of each state
    # s'0 (a = 0, 0.1, 0.2): max 0;  s'1 (a = 0.3, 0.4, 0.5): max 10 - 0.15 = 9.85
    assert torch.allclose(target, torch.tensor([1.0 + 0.9 * 0.0, 2.0 + 0.9 * 9.85]))
    batch = (None, None, rewards, next_obs, torch.tensor([0.0, 1.0]))  # the second transition ended the MDP
    assert torch.allclose(m.critic_target_fn(critic, actor, vae, batch, 0.9, 0.75, 3), torch.tensor([1.0, 2.0]))
    # λ = 0 (the max of the critics): 10 s' + a, largest at the largest a: 0.2 for s'0
    assert torch.allclose(m.critic_target_fn(critic, actor, vae, batch, 0.9, 0.0, 3)[0], torch.tensor(1.0 + 0.18))


def test_target_matches_a_loop_over_states_and_samples():
    torch.manual_seed(5)
    vae, actor, critic = small_nets()
    next_obs, rewards, terminals = torch.randn(4, 3), torch.randn(4), torch.tensor([0.0, 1.0, 0.0, 0.0])
    torch.manual_seed(6)
    target = m.critic_target_fn(critic, actor, vae, (None, None, rewards, next_obs, terminals), 0.99, 0.75, 5)
    torch.manual_seed(6)
    z = torch.randn(20, 4).clamp(-0.5, 0.5)  # the same draws, in the row order s'0 x5, s'1 x5, ...
    expected = []
    for i in range(4):
        values = []
        for j in range(5):
            s = next_obs[i : i + 1]
            a = actor(s, vae.decode(s, z[5 * i + j : 5 * i + j + 1]))
            q1, q2 = critic(s, a)[:, 0]
            values.append(0.75 * min(q1, q2) + 0.25 * max(q1, q2))
        expected.append(rewards[i] + 0.99 * (1 - terminals[i]) * max(values))
    assert torch.allclose(target, torch.stack(expected), atol=1e-5)


# ---------------------------------------------------------------------------- the actor and action selection
def test_q1_frozen_is_member_zero_without_weight_gradients():
    critic = small_nets()[2]
    obs, actions = torch.randn(5, 3), torch.randn(5, 2, requires_grad=True)
    assert torch.allclose(critic.q1_frozen(obs, actions), critic(obs, actions)[0], atol=1e-6)
    critic.q1_frozen(obs, actions).sum().backward()
    assert actions.grad is not None and all(p.grad is None for p in critic.parameters())


def test_actor_loss_trains_only_the_perturbation_and_raises_q1():
    torch.manual_seed(7)
    vae, actor, critic = small_nets(phi=0.5)
    obs = torch.randn(32, 3)
    sampled = vae.sample(obs, torch.Generator().manual_seed(8)).detach()
    vae.sample = lambda obs: sampled  # the loss's VAE samples, fixed

    def q1_of_perturbed():
        with torch.no_grad():
            return critic.q1_frozen(obs, actor(obs, sampled)).mean()

    before = q1_of_perturbed()
    loss = m.actor_loss_fn(actor, critic, vae, obs)
    assert torch.isclose(loss, -before)
    loss.backward()
    assert all(p.grad is None for p in (*vae.parameters(), *critic.parameters()))
    assert all(p.grad is not None for p in actor.parameters())
    torch.optim.SGD(actor.parameters(), lr=0.1).step()
    assert q1_of_perturbed() > before  # a gradient step on the loss raises Q1 at the perturbed samples


def test_select_actions_is_the_argmax_of_q1_over_the_samples_hand_case():
    """Stub VAE hands out three candidates per state, Q1 = -(a - 0.3)²: the candidate nearest 0.3 wins."""
    candidates = torch.tensor([[0.9], [0.2], [-0.5], [0.0], [1.0], [0.35]])  # state 0: rows 0-2, state 1: 3-5
    vae = SimpleNamespace(sample=lambda obs, generator=None: candidates)
    actor = lambda obs, a: a  # noqa: E731
    critic = SimpleNamespace(q1_frozen=lambda obs, a: -((a[:, 0] - 0.3) ** 2))
    chosen = m.select_actions(actor, critic, vae, torch.zeros(2, 4), 3)
    assert torch.equal(chosen, torch.tensor([[0.2], [0.35]]))


def test_select_actions_matches_a_loop_over_states():
    torch.manual_seed(9)
    vae, actor, critic = small_nets()
    obs = torch.randn(4, 3)
    chosen = m.select_actions(actor, critic, vae, obs, 10, torch.Generator().manual_seed(10))
    z = torch.randn(40, 4, generator=torch.Generator().manual_seed(10)).clamp(-0.5, 0.5)
    for i in range(4):
        s = obs[i : i + 1].expand(10, -1)
        candidates = actor(s, vae.decode(s, z[10 * i : 10 * (i + 1)]))
        q1 = critic(s, candidates)[0]
        assert torch.allclose(chosen[i], candidates[q1.argmax()], atol=1e-6)
        assert (q1.max() > q1.min()).item()  # the candidates differ, so the argmax matters
    assert chosen.shape == (4, 2)


@pytest.mark.learning
def test_bcq_beats_bc_and_the_data(tmp_path):
    """BCQ and BC on shipped/pendulum-medium-replay (3k mostly random transitions, behaviour data 2.2)
    for 3000 updates each, BCQ with networks of 256 (VAE 256-256, perturbation model and critics
    256-256; the default 750/400-300 networks run ~14 updates/s here, too few for the budget).

    Runs made (1 thread on the shared 2-core machine), normalised score at 1000/2000/3000 updates:
    BCQ seed 0: -4.9, 27.4, 54.4 (67 s of CPU; 126 s of training under load); seed 1: -5.6, 27.1,
    46.0; seed 2: -8.8, 29.1, 62.5. BC seed 0 at the same budget (its defaults): -1.4, 16.6, -1.5.
    The paper's claim that BCQ beats cloning on imperfect data holds here: the best of 10 perturbed
    VAE samples by Q1 lifts the policy far above the mostly random data and above the clone.
    Thresholds: BCQ's best above 35 (every seed's is above 46), above BC's best by 15, and above the
    data by 30. The seed is fixed at 0.
    On shipped/hopper-medium-replay (behaviour 11.1) the same networks for 10,000 updates scored
    14.5, 13.3, 13.7, 16.6 at 2.5k/5k/7.5k/10k (BC: best 14.4, tests/test_learning.py): too small
    a margin, at six times the cost, for a check.
    """
    budget = ["--dataset", "shipped/pendulum-medium-replay", "--num-updates", "3000", "--eval-every", "1000"]
    widths = ["--vae-hidden-dim", "256", "--hidden-dim", "256", "--second-hidden-dim", "256"]
    bcq = train("bcq", tmp_path, *budget, *widths)
    bc = train("bc", tmp_path, *budget)
    print_scores("bcq", bcq)
    print_scores("bc", bc)
    assert bcq["best_normalized_score"] > 35.0, bcq["evaluations"]
    assert bcq["best_normalized_score"] > bc["best_normalized_score"] + 15.0, (bcq["evaluations"], bc["evaluations"])
    assert bcq["best_normalized_score"] > bcq["behaviour_normalized_score"] + 30.0


def train(algo: str, runs_dir, *argv: str) -> dict:
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", algo + ".py"),
        "--seed",
        "0",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--runs-dir",
        str(runs_dir),
        *argv,
    ]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = glob.glob(str(runs_dir / f"{algo}__*" / "results.json"))
    return json.load(open(path))
