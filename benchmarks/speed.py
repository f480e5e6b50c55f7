"""Training speed of every offline script in algorithms/ on this machine.

Each script that takes a `--dataset` argument is run as a subprocess, exactly as a user
runs it, for a few thousand updates on a SYNTHETIC hopper-shaped dataset (random data in
the D4RL layout, written once to a temporary folder), and its own `updates_per_second`
is read back from results.json (the scripts exclude evaluation time from it). No
download and no real data are needed, and the scores of these runs mean nothing.

To put the numbers in context the script also measures the machine's float32 matmul
throughput (2048x2048 @ 2048x2048, same thread count and device) and counts, per
algorithm, the multiply-adds of one update from the network shapes. Achieved GFLOP/s
over that peak says how much of the hardware the small 256-wide MLPs actually use.

A tighter yardstick is the matmul-only bound: the matrix products of one real update,
recorded at the dispatcher (forward and backward) and replayed alone. "% of bound" is the
share of an update that is the arithmetic it cannot avoid; the rest is activations, losses,
the optimiser, sampling and Python.

Example (from the project root):
    python benchmarks/speed.py
    OMP_NUM_THREADS=1 python benchmarks/speed.py --algos bc td3_bc --updates 500 --threads 1 --out /tmp/speed.md
"""

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

PROJECT = Path(__file__).resolve().parent.parent
ALGORITHMS = PROJECT / "algorithms"

# Shape of the synthetic data: Hopper-v4 (the dataset loader checks it against the env).
OBS_DIM, ACT_DIM = 11, 3
NUM_TRANSITIONS = 200_000
EPISODE_LENGTH = 1000
HIDDEN = 256  # 2x256 MLPs, the default of every script measured here
# Updates per second of well-known single-file implementations on the development machine
# (2-core CPU, 2 threads, synthetic hopper-sized data, batch 256), as quoted in the project's
# issues: the bar each script is held to (1.5x, or 80 % of the matmul peak where 1.5x is beyond it).
REFERENCE_UPDATES_PER_SECOND = {"td3_bc": 250, "iql": 178, "awac": 116, "sac_n": 26, "edac": 16, "cql": 11}


# ---------------------------------------------------------------- synthetic dataset
def write_synthetic_dataset(path: Path, seed: int = 0) -> None:
    """A D4RL-layout hdf5 file that every offline script accepts as `--dataset path`."""
    rng = np.random.default_rng(seed)
    n = NUM_TRANSITIONS
    timeouts = np.zeros(n, dtype=bool)
    timeouts[EPISODE_LENGTH - 1 :: EPISODE_LENGTH] = True  # a time-limit cut every 1000 steps
    terminals = (rng.random(n) < 1e-3) & ~timeouts  # rare true episode ends
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, OBS_DIM), dtype=np.float32)
        f["actions"] = np.clip(rng.standard_normal((n, ACT_DIM), dtype=np.float32), -1.0, 1.0)
        f["rewards"] = rng.standard_normal(n, dtype=np.float32)
        f["next_observations"] = rng.standard_normal((n, OBS_DIM), dtype=np.float32)
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f.attrs["env_id"] = "Hopper-v4"
        f.attrs["ref_min_score"] = -20.272305  # D4RL's hopper reference returns
        f.attrs["ref_max_score"] = 3234.3


# ---------------------------------------------------------------- which scripts
def offline_scripts() -> dict[str, Path]:
    """Scripts of algorithms/ whose Args dataclass has a `dataset` field."""
    found = {}
    for path in sorted(ALGORITHMS.glob("*.py")):
        args_block = re.search(r"^class Args\b.*?(?=^\S)", path.read_text(), re.S | re.M)
        if args_block and re.search(r"^\s+dataset\s*:", args_block.group(0), re.M):
            found[path.stem] = path
    return found


# ---------------------------------------------------------------- analytic FLOP counts
# Multiply-adds (MACs) of the matrix multiplications of ONE update, for a minibatch of
# `batch`. Biases, activations, losses and the Adam step are ignored: they are O(params)
# or O(batch x width), small next to the matmuls. Conventions:
#   * a trained network costs forward + backward ~= 3x its forward (the backward computes
#     the gradients of the inputs and of the weights, each about one forward),
#   * a target network (no grad) costs 1x its forward,
#   * an ensemble of `members` networks costs `members` times one network.
# FLOPs = 2 x MACs.
def mlp_macs(sizes: list[int], batch: int) -> int:
    """MACs of one forward pass of an MLP with layer widths `sizes` (input first)."""
    return batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def bc_macs(obs_dim: int, act_dim: int, hidden: int, batch: int) -> int:
    """algorithms/bc.py: one MSE regression step of the actor obs -> 256 -> 256 -> action."""
    actor = mlp_macs([obs_dim, hidden, hidden, act_dim], batch)
    return 3 * actor  # actor forward + backward


