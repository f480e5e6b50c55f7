"""BEAR: the sampled MMD with both kernels, the Lagrange step, the soft clipped double-Q target, action
selection over samples, the VAE's loss, and learning."""

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

m = load_script("bear")


def mmd_by_hand(x, y, k):
    """sqrt of the V-statistic of MMD² over every pair of the two sample lists, plus 1e-6."""
    kxx = sum(k(a, b) for a in x for b in x) / len(x) ** 2
    kyy = sum(k(a, b) for a in y for b in y) / len(y) ** 2
    kxy = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    return math.sqrt(kxx + kyy - 2 * kxy + 1e-6)


def test_mmd_laplacian_hand_case():
    # two 2-d actions per set; the laplacian kernel sums |a_d - b_d| over the dimensions and divides by 2σ
    x, y, sigma = [(0.0, 0.0), (1.0, 0.0)], [(0.0, 2.0), (3.0, 1.0)], 2.0
    k = lambda a, b: math.exp(-(abs(a[0] - b[0]) + abs(a[1] - b[1])) / (2 * sigma))  # noqa: E731
    # by hand: k(x0, x1) = e^(-1/4); k(y0, y1) = e^(-4/4); k(x0, y0) = e^(-2/4), k(x0, y1) = e^(-4/4),
    # k(x1, y0) = e^(-3/4), k(x1, y1) = e^(-3/4)
    e = math.exp
    kxx, kyy = (2 + 2 * e(-0.25)) / 4, (2 + 2 * e(-1.0)) / 4
    kxy = (e(-0.5) + e(-1.0) + 2 * e(-0.75)) / 4
    expected = math.sqrt(kxx + kyy - 2 * kxy + 1e-6)
    assert math.isclose(expected, mmd_by_hand(x, y, k), rel_tol=1e-12)
    got = m.mmd(torch.tensor([x]), torch.tensor([y]), sigma, "laplacian")
    assert got.shape == (1,)
    assert math.isclose(got.item(), expected, rel_tol=1e-5)


