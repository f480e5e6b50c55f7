"""BRED's mathematics: the density-ratio loss and its minimiser, the priority formula, the prioritized buffer's
proportional sampling, and the moment-matched ensemble policy."""

import math

import numpy as np
import torch
from conftest import load_script

bred = load_script("bred")


def test_ratio_loss_by_hand():
    """E_offline[-log(2 / (w + 1))] - E_online[log(2 w / (w + 1))] on two tiny batches."""
    loss = bred.ratio_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.5]))
    expected = (0 + math.log(2)) / 2 - (0 + math.log(2 / 3)) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)


def test_ratio_loss_is_minimised_by_the_density_ratio():
    """Two points A and B, offline 3:1 and online 1:3: minimising the loss over w_A, w_B gives the ratios of the
    online to the offline density, 1/3 and 3."""
    w = torch.ones(2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(3000):
        positive = w.clamp_min(1e-6)
        loss = bred.ratio_loss(positive[[0, 0, 0, 1]], positive[[0, 1, 1, 1]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(w.detach(), torch.tensor([1 / 3, 3.0]), atol=1e-3)


def test_priorities_by_hand():
    """p = clamp(w^(1/T) / mean_offline(w^(1/T)), 0.001, 1000), T = 5."""
    p = bred.priorities(torch.tensor([32.0, 1.0, 0.0, 1e20]), torch.tensor([1.0, 32.0]), temperature=5.0)
    # 32^(1/5) = 2, so the offline mean is (1 + 2) / 2 = 1.5
    expected = torch.tensor([2 / 1.5, 1 / 1.5, 0.001, 1000.0])
    assert torch.allclose(p, expected, rtol=1e-5)


def test_prioritized_buffer_samples_in_proportion_to_priority():
    """Ten rows (capacity 13, not a power of two) at priorities 1..10 except one changed by update(): the counts of
    40,000 draws pass a chi-square test against priority / total (fixed seed; 27.88 is the 0.999 quantile of the
    chi-square distribution with 9 degrees of freedom); new rows enter at the running maximum."""
    torch.manual_seed(0)
    buffer = bred.PrioritizedReplay(13, 1, 1, torch.device("cpu"))
    rows = torch.arange(10, dtype=torch.float32)
    buffer.add(rows[:, None], rows[:, None], rows, rows[:, None], rows, priority=1.0)
    buffer.update(torch.arange(10), torch.arange(1, 11, dtype=torch.float64))
    buffer.update(torch.tensor([3]), torch.tensor([0.5]))
    priority = torch.arange(1, 11, dtype=torch.float64)
    priority[3] = 0.5
    assert torch.allclose(buffer.probabilities(), priority / priority.sum())
    counts = torch.zeros(10)
    for _ in range(160):
        idx, (obs, _, rewards, _, _) = buffer.sample(250)
        assert torch.equal(rewards, idx.float()) and torch.equal(obs[:, 0], idx.float())
        counts += torch.bincount(idx, minlength=10)
    expected = 40_000 * priority / priority.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.88, (counts, expected)

    one = torch.ones(1)
    buffer.add(one[:, None], one[:, None], one, one[:, None], one)  # at the running maximum, 10
    assert buffer.tree[buffer.leaves + 10].item() == 10.0 and math.isclose(buffer.tree[1].item(), 61.5)


def test_prioritized_buffer_state_round_trip():
    torch.manual_seed(1)
    buffer = bred.PrioritizedReplay(6, 2, 1, torch.device("cpu"))
    buffer.add(torch.randn(4, 2), torch.randn(4, 1), torch.randn(4), torch.randn(4, 2), torch.zeros(4))
    buffer.update(torch.tensor([0, 2]), torch.tensor([5.0, 0.25]))
    copy = bred.PrioritizedReplay(6, 2, 1, torch.device("cpu"))
    copy.load_state_dict(buffer.state_dict())
    assert torch.equal(copy.tree, buffer.tree) and copy.max_priority == buffer.max_priority == 5.0
    assert all(torch.equal(copy.data[k], buffer.data[k]) for k in buffer.data)
    larger = bred.PrioritizedReplay(9, 2, 1, torch.device("cpu"))  # a resume that lengthens the run
    larger.load_state_dict(buffer.state_dict())
    one = torch.ones(1)
    larger.add(one[:, None].expand(1, 2), one[:, None], one, one[:, None].expand(1, 2), one)
    assert larger.size == 5 and torch.equal(larger.data["rewards"][:4], buffer.data["rewards"][:4])
    assert torch.allclose(larger.probabilities(), torch.tensor([5.0, 1, 0.25, 1, 5], dtype=torch.float64) / 12.25)


def test_moment_matched_policy():
    """Mean and variance of the mixture of the members' Gaussians: by hand for two members, and against a seeded
    sample of the mixture for five."""
    mean = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]]])  # [N=2, batch 1, act 2]
    log_std = torch.log(torch.tensor([[[1.0, 0.5]], [[1.0, 2.0]]]))
    mu, std = bred.moment_matched(mean, log_std)
    # dim 0: μ = 1, σ² = (0 + 1 + 4 + 1) / 2 - 1 = 2; dim 1: μ = 1, σ² = (1 + 0.25 + 1 + 4) / 2 - 1 = 2.125
    assert torch.allclose(mu, torch.tensor([[1.0, 1.0]])) and torch.allclose(std**2, torch.tensor([[2.0, 2.125]]))

    generator = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(5, 3, 2, generator=generator), torch.randn(5, 3, 2, generator=generator) * 0.5
    member = torch.randint(0, 5, (400_000,), generator=generator)
    draws = mean[member] + log_std.exp()[member] * torch.randn(400_000, 3, 2, generator=generator)
    mu, std = bred.moment_matched(mean, log_std)
    assert torch.allclose(mu, draws.mean(0), atol=0.02) and torch.allclose(std, draws.std(0), atol=0.02)
    # the clamp of the authors' policy: σ within [e^-20, e^2]
    _, wide = bred.moment_matched(torch.tensor([[[-100.0]], [[100.0]]]), torch.zeros(2, 1, 1))
    assert math.isclose(wide.item(), np.exp(2.0), rel_tol=1e-6)
