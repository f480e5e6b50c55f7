"""EDAC: the ensemble similarity on hand-checked cases, its batched computation against a loop, and learning."""

import glob
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import ROOT, SHIPPED, load_script, print_scores

m = load_script("edac")


def similarity_of(directions):
    """ES of a batch of one transition whose members have the given action gradients."""
    return m.ensemble_similarity(torch.tensor(directions, dtype=torch.float32).unsqueeze(1))


def test_orthogonal_gradients_have_zero_similarity():
    assert abs(similarity_of([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, -3.0]])) < 1e-6


def test_similarity_on_hand_cases():
    # identical directions, any length: both ordered pairs count, cos = 1, divided by N - 1 = 1
    assert torch.isclose(similarity_of([[1.0, 2.0], [3.0, 6.0]]), torch.tensor(2.0))
    # opposite directions
    assert torch.isclose(similarity_of([[1.0, 0.0], [-5.0, 0.0]]), torch.tensor(-2.0))
    # (1, 0), (0, 1), (1, 1): cosines 0, 1/√2, 1/√2; twice their sum over N - 1 = 2
    assert torch.isclose(similarity_of([[1.0, 0.0], [0.0, 1.0], [4.0, 4.0]]), torch.tensor(math.sqrt(2)))


def test_similarity_averages_the_batch():
    grads = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])  # [N=2, batch=2, act=2]
    assert torch.isclose(m.ensemble_similarity(grads), torch.tensor((2.0 + 0.0) / 2))


class LinearQ(nn.Module):
    """Q_i(s, a) = <w_i, a> + sum(s): every member's action gradient is its w_i."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)
        self.members = w.shape[0]

    def forward(self, obs, action):
        return (action * self.w[:, None, :]).sum(-1) + obs.sum(-1)


def test_critic_loss_adds_eta_times_the_similarity_of_the_members_action_gradients():
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    critic, target = LinearQ(w.clone()), LinearQ(w.clone())
    actor = lambda obs: (torch.zeros(len(obs), 2), torch.zeros(len(obs)))  # noqa: E731
    batch = (torch.randn(4, 3), torch.randn(4, 2), torch.randn(4), torch.randn(4, 3), torch.zeros(4))
    plain, _, zero = m.critic_loss_fn(critic, target, actor, batch, gamma=0.9, alpha=1.0, eta=0.0)
    with_es, _, similarity = m.critic_loss_fn(critic, target, actor, batch, gamma=0.9, alpha=1.0, eta=3.0)
    assert zero == 0 and torch.isclose(similarity, torch.tensor(math.sqrt(2)))
    torch.testing.assert_close(with_es, plain + 3.0 * math.sqrt(2))
    # ES is part of the graph: it trains the critics' weights (double backward)
    es_only = with_es - plain.detach()
    es_only.backward()
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_batched_similarity_matches_a_loop_over_members():
    torch.manual_seed(0)
    members, batch_size, obs_dim, act_dim = 4, 6, 5, 3
    critic = m.EnsembleCritic(obs_dim, act_dim, hidden_dim=32, members=members)
    target = m.EnsembleCritic(obs_dim, act_dim, hidden_dim=32, members=members)
    for p in critic.parameters():  # away from EDAC's small output initialisation
        nn.init.normal_(p, std=0.3)
    obs, actions = torch.randn(batch_size, obs_dim), torch.randn(batch_size, act_dim)
    actor = lambda o: (torch.zeros(len(o), act_dim), torch.zeros(len(o)))  # noqa: E731
    batch = (obs, actions, torch.zeros(batch_size), obs, torch.zeros(batch_size))
    _, _, similarity = m.critic_loss_fn(critic, target, actor, batch, gamma=0.9, alpha=1.0, eta=1.0)

    grads = []
    for i in range(members):
        a = actions.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(obs, a)[i].sum(), a)
        grads.append(g)
    expected = torch.zeros(batch_size)
    for i, j in itertools.permutations(range(members), 2):
        expected += nn.functional.cosine_similarity(grads[i], grads[j], dim=-1)
    torch.testing.assert_close(similarity, expected.mean() / (members - 1), rtol=1e-5, atol=1e-6)


def test_diversity_members_subset_by_hand():
    """--diversity-members k (the release code, snu-mllab/EDAC 7f62728): ES over k members drawn anew each update,
    1/(k-1) Σ_{i≠j in the subset} cos. Members' action gradients (1, 0), (0, 1), (1, 1), (-1, 0)."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    critic, target = LinearQ(w.clone()), LinearQ(w.clone())
    actor = lambda obs: (torch.zeros(len(obs), 2), torch.zeros(len(obs)))  # noqa: E731
    batch = (torch.randn(4, 3), torch.randn(4, 2), torch.randn(4), torch.randn(4, 3), torch.zeros(4))
    r = 1 / math.sqrt(2)
    cos = {(0, 1): 0.0, (0, 2): r, (0, 3): -1.0, (1, 2): r, (1, 3): 0.0, (2, 3): -r}

    def es(subset):  # by hand: both ordered pairs of the subset, over k - 1
        return sum(2 * cos[p] for p in itertools.combinations(subset, 2)) / (len(subset) - 1)

    def draws(k, n):
        torch.manual_seed(0)
        return [m.critic_loss_fn(critic, target, actor, batch, 0.9, 1.0, 1.0, k)[2].item() for _ in range(n)]

    everyone = es(range(4))  # (2/3)(1/√2 - 1)
    for k in (0, 4):  # 0 and k = N: all members, no draw
        assert all(math.isclose(v, everyone, abs_tol=1e-6) for v in draws(k, 3))
    for k in (2, 3):
        by_subset = {s: es(s) for s in itertools.combinations(range(4), k)}
        seen = draws(k, 300)
        matched = [[s for s, v in by_subset.items() if math.isclose(x, v, abs_tol=1e-5)] for x in seen]
        assert all(matched), [x for x, s in zip(seen, matched) if not s][:5]  # every value is some subset's
        values = sorted(set(by_subset.values()))
        counts = [sum(math.isclose(x, v, abs_tol=1e-5) for x in seen) for v in values]
        expected = [
            300 * sum(math.isclose(b, v, abs_tol=1e-9) for b in by_subset.values()) / len(by_subset) for v in values
        ]
        assert all(abs(c - e) < 0.3 * e + 10 for c, e in zip(counts, expected)), (values, counts, expected)