def test_mmd_gaussian_hand_case():
    # the authors' gaussian kernel: exp(-||a - b||² / (2σ)), σ (not σ²) in the denominator
    x, y, sigma = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], [(2.0, 0.0), (1.0, 1.0)], 0.5
    k = lambda a, b: math.exp(-((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2) / (2 * sigma))  # noqa: E731
    # kxx: the 3 diagonal terms are 1; pairs at squared distances 1, 1, 2 (each counted twice)
    kxx = (3 + 2 * (math.exp(-1) + math.exp(-1) + math.exp(-2))) / 9
    kyy = (2 + 2 * math.exp(-2)) / 4
    # x to y squared distances: (0,0): 4, 2; (1,0): 1, 1; (0,1): 5, 1
    kxy = (math.exp(-4) + math.exp(-2) + 3 * math.exp(-1) + math.exp(-5)) / 6
    expected = math.sqrt(kxx + kyy - 2 * kxy + 1e-6)
    assert math.isclose(expected, mmd_by_hand(x, y, k), rel_tol=1e-12)
    got = m.mmd(torch.tensor([x]), torch.tensor([y]), sigma, "gaussian")
    assert math.isclose(got.item(), expected, rel_tol=1e-5)


def test_mmd_is_per_state_and_small_for_equal_sets():
    torch.manual_seed(0)
    x, y = torch.randn(5, 4, 3), torch.randn(5, 4, 3) + 3.0
    for kernel in m.KERNELS:
        same = m.mmd(x, x, 20.0, kernel)
        assert torch.allclose(same, torch.full((5,), 1e-3), atol=1e-4)  # sqrt(0 + 1e-6)
        apart = m.mmd(x, y, 20.0, kernel)
        assert apart.shape == (5,) and (apart > same).all()
        # each state's estimate uses that state's samples only
        assert torch.allclose(m.mmd(x[2:3], y[2:3], 20.0, kernel), apart[2:3])
        # a wider kernel sees the same two sets as closer
        assert (m.mmd(x, y, 200.0, kernel) < apart).all()


def test_lagrange_step_signs():
    log_alpha = torch.zeros((), requires_grad=True)
    mmd_value = torch.tensor([0.3, 0.1], requires_grad=True)
    constraint, alpha_loss = m.lagrange_losses(mmd_value, log_alpha, epsilon=0.05)
    assert torch.allclose(constraint, torch.tensor([0.25, 0.05]))  # α = 1 at log α = 0
    alpha_loss.backward()
    assert log_alpha.grad < 0  # MMD above ε: a descent step raises α
    assert mmd_value.grad is None  # α's loss does not move the actor
    opt = torch.optim.Adam([log_alpha], lr=1e-3)
    opt.step()
    assert log_alpha.item() > 0
    log_alpha.grad = None
    m.lagrange_losses(torch.tensor([0.01, 0.02]), log_alpha, epsilon=0.05)[1].backward()
    assert log_alpha.grad > 0  # MMD below ε: α shrinks
    # the actor's term carries α as a constant: its gradient reaches the MMD only
    log_alpha.grad = None
    constraint, _ = m.lagrange_losses(mmd_value, log_alpha, epsilon=0.05)
    constraint.sum().backward()
    assert log_alpha.grad is None
    assert torch.allclose(mmd_value.grad, log_alpha.detach().exp().expand(2))


def test_soft_clipped_target_hand_case():
    # K = 2 members, B = 2 states, N = 3 sampled next actions
    next_q = torch.tensor([[[1.0, 4.0, 0.0], [2.0, 2.0, 2.0]], [[3.0, 0.0, 1.0], [-2.0, 6.0, 2.0]]])
    rewards, terminals = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    got = m.soft_clipped_target(next_q, rewards, terminals, gamma=0.9, lmbda=0.75)
    # state 0: λ min + (1 - λ) max per action = 0.75*1 + 0.25*3 = 1.5, 0.75*0 + 0.25*4 = 1.0, 0.75*0 + 0.25*1 = 0.25
    # -> max 1.5; target 1 + 0.9 * 1.5. State 1 is terminal: the reward alone.
    assert torch.allclose(got, torch.tensor([1.0 + 0.9 * 1.5, 0.5]))
    # λ = 1 is clipped double Q (min over members), λ = 0 the max over members
    assert torch.allclose(
        m.soft_clipped_target(next_q, rewards, torch.zeros(2), 1.0, 1.0), rewards + torch.tensor([1.0, 2.0])
    )
    assert torch.allclose(
        m.soft_clipped_target(next_q, rewards, torch.zeros(2), 1.0, 0.0), rewards + torch.tensor([4.0, 6.0])
    )


def test_best_of_takes_the_highest_rated_candidate():
    actions = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    q = torch.tensor([[0.0, 5.0, 1.0, -1.0], [2.0, 0.0, 1.0, 3.0]])
    assert torch.equal(m.best_of(actions, q), torch.stack([actions[0, 1], actions[1, 3]]))


def test_many_is_the_ensemble_on_every_action():
    torch.manual_seed(0)
    critic = m.EnsembleCritic(3, 2, 16, members=3)
    obs, actions = torch.randn(5, 3), torch.randn(5, 4, 2)
    expected = torch.stack([critic(obs, actions[:, j]) for j in range(4)], -1)
    assert critic.many(obs, actions).shape == (3, 5, 4)
    assert torch.allclose(critic.many(obs, actions), expected, atol=1e-6)
    # the members differ: an ensemble, not one network three times
    assert not torch.allclose(expected[0], expected[1])


def test_frozen_critic_matches_forward_without_weight_gradients():
    critic = m.EnsembleCritic(3, 2, 16, members=2)
    obs, actions = torch.randn(5, 3), torch.randn(5, 2, requires_grad=True)
    assert torch.allclose(critic.frozen(obs, actions), critic(obs, actions), atol=1e-6)
    critic.frozen(obs, actions).sum().backward()
    assert actions.grad is not None and all(p.grad is None for p in critic.parameters())


def test_actor_samples_are_in_the_box_and_the_tanh_of_their_raw_values():
    torch.manual_seed(0)
    actor = m.Actor(3, 2, 16, np.array([-2.0, 0.0]), np.array([2.0, 1.0]))
    actions, raw = actor(torch.randn(6, 3), 5)
    assert actions.shape == raw.shape == (6, 5, 2)
    assert torch.allclose(actions, torch.tanh(raw) * torch.tensor([2.0, 0.5]) + torch.tensor([0.0, 0.5]))
    assert (actions[..., 0].abs() <= 2.0).all() and ((actions[..., 1] >= 0) & (actions[..., 1] <= 1)).all()
    assert raw.std(1).min() > 0  # several different samples per state


def test_vae_samples_and_loss():
    torch.manual_seed(0)
    vae = m.VAE(3, 2, 32, np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    assert vae.latent_dim == 4  # 2 |A|
    obs = torch.randn(7, 3)
    actions, raw = vae.sample(obs, 4)
    assert actions.shape == raw.shape == (7, 4, 2)
    assert torch.allclose(actions, torch.tanh(raw))
    # the loss: reconstruction error plus kl_weight x the KL of q(z | s, a) to N(0, 1)
    data_actions = torch.rand(7, 2) * 2 - 1
    torch.manual_seed(1)
    loss = m.vae_loss_fn(vae, obs, data_actions, kl_weight=0.5)
    torch.manual_seed(1)
    recon, mean, std = vae(obs, data_actions)
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(0.0, 1.0)
    ).mean()
    assert torch.isclose(loss, ((recon - data_actions) ** 2).mean() + 0.5 * kl, atol=1e-5)
    # a few hundred steps on one fixed action per state: the decoder reproduces it from the prior's samples
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    target = torch.tanh(obs[:, :2])
    for _ in range(500):
        opt.zero_grad()
        m.vae_loss_fn(vae, obs, target, 0.5).backward()
        opt.step()
    decoded, _ = vae.sample(obs, 16)
    assert (decoded - target.unsqueeze(1)).abs().mean() < 0.1


@pytest.mark.learning
def test_learns_and_beats_bc(tmp_path):
    """BEAR and BC on shipped/pendulum-medium-replay (3k mostly random transitions, behaviour score 2.2).

    BEAR for 3000 updates with a 1000-update warm-up, Q-networks and actor of 2x128, VAE of 2x256,
    batch 128 (the defaults, a 750-wide VAE at batch 256, run at ~7 updates/s on one thread here);
    BC for the same 3000 updates at its defaults. The paper's claim is that BEAR beats BC on data of
    mediocre quality; this data is mostly random.

    Runs made (one thread on the shared 2-core machine, the commands of this test with --seed changed),
    normalised score at 1000/2000/3000 updates:
        seed 0: BEAR -19.9, 18.8, 46.4; BC -1.4, 16.6, -1.5
        seed 1: BEAR -17.7, 19.4, 67.2; BC -13.2, 5.4, -10.4
        seed 2: BEAR -22.3, 13.7, 32.7; BC -16.3, 4.7, -10.8
    Thresholds on the best (seed 0): above 20 (the data's 2.2 and BC's best on any seed, 16.6) and 5 above BC's.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    common = ["--dataset", "shipped/pendulum-medium-replay", "--num-updates", "3000", "--eval-every", "1000"]
    common += ["--seed", "0", "--threads", "1", "--device", "cpu", "--runs-dir", str(tmp_path)]
    small = ["--warmup-updates", "1000", "--hidden-dim", "128", "--vae-hidden-dim", "256", "--batch-size", "128"]
    results = {}
    for algo, extra in (("bear", small), ("bc", [])):
        command = [sys.executable, os.path.join(ROOT, "algorithms", algo + ".py"), *common, *extra]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        (path,) = glob.glob(str(tmp_path / f"{algo}__*" / "results.json"))
        results[algo] = json.load(open(path))
        print_scores(algo, results[algo])
    bear, bc = results["bear"], results["bc"]
    assert bear["best_normalized_score"] > 20.0, bear["evaluations"]
    assert bear["best_normalized_score"] > bc["best_normalized_score"] + 5.0, (bear["evaluations"], bc["evaluations"])