def td3_bc_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, policy_freq: int = 2) -> int:
    """algorithms/td3_bc.py: critic step every update, actor step every `policy_freq` (TD3's d = 2)."""
    actor = mlp_macs([obs_dim, hidden, hidden, act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # DoubleCritic: 2 members, one batched pass
    critic_step = (
        1 * actor  # target actor forward on next_obs (no grad)
        + 1 * critic  # target critic forward, both members (no grad)
        + 3 * critic  # critic forward + backward, both members
    )
    actor_step = (
        3 * actor  # actor forward + backward
        + 2 * critic // 2  # critic.q1_frozen: member 0 only, forward + input gradients
        #                    (its weights are detached, so no weight gradients)
    )
    return critic_step + actor_step // policy_freq  # averaged per update


def sac_n_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, members: int = 10) -> int:
    """algorithms/sac_n.py: 3x256 tanh-Gaussian actor (mean and log-std heads), N = 10 critics of 3x256."""
    actor = mlp_macs([obs_dim, hidden, hidden, hidden], batch) + 2 * batch * hidden * act_dim
    critic = members * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)  # one batched pass
    actor_step = (
        3 * actor  # actor forward + backward (its sample also serves the temperature loss)
        + 2 * critic  # critic.frozen: every member, forward + input gradients (weights detached)
    )
    critic_step = (
        1 * actor  # actor forward on next_obs (no grad)
        + 1 * critic  # target critics forward (no grad)
        + 3 * critic  # critics forward + backward
    )
    return actor_step + critic_step


def iql_macs(obs_dim: int, act_dim: int, hidden: int, batch: int) -> int:
    """algorithms/iql.py: a V, an actor and a twin-Q step every update (the official code's order)."""
    actor = mlp_macs([obs_dim, hidden, hidden, act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # DoubleCritic: 2 members, one batched pass
    value = mlp_macs([obs_dim, hidden, hidden, 1], batch)
    return (
        1 * critic  # target Q-functions on (s, a), both members (no grad)
        + 3 * value  # V forward + backward (expectile loss)
        + 2 * value  # updated V on s and s' (no grad): the advantages and the Q targets
        + 3 * actor  # actor forward + backward (advantage-weighted log-likelihood)
        + 3 * critic  # Q forward + backward, both members
    )


def awac_macs(obs_dim: int, act_dim: int, hidden: int, batch: int) -> int:
    """algorithms/awac.py: Gaussian actor and twin Q-functions of 3x256 (CORL's sizes, the defaults)."""
    actor = mlp_macs([obs_dim, hidden, hidden, hidden, act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)  # DoubleCritic: one batched pass
    return (
        1 * actor  # actor forward on next_obs (no grad): a' ~ pi(s')
        + 1 * critic  # target Q-functions on (s', a') (no grad)
        + 3 * critic  # Q forward + backward on (s, a)
        + 1 * critic  # Q on (s, a~pi(s)) (no grad): the advantage baseline
        + 3 * actor  # actor forward + backward (its forward also gives a~pi(s))
    )


def edac_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, members: int = 10) -> int:
    """algorithms/edac.py: SAC-N plus the ensemble similarity, whose action gradients are differentiated again."""
    actor = mlp_macs([obs_dim, hidden, hidden, hidden], batch) + 2 * batch * hidden * act_dim
    critic = members * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)
    actor_step = 3 * actor + 2 * critic  # as in SAC-N
    critic_step = (
        1 * actor  # actor forward on next_obs (no grad)
        + 1 * critic  # target critics forward (no grad)
        + 1 * critic  # critics forward, shared by the TD loss and the similarity
        + 1 * critic  # ∇_a Q of every member (autograd.grad with create_graph)
        + 2 * critic  # backward through that gradient pass (weights and its inputs)
        + 2 * critic  # backward through the forward (weights and activations)
    )
    return actor_step + critic_step


def rebrac_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, policy_freq: int = 2) -> int:
    """algorithms/rebrac.py: TD3+BC's update with 3x256 networks (LayerNorm ignored: not a matmul)."""
    actor = mlp_macs([obs_dim, hidden, hidden, hidden, act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)  # DoubleCritic: one batched pass
    critic_step = 1 * actor + 1 * critic + 3 * critic  # target actor, target critics, critics forward + backward
    actor_step = 3 * actor + 2 * critic  # critic.frozen: both members (min), forward + input gradients
    return critic_step + actor_step // policy_freq


def cql_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, num_sampled: int = 10) -> int:
    """algorithms/cql.py: SAC with 3x256 networks; both Q-functions run once, batched, over the data's
    action and the 3N sampled actions (uniform, pi(s), pi(s')) of every state."""
    actor = (
        mlp_macs([obs_dim, hidden, hidden, hidden], batch) + 2 * batch * hidden * act_dim
    )  # trunk + mean, log-std heads
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)  # DoubleCritic: 2 members
    action_sets = 1 + 3 * num_sampled
    return (
        3 * actor  # actor forward + backward on s (its mean and std also give the N samples at s)
        + 1 * actor  # actor on s' (no grad): a' for the target and the N samples at s'
        + 2 * critic  # critic.frozen on (s, a~pi(s)): forward + input gradients (weights detached)
        + 1 * critic  # target Q-functions on (s', a') (no grad)
        + 3 * action_sets * critic  # Q forward + backward on all 1 + 3N action sets, both members
    )


