"""BOReL: offline meta-RL with a learned belief, reward relabelling and offline RL on hyper-states.

Dorfman, Shenfeld, Tamar, "Offline Meta Reinforcement Learning - Identifiability Challenges and Effective Data
Collection Strategies", NeurIPS 2021, https://arxiv.org/abs/2008.02598

The data are many tasks' replay buffers, each collected separately by an agent that learned its own task
(datasets/borel_generate.py). A trial is a few MDP episodes in one task; an agent that explores in the first
episodes and exploits what it found in the later ones is Bayes-optimal for the task distribution. BOReL learns it
offline in three steps, as the authors' code (Rondorf/BOReL) runs them:
1. A VariBAD VAE: a GRU encoder over (a_t, s_{t+1}, r_{t+1}) gives the belief q_t = N(μ_t, σ_t²) after every step
   of a trial; a reward decoder r̂(z, s') (MuJoCo: r̂(z, s', s, a)) reconstructs every reward of the trial from
   every belief's sample; the ELBO pulls each belief towards the previous one. Reward relabelling (on by default,
   --no-relabel) first replaces segments of a task's trials by other tasks' trials with this task's rewards
   (Half-Cheetah-Vel's exactly, from the stored forward velocity): without it the belief can read the task off the
   behaviour (each task's agent heads for its own goal) instead of off the rewards, and fails on a new agent's
   exploration (the paper's "MDP ambiguity"). Trained once per dataset and cached.
2. State relabelling: each state of the original (unmixed) data becomes the hyper-state [s_t, μ_t, log σ²_t]
   through the frozen encoder.
3. Offline RL on hyper-states: DQN on the gridworld, SAC with a fixed α on the others, each update on
   `batch_size` transitions of each of `meta_batch` tasks drawn for `updates_per_iteration` updates.
Evaluation runs whole trials online: the frozen encoder updates the belief after every step, the policy is
deterministic; each trial's return per inner episode (the first against the later ones shows exploration paying
off), its total (eval/return, normalised with the file's per-trial references: random actions 0, an oracle that
knows the goal 100; MuJoCo: each task's collecting agent) and whether the goal was reached (success; none for
Half-Cheetah-Vel, whose per-episode return is minus the summed velocity error and control cost). Gridworld: the 21
training goals in turn, from (0, 0), as the authors; the others: fresh goals at every evaluation, as the authors,
from the origin (Half-Cheetah-Vel: Gymnasium's reset noise).

Choices where the authors' code has a quirk (../shared/reference/borel_bremen.md A.7): no hidden-state reset at
goal states when relabelling states; the goal is not a terminal of the Bellman target (the environment keeps
paying there; --goal-terminal for the authors' mask); the point robot is evaluated from the origin
(--eval-random-start for the authors' random starts); tasks and relabelled trials are drawn with replacement as
theirs; the relabelling is redrawn every VAE epoch (theirs once, before training); the step after an inner
episode starts from the new start state unless the file was collected with --teleport. Defaults are the authors'
gridworld settings; benchmarks/configs/borel/ holds the other families' and reduced CPU settings.

Example:
    python algorithms/borel.py --dataset shipped/borel-gridworld
    python algorithms/borel.py --dataset data/borel/point-robot.hdf5 \\
        --config benchmarks/configs/borel/variants/point-robot.yaml
    python algorithms/borel.py --dataset data/borel/cheetah-vel.hdf5 \\
        --config benchmarks/configs/borel/variants/cheetah-vel.yaml

Logged (tensorboard, in the run directory):
    vae/loss, vae/reward_loss, vae/kl   the negative ELBO and its two terms, per VAE epoch (mean over its steps)
    losses/q_loss               TD error of the Q-network (DQN) or of both critics (SAC)
    values/q_mean               mean Q(s⁺, a) on the batch's hyper-states and actions
    losses/actor_loss           SAC: E[α log π(a|s⁺) - min_j Q_j(s⁺, a)], a ~ π(s⁺)
    charts/entropy              SAC: the policy's entropy estimate -E[log π(a|s⁺)]
    eval/return                 mean trial return of the evaluation trials
    eval/normalized_score       its normalised score (per-trial references of the file)
    eval/episode_<k>_return     mean return of the k-th inner episode of the trials (k = 1, 2, ...)
    eval/success_rate           fraction of trials that reached the goal (not Half-Cheetah-Vel)
    charts/updates_per_second   offline RL updates per second of training time (evaluation excluded)
"""

import contextlib
import copy
import ctypes
import fcntl
import hashlib
import json
import math
import os
import random
import re
import sys
import tempfile
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Optional

import gymnasium as gym
import h5py
import numpy as np
import pyrallis
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    dataset: str = "shipped/borel-gridworld"
    """a file of datasets/borel_generate.py: path, or shipped/<name>"""
    seed: int = 0
    """seed of python, numpy, torch, the VAE and the evaluation tasks"""
    relabel: bool = True
    """reward relabelling of the VAE's training data (--no-relabel: each task's own trials only)"""
    num_updates: int = 250_000
    """offline RL updates (the authors' gridworld 1000 iterations x 250; point robot 5000 x 1000)"""
    updates_per_iteration: int = 250
    """updates on one meta-batch of tasks before the next is drawn"""
    meta_batch: int = 16
    """tasks in a meta-batch, drawn with replacement"""
    batch_size: int = 256
    """transitions of each task of the meta-batch in an update (meta_batch x batch_size in all)"""
    hidden_dim: int = 64
    """width of the two hidden layers of the Q-network (DQN) or of the actor and the critics (SAC)"""
    actor_lr: float = 3e-4
    """Adam learning rate of SAC's actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-network or critics"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """target smoothing coefficient τ"""
    alpha: float = 0.01
    """SAC's fixed entropy coefficient α (the point robot's; the gridworld's DQN has none)"""
    goal_terminal: bool = False
    """the authors' Bellman mask: no bootstrap after a step that reached the goal (the file's goal_reached)"""
    vae_epochs: int = 100
    """VAE epochs: passes over every task's trials, 8 trials of 8 tasks a step"""
    vae_lr: float = 3e-4
    """Adam learning rate of the encoder and the reward decoder"""
    latent_dim: int = 5
    """dimension of the belief's Gaussian"""
    encoder_hidden_dim: int = 64
    """GRU width of the encoder (the authors' gridworld 64, others 128)"""
    action_embed_dim: int = 0
    """embedding of a_t in the encoder and the MuJoCo reward decoder (0: not read, the authors' gridworld; others 16)"""
    state_embed_dim: int = 32
    """embedding of s_{t+1} in the encoder and of s_{t+1} (and s_t) in the reward decoder"""
    reward_embed_dim: int = 8
    """embedding of r_{t+1} in the encoder (the authors' gridworld 8, others 16)"""
    decoder_hidden_dim: int = 32
    """width of the reward decoder's two hidden layers"""
    kl_weight: float = 0.05
    """weight of Σ_t KL(q_t || q_{t-1}) in the negative ELBO"""
    elbo_terms: int = 0
    """beliefs per trial whose reward terms enter a VAE step, drawn anew each step (0: all T + 1, the authors')"""
    vae_tasks_per_batch: int = 8
    """tasks in a VAE step"""
    vae_trials_per_batch: int = 8
    """trials of each of those tasks in a VAE step"""
    vae_cache_dir: Optional[str] = None
    """folder of trained VAEs, reused by fingerprint (data, VAE settings, relabelling, seed); default <runs_dir>/vae"""
    eval_every: int = 2_500
    """updates between evaluations (the authors' every 10 iterations)"""
    eval_episodes: int = 21
    """trials per evaluation, one task each (gridworld: the training goals in turn; others: fresh goals)"""
    eval_random_start: bool = False
    """start evaluation episodes at random positions (the authors' point-robot evaluation), not at the origin"""
    checkpoint_every: int = 25_000
    """updates between checkpoints that --resume continues from"""
    log_every: int = 1_000
    """updates between loss logs"""
    resume: Optional[str] = None
    """run directory of a killed run to continue (its config.yaml is loaded first)"""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda" """
    threads: int = 0
    """torch CPU threads (0 keeps torch's default)"""
    runs_dir: str = "runs"
    """parent folder of the run directory"""
    track: bool = False
    """also log to Weights & Biases (needs wandb)"""
    config: Optional[str] = None
    """YAML file whose keys override these defaults (the command line still wins)"""


LIMITS = {"alpha": "[0, inf)", "kl_weight": "[0, inf)"}
VAE_FIELDS = ("relabel", "vae_epochs", "vae_lr", "latent_dim", "encoder_hidden_dim", "action_embed_dim")
VAE_FIELDS += ("state_embed_dim", "reward_embed_dim", "decoder_hidden_dim", "kl_weight")
VAE_FIELDS += ("elbo_terms", "vae_tasks_per_batch", "vae_trials_per_batch")
GRID_SIZE = 5
TRIAL_KEYS = ("observations", "actions", "rewards", "next_observations")


