"""RAMBO: the adversarial loss against a hand computation (its batch-mean reduction), its sign, the mixture
log-density of the elites, the advantage normalisation, one batched adversary step, and that a run leaves the
cached ensemble file as it was while its checkpoint holds the adapted model."""

import glob
import hashlib
import math
import os
import subprocess
import sys

import torch
from conftest import ROOT, load_script
from scripts import tiny_args

m = load_script("rambo")


def test_adversarial_loss_is_the_batch_mean():
    """mean_b A_b log P̂_b, by hand; the advantage is a constant (no gradient through it)."""
    log_prob = torch.tensor([-1.0, -2.0, 0.5, 3.0], requires_grad=True)
    advantage = torch.tensor([1.0, -0.5, 2.0, 0.0], requires_grad=True)
    loss = m.adversarial_loss(log_prob, advantage)
    assert math.isclose(loss.item(), (-1.0 + 1.0 + 1.0 + 0.0) / 4, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(log_prob.grad, advantage.detach() / 4)  # mean: each row weighs 1/B, not 1 (a sum)
    assert advantage.grad is None


def test_advantage_normalisation():
    """Zero mean and unit population standard deviation over the batch (the authors' tf.math.reduce_std)."""
    a = torch.tensor([1.0, 2.0, 3.0, 10.0])
    n = m.normalised_advantage(a)
    assert abs(n.mean().item()) < 1e-6
    assert math.isclose(n.std(correction=0).item(), 1.0, rel_tol=1e-4)
    mean, std = 4.0, math.sqrt(((a - 4.0) ** 2).mean().item())
    assert torch.allclose(n, (a - mean) / std, atol=1e-5)


def test_mixture_log_prob_hand_case():
    """log (1/K) Σ_k N(x; μ_k, σ_k²) over the elites only, each a joint density over the dimensions."""
    mean = torch.tensor([[[0.0, 1.0]], [[1.0, 1.0]], [[50.0, 50.0]]])  # 3 members, 1 row, 2 dims
    logvar = torch.tensor([[[0.0, 0.0]], [[math.log(4.0), 0.0]], [[0.0, 0.0]]])
    sample = torch.tensor([[0.5, 2.0]])

    def normal(x, mu, var):
        return math.exp(-((x - mu) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)

    p0 = normal(0.5, 0.0, 1.0) * normal(2.0, 1.0, 1.0)
    p1 = normal(0.5, 1.0, 4.0) * normal(2.0, 1.0, 1.0)
    got = m.mixture_log_prob(mean, logvar, sample, torch.tensor([0, 1]))  # member 2 is not an elite
    assert math.isclose(got.item(), math.log((p0 + p1) / 2), rel_tol=1e-5)
    # far in the tails the log-sum-exp stays finite where exp(log p) underflows in float32
    far = m.mixture_log_prob(mean, logvar, torch.tensor([[30.0, -30.0]]), torch.tensor([0, 1]))
    assert torch.isfinite(far).all() and far.item() < -500


def test_adversarial_step_lowers_the_likelihood_of_high_advantage_transitions():
    """The sign: a gradient step on λ mean_b A_b log P̂_b alone moves the model's density away from the transition
    with A > 0 (better than the policy expects) and toward the one with A < 0; with the sign flipped it would
    do the opposite, and this test would fail."""
    mean = torch.zeros(1, 2, 1, requires_grad=True)  # one member, two rows, one dim
    logvar = torch.zeros(1, 2, 1)
    sample = torch.tensor([[1.0], [-1.0]])
    advantage = torch.tensor([1.0, -1.0])
    before = m.mixture_log_prob(mean, logvar, sample, torch.tensor([0])).detach()
    optimizer = torch.optim.SGD([mean], lr=0.1)
    m.adversarial_loss(m.mixture_log_prob(mean, logvar, sample, torch.tensor([0])), advantage).backward()
    optimizer.step()
    after = m.mixture_log_prob(mean, logvar, sample, torch.tensor([0])).detach()
    assert after[0] < before[0]  # the high-value next state became less likely
    assert after[1] > before[1]  # the low-value one more likely


def test_adversary_step_moves_predictions_toward_lower_value():
    """adversary_step itself (all members batched), with a critic whose value is the first observation dimension
    and the supervised NLL switched off: after steps on the adversarial term alone, the elites' predicted next
    states have a lower value than before."""
    torch.manual_seed(0)
    obs_dim, act_dim = 2, 1
    model = m.EnsembleDynamics(obs_dim, act_dim, members=3, elites=2, hidden_dim=16, hidden_layers=2)
    agent = m.SAC(obs_dim, act_dim, -torch.ones(1).numpy(), torch.ones(1).numpy(), hidden_dim=16)
    with torch.no_grad():  # Q(s, a) = s_0 in both critics: the next state's value is its first dimension
        for layer in agent.critic.net:
            if isinstance(layer, m.EnsembleLinear):
                layer.weight.zero_()
                layer.bias.zero_()
        agent.critic.net[0].weight[:, 0, 0] = 1.0
        agent.critic.net[-1].weight[:, 0, 0] = 1.0
    model.loss = lambda *real: torch.zeros(())  # the adversarial term alone
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    obs = torch.randn(256, obs_dim)
    real = (torch.zeros(3, 4, obs_dim), torch.zeros(3, 4, act_dim), torch.zeros(3, 4, obs_dim + 1))

    def predicted_value():
        with torch.no_grad():
            mean, _ = model(obs, agent.actor(obs, deterministic=True)[0], members=model.elite_idx)
            return (obs[:, 0] + mean[..., 0]).mean().item()

    before = predicted_value()
    for _ in range(30):
        next_obs, logs = m.adversary_step(model, optimizer, agent, obs, real, lambda s: torch.zeros(len(s)), 1.0, 0.99)
    assert next_obs.shape == obs.shape and set(logs) >= {"adversary/adv_loss", "adversary/log_prob"}
    assert predicted_value() < before - 0.05


def test_run_leaves_the_cached_ensemble_unchanged_and_checkpoints_the_adapted_one(tmp_path):
    """A run with adversary steps: the cache file's bytes are those it had after training, and the run's
    checkpoint holds a model that differs from it (the adversary's) with its optimiser."""
    cache = tmp_path / "dynamics"
    argv = tiny_args("rambo", runs_dir=str(tmp_path)) + ["--dynamics-cache-dir", str(cache)]
    command = [sys.executable, os.path.join(ROOT, "algorithms", "rambo.py"), *argv]
    first = subprocess.run(command + ["--num-updates", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    (cached,) = glob.glob(str(cache / "*.pt"))
    digest = hashlib.sha1(open(cached, "rb").read()).hexdigest()
    done = subprocess.run(command + ["--adversary-steps", "10"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert hashlib.sha1(open(cached, "rb").read()).hexdigest() == digest
    run_dir = sorted(glob.glob(str(tmp_path / "rambo__*")))[-1]
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)["objects"]
    saved = torch.load(cached, weights_only=False)["model"]
    assert "model_opt" in state and state["model_opt"]["state"]
    changed = [k for k in saved if not torch.equal(saved[k], state["model"][k])]
    assert any("layers" in k for k in changed), changed