def combo_macs(
    obs_dim: int, act_dim: int, hidden: int, batch: int, num_sampled: int = 10, real_ratio: float = 0.5
) -> int:
    """algorithms/combo.py's SAC update (its rollouts, every 1000 updates, are a phase below): 3x256 networks
    (the SAC block's actor: one head of 2|A|); the critics run once, batched, over the minibatch's (s, a) and the
    3N sampled actions of every push-down state (the whole mixed batch, its default); the N actions of pi(s) and
    of pi(s') each come from the actor run on N copies of the state. real_ratio does not change the count."""
    actor = mlp_macs([obs_dim, hidden, hidden, hidden, 2 * act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, hidden, 1], batch)  # 2 members
    return (
        3 * actor  # actor forward + backward on s
        + 1 * actor  # actor on s' (no grad): a' for the target
        + 2 * num_sampled * actor  # actor on N copies of s and of s' (no grad): the 2N policy samples
        + 2 * critic  # critic.frozen on (s, a~pi(s)): forward + input gradients (weights detached)
        + 1 * critic  # target critics on (s', a') (no grad)
        + 3 * (1 + 3 * num_sampled) * critic  # critics forward + backward on (s, a) and the 3N sampled actions
    )


def rambo_macs(obs_dim: int, act_dim: int, hidden: int, batch: int) -> int:
    """algorithms/rambo.py's SAC update, 2x256 networks (the SAC block's actor: one head of 2|A|). Its adversary
    steps (1000 after every 1000 updates, none in the first 1000, so a short timing has none) and its rollouts
    are phases below: per update, a full run adds one adversary step (RAMBO's adversary step)."""
    actor = mlp_macs([obs_dim, hidden, hidden, 2 * act_dim], batch)
    critic = 2 * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)
    return 1 * actor + 1 * critic + 3 * critic + 3 * actor + 2 * critic  # target, critics, actor on frozen critics


def bcq_macs(
    obs_dim: int, act_dim: int, hidden: int, batch: int, hidden_dims=(400, 300), vae_hidden: int = 750, n: int = 10
) -> int:
    """algorithms/bcq.py at its own widths (VAE 750-750 with latent 2|A|, perturbation model and critics 400-300;
    `hidden` is not used): a VAE step, a critic step whose target decodes, perturbs and values n samples per
    next state, and a perturbation-model step, every update."""
    latent = 2 * act_dim
    decoder = lambda rows: mlp_macs([obs_dim + latent, vae_hidden, vae_hidden, act_dim], rows)  # noqa: E731
    vae = (
        mlp_macs([obs_dim + act_dim, vae_hidden, vae_hidden], batch) + 2 * batch * vae_hidden * latent + decoder(batch)
    )
    actor = lambda rows: mlp_macs([obs_dim + act_dim, *hidden_dims, act_dim], rows)  # noqa: E731
    critic = lambda rows: 2 * mlp_macs([obs_dim + act_dim, *hidden_dims, 1], rows)  # noqa: E731  two members
    return (
        3 * vae  # VAE forward + backward (encoder, μ and log σ heads, decoder)
        + decoder(batch * n)
        + actor(batch * n)
        + critic(batch * n)  # the target's n samples per s' (no grad)
        + 3 * critic(batch)  # critics forward + backward
        + decoder(batch)  # VAE samples at s for the perturbation model's loss (no grad)
        + 3 * actor(batch)  # perturbation model forward + backward
        + 2 * critic(batch) // 2  # critic.q1_frozen: member 0 only, forward + input gradients
    )


def bear_macs(
    obs_dim: int,
    act_dim: int,
    hidden: int,
    batch: int,
    members: int = 2,
    vae_hidden: int = 750,
    mmd_samples: int = 4,
    target_actions: int = 10,
) -> int:
    """algorithms/bear.py after its warm-up: VAE step, Q-ensemble step toward the soft clipped double-Q target
    over `target_actions` actions of pi(s'), and the actor's MMD + Q step."""
    latent = 2 * act_dim
    encoder = mlp_macs([obs_dim + act_dim, vae_hidden, vae_hidden, 2 * latent], batch)
    decoder = mlp_macs([obs_dim + latent, vae_hidden, vae_hidden, act_dim], batch)
    actor = mlp_macs([obs_dim, hidden, hidden, 2 * act_dim], batch)  # mean and log-std; samples share it
    critic = members * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # one batched pass
    return (
        3 * (encoder + decoder)  # VAE forward + backward on (s, a)
        + mmd_samples * decoder  # VAE samples at s for the MMD (no grad)
        + 1 * actor  # actor on s' (no grad): the target's actions
        + target_actions * critic  # target Q-networks on (s', a'_j) (no grad)
        + 3 * critic  # Q-networks forward + backward on (s, a)
        + 3 * actor  # actor forward + backward on s
        + 2 * critic  # critic.frozen on (s, a ~ pi(s)): forward + input gradients
    )


def uwac_macs(
    obs_dim: int,
    act_dim: int,
    hidden: int,
    batch: int,
    members: int = 2,
    vae_hidden: int = 750,
    mmd_samples: int = 4,
    target_actions: int = 10,
    passes: int = 100,
) -> int:
    """algorithms/uwac.py after its warm-up: bear.py's update, with every Q evaluation but the TD loss's own
    (one stochastic pass) made of `passes` dropout passes, as rows of one batch: `target_actions` x `passes`
    rows per s' for the target, `passes` rows per s for the actor's value. The first layer comes before any
    dropout, so it is counted once per (s, a), the layers after it once per pass. Spectral norm's power
    iteration (a few matrix-vector products per layer) is left out."""
    latent = 2 * act_dim
    encoder = mlp_macs([obs_dim + act_dim, vae_hidden, vae_hidden, 2 * latent], batch)
    decoder = mlp_macs([obs_dim + latent, vae_hidden, vae_hidden, act_dim], batch)
    actor = mlp_macs([obs_dim, hidden, hidden, 2 * act_dim], batch)  # mean and log-std; samples share it
    critic = members * mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # one batched pass
    first = members * mlp_macs([obs_dim + act_dim, hidden], batch)  # the part every pass shares
    per_pass = critic - first
    return (
        3 * (encoder + decoder)  # VAE forward + backward on (s, a)
        + mmd_samples * decoder  # VAE samples at s for the MMD (no grad)
        + 1 * actor  # actor on s' (no grad): the target's actions
        + target_actions * (first + passes * per_pass)  # target Q-networks at every (s', a'_j) (no grad)
        + 3 * critic  # Q-networks forward + backward on (s, a), one pass
        + 3 * actor  # actor forward + backward on s
        + 2 * (first + passes * per_pass)  # actor_value at (s, a ~ pi(s)), forward + input gradients
    )