def grid_reward(next_obs, goal, steps=None):
    """The gridworld's reward in torch: +1 on the goal cell, else -0.1."""
    return torch.where((next_obs[..., :2] == goal).all(-1), 1.0, -0.1)


def point_robot_reward(next_obs, goal, steps=None):
    """The sparse point robot's reward in torch: 1 within 0.2 of the goal, else 0."""
    return ((next_obs[..., :2] - goal).norm(dim=-1) <= 0.2).float()


def ant_reward(next_obs, goal, steps):
    """The sparse ant's reward: 1 with the torso (s'[:2]) within 0.2 of the goal, minus 0.1 |a|²."""
    return point_robot_reward(next_obs, goal) - 0.1 * steps["actions"].square().sum(-1)


def cheetah_vel_reward(next_obs, goal, steps):
    """Half-Cheetah-Vel's -|v_x - v_goal| - 0.05 |a|², exact from the step's forward velocity the file stores (x is
    not in the observation; the authors re-simulate from s_{t+1}, one step off)."""
    return -(steps["x_velocity"] - goal[..., 0]).abs() - 0.05 * steps["actions"].square().sum(-1)


# per family (the file's attribute `family`): the reward decoder (cells, r̂(z, s') or r̂(z, s', s, a)), the reward
# function that relabelling recomputes, the relabelled segments in inner episodes (the authors': the gridworld's first
# two of four, the first of two elsewhere), whether evaluation uses the data's tasks (the gridworld's 21 goals are all
# its tasks); Half-Cheetah-Vel also needs the file's per-step x_velocity and has no random start
FAMILIES = {
    "gridworld": dict(decoder="cells", reward=grid_reward, segments=(0, 1), eval_on_data_tasks=True),
    "point_robot": dict(decoder="mse", reward=point_robot_reward, segments=(0,), eval_on_data_tasks=False),
    "ant_semicircle": dict(decoder="mse_sas", reward=ant_reward, segments=(0,), eval_on_data_tasks=False),
    "cheetah_vel": dict(decoder="mse_sas", reward=cheetah_vel_reward, segments=(0,), eval_on_data_tasks=False),
}
FAMILIES["cheetah_vel"] |= {"fields": ("x_velocity",), "no_random_start": True}