@pytest.mark.parametrize("k, n", [(1, 10), (11, 10)])
def test_diversity_members_out_of_range_is_one_line(k, n, tmp_path):
    command = [sys.executable, os.path.join(ROOT, "algorithms", "edac.py"), "--dataset", "no-such-data-v2"]
    command += ["--diversity-members", str(k), "--num-critics", str(n), "--runs-dir", str(tmp_path)]
    env = {key: v for key, v in os.environ.items() if key != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --diversity-members"), lines
    assert not os.listdir(tmp_path)


@pytest.mark.learning
def test_learns(tmp_path):
    """EDAC learns Pendulum from the 3k-transition medium-replay data, whose behaviour scores 2.

    The paper's 3x256 networks run a few updates/s on this 2-core machine, too slow for a
    one-minute test, so this run narrows them to 3x64, raises the learning rates to 1e-3 and
    uses N = 5 critics (η = 1, the default). 3000 updates, 5 evaluation episodes every 1000.
    Runs made (best normalised score, seeds 0, 1, 2): 63.8, 71.1, 84.1, 38-61 s wall on the
    contended machine. With N = 10 and 4000 updates the same seeds reached 101.2, 96.9, 86.9
    (best over 4 evaluations) but took 140-180 s. Threshold 50: far above the behaviour data's
    2.2 and pendulum-medium's 32.6.
    With the current code (fused Adam) seed 0 scores -5.1, 37.2, 93.6 at the same
    evaluations (`pytest -m learning -rP` prints them).
    """
    command = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "edac.py"),
        "--dataset",
        os.path.join(SHIPPED, "pendulum-medium-replay.hdf5"),
        "--num-updates",
        "3000",
        "--eval-every",
        "1000",
        "--eval-episodes",
        "5",
        "--hidden-dim",
        "64",
        "--num-critics",
        "5",
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
    (path,) = glob.glob(str(tmp_path / "edac__*" / "results.json"))
    results = json.load(open(path))
    print_scores("edac", results)
    assert results["best_normalized_score"] > 50, results["evaluations"]