def crr_macs(obs_dim: int, act_dim: int, hidden: int, batch: int, num_samples: int = 4) -> int:
    """algorithms/crr.py: Gaussian actor (mean and log-std heads) and one critic, both 2x256; the advantage's
    baseline evaluates the critic on m = 4 policy actions per state in one batched pass."""
    actor = mlp_macs([obs_dim, hidden, hidden], batch) + 2 * batch * hidden * act_dim
    critic = mlp_macs([obs_dim + act_dim, hidden, hidden, 1], batch)  # num_critics = 1
    return (
        1 * actor  # target actor on s' (no grad): a' ~ pi_target(s')
        + 1 * critic  # target critic on (s', a') (no grad)
        + 3 * critic  # critic forward + backward on (s, a)
        + 3 * actor  # actor forward + backward (its forward also gives the m samples)
        + num_samples * critic  # critic on the m policy actions of every state (no grad)
    )


def awr_macs(
    obs_dim: int,
    act_dim: int,
    hidden: int,
    batch: int,
    value_steps: int = 200,
    policy_steps: int = 1000,
    transitions: int = NUM_TRANSITIONS,
) -> int:
    """algorithms/awr.py at its own widths, 128 then 64 (the authors'; `hidden` is ignored): an iteration is
    200 value steps and 1000 policy steps, plus three passes of V over the whole dataset (V(s') for the returns
    of each phase, V(s) for the advantages), averaged per update."""
    del hidden
    value = mlp_macs([obs_dim, 128, 64, 1], batch)
    actor = mlp_macs([obs_dim, 128, 64, act_dim], batch)
    whole_data = 3 * mlp_macs([obs_dim, 128, 64, 1], transitions)  # no grad
    iteration = value_steps * 3 * value + policy_steps * 3 * actor + whole_data  # forward + backward per step
    return iteration // (value_steps + policy_steps)


MACS_PER_UPDATE = {
    "bc": bc_macs,
    "td3_bc": td3_bc_macs,
    "sac_n": sac_n_macs,
    "edac": edac_macs,
    "rebrac": rebrac_macs,
    "iql": iql_macs,
    "awac": awac_macs,
    "cql": cql_macs,
    "combo": combo_macs,
    "rambo": rambo_macs,
    "bcq": bcq_macs,
    "bear": bear_macs,
    "uwac": uwac_macs,
    "crr": crr_macs,
    "awr": awr_macs,
}  # scripts not listed get "n/a"
# Scripts whose updates differ within a cycle: timed over whole cycles and bounded over one. awr.py's iteration
# is 200 value steps, then 1000 policy steps, and V over the whole dataset three times (awr_macs).
CYCLE = {"awr": 1200}
BOUND_UPDATES = 4  # recorded updates of the other scripts (all alike)


# Scripts whose update is far longer than a minibatch step, timed over a fixed number of them with the flags that
# keep their other phases short: bremen.py's update is a TRPO iteration (imagined paths of the 5x2x1024 ensemble,
# conjugate gradient, line search), here on 50 paths x 100 steps (the paper: 50,000 steps), after 100 cloning steps;
# its matmul-only bound is the phase "BREMEN TRPO iteration" below.
FIXED = {"bremen": (5, ["--bc-steps", "100", "--horizon", "100", "--rollout-batch-size", "50"])}