class BeliefEncoder(nn.Module):
    """GRU over (a, s', r) embeddings (each Linear + ReLU; an embedding size 0 leaves that input out, as the
    gridworld does with the action) and two heads for μ and log σ²."""

    def __init__(
        self, obs_dim, act_dim, latent_dim=5, hidden_dim=128, action_embed=16, state_embed=32, reward_embed=16
    ):
        super().__init__()
        self.action_embed = nn.Linear(act_dim, action_embed) if action_embed > 0 else None
        self.state_embed = nn.Linear(obs_dim, state_embed)
        self.reward_embed = nn.Linear(1, reward_embed)
        self.gru = nn.GRU(action_embed + state_embed + reward_embed, hidden_dim)
        for name, param in self.gru.named_parameters():
            nn.init.orthogonal_(param) if "weight" in name else nn.init.zeros_(param)
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)
        self.hidden_dim = hidden_dim

    def embed(self, actions, next_obs, rewards):
        parts = [F.relu(self.state_embed(next_obs)), F.relu(self.reward_embed(rewards.unsqueeze(-1)))]
        if self.action_embed is not None:
            parts.insert(0, F.relu(self.action_embed(actions)))
        return torch.cat(parts, -1)

    def prior(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The belief before any step (from the zero hidden state): μ, log σ² [batch, latent], and that state."""
        hidden = torch.zeros(1, batch, self.hidden_dim, device=device)
        return self.mu(hidden[0]), self.logvar(hidden[0]), hidden

    def forward(self, actions, next_obs, rewards, hidden=None):
        """Inputs [T, B, ...]; beliefs after 0..T steps: μ, log σ² [T + 1, B, latent] (from the zero state, the prior
        first), and the last hidden state. With `hidden` (a running trial) the first row is that state's belief."""
        if hidden is None:
            hidden = torch.zeros(1, rewards.shape[1], self.hidden_dim, device=rewards.device)
        out, last = self.gru(self.embed(actions, next_obs, rewards), hidden)
        h = torch.cat([hidden, out], 0)
        return self.mu(h), self.logvar(h), last


class RewardDecoder(nn.Module):
    """r̂(z, s') (`kind="mse"`, the point robot) or r̂(z, s', s, a) (`"mse_sas"`, the MuJoCo families): an MLP on z and
    each input's own embedding (Linear + ReLU) giving a reward; or (`"cells"`, the gridworld) an MLP on z alone giving
    one Bernoulli logit per grid cell, read at the cell of s'."""

    def __init__(self, obs_dim, latent_dim=5, hidden_dim=32, state_embed=32, kind="mse", act_dim=0, action_embed=16):
        super().__init__()
        self.kind, self.latent_dim, sas = kind, latent_dim, kind == "mse_sas"
        self.state_embed = nn.Linear(obs_dim, state_embed) if kind != "cells" else None
        self.prev_state_embed = nn.Linear(obs_dim, state_embed) if sas else None
        self.action_embed = nn.Linear(act_dim, action_embed) if sas else None
        inp = latent_dim + (state_embed if kind != "cells" else 0) + (state_embed + action_embed if sas else 0)
        out = 1 if kind != "cells" else GRID_SIZE * GRID_SIZE
        self.net = nn.Sequential(nn.Linear(inp, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.net.append(nn.Linear(hidden_dim, out))

    def forward(self, z, next_obs, obs=None, actions=None):
        """z [..., latent] and the step's s' (and s, a) [..., dim] broadcast; a reward or the cell's logit [...]."""
        if self.kind != "cells":
            # the first layer on [z, e(s'), ...] as the sum of two parts: every (z_t, step j) pair of a trial is then
            # one broadcast addition, not a [T + 1, T, B, inp] input
            first, w = self.net[0], self.net[0].weight
            s = [F.relu(self.state_embed(next_obs))]
            if self.kind == "mse_sas":
                s += [F.relu(self.prev_state_embed(obs)), F.relu(self.action_embed(actions))]
            h = F.linear(z, w[:, : self.latent_dim]) + F.linear(torch.cat(s, -1), w[:, self.latent_dim :], first.bias)
            return self.net[1:](h)[..., 0]
        cell = (next_obs[..., 0] * GRID_SIZE + next_obs[..., 1]).long()
        logits = self.net(z)
        shape = torch.broadcast_shapes(logits.shape[:-1], cell.shape)
        return logits.expand(*shape, -1).gather(-1, cell.expand(shape).unsqueeze(-1))[..., 0]


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p):
    """KL(N(μ_q, σ_q²) || N(μ_p, σ_p²)) of diagonal Gaussians, summed over the last dimension."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(-1)


def kl_to_previous(mu, logvar):
    """KL(q_t || q_{t-1}) for t = 0..T, q_{-1} = N(0, I): [T + 1, B]; gradients flow into both beliefs."""
    mu_prev = torch.cat([torch.zeros_like(mu[:1]), mu[:-1]])
    logvar_prev = torch.cat([torch.zeros_like(logvar[:1]), logvar[:-1]])
    return gaussian_kl(mu, logvar, mu_prev, logvar_prev)


def reward_nll(decoded, rewards, kind):
    """Per belief t: the error of decoding every reward of the trial from it, [T + 1, B]. decoded [T + 1, T, B] is
    r̂(z_t, s'_j); rewards [T, B]. mse: the mean over j of squared errors (the authors' continuous families);
    cells: the sum over j of the cross-entropy with the target 1[r = 1] (the goal's reward, the gridworld)."""
    if kind == "mse":
        return ((decoded - rewards) ** 2).mean(1)
    target = (rewards == 1.0).float().expand_as(decoded)
    return F.binary_cross_entropy_with_logits(decoded, target, reduction="none").sum(1)


def elbo_loss(encoder, decoder, actions, next_obs, rewards, kl_weight=0.05, reward_weight=1.0, terms=0, obs=None):
    """The negative ELBO of a batch of whole trials [T, B, ...]: one reparameterised z_t per belief decodes all T
    rewards; the mean over trials of reward_weight Σ_t reward term + kl_weight Σ_t KL(q_t || q_{t-1}). With `terms`
    > 0 only that many beliefs, drawn at random, decode (the option the authors' code calls
    vae_batch_num_elbo_terms, off in their configs; the sum is scaled by (T + 1) / terms here, the same in
    expectation): the decoding of T + 1 x T pairs is most of a step. `obs` (s_j) goes to a decoder of (s', s, a)."""
    mu, logvar, _ = encoder(actions, next_obs, rewards)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    scale = 1.0
    if 0 < terms < len(z):
        scale, z = len(z) / terms, z[torch.randperm(len(z), device=z.device)[:terms]]
    inputs = (next_obs,) if obs is None else (next_obs, obs, actions)
    decoded = decoder(z.unsqueeze(1), *(x.unsqueeze(0) for x in inputs))  # [T + 1 (or terms), T, B]
    rew = scale * reward_nll(decoded, rewards, decoder.kind).sum(0)
    kl = kl_to_previous(mu, logvar).sum(0)
    return (reward_weight * rew + kl_weight * kl).mean(), rew.mean(), kl.mean()


def relabel_rewards(trials, goals, segments, reward_fn, generator=None):
    """Reward relabelling (the authors' mix_task_rollouts with fraction 1). trials: observations, actions,
    next_observations [K tasks, N trials, T, ...]; goals [K, d]. For every task i, N trials are drawn with replacement
    (about 63 % distinct, as the authors draw them); in each, every segment [a, b) of steps is replaced by the same
    segment of a random trial of a random other task (drawn per segment), with every per-step array (the reward's
    inputs, such as the cheetah's x_velocity), and the rewards of the whole trial are those of task i's reward
    function. Returns new tensors; the input is not changed."""
    k, n = goals.shape[0], trials["observations"].shape[1]
    device = goals.device
    out = {key: value.clone() for key, value in trials.items() if key not in ("rewards", "goal_reached", "goals")}
    rows = torch.arange(k, device=device)[:, None].expand(k, n)
    chosen = torch.randint(0, n, (k, n), generator=generator, device=device)
    for a, b in segments:
        other = (rows + torch.randint(1, k, (k, n), generator=generator, device=device)) % k  # uniform over j ≠ i
        source = torch.randint(0, n, (k, n), generator=generator, device=device)
        for key in out:
            out[key][rows, chosen, a:b] = trials[key][other, source, a:b]
    out["rewards"] = reward_fn(out["next_observations"], goals[:, None, None], out)
    return out


def hyper_states(obs, next_obs, mu, logvar):
    """State relabelling: s⁺_t = [s_t, μ_t, log σ²_t] and s⁺_{t+1} = [s_{t+1}, μ_{t+1}, log σ²_{t+1}] for the steps of
    whole trials: obs, next_obs [T, B, S]; beliefs [T + 1, B, L] (belief t has seen the first t steps)."""
    return torch.cat([obs, mu[:-1], logvar[:-1]], -1), torch.cat([next_obs, mu[1:], logvar[1:]], -1)


class MetaDatasetError(Exception):
    """A meta-RL dataset that cannot be cut into tasks and trials; one line saying what is wrong and what to do."""


def trials_by_task(arrays: dict, attrs: dict, source: str, fields: tuple = ()) -> dict:
    """Cut a BOReL dataset (datasets/borel_generate.py's layout, already through the shared dataset checks) into
    whole trials per task: observations, actions, rewards, next_observations [K tasks, N trials, T, ...], the goal
    flags [K, N, T] (zeros where the file has none), the per-step `fields` [K, N, T] and the goals [K, d]. Rows must
    be grouped by task, every task holding the same number of whole trials."""
    for key in ("task_index", "task_params", *fields):
        if key not in arrays:
            raise MetaDatasetError(
                f"{source} has no '{key}' array; a meta-RL dataset needs the task of every step (task_index, "
                "task_params) and what its family's reward needs: make it with datasets/borel_generate.py"
            )
    try:
        length = int(attrs["episode_length"]) * int(attrs["episodes_per_trial"])
    except (KeyError, ValueError, TypeError):
        raise MetaDatasetError(
            f"{source} does not give its trial structure; set the integer attributes episode_length and "
            "episodes_per_trial"
        )
    index = np.asarray(arrays["task_index"]).reshape(-1)
    n = len(index)
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    if len(np.unique(index)) != len(starts):
        raise MetaDatasetError(f"{source}: the steps of a task are not contiguous; sort the rows by task_index")
    sizes = np.diff(np.r_[starts, n])
    if (sizes != sizes[0]).any() or sizes[0] % length:
        raise MetaDatasetError(
            f"{source}: tasks hold {sorted(set(sizes.tolist()))} steps; every task needs the same number of whole "
            f"trials of {length} steps"
        )
    k, per_task = len(starts), sizes[0] // length
    timeouts = np.asarray(arrays["timeouts"]).reshape(-1).astype(bool)
    if not np.array_equal(timeouts, np.arange(n) % length == length - 1):
        raise MetaDatasetError(
            f"{source}: 'timeouts' do not mark the end of every {length}-step trial; the trials are cut elsewhere"
        )
    params = np.asarray(arrays["task_params"], dtype=np.float32).reshape(k, sizes[0], -1)
    if not (params == params[:, :1]).all():
        raise MetaDatasetError(f"{source}: 'task_params' change within a task; each task has one set of parameters")
    shape = (k, per_task, length)
    out = {key: torch.as_tensor(np.asarray(arrays[key], dtype=np.float32).reshape(*shape, -1)) for key in TRIAL_KEYS}
    out |= {key: torch.as_tensor(np.asarray(arrays[key], dtype=np.float32)).view(shape) for key in fields}
    out["rewards"] = out["rewards"][..., 0]
    out["goal_reached"] = torch.as_tensor(np.asarray(arrays.get("goal_reached", np.zeros(n)), np.float32)).view(shape)
    out["goals"] = torch.as_tensor(params[:, 0])
    return out


def train_vae(encoder, decoder, trials: dict, segments: list, reward_fn, args, log: list) -> None:
    """The authors' batching: every epoch the trial indices are shuffled into chunks of vae_trials_per_batch and, for
    each chunk, the tasks into groups of vae_tasks_per_batch; a step is those trials of those tasks. With --relabel
    the epoch's data are freshly relabelled (relabel_rewards) first."""
    k, n, _ = trials["rewards"].shape
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=args.vae_lr)
    steps = math.ceil(n / args.vae_trials_per_batch) * math.ceil(k / args.vae_tasks_per_batch)
    bar = tqdm(total=args.vae_epochs * steps, desc="vae", mininterval=2)
    for epoch in range(args.vae_epochs):
        data = relabel_rewards(trials, trials["goals"], segments, reward_fn) if args.relabel else trials
        sums = torch.zeros(3, device=trials["goals"].device)
        for chunk in torch.randperm(n).split(args.vae_trials_per_batch):
            for group in torch.randperm(k).split(args.vae_tasks_per_batch):
                batch = [data[key][group][:, chunk].flatten(0, 1).transpose(0, 1) for key in TRIAL_KEYS]  # [T, B, ..]
                obs, actions, rewards, next_obs = batch
                loss, rew, kl = elbo_loss(
                    encoder, decoder, actions, next_obs, rewards, args.kl_weight, 1.0, args.elbo_terms, obs
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.stack([loss, rew, kl]).detach()
                bar.update()
        log.append({"epoch": epoch + 1, **dict(zip(("loss", "reward_loss", "kl"), (sums / steps).tolist()))})
    bar.close()


def load_or_train_vae(encoder, decoder, trials: dict, segments: list, reward_fn, args, device) -> list:
    """Train once, reuse: the VAE is saved under vae_cache_dir named by its fingerprint (the exact trials, the VAE
    settings, relabelling and the seed) and loaded when a run needs the same one. Trained in a private random
    stream, so a run's numbers do not depend on whether the cache had it. Returns the per-epoch log."""
    digest = hashlib.sha1()
    for key in (*TRIAL_KEYS, "goals"):
        digest.update(trials[key].cpu().numpy().tobytes())
    fingerprint = {"dataset": args.dataset, "data_sha1": digest.hexdigest(), "seed": args.seed}
    fingerprint |= {f: getattr(args, f) for f in VAE_FIELDS}
    key = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    folder = args.vae_cache_dir or os.path.join(args.runs_dir, "vae")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", args.dataset).strip("-")
    path = os.path.join(folder, f"{safe}__seed{args.seed}__{key}.pt")
    check_writable(folder, "the VAE cache folder")
    os.makedirs(folder, exist_ok=True)
    with open(path + ".lock", "w") as lock:  # two runs that need the same VAE train it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):
            try:
                saved = torch.load(path, map_location=device, weights_only=False)
                assert saved["fingerprint"] == fingerprint
                encoder.load_state_dict(saved["encoder"])
                decoder.load_state_dict(saved["decoder"])
                print(f"vae: reusing {path} (last epoch's loss {saved['log'][-1]['loss']:.3f})")
                return saved["log"]
            except Exception as e:  # truncated or corrupt: keep it for a look, train a new one
                os.replace(path, path + ".corrupt")
                print(f"vae: {path} is unreadable ({type(e).__name__}); moved it to {path}.corrupt, training anew")
        start, log = time.time(), []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(args.seed)
            train_vae(encoder, decoder, trials, segments, reward_fn, args, log)
        state = {"fingerprint": fingerprint, "encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
        write_atomically(path, lambda tmp: torch.save({**state, "log": log}, tmp), "trained VAE")
        print(f"vae: trained {args.vae_epochs} epochs in {time.time() - start:.0f} s, saved to {path}")
    return log


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class DQN(nn.Module):
    """The gridworld's learner: Q(s⁺, ·) over the 5 actions, the plain max target, a soft-updated target network."""

    def __init__(self, obs_dim: int, n_actions: int, args):
        super().__init__()
        self.q = mlp(obs_dim, n_actions, args.hidden_dim)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.optimizers = {"critic_opt": torch.optim.Adam(self.q.parameters(), lr=args.critic_lr)}
        self.gamma, self.tau = args.gamma, args.tau

    def update(self, obs, actions, rewards, next_obs, terminals) -> dict:
        with torch.no_grad():
            target = rewards + self.gamma * (1 - terminals) * self.q_target(next_obs).max(-1).values
        q = self.q(obs).gather(1, actions.long().view(-1, 1)).squeeze(1)
        loss = F.mse_loss(q, target)
        self.optimizers["critic_opt"].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers["critic_opt"].step()
        with torch.no_grad():
            for p, tp in zip(self.q.parameters(), self.q_target.parameters()):
                tp.lerp_(p, self.tau)
        return {"losses/q_loss": loss.detach(), "values/q_mean": q.detach().mean()}

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Greedy action indices (as [B, 1] floats, the layout of the data and the encoder's input)."""
        return self.q(obs).argmax(-1, keepdim=True).float()


class SAC(nn.Module):
    """The continuous families' learner: SAC with a fixed α, twin critics (one batched pair) and a tanh-Gaussian
    actor (log-std in [-20, 2]); critics first, then their targets, then the actor, the authors' order."""

    def __init__(self, obs_dim: int, act_dim: int, args):
        super().__init__()
        h = args.hidden_dim
        self.actor = mlp(obs_dim, 2 * act_dim, h)
        self.critic = nn.Sequential(
            EnsembleLinear(obs_dim + act_dim, h, 2),
            nn.ReLU(),
            EnsembleLinear(h, h, 2),
            nn.ReLU(),
            EnsembleLinear(h, 1, 2),
        )
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.optimizers = {
            "actor_opt": torch.optim.Adam(self.actor.parameters(), lr=args.actor_lr),
            "critic_opt": torch.optim.Adam(self.critic.parameters(), lr=args.critic_lr),
        }
        self.gamma, self.tau, self.alpha = args.gamma, args.tau, args.alpha

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).chunk(2, -1)
        std = log_std.clamp(-20, 2).exp()
        u = mean + std * torch.randn_like(mean)
        # log(1 - tanh(u)²) in a stable form: 2 (log 2 - u - softplus(-2u))
        log_prob = torch.distributions.Normal(mean, std).log_prob(u) - 2 * (math.log(2) - u - F.softplus(-2 * u))
        return torch.tanh(u), log_prob.sum(-1)

    def q(self, critic, obs, actions) -> torch.Tensor:
        return critic(torch.cat([obs, actions], -1)).squeeze(-1)  # [2, B]

    def update(self, obs, actions, rewards, next_obs, terminals) -> dict:
        with torch.no_grad():
            next_actions, next_logp = self.policy(next_obs)
            next_v = self.q(self.critic_target, next_obs, next_actions).min(0).values - self.alpha * next_logp
            target = rewards + self.gamma * (1 - terminals) * next_v
        q = self.q(self.critic, obs, actions)
        q_loss = ((q - target) ** 2).mean(1).sum()
        self.optimizers["critic_opt"].zero_grad(set_to_none=True)
        q_loss.backward()
        self.optimizers["critic_opt"].step()
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, self.tau)
        pi, logp = self.policy(obs)
        self.critic.requires_grad_(False)  # the actor's loss needs dQ/da, not the critics' weight gradients
        actor_loss = (self.alpha * logp - self.q(self.critic, obs, pi).min(0).values).mean()
        self.critic.requires_grad_(True)
        self.optimizers["actor_opt"].zero_grad(set_to_none=True)
        actor_loss.backward()
        self.optimizers["actor_opt"].step()
        return {
            "losses/q_loss": q_loss.detach(),
            "values/q_mean": q.detach().mean(),
            "losses/actor_loss": actor_loss.detach(),
            "charts/entropy": -logp.detach().mean(),
        }

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action tanh(mean)."""
        return torch.tanh(self.actor(obs).chunk(2, -1)[0])


@torch.no_grad()
def evaluate_trials(make_env, encoder, learner, tasks: list, seed: int, teleport: bool, device) -> dict:
    """One whole trial per task (None: the environment draws one), all side by side: the deterministic policy acts
    on [s_t, μ_t, log σ²_t] and the frozen encoder updates the belief with (a_t, s_{t+1}, r_{t+1}) after every step,
    across inner episodes (the hidden state is never reset within a trial). Returns per trial the return of every
    inner episode [n, episodes] and whether the goal was reached at any step [n] (None: the task has no goal state)."""
    envs = [make_env() for _ in tasks]
    obs = np.stack(
        [env.reset(seed=seed + i, options={"task": task})[0] for i, (env, task) in enumerate(zip(envs, tasks))]
    )
    mu, logvar, hidden = encoder.prior(len(envs), device)
    unwrapped = envs[0].unwrapped
    length, episodes = unwrapped.episode_length * unwrapped.episodes_per_trial, unwrapped.episodes_per_trial
    rewards, success = np.zeros((len(envs), length)), np.zeros(len(envs), dtype=bool)
    for t in range(length):
        state = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = learner.act(torch.cat([state, mu, logvar], -1))
        env_action = action.cpu().numpy()
        next_obs = np.empty_like(obs)
        for i, env in enumerate(envs):
            a = int(env_action[i, 0]) if isinstance(env.action_space, gym.spaces.Discrete) else env_action[i]
            next_obs[i], rewards[i, t], _, _, info = env.step(a)
            success[i] |= info.get("goal_reached", False)
            obs[i] = next_obs[i] if teleport or "start_state" not in info else info["start_state"]
        reward = torch.as_tensor(rewards[:, t], dtype=torch.float32, device=device)
        mu, logvar, hidden = encoder(action[None], torch.as_tensor(next_obs, device=device)[None], reward[None], hidden)
        mu, logvar = mu[-1], logvar[-1]
    for env in envs:
        env.close()
    success = success if "goal_reached" in info else None
    return {"episode_returns": rewards.reshape(len(envs), episodes, -1).sum(-1), "success": success}


def record_trials(run_dir, writer, history, step, trials: dict, data, seed, clock) -> str:
    """The shared record_evaluation of the trial returns, then each inner episode's mean return and the success
    rate (null without a goal state) added to that evaluation (results.json and tensorboard)."""
    shown = record_evaluation(run_dir, writer, history, step, trials["episode_returns"].sum(1), data, seed, clock)
    per_episode = trials["episode_returns"].mean(0)
    success = None if trials["success"] is None else float(trials["success"].mean())
    history[-1] |= {"episode_returns": per_episode.tolist(), "success_rate": success}
    for k, value in enumerate(per_episode):
        writer.add_scalar(f"eval/episode_{k + 1}_return", value, step)
    if success is not None:
        writer.add_scalar("eval/success_rate", success, step)
    with open(os.path.join(run_dir, "results.json")) as f:
        write_results(run_dir, {**json.load(f), "evaluations": history})
    shown += f" ({' / '.join(f'{r:.1f}' for r in per_episode)}"
    return shown + ("" if success is None else f", success {success:.2f}") + ")"


def main():
    args = parse_args(Args, LIMITS)
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, torch.device("cpu"))
        path = shipped_path(args.dataset[len(SHIPPED_PREFIX) :]) if args.dataset.startswith(SHIPPED_PREFIX) else None
        arrays, attrs = read_hdf5(path or args.dataset)
        family = FAMILIES.get(str(attrs.get("family")))
        if family is None:
            sys.exit(f"error: {args.dataset}: family {attrs.get('family')!r} is not one of {', '.join(FAMILIES)}")
        trials = trials_by_task(arrays, attrs, args.dataset, family.get("fields", ()))
    except (DatasetError, MetaDatasetError) as e:
        sys.exit(f"error: {e}")
    if args.eval_random_start and family.get("no_random_start"):
        sys.exit(f"error: --eval-random-start: {attrs['family']} has no random start (its data start as evaluation)")
    if args.goal_terminal and "goal_reached" not in arrays:
        sys.exit(f"error: --goal-terminal needs the file's goal_reached flags, which {args.dataset} has not")
    trials = {key: value.to(device) for key, value in trials.items()}
    k, n, length = trials["rewards"].shape
    episode = length // int(attrs["episodes_per_trial"])
    segments = [(e * episode, (e + 1) * episode) for e in family["segments"]]
    obs_dim, act_dim = trials["observations"].shape[-1], trials["actions"].shape[-1]
    encoder = BeliefEncoder(
        obs_dim,
        act_dim,
        args.latent_dim,
        args.encoder_hidden_dim,
        args.action_embed_dim,
        args.state_embed_dim,
        args.reward_embed_dim,
    ).to(device)
    sizes = (args.latent_dim, args.decoder_hidden_dim, args.state_embed_dim, family["decoder"], act_dim)
    decoder = RewardDecoder(obs_dim, *sizes, args.action_embed_dim)
    vae_log = load_or_train_vae(encoder, decoder.to(device), trials, segments, family["reward"], args, device)
    encoder.requires_grad_(False)

    # state relabelling: every step of the original data with the belief the frozen encoder has there
    with torch.no_grad():
        columns = {key: [] for key in ("obs", "actions", "rewards", "next_obs", "terminals")}
        for i in range(k):
            o, a, r, o2 = (trials[key][i].transpose(0, 1) for key in TRIAL_KEYS)  # [T, N, ...]
            mu, logvar, _ = encoder(a, o2, r)
            s, s_next = hyper_states(o, o2, mu, logvar)
            goal = trials["goal_reached"][i].T if args.goal_terminal else torch.zeros_like(r)
            for key, value in zip(columns, (s, a, r, s_next, goal)):
                columns[key].append(value.flatten(0, 1))
        meta = {key: torch.stack(value) for key, value in columns.items()}  # [K, N * T, ...]

    probe = data.make_env()
    discrete = isinstance(probe.action_space, gym.spaces.Discrete)
    hyper_dim = meta["obs"].shape[-1]
    learner = (DQN(hyper_dim, probe.action_space.n, args) if discrete else SAC(hyper_dim, act_dim, args)).to(device)
    probe.close()
    if data.ref_min_score is not None:
        refs = f"{data.ref_min_score:.2f} (0), {data.ref_max_score:.2f} (100)"
        print(f"references per trial: {refs}; {attrs.get('ref_source', '')}")
    teleport = bool(attrs.get("teleport", False))
    env_kwargs = json.loads(attrs.get("env_kwargs", "{}")) | ({"random_start": True} if args.eval_random_start else {})
    make_env = lambda: gym.make(data.env_id, **env_kwargs)  # noqa: E731
    goals = trials["goals"].cpu().numpy()
    eval_tasks = [goals[i % k] if family["eval_on_data_tasks"] else None for i in range(args.eval_episodes)]

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {"learner": learner, **learner.optimizers}
    step, history, clock_state, tasks = 0, [], None, None
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state, tasks = extra["history"], extra["clock"], extra["tasks"].to(device)
    writer = make_writer(args, run_dir, step)
    if not args.resume:
        for entry in vae_log:
            for name in ("loss", "reward_loss", "kl"):
                writer.add_scalar(f"vae/{name}", entry[name], entry["epoch"])

    bar = tqdm(range(step + 1, args.num_updates + 1), desc=SCRIPT_NAME, mininterval=2)
    clock = TrainClock(clock_state)
    for step in bar:
        if (step - 1) % args.updates_per_iteration == 0:  # the meta-batch of this iteration's tasks
            tasks = torch.randint(0, k, (args.meta_batch,), device=device)
        idx = torch.randint(0, n * length, (args.meta_batch, args.batch_size), device=device)
        batch = [meta[key][tasks[:, None], idx].flatten(0, 1) for key in ("obs", "actions", "rewards", "next_obs")]
        logs = learner.update(*batch, meta["terminals"][tasks[:, None], idx].flatten())
        clock.tick()

        if step % args.log_every == 0:
            log_scalars(writer, logs, step)
        if step % args.eval_every == 0 or step == args.num_updates:
            with clock.paused():
                result = evaluate_trials(make_env, encoder, learner, eval_tasks, args.seed + step, teleport, device)
                bar.set_postfix_str(record_trials(run_dir, writer, history, step, result, data, args.seed, clock))
        if step % args.checkpoint_every == 0 or step == args.num_updates:
            with clock.paused():
                extra = {"history": history, "clock": clock.state_dict(), "tasks": tasks}
                save_checkpoint(checkpoint_path, step, trained, extra)

    writer.close()
    last = history[-1]
    success = "no goal state" if last["success_rate"] is None else f"success {last['success_rate']:.2f}"
    print(f"last evaluation: return per inner episode {last['episode_returns']}, {success}")
    print(final_summary(run_dir))


# ======== shared blocks below: the plumbing every script carries, copied byte for byte (tools/sync_blocks.py) ========
# ---- shared: config ----
# Options a resumed run may change: they set how long and how often, not what is learned.
RESUMABLE = {"num_updates", "total_timesteps", "online_steps", "eval_every", "checkpoint_every", "log_every"}
RESUMABLE |= {"device", "threads", "compile", "track", "runs_dir", "resume", "config"}


def parse_args(args_cls, limits: Optional[dict] = None, choices: Optional[dict] = None):
    """tyro command line on top of YAML overrides (--config) or a run being resumed (--resume),
    then every value checked (check_args; `choices`: the values each str option may take) before
    anything is loaded or written.

    Precedence: command line > --config file > the resumed run's config.yaml > Args defaults.
    """
    argv = sys.argv[1:]

    def option(name):
        for i, arg in enumerate(argv):
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    defaults, saved = args_cls(), None
    hints = typing.get_type_hints(args_cls)
    for flag in ("--resume", "--config"):
        path = option(flag)
        if path is None or not hasattr(defaults, flag[2:]):
            continue
        if flag == "--resume":
            path = os.path.join(path, "config.yaml")
        if not os.path.isfile(path):
            hint = "pass the run directory of an earlier run" if flag == "--resume" else "pass a YAML file"
            sys.exit(f"error: {flag}: {path!r} does not exist; {hint}")
        try:
            with open(path) as f:
                overrides = yaml.safe_load(f) or {}
            if not isinstance(overrides, dict):
                raise ValueError("the file is not a mapping of Args fields to values")
            unknown = sorted(set(overrides) - set(hints))
            if unknown:
                raise ValueError(f"unknown field(s) {', '.join(unknown)}")
            wrong = [k for k, v in overrides.items() if not value_fits(v, hints[k])]
            if wrong:
                k = wrong[0]
                sys.exit(
                    f"error: {path}: {k}: {overrides[k]!r} is not of the field's type ({type_name(hints[k])}); "
                    "write it as such (true/false for a bool, a whole number for an int, no quotes)"
                )
            defaults = pyrallis.decode(args_cls, {**pyrallis.encode(defaults), **overrides})
        except Exception as e:  # unknown keys, values pyrallis cannot decode, broken YAML
            reason = " ".join(str(e).split())
            sys.exit(f"error: {path}: {reason}; its keys must be fields listed by --help (with _ not -)")
        if flag == "--resume":
            saved = pyrallis.encode(defaults)
    args = tyro.cli(args_cls, default=defaults)
    if saved is not None:  # a resumed run keeps what it learns with
        now = pyrallis.encode(args)
        # a learning rate that follows a cosine over num_updates makes the budget part of what is learned
        resumable = RESUMABLE - ({"num_updates"} if saved.get("cosine_actor_lr") else set())
        changed = [k for k in now if k not in resumable and now[k] != saved.get(k)]
        if changed:
            k = changed[0]
            why = "; it is the length of the cosine learning-rate schedule" if k == "num_updates" else ""
            sys.exit(
                f"error: --resume: --{k.replace('_', '-')} {now[k]} differs from the run's {saved.get(k)}{why}; a "
                f"resumed run keeps its settings (only {', '.join(sorted(resumable & set(now)))} may change): "
                "start a new run"
            )
    problem = check_args(args, hints, limits or {})
    for name, allowed in (choices or {}).items():
        if problem is None and getattr(args, name) not in allowed:
            problem = f"--{name.replace('_', '-')} {getattr(args, name)!r} is not one of {', '.join(allowed)}"
    if problem:
        sys.exit(f"error: {problem}")
    if getattr(args, "resume", None):
        check_writable(args.resume, "the run directory of --resume")
    elif hasattr(args, "runs_dir"):
        check_writable(args.runs_dir, "--runs-dir")
    return args


def value_fits(value, hint) -> bool:
    """Whether a YAML value is of the field's type (no silent casts: "false" is not a bool, 64.9 not an int)."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(value_fits(value, p) for p in params)
    if hint is type(None):
        return value is None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        items = params if origin is tuple and Ellipsis not in params else (params[0],) * len(value)
        return len(value) == len(items) and all(map(value_fits, value, items))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def check_args(args, hints: dict, limits: dict) -> Optional[str]:
    """The first value out of its range, as a sentence (None when all are fine).

    General rules by kind: counts and sizes (int) are positive, or non-negative where the default is
    0 (0 means off or no cap); learning rates are positive; the discount γ is in (0, 1]; τ and
    fractions (`*_ratio`) are in [0, 1]; `threads` >= 0. `limits` (next to a script's Args) adds
    or overrides a field's range as "low, high" with ( ) open and [ ] closed ends, e.g. "(0, 1)".
    """
    defaults = type(args)()
    for name, hint in hints.items():
        value = getattr(args, name)
        if value is None:  # an optional setting left unset
            continue
        if name in limits:
            rule = limits[name]
        elif name == "seed" or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        elif name in ("gamma",):
            rule = "(0, 1]"
        elif name == "tau" or name.endswith("_ratio"):
            rule = "[0, 1]"
        elif name == "lr" or name.endswith("_lr"):
            rule = "(0, inf)"
        elif hint is int:
            rule = "[0, inf)" if getattr(defaults, name) == 0 or name == "threads" else "[1, inf)"
        else:
            continue
        low, high = (float(x) for x in rule[1:-1].split(","))
        inside = (low < value if rule[0] == "(" else low <= value) and (
            value < high if rule[-1] == ")" else value <= high
        )
        if not inside:
            return f"--{name.replace('_', '-')} {value} is out of range: it must be in {rule}"
    return None


# ---- end shared: config ----


# ---- shared: run ----
# the run's name is the script's file name, so a copy (td3_bc_myloss.py) reports itself as such
SCRIPT_NAME = os.path.splitext(os.path.basename(__file__))[0]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, threads: int = 0) -> torch.device:
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        sys.exit(f"error: --device {name!r} is not a device this script runs on; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        sys.exit("error: --device mps was asked for but torch sees no MPS device; use --device cpu")
    if name == "cpu":
        keep_freed_memory()
    return torch.device(name)


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse instead of handing it back to the system.

    PyTorch's CPU tensors come straight from malloc, and glibc by default maps every block
    over 128 KB fresh and unmaps it when freed, so each update pays page faults for all of
    its activations. Measured here (2 threads): a dynamics-ensemble training step 13.1 ->
    10.8 ms, a TD3+BC update 1-3 % faster. A no-op where libc is not glibc (macOS, musl).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks up to 32 MB come from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of free heap
    except (OSError, AttributeError):
        pass


def check_writable(folder: str, what: str) -> None:
    """Fail now, in one line, if `folder` could not be made or written (not after the data is loaded).
    Nothing is created: the check writes a temporary file into the nearest folder that exists."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing):
            pass
    except OSError as e:
        sys.exit(f"error: {what} {folder!r} is not writable ({e.strerror or e}); pass a folder you can write to")


def make_run_dir(args, dataset: str) -> str:
    """A new runs/<script>__<dataset>__<seed>__<unix time>/ (or the resumed run's own directory).

    Made atomically and never reused: two runs started in the same second get two directories.
    Nothing is written into it here; config.yaml is written by make_writer, once a resume has loaded.
    """
    if getattr(args, "resume", None):
        return args.resume
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-")
    base = os.path.join(args.runs_dir, f"{SCRIPT_NAME}__{safe}__{args.seed}__{int(time.time())}")
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        try:
            os.makedirs(base + suffix)
            return base + suffix
        except FileExistsError:
            continue
        except OSError as e:
            sys.exit(f"error: cannot make the run directory {base + suffix!r} ({e.strerror or e}); check --runs-dir")
    sys.exit(f"error: could not find a free run directory name next to {base!r}")


def make_writer(args, run_dir: str, start_step: int = 0) -> SummaryWriter:
    """config.yaml (the resolved Args) and the tensorboard writer; a resumed run drops the events logged
    after its checkpoint."""
    try:
        with open(os.path.join(run_dir, "config.yaml.tmp"), "w") as f:
            pyrallis.dump(args, f)
        os.replace(os.path.join(run_dir, "config.yaml.tmp"), os.path.join(run_dir, "config.yaml"))
    except OSError as e:
        sys.exit(f"error: cannot write config.yaml in {run_dir} ({e.strerror or e}); check the disk and --runs-dir")
    if args.track:
        try:
            import wandb
        except ImportError:
            sys.exit("error: --track needs wandb; pip install wandb, or drop --track")
        wandb.init(config=asdict(args), name=os.path.basename(run_dir), sync_tensorboard=True)
    writer = SummaryWriter(run_dir, purge_step=start_step if start_step > 0 else None)
    writer.add_text("config", "\n".join(f"{k}: {v}" for k, v in asdict(args).items()))
    return writer


def log_scalars(writer: SummaryWriter, logs: dict, step: int) -> None:
    """Write named scalars (tensors or numbers) to tensorboard; each name has its prefix (losses/, values/, ...).

    Called at logging intervals only: reading a tensor's value synchronises the device."""
    for key, value in logs.items():
        writer.add_scalar(key, float(value), step)


class TrainClock:
    """Seconds and updates of training alone, for updates per second: evaluations and checkpoints are
    left out (`with clock.paused():`), and so are the first `warmup` updates of every start or resume,
    which hold torch.compile's warm-up (one compiled graph per variant of an update, e.g. TD3's steps
    with and without the delayed actor update): timing starts at the end of them."""

    def __init__(self, state: Optional[dict] = None, warmup: int = 3):
        self.seconds, self.updates = (state or {}).get("seconds", 0.0), (state or {}).get("updates", 0)
        self.started, self.warmup = None, warmup

    def tick(self) -> None:
        """Call after every update."""
        if self.warmup > 0:
            self.warmup -= 1
            if self.warmup == 0:
                self.started = time.perf_counter()
        elif self.started is not None:
            self.updates += 1

    @contextlib.contextmanager
    def paused(self):
        running = self.started is not None
        if running:
            self.seconds += time.perf_counter() - self.started
            self.started = None
        try:
            yield
        finally:
            if running:
                self.started = time.perf_counter()

    def rate(self) -> float:
        return self.updates / self.seconds if self.seconds > 0 else 0.0

    def state_dict(self) -> dict:
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return {"seconds": self.seconds + running, "updates": self.updates}


def write_atomically(path: str, write: Callable[[str], None], what: str) -> None:
    """write(tmp) then rename over `path`: a killed run never leaves half a file, and a failed write
    (full disk) keeps the previous file, removes the temporary one and ends the run in one line."""
    try:
        write(path + ".tmp")
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
        kept = " (the previous one is kept)" if os.path.exists(path) else ""
        reason = " ".join(str(e).split())[:200]
        sys.exit(f"error: could not write the {what} {path}{kept}: {reason}; free space there and run again")


def write_results(run_dir: str, results: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2)

    write_atomically(os.path.join(run_dir, "results.json"), write, "results")


def save_checkpoint(path: str, step: int, objects: dict, extra: dict) -> None:
    """Everything needed to continue: state dicts, RNG states, the step and `extra` (e.g. history)."""
    state = {
        "step": step,
        "objects": {k: v.state_dict() for k, v in objects.items()},
        "extra": extra,
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp), "checkpoint")


def load_checkpoint(path: str, objects: dict) -> tuple[int, dict]:
    """Restore what save_checkpoint wrote into `objects`; returns the step and `extra`."""
    if not os.path.isfile(path):
        sys.exit(f"error: {path} does not exist; --resume needs a run that saved a checkpoint (see --checkpoint-every)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        for k, v in objects.items():
            v.load_state_dict(state["objects"][k])
    except Exception as e:  # truncated, corrupt, or of another script
        reason = " ".join(str(e).split())[:200]
        sys.exit(f"error: cannot resume from {path}: the file is unreadable or not this script's ({reason})")
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["extra"]


# ---- end shared: run ----


# ---- shared: dataset ----
# Every dataset becomes the same tensors on the device, an evaluation environment and
# reference returns. Accepted names:
#   D4RL        hopper-medium-replay-v2   hdf5 from $D4RL_DATASET_DIR or ~/.d4rl/datasets
#                                         (downloaded when absent), evaluated on Gymnasium v4
#   Minari      mujoco/hopper/medium-v0   through the minari package
#   a file      path/to/data.hdf5         D4RL layout; attributes env_id, ref_min_score, ref_max_score and,
#                                         optionally, env_kwargs and reward_scaling (see REWARD_SCALINGS)
#   shipped     shipped/hopper-medium     the small datasets in this project's datasets/shipped/
D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{}"
D4RL_NAME = re.compile(
    r"^(halfcheetah|hopper|walker2d|ant)-(random|medium|expert|medium-replay|medium-expert|full-replay)-v2$"
)
D4RL_ENVS = {  # Gymnasium environment, its kwargs, and D4RL's reference returns (random, expert)
    "halfcheetah": ("HalfCheetah-v4", {}, -280.178953, 12135.0),
    "hopper": ("Hopper-v4", {}, -20.272305, 3234.3),
    "walker2d": ("Walker2d-v4", {}, 1.629008, 4592.3),
    "ant": ("Ant-v4", {"use_contact_forces": True}, -325.6, 3879.7),  # the v2 data has 111-d observations
}
SHIPPED_PREFIX = "shipped/"
# How a script that scales rewards by the kind of dataset (`--reward-scaling auto`) treats them; a file may name its
# own with the attribute reward_scaling. return_range: times 1000 / (max - min episode return of the data);
# minus_one: r - 1 (AntMaze); none: as they are
REWARD_SCALINGS = ("none", "return_range", "minus_one")


class DatasetError(Exception):
    """Bad dataset input; main() turns it into one line on stderr and exit code 1."""


@dataclass
class OfflineData:
    name: str
    observations: torch.Tensor  # [N, obs_dim]
    actions: torch.Tensor  # [N, act_dim]
    rewards: torch.Tensor  # [N]
    next_observations: torch.Tensor  # [N, obs_dim]
    terminals: torch.Tensor  # [N] 1.0 where the MDP ended (no bootstrap); time-limit cuts are 0
    episode_returns: np.ndarray  # return of every episode in the data: the behaviour policy's level
    make_env: Callable[[], gym.Env]  # a fresh evaluation environment
    ref_min_score: Optional[float]  # reference returns of the normalised score (0 and 100); None: raw returns
    ref_max_score: Optional[float]
    # [N] False where next_observations is a stand-in (a terminal step of a file without next_observations):
    # harmless for a target that does not bootstrap there, but no observation a dynamics model may learn from
    next_observed: Optional[torch.Tensor] = None
    env_id: str = ""  # the evaluation environment's id ("" for a Minari dataset, whose name says the task)
    reward_scaling: Optional[str] = None  # the file's attribute reward_scaling (one of REWARD_SCALINGS), if it has one

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """A uniform minibatch (obs, action, reward, next_obs, terminal), drawn on the device."""
        idx = torch.randint(0, len(self.rewards), (batch_size,), device=self.rewards.device)
        return (
            self.observations[idx],
            self.actions[idx],
            self.rewards[idx],
            self.next_observations[idx],
            self.terminals[idx],
        )


def transitions_from_arrays(arrays: dict, source: str) -> dict:
    """Turn D4RL-layout arrays into transitions that respect episode boundaries.

    `terminals` end the MDP, `timeouts` only cut an episode. With `next_observations`
    every step is kept. Without it, the next observation is the following row *of the
    same episode*: the last step of an episode cut by a timeout (or by the end of the
    data) has no successor and is dropped, unlike D4RL's own loader, which pairs it
    with the first observation of the next episode (D4RL issue #145). A terminal step
    is kept (its target does not bootstrap) with its own observation as a stand-in,
    marked in `next_observed` so that a dynamics model leaves it out.
    """
    for key in ("observations", "actions", "rewards", "terminals"):
        if key not in arrays:
            raise DatasetError(
                f"{source} has no '{key}' array; a D4RL-layout file needs observations, actions, rewards, terminals "
                "and timeouts"
            )
    if "timeouts" not in arrays and "next_observations" not in arrays:
        raise DatasetError(
            f"{source} has neither 'timeouts' nor 'next_observations', so episode ends cannot be told apart from "
            "time-limit cuts; add a 'timeouts' array"
        )
    arrays = {k: v for k, v in arrays.items() if np.ndim(v) > 0}  # scalar entries are metadata, not data
    n = len(arrays["observations"])
    for key, value in arrays.items():
        if key in ("rewards", "terminals", "timeouts") and value.ndim > 1 and value.size != len(value):
            raise DatasetError(f"{source}: '{key}' has shape {value.shape}; it must hold one value per step")
        if len(value) != n:
            raise DatasetError(
                f"{source}: '{key}' has {len(value)} rows but 'observations' has {n}; the file is inconsistent"
            )
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).reshape(n, -1).any(1).sum()) if n else 0
            raise DatasetError(
                f"{source}: '{key}' holds NaN or inf in {bad} rows; clean the data before training on it"
            )
    if n == 0:
        raise DatasetError(f"{source} holds no transitions")
    obs = arrays["observations"].astype(np.float32).reshape(n, -1)
    actions = arrays["actions"].astype(np.float32).reshape(n, -1)
    rewards = arrays["rewards"].astype(np.float32).reshape(n)
    terminals = arrays["terminals"].astype(bool).reshape(n)
    timeouts = arrays["timeouts"].astype(bool).reshape(n) if "timeouts" in arrays else np.zeros(n, dtype=bool)
    ends = terminals | timeouts
    ends[-1] = True  # the data may stop mid-episode
    # episode returns: cumulative reward reset at every episode end
    episode_id = np.concatenate([[0], np.cumsum(ends[:-1])])
    episode_returns = np.bincount(episode_id, weights=rewards.astype(np.float64))
    if not (terminals[-1] or timeouts[-1]) and len(episode_returns) > 1:
        episode_returns = episode_returns[:-1]  # an unfinished last episode says little about the behaviour
    next_observed = np.ones(n, dtype=bool)  # False where next_observations is a stand-in, not an observation
    if "next_observations" in arrays:
        keep = np.ones(n, dtype=bool)
        next_obs = arrays["next_observations"].astype(np.float32).reshape(n, -1)
        if next_obs.shape[1] != obs.shape[1]:
            raise DatasetError(
                f"{source}: 'next_observations' have dim {next_obs.shape[1]} but 'observations' have {obs.shape[1]}"
            )
    else:
        keep = ~ends | terminals  # a cut step has no successor in its own episode
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        next_obs[terminals] = obs[terminals]  # the MDP ended: the target does not bootstrap from it
        next_observed = ~terminals
    if not keep.any():
        raise DatasetError(
            f"{source} has no usable transition: every episode is a single step cut by a timeout and there are no "
            "next_observations"
        )
    return dict(
        observations=obs[keep],
        actions=actions[keep],
        rewards=rewards[keep],
        next_observations=next_obs[keep],
        terminals=terminals[keep].astype(np.float32),
        next_observed=next_observed[keep],
        episode_returns=episode_returns,
    )


def read_hdf5(path: str) -> tuple[dict, dict]:
    """Arrays at the top level of a D4RL-layout hdf5 file, and the file's attributes."""
    try:
        with h5py.File(path, "r") as f:
            arrays = {k: f[k][()] for k in f.keys() if isinstance(f[k], h5py.Dataset)}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({e}); it may be truncated or corrupt: delete it and download or "
            "generate it again"
        )
    return arrays, attrs


def download(url: str, path: str) -> None:
    """Fetch `url` to `path` with a progress bar; a partial download never takes the final name."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(path + ".part", "wb") as f:
            total = int(response.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {os.path.basename(path)}") as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
        received = os.path.getsize(path + ".part")
        if total is not None and received != total:
            raise OSError(f"the connection closed after {received} of {total} bytes")
    except (OSError, urllib.error.URLError) as e:
        if os.path.exists(path + ".part"):
            os.remove(path + ".part")
        raise DatasetError(
            f"could not download {url} ({e}); download it on a machine with network and put it at {path} (or point "
            "D4RL_DATASET_DIR at its folder)"
        )
    os.replace(path + ".part", path)


def check_env(data: dict, make_env: Callable[[], gym.Env], source: str) -> None:
    """The data must fit the evaluation environment's observation and action shapes."""
    try:
        env = make_env()
    except Exception as e:
        raise DatasetError(f"cannot make the evaluation environment of {source} ({type(e).__name__}: {e})")
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    env.close()
    if data["observations"].shape[1] != obs_dim or data["actions"].shape[1] != act_dim:
        raise DatasetError(
            f"{source} has observations of dim {data['observations'].shape[1]} and actions of dim "
            f"{data['actions'].shape[1]}, "
            f"but its environment has {obs_dim} and {act_dim}; the data belongs to another environment (or version)"
        )


def load_minari(dataset_id: str) -> tuple[dict, Callable[[], gym.Env], float, float]:
    try:
        import minari
    except ImportError:
        raise DatasetError(f"{dataset_id!r} looks like a Minari id but minari is not installed; pip install minari")
    try:
        dataset = minari.load_dataset(dataset_id, download=True)
    except Exception as e:
        raise DatasetError(
            f"cannot load Minari dataset {dataset_id!r} ({type(e).__name__}: {e}); check the id, or with no network "
            f"copy it into {os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')}"
        )
    columns = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")}
    for episode in dataset.iterate_episodes():
        if isinstance(episode.observations, dict):
            raise DatasetError(f"{dataset_id} has dictionary observations; only flat Box observations are supported")
        columns["observations"].append(episode.observations[:-1])
        columns["next_observations"].append(episode.observations[1:])
        columns["actions"].append(episode.actions)
        columns["rewards"].append(episode.rewards)
        columns["terminals"].append(episode.terminations)
        columns["timeouts"].append(episode.truncations)
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    metadata = dataset.storage.metadata
    ref_min, ref_max = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    ref_min, ref_max = (np.nan, np.nan) if ref_min is None or ref_max is None else (ref_min, ref_max)
    return arrays, lambda: dataset.recover_environment(eval_env=True), float(ref_min), float(ref_max)


def shipped_path(name: str) -> str:
    """Where a shipped dataset lives: $SHIPPED_DATASETS_DIR, else datasets/shipped/ of this project."""
    here = os.path.dirname(os.path.abspath(__file__))
    folders = [
        os.environ.get("SHIPPED_DATASETS_DIR", ""),
        os.path.join(here, "..", "datasets", "shipped"),
        os.path.join("datasets", "shipped"),
    ]
    for folder in filter(None, folders):
        path = os.path.join(folder, name + ".hdf5")
        if os.path.isfile(path):
            return path
    raise DatasetError(
        f"shipped dataset {name!r} not found in {[f for f in folders if f]}; run from the project root, "
        "set SHIPPED_DATASETS_DIR to the folder that holds it, or pass the .hdf5 path itself"
    )


def load_dataset(name: str, device: torch.device) -> OfflineData:
    """Resolve a dataset name (see the table above) into an OfflineData on `device`."""
    env_id, reward_scaling = "", None
    if name.endswith((".hdf5", ".h5")) or os.path.isfile(name) or name.startswith(SHIPPED_PREFIX):
        path = shipped_path(name[len(SHIPPED_PREFIX) :]) if name.startswith(SHIPPED_PREFIX) else name
        if not os.path.isfile(path):
            raise DatasetError(f"dataset file {path!r} does not exist")
        arrays, attrs = read_hdf5(path)
        if "env_id" not in attrs:
            raise DatasetError(
                f"{path} does not name its environment; set the file attribute env_id (and ref_min_score, "
                "ref_max_score)"
            )
        try:
            env_id, env_kwargs = str(attrs["env_id"]), json.loads(attrs.get("env_kwargs", "{}"))
            ref_min, ref_max = float(attrs.get("ref_min_score", np.nan)), float(attrs.get("ref_max_score", np.nan))
        except (ValueError, TypeError) as e:
            raise DatasetError(
                f"{path}: bad attribute ({e}); env_kwargs must be a JSON object and ref_min_score/ref_max_score numbers"
            )
        reward_scaling = attrs.get("reward_scaling")
        if reward_scaling is not None and reward_scaling not in REWARD_SCALINGS:
            raise DatasetError(
                f"{path}: attribute reward_scaling is {reward_scaling!r}; it must be one of "
                f"{', '.join(REWARD_SCALINGS)}"
            )
        make_env = lambda: gym.make(env_id, **env_kwargs)  # noqa: E731
    elif D4RL_NAME.match(name):
        env_id, env_kwargs, ref_min, ref_max = D4RL_ENVS[name.split("-")[0]]
        file_name = name.split("-", 1)[0] + "_" + name.split("-", 1)[1][: -len("-v2")].replace("-", "_") + "-v2.hdf5"
        folder = os.environ.get("D4RL_DATASET_DIR", os.path.expanduser("~/.d4rl/datasets"))
        path = os.path.join(folder, file_name)
        if not os.path.isfile(path):
            download(D4RL_URL.format(file_name), path)
        arrays, _ = read_hdf5(path)
        make_env = lambda: gym.make(env_id, **env_kwargs)  # noqa: E731
    elif name.count("/") >= 2:
        arrays, make_env, ref_min, ref_max = load_minari(name)
    else:
        raise DatasetError(
            f"unknown dataset {name!r}: use a D4RL name (hopper-medium-replay-v2), a Minari id "
            "(mujoco/hopper/medium-v0), a path to a .hdf5 file, or a shipped dataset (shipped/hopper-medium-replay)"
        )
    data = transitions_from_arrays(arrays, name)
    if len(data["rewards"]) < 2:
        raise DatasetError(f"{name} holds {len(data['rewards'])} usable transition; training needs at least two")
    check_env(data, make_env, name)
    if not (np.isfinite(ref_min) and np.isfinite(ref_max) and ref_max != ref_min):
        print(
            f"note: {name} has no usable reference returns (ref_min_score, ref_max_score), so scores cannot be "
            "normalised: results report raw returns and leave normalised scores out (null)",
            file=sys.stderr,
        )
        ref_min = ref_max = None
    tensors = {k: torch.as_tensor(v, device=device) for k, v in data.items() if k != "episode_returns"}
    return OfflineData(
        name=name,
        **tensors,
        episode_returns=data["episode_returns"],
        make_env=make_env,
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
        env_id=env_id,
        reward_scaling=reward_scaling,
    )


# ---- end shared: dataset ----


# ---- shared: evaluation ----
@torch.no_grad()
def evaluate(
    make_env: Callable[[], gym.Env], act: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int
) -> np.ndarray:
    """Return of `episodes` full episodes run side by side in a vectorised environment.

    `act` maps a batch of raw observations to a batch of actions (deterministic policy).
    Each sub-environment plays exactly one episode; later (auto-reset) steps are ignored.
    """
    envs = gym.vector.SyncVectorEnv([make_env for _ in range(episodes)])
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        obs, reward, terminated, truncated, _ = envs.step(act(obs))
        returns += reward * running
        running &= ~(terminated | truncated)
    envs.close()
    return returns


def normalized_score(returns, ref_min: float, ref_max: float):
    """D4RL's normalised score: 0 is the reference minimum (random), 100 the maximum (expert)."""
    return 100.0 * (np.asarray(returns) - ref_min) / (ref_max - ref_min)


# ---- end shared: evaluation ----


# ---- shared: offline_results ----
def record_evaluation(
    run_dir: str,
    writer: SummaryWriter,
    history: list,
    step: int,
    returns: np.ndarray,
    data: OfflineData,
    seed: int,
    clock: TrainClock,
) -> str:
    """Append one evaluation to `history`, log it, and rewrite results.json with the whole run so far.

    Where the dataset has no usable reference returns, the normalised scores are None (null in
    results.json), never NaN, and the raw returns carry the result. Returns the score to show.
    """
    scored = data.ref_min_score is not None
    score = lambda r: float(normalized_score(r, data.ref_min_score, data.ref_max_score)) if scored else None
    scores = normalized_score(returns, data.ref_min_score, data.ref_max_score) if scored else None
    history.append(
        {
            "step": step,
            "return": float(returns.mean()),
            "return_std": float(returns.std()),
            "normalized_score": float(scores.mean()) if scored else None,
            "normalized_score_std": float(scores.std()) if scored else None,
        }
    )
    writer.add_scalar("eval/return", returns.mean(), step)
    if scored:
        writer.add_scalar("eval/normalized_score", scores.mean(), step)
    writer.add_scalar("charts/updates_per_second", clock.rate(), step)
    best = max(history, key=lambda h: h["return"])
    write_results(
        run_dir,
        {
            "algo": SCRIPT_NAME,
            "dataset": data.name,
            "seed": seed,
            "evaluations": history,
            "last_normalized_score": history[-1]["normalized_score"],
            "best_normalized_score": best["normalized_score"],
            "last_return": history[-1]["return"],
            "best_return": best["return"],
            "behaviour_return": float(data.episode_returns.mean()),
            "behaviour_normalized_score": score(data.episode_returns.mean()),
            "train_time_s": clock.state_dict()["seconds"],
            "updates_per_second": clock.rate(),
        },
    )
    return f"{history[-1]['normalized_score' if scored else 'return']:.1f}"


def stop_run(run_dir: str, writer: SummaryWriter, reason: str) -> None:
    """End a run that cannot go on (a diverged critic): results.json says why under "stopped", the
    last checkpoint stays as it is, and the run ends with one line and exit code 1."""
    path = os.path.join(run_dir, "results.json")
    results = {"algo": SCRIPT_NAME, "evaluations": []}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    write_results(run_dir, {**results, "stopped": reason})
    writer.close()
    sys.exit(f"stopped: {reason}; results.json says so and the last checkpoint is kept ({run_dir})")


def final_summary(run_dir: str) -> str:
    """The line a finished run prints: last and best score beside the behaviour data's."""
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    kind = "normalised score" if r["last_normalized_score"] is not None else "return"
    key = "normalized_score" if r["last_normalized_score"] is not None else "return"
    return (
        f"{r['algo']} on {r['dataset']}: last {kind} {r['last_' + key]:.1f}, best {r['best_' + key]:.1f} "
        f"(behaviour data {r['behaviour_' + key]:.1f}); run directory {run_dir}"
    )


# ---- end shared: offline_results ----


# ---- shared: ensemble_linear ----
class EnsembleLinear(nn.Module):
    """`members` independent linear layers evaluated as one batched matmul.

    Input [members, batch, in] (or [batch, in], broadcast to every member), output
    [members, batch, out]. Each member is initialised like nn.Linear.
    """

    def __init__(self, in_dim: int, out_dim: int, members: int):
        super().__init__()
        bound = 1.0 / np.sqrt(in_dim)
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.baddbmm(self.bias, x.expand(self.weight.shape[0], *x.shape), self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


# ---- end shared: ensemble_linear ----


if __name__ == "__main__":
    main()