def timed_updates(name: str, updates: int) -> int:
    """`updates`, rounded up to whole cycles for the scripts in CYCLE (a fixed count for those in FIXED)."""
    if name in FIXED:
        return FIXED[name][0]
    cycle = CYCLE.get(name, 1)
    return -(-updates // cycle) * cycle


# ---------------------------------------------------------------- measurements
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def matmul_gflops(device: torch.device, n: int = 2048, blocks: int = 5, block_seconds: float = 0.5) -> float:
    """Best sustained GFLOP/s of float32 n x n @ n x n matmuls (torch's default precision)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)

    def run(reps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    per_call = max(run(2) / 2, 1e-6)  # the first calls also warm up the library
    per_call = max(run(2) / 2, 1e-6)
    reps = max(1, round(block_seconds / per_call))
    best = min(run(reps) for _ in range(blocks))  # least disturbed block
    return 2 * n**3 * reps / best / 1e9


def time_script(
    name: str, script: Path, dataset: Path, runs_dir: Path, updates: int, threads: int, device: str
) -> dict:
    """Run one script for `updates` updates; returns its results.json, or {"error": ...}."""
    command = [
        sys.executable,
        str(script),
        "--dataset",
        str(dataset),
        "--num-updates",
        str(updates),
        "--eval-every",
        str(updates),
        "--eval-episodes",
        "1",
        "--checkpoint-every",
        str(updates),
        "--batch-size",
        "256",
        "--threads",
        str(threads),
        "--device",
        device,
        "--runs-dir",
        str(runs_dir),
    ]
    if "dynamics_max_epochs" in script.read_text():  # model-based: the dynamics are timed apart (model_based_phases)
        command += ["--dynamics-max-epochs", "1"]
    if "bc_updates:" in script.read_text():  # RAMBO: its BC pretraining is not part of the updates timed
        command += ["--bc-updates", "0"]
    command += FIXED.get(name, (0, []))[1]
    if "warmup_updates:" in script.read_text():  # BEAR, UWAC: time the full update their bound counts, not the warm-up
        command += ["--warmup-updates", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True)
    results = sorted(runs_dir.glob("*/results.json"))
    if done.returncode != 0 or not results:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit code {done.returncode}"}
    return json.loads(results[-1].read_text())


def model_based_phases(dataset: Path, device: torch.device, threads: int) -> list[dict]:
    """The phases of the model-based scripts, timed on the shared blocks of mopo.py, MOBILE's penalty and RAMBO's
    adversary step.

    dynamics epoch: one epoch of ensemble training (7 members, 4x200, batch 256 per member) on
    the 200k synthetic transitions; rollout: 50,000 starts x 5 steps of the SAC actor in the
    ensemble (the 5 elites evaluated, as the uncertainties need); SAC update: one update on a
    mixed minibatch of 256; MOBILE's penalty: u(s, a) of the 244 model transitions of that
    minibatch (mobile.py's bellman_inconsistency: 10 next states from each of the 5 elites through
    the actor and both target critics), which mobile.py adds to every SAC update; RAMBO's adversary step
    (rambo.py's adversary_step: the model's adversarial update on 256 rollout states plus its NLL on 256 real
    transitions per member), of which rambo.py runs one per SAC update. Each with its multiply-add count
    (conventions above).
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("mopo_speed", ALGORITHMS / "mopo.py")
    mopo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mopo)
    spec = importlib.util.spec_from_file_location("mobile_speed", ALGORITHMS / "mobile.py")
    mobile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mobile)
    spec = importlib.util.spec_from_file_location("rambo_speed", ALGORITHMS / "rambo.py")
    rambo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rambo)
    if device.type == "cpu":
        mopo.keep_freed_memory()  # as the scripts' pick_device does
    torch.manual_seed(0)
    data = mopo.load_dataset(str(dataset), device)
    members, hidden_dyn, out = 7, 200, 2 * (OBS_DIM + 1)
    per_sample = mlp_macs([OBS_DIM + ACT_DIM, hidden_dyn, hidden_dyn, hidden_dyn, hidden_dyn, out], 1)
    actor_macs = mlp_macs([OBS_DIM, HIDDEN, HIDDEN, 2 * ACT_DIM], 1)
    critic_macs = 2 * mlp_macs([OBS_DIM + ACT_DIM, HIDDEN, HIDDEN, 1], 1)
    rows = []

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    model = mopo.EnsembleDynamics(OBS_DIM, ACT_DIM).to(device)
    seconds = timed(lambda: mopo.train_dynamics(model, data, holdout_size=1000, max_epochs=1))
    trained = NUM_TRANSITIONS - 1000
    bound = None
    if device.type == "cpu":  # the products of a few minibatch steps, scaled to the epoch's minibatches
        optimizer = torch.optim.Adam(model.optimizer_groups(), lr=1e-3, fused=True)
        idx = torch.randint(0, NUM_TRANSITIONS, (members, 256))
        targets = torch.cat([data.next_observations - data.observations, data.rewards[:, None]], -1)
        with MatmulRecorder() as recorder:
            for _ in range(4):
                loss = model.loss(data.observations[idx], data.actions[idx], targets[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        bound = replay_seconds(recorder.calls) / 4 * math.ceil(trained / 256)
    rows.append(
        {
            "phase": "dynamics training, one epoch",
            "seconds": seconds,
            "bound": bound,
            "gflop": 2 * 3 * members * trained * per_sample / 1e9,
            "reference": "9.9 s (OfflineRL-Kit)",
        }
    )

    agent = mopo.SAC(OBS_DIM, ACT_DIM, -np.ones(ACT_DIM), np.ones(ACT_DIM)).to(device)
    start = data.observations[torch.randint(0, NUM_TRANSITIONS, (50_000,), device=device)]
    never = lambda next_obs: torch.zeros(len(next_obs), dtype=torch.bool, device=next_obs.device)  # noqa: E731
    mopo.rollout(model, agent.actor, start[:1000], 5, never, 1.0, "aleatoric")  # warm-up
    seconds = timed(lambda: mopo.rollout(model, agent.actor, start, 5, never, 1.0, "aleatoric"))
    bound = None
    if device.type == "cpu":  # a tenth of the starts (the recorder keeps every product's operands alive), x 10
        with MatmulRecorder() as recorder:
            mopo.rollout(model, agent.actor, start[:5000], 5, never, 1.0, "aleatoric")
        bound = 10 * replay_seconds(recorder.calls)
    rows.append(
        {
            "phase": "rollout, 50,000 starts x 5 steps",
            "seconds": seconds,
            "bound": bound,
            "gflop": 2 * 50_000 * 5 * (5 * per_sample + actor_macs) / 1e9,
            "reference": "8.5 s (OfflineRL-Kit)",
        }
    )  # the 5 elites

    buffer = mopo.ReplayBuffer(100_000, OBS_DIM, ACT_DIM, device)
    buffer.add(
        data.observations[:100_000],
        data.actions[:100_000],
        data.rewards[:100_000],
        data.next_observations[:100_000],
        data.terminals[:100_000],
    )

    def updates(n: int):
        for _ in range(n):
            real, imagined = data.sample(12), buffer.sample(244)
            agent.update(*(torch.cat([r, m]) for r, m in zip(real, imagined)))

    updates(50)
    n = 500
    seconds = timed(lambda: updates(n)) / n
    bound = None
    if device.type == "cpu":
        with MatmulRecorder() as recorder:
            updates(4)
        bound = replay_seconds(recorder.calls) / 4
    sac_macs = 256 * (actor_macs + critic_macs + 3 * critic_macs + 3 * actor_macs + 2 * critic_macs)
    rows.append(
        {
            "phase": "SAC update, mixed batch of 256",
            "seconds": seconds,
            "bound": bound,
            "gflop": 2 * sac_macs / 1e9,
            "reference": "7.4 ms (OfflineRL-Kit)",
        }
    )

    samples, elites, model_rows = 10, 5, 244
    obs, actions = buffer.sample(model_rows)[:2]
    penalty = lambda: mobile.bellman_inconsistency(model, agent.actor, agent.critic_target, obs, actions, samples)  # noqa: E731
    for _ in range(5):
        penalty()  # warm-up
    n = 50
    seconds = timed(lambda: [penalty() for _ in range(n)]) / n
    bound = None
    if device.type == "cpu":
        with MatmulRecorder() as recorder:
            penalty()
        bound = replay_seconds(recorder.calls)
    penalty_macs = elites * model_rows * per_sample + samples * elites * model_rows * (actor_macs + critic_macs)
    rows.append(
        {
            "phase": "MOBILE's penalty, 244 model transitions x 5 elites x 10 next states",
            "seconds": seconds,
            "bound": bound,
            "gflop": 2 * penalty_macs / 1e9,
            "reference": "—",
        }
    )

    # RAMBO's adversary step (rambo.py's adversary_step), run as often as SAC updates (1000 after every 1000):
    # the policy at 256 rollout states, all 7 members on them with gradient, a' = pi(s') and both critics at
    # (s', a') and (s, a) for the advantage, the supervised NLL on 256 real transitions per member, one backward
    adversary_opt = torch.optim.Adam(model.optimizer_groups(), lr=3e-4, fused=True)
    adv_obs = data.observations[:256]
    idx = torch.randint(0, NUM_TRANSITIONS, (members, 256), device=device)
    targets = torch.cat([data.next_observations - data.observations, data.rewards[:, None]], -1)
    real = (data.observations[idx], data.actions[idx], targets[idx])
    step = lambda: rambo.adversary_step(model, adversary_opt, agent, adv_obs, real, never, 3e-4, 0.99)  # noqa: E731
    for _ in range(5):
        step()  # warm-up
    n = 50
    seconds = timed(lambda: [step() for _ in range(n)]) / n
    bound = None
    if device.type == "cpu":
        with MatmulRecorder() as recorder:
            step()
        bound = replay_seconds(recorder.calls)
    adversary_macs = 256 * (
        3 * members * per_sample  # members on the rollout states, forward + backward
        + 3 * members * per_sample  # members on the real transitions (NLL), forward + backward
        + 2 * actor_macs  # the policy at s and at s' (no grad)
        + 2 * critic_macs  # both critics at (s', a') and (s, a) (no grad)
    )
    rows.append(
        {
            "phase": "RAMBO's adversary step, 256 rollout states + 256 real transitions x 7 members",
            "seconds": seconds,
            "bound": bound,
            "gflop": 2 * adversary_macs / 1e9,
            "reference": "—",
        }
    )
    rows.append(bremen_phase(data, device, timed))
    return rows


def bremen_phase(data, device: torch.device, timed) -> dict:
    """One TRPO iteration of bremen.py at its default networks (5x2x1024 ensemble, 2x200 policy, linear baseline)
    on 50 paths x 100 imagined steps (a tenth of the paper's 50,000), and its matmul-only bound."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bremen_speed", ALGORITHMS / "bremen.py")
    bremen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bremen)
    args = bremen.Args(horizon=100, rollout_batch_size=50)
    model = bremen.DeterministicEnsemble(OBS_DIM, ACT_DIM).to(device)
    low, high = -torch.ones(ACT_DIM, device=device), torch.ones(ACT_DIM, device=device)
    policy, bc = (bremen.GaussianPolicy(OBS_DIM, ACT_DIM, 200, low.cpu(), high.cpu()).to(device) for _ in range(2))
    baseline = bremen.ValueBaseline("linear", OBS_DIM, 3e-4, 20).to(device)
    start = data.observations[torch.randint(0, NUM_TRANSITIONS, (50,), device=device)]
    reward = bremen.hopper_reward
    never = lambda next_obs: torch.zeros(len(next_obs), dtype=torch.bool, device=next_obs.device)  # noqa: E731
    iteration = lambda: bremen.trpo_iteration(policy, bc, baseline, model, start, reward, never, args, low, high)  # noqa: E731
    iteration()  # warm-up
    seconds = timed(iteration)
    bound = None
    if device.type == "cpu":
        with MatmulRecorder() as recorder:
            iteration()
        bound = replay_seconds(recorder.calls)
    steps, model_macs = 5000, mlp_macs([OBS_DIM + ACT_DIM, 1024, 1024, OBS_DIM], 1)
    # policy passes: rollout, old and clone outputs, surrogate and its gradient (3), the KL graph (3), 11
    # Fisher-vector products (about 4 passes each), the line search (about 2)
    policy_passes = 1 + 2 + 3 + 3 + 11 * 4 + 2
    return {
        "phase": "BREMEN TRPO iteration, 50 paths x 100 imagined steps",
        "seconds": seconds,
        "bound": bound,
        "gflop": 2 * steps * (model_macs + policy_passes * mlp_macs([OBS_DIM, 200, 200, 2 * ACT_DIM], 1)) / 1e9,
        "reference": "—",
    }


# ---------------------------------------------------------------- matmul-only bound
# How fast could an update be at all? Record every matrix product the real update issues
# (forward and backward, at the dispatcher, so autograd's products are included), then replay
# those products alone, same shapes and strides, on the same threads: no activations, no loss,
# no optimiser, no sampling. No implementation of the same arithmetic in float32 with this BLAS
# can beat that time, so "% of bound" says how much of an update is overhead.
MATMULS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
}


class MatmulRecorder(TorchDispatchMode):
    """Keeps (op, args, kwargs) of every matrix product run while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in MATMULS:
            self.calls.append((func, args, kwargs))  # references: values change later, shapes do not
        return func(*args, **kwargs)


def replay_seconds(calls: list, blocks: int = 5, block_seconds: float = 0.3) -> float:
    """Time of one pass over the recorded products alone: the best of `blocks` timed blocks of
    as many passes as fill `block_seconds` (short passes alone are too noisy to time)."""

    # the products alone, without autograd: a product recorded under no_grad (awr.py's V over the whole
    # dataset) cannot even be replayed with grad enabled once its weights have been stepped in place
    @torch.no_grad()
    def passes(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            for func, args, kwargs in calls:
                func(*args, **kwargs)
        return time.perf_counter() - start

    one = passes(1)  # also the warm-up
    n = max(1, round(block_seconds / max(one, 1e-6)))
    return min(passes(n) for _ in range(blocks)) / n


def script_matmul_bound(script: Path, dataset: Path, threads: int, updates: int = BOUND_UPDATES) -> float:
    """Updates/s if an update of `script` were its matrix products and nothing else (CPU only).

    Runs the script's own main() in this process for `updates` updates under the recorder, with
    its evaluation stubbed out (evaluation is not part of an update)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.stem + "_bound", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.evaluate = lambda *args, **kwargs: np.zeros(1)
    argv = sys.argv
    sys.argv = [
        str(script),
        "--dataset",
        str(dataset),
        "--num-updates",
        str(updates),
        "--eval-every",
        str(10 * updates),
        "--checkpoint-every",
        str(10 * updates),
        "--batch-size",
        "256",
        "--threads",
        str(threads),
        "--device",
        "cpu",
        "--runs-dir",
        tempfile.mkdtemp(prefix="bound_"),
    ]
    try:
        with contextlib.redirect_stdout(sys.stderr), MatmulRecorder() as recorder:
            module.main()
    finally:
        sys.argv = argv
    return updates / replay_seconds(recorder.calls)


def matmul_bound_in_child(name: str, script: Path, dataset: Path, threads: int) -> Optional[float]:
    """script_matmul_bound in a fresh process (the script sets threads and malloc options for itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--bound-of",
            str(script),
            "--bound-dataset",
            str(dataset),
            "--bound-updates",
            str(CYCLE.get(name, BOUND_UPDATES)),
            "--threads",
            str(threads),
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"  matmul bound of {name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(rows: list[dict], peak: float, threads: int, device: torch.device, updates: int, command: str) -> str:
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        "# Training speed (updates per second)",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, python {platform.python_version()}, threads {threads}, device {device} "
        f"({device_name})",
        f"- float32 matmul peak (2048x2048 @ 2048x2048, best block): {peak:.1f} GFLOP/s",
        f"- data: synthetic hopper-shaped D4RL file, {NUM_TRANSITIONS:,} transitions, obs {OBS_DIM}-d, action "
        f"{ACT_DIM}-d; "
        f"{updates} updates per script (whole cycles of {', '.join(f'{k}: {v}' for k, v in CYCLE.items())}), "
        "batch 256, evaluation time excluded",
        "- GFLOP per update: analytic count of the matmuls (benchmarks/speed.py, `MACS_PER_UPDATE`)",
        f"- command: `{command}`",
        "",
        "- reference: a well-known single-file implementation of the same algorithm, measured on this",
        "  2-core CPU at 2 threads on synthetic hopper-sized data (the figures the project's issues quote)",
        "",
        "- matmul-only bound: updates/s if an update were its matrix products alone (recorded from the",
        "  real update and replayed with nothing else, see `script_matmul_bound`); no float32",
        "  implementation of the same arithmetic with this BLAS can be faster. n/a: model-based",
        "  scripts (their phases are bounded below) and GPUs.",
        "",
        "| script | updates/s | GFLOP / update | achieved GFLOP/s | % of matmul peak | matmul-only bound | % of "
        "bound | reference updates/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            error = row["error"].replace("|", "\\|")  # keep the table intact
            lines.append(f"| {row['name']} | failed: {error} | | | | | | | |")
            continue
        ups = row["updates_per_second"]
        reference = REFERENCE_UPDATES_PER_SECOND.get(row["name"])
        versus = f"| {reference} | {ups / reference:.2f}x |" if reference else "| — | — |"
        bound = row.get("bound")
        bounded = f"| {bound:.1f} | {100 * ups / bound:.0f} % " if bound else "| n/a | n/a "
        if row["gflop"] is None:
            lines.append(f"| {row['name']} | {ups:.1f} | n/a | n/a | n/a {bounded}{versus}")
            continue
        achieved = ups * row["gflop"]
        lines.append(
            f"| {row['name']} | {ups:.1f} | {row['gflop']:.4f} | {achieved:.2f} | {100 * achieved / peak:.1f} % "
            f"{bounded}{versus}"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--algos", nargs="+", help="scripts to time, e.g. bc td3_bc (default: every offline script)")
    parser.add_argument("--updates", type=int, default=3000, help="updates per script (default: 3000)")
    default_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads,
        help=f"torch CPU threads (default: all cores, {default_threads})",
    )
    parser.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu" or "cuda" (default: auto)')
    parser.add_argument("--no-phases", action="store_true", help="skip the model-based phase timings")
    parser.add_argument("--no-bound", action="store_true", help="skip the matmul-only bounds")
    parser.add_argument(
        "--out", default=str(PROJECT / "benchmarks" / "results" / "speed.md"), help="markdown file to write"
    )
    parser.add_argument("--bound-of", help=argparse.SUPPRESS)  # internal: one script's bound, in a child process
    parser.add_argument("--bound-dataset", help=argparse.SUPPRESS)
    parser.add_argument("--bound-updates", type=int, default=BOUND_UPDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bound_of:
        torch.set_num_threads(args.threads)
        print(script_matmul_bound(Path(args.bound_of), Path(args.bound_dataset), args.threads, args.bound_updates))
        return
    if args.updates < 1 or args.threads < 1:
        sys.exit("error: --updates and --threads must be positive")

    scripts = offline_scripts()
    if args.algos:
        unknown = [a for a in args.algos if a not in scripts]
        if unknown:
            sys.exit(
                f"error: {', '.join(unknown)}: not an offline script (Args without a `dataset` field) in "
                f"{ALGORITHMS}; choose from {', '.join(sorted(scripts))}"
            )
        scripts = {a: scripts[a] for a in args.algos}
    command = " ".join(shlex.quote(a) for a in ["python", os.path.relpath(sys.argv[0], PROJECT)] + sys.argv[1:])
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)

    print(f"measuring float32 matmul throughput on {device} with {args.threads} thread(s) ...", file=sys.stderr)
    peak = matmul_gflops(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="speed_") as tmp:
        dataset = Path(tmp) / "synthetic-hopper.hdf5"
        write_synthetic_dataset(dataset)
        for name, script in scripts.items():
            updates = timed_updates(name, args.updates)
            print(f"running {name} for {updates} updates ...", file=sys.stderr)
            result = time_script(name, script, dataset, Path(tmp) / "runs" / name, updates, args.threads, str(device))
            if "error" in result:
                print(f"  {name} failed: {result['error']}", file=sys.stderr)
                rows.append({"name": name, "error": result["error"]})
                continue
            counter = MACS_PER_UPDATE.get(name)
            gflop = 2 * counter(OBS_DIM, ACT_DIM, HIDDEN, 256) / 1e9 if counter else None
            bound = None
            # model-based: a run's products are mostly its dynamics fit and rollouts, bounded as phases below
            model_based = "dynamics_max_epochs" in script.read_text()
            if device.type == "cpu" and counter and not model_based and not args.no_bound:
                bound = matmul_bound_in_child(name, script, dataset, args.threads)
            rows.append(
                {"name": name, "updates_per_second": result["updates_per_second"], "gflop": gflop, "bound": bound}
            )
        phases = []
        if not args.no_phases:
            print("timing the model-based phases ...", file=sys.stderr)
            phases = model_based_phases(dataset, device, args.threads)

    text = report(rows, peak, args.threads, device, args.updates, command)
    if phases:
        text += (
            "\n## Model-based phases (the shared blocks of mopo.py, mobile.py, morel.py, mbpo.py; MOBILE's penalty; "
            "RAMBO's adversary step; BREMEN's TRPO iteration)\n\n"
            "| phase | time | GFLOP | achieved GFLOP/s | % of matmul peak | matmul-only bound | % of bound | "
            "reference (2 threads, this CPU) |\n"
            "|---|---:|---:|---:|---:|---:|---:|---|\n"
        )
        shown = lambda t: f"{t * 1e3:.2f} ms" if t < 1 else f"{t:.2f} s"  # noqa: E731
        for row in phases:
            achieved = row["gflop"] / row["seconds"]
            bounded = (
                f"{shown(row['bound'])} | {100 * row['bound'] / row['seconds']:.0f} %" if row["bound"] else "n/a | n/a"
            )
            text += (
                f"| {row['phase']} | {shown(row['seconds'])} | {row['gflop']:.1f} | {achieved:.1f} | "
                f"{100 * achieved / peak:.1f} % | "
                f"{bounded} | {row['reference']} |\n"
            )
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    sys.exit(1 if any("error" in row for row in rows) else 0)


if __name__ == "__main__":
    main()
