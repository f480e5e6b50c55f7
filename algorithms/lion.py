"""LION: one policy π(s, λ) that a user steers after training.

Swazinna, Udluft and Runkler, "User-Interactive Offline Reinforcement Learning", ICLR 2023,
https://openreview.net/forum?id=a4COps0uokg

Three models are learned from the data and frozen: an ensemble of transition models, a behaviour model β(s)
(MSE cloning) and, on top, the policy π(s, λ) with λ ∈ [0, 1] as an input. π is trained through rollouts in
the models from the data's start states, one λ ~ Beta(0.1, 0.1) per imagined trajectory: at every step all
members predict and the one with the lowest reward is followed (its reward and next state), gradients flow
through the models, and the loss trades the normalised model return R against the proximity P to β:

    R = -Σ_t γ^t r_t / |mean H-step discounted return of the data|
    P = (1/H) Σ_t γ^t mean((β(s_t) - π(s_t, λ))²)
    loss = mean(λ R + (1 - λ) P) + η mean((π(s_data, 0) - a_data)²)

After training λ is a dial: 0 stays with the behaviour, 1 maximises the return the models promise. Evaluation
sweeps λ = 0, 0.05, ..., 1 in the real environment and records return and distance to β for each (results.json,
lambda_sweep.png; on 2D tasks also the policy maps, policy_maps.png). tools/steer_lion.py moves λ live on a
trained run.

The transition models are the paper's for each environment, chosen by the dataset's environment:
  Industrial Benchmark (custom_envs.industrial_benchmark)  per-variable recurrent models: fatigue and consumption
      each an Elman RNN (hidden 30) on the z-scored setpoint, velocity, gain and shift after the action (fatigue
      also on its own previous value), trained on windows of 30 teacher-forced and 50 autoregressive steps;
      p, v, g, h move by the benchmark's known rule; reward -(3 f + c)
  any other task (LION's 2D task)  an MLP ensemble ([32, 24] ReLU) of the next state and the reward
Both are trained once per dataset and seed and cached (--model-cache-dir), like the dynamics ensemble of the
model-based scripts. Settings left at None take the paper's value for the environment (PAPER below).

Where the authors' code (siemens/lion) differs from the paper, this script follows the paper except where
noted: the η term draws its data batch uniformly (the code reuses the first 200 x 195 rows); start states are
the first `start_rows` rows of every trajectory (the 2D code takes only the first 40 trajectories). The return
normaliser is the data's reward on IB; on the 2D task the default follows the code, which reads the y
coordinate (about 100 times the reward's scale) and is behind the published 2D curve (--return-normalizer
rewards gives the paper's text: the switch then comes at λ ≈ 0.05).

Example:
    python algorithms/lion.py --dataset shipped/lion2d
    python algorithms/lion.py --dataset shipped/ib-bad-0.2 --device cuda

Logged (tensorboard, in the run directory):
    losses/loss              the combined loss
    losses/return_term       mean R (normalised, negative is better)
    losses/proximity_term    mean P
    losses/data_term         the η term's MSE
    losses/bc_loss           the behaviour model's cloning loss (before policy training)
    eval/return              mean return at λ = 1 (the sweep's every λ is in results.json)
    eval/normalized_score    its normalised score
    charts/updates_per_second
"""

import contextlib
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
import tyro
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    dataset: str = "shipped/lion2d"
    """D4RL name, Minari id, .hdf5 path or shipped/<name> (see the dataset block)"""
    seed: int = 0
    """seed of python, numpy, torch, the models and the evaluation environments"""
    num_updates: Optional[int] = None
    """policy updates (None: the paper's, 975 on IB: 5 epochs x 195; 570 on 2D: 30 x 19)"""
    batch_size: int = 200
    """imagined trajectories per update, and rows of the η term's data batch"""
    horizon: Optional[int] = None
    """rollout length H (None: 100 on IB, 25 otherwise)"""
    gamma: Optional[float] = None
    """discount γ of R and P (None: 0.97 on IB, 0.99 otherwise)"""
    lr: float = 3e-4
    """Adam learning rate of π and β"""
    hidden_dim: Optional[int] = None
    """width of π's two hidden layers (None: 1024 on IB, 256 otherwise)"""
    lambda_beta: float = 0.1
    """λ ~ Beta(b, b): mass near 0 and 1 (the paper's 0.1)"""
    eta: float = 0.1
    """η, weight of the data term MSE(π(s_data, 0), a_data)"""
    start_rows: Optional[int] = None
    """start states: the first rows of every trajectory (None: 30 on IB, 3 otherwise)"""
    return_normalizer: Optional[str] = None
    """R's scale: |mean H-step discounted return| of the data's "rewards", or of its "last_observation_column" as the
    authors' 2D code has it (None: rewards; on the 2D task last_observation_column, behind the published curve)"""
    behaviour_hidden: Optional[tuple[int, ...]] = None
    """β's hidden layers (None: one of 20 on IB, two of 40 otherwise)"""
    bc_updates: Optional[int] = None
    """β's cloning steps on consecutive minibatches of 512 rows (None: 3900 on IB: 20 x 195; 3800 on 2D: 200 x 19)"""
    dynamics_members: int = 4
    """transition models in the ensemble"""
    dynamics_max_epochs: Optional[int] = None
    """model training epochs (None: 3000 with early stopping after 128 on IB, 300 otherwise)"""
    dynamics_patience: Optional[int] = None
    """epochs without a better validation loss before the model training stops (None: 128 on IB, no stop otherwise)"""
    dynamics_lr: Optional[float] = None
    """Adam learning rate of the models (None: 1.25e-4 on IB, 0.01 otherwise)"""
    dynamics_batch_size: Optional[int] = None
    """model minibatch (None: 1024 windows on IB, 512 transitions otherwise)"""
    dynamics_window_stride: int = 1
    """IB models: train on every k-th 80-step window of a trajectory (1: all of them, as the paper)"""
    dynamics_cache_dir: Optional[str] = None
    """folder of trained models, reused by runs with the same data, settings and seed (None: <runs-dir>/dynamics)"""
    eval_every: Optional[int] = None
    """updates between λ sweeps (None: only at the end, as the paper)"""
    eval_episodes: Optional[int] = None
    """episodes per λ (None: 10 on IB, 50 otherwise)"""
    eval_steps: Optional[int] = None
    """steps per evaluation episode (None: 100 on IB, the whole episode otherwise)"""
    eval_gamma: Optional[float] = None
    """discount of the evaluation return (None: 0.97 on IB, 0.99 on 2D, 1 otherwise)"""
    checkpoint_every: int = 100
    """updates between checkpoints that --resume continues from"""
    log_every: int = 10
    """updates between loss logs"""
    resume: Optional[str] = None
    """run directory of a killed run to continue (its config.yaml is loaded first)"""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu" or "cuda" """
    threads: int = 0
    """torch CPU threads (0 keeps torch's default)"""
    compile: bool = False
    """torch.compile the update step"""
    runs_dir: str = "runs"
    """parent folder of the run directory"""
    track: bool = False
    """also log to Weights & Biases (needs wandb)"""
    config: Optional[str] = None
    """YAML file whose keys override these defaults (the command line still wins)"""


LIMITS = {"lambda_beta": "(0, inf)", "eta": "[0, inf)", "eval_gamma": "(0, 1]", "dynamics_lr": "(0, inf)"}
RETURN_NORMALIZERS = ("rewards", "last_observation_column")
# the authors' settings (siemens/lion, policy_training.py and the model configs) per kind of environment
PAPER = {
    "ib": dict(num_updates=975, horizon=100, gamma=0.97, hidden_dim=1024, start_rows=30, behaviour_hidden=(20,),
               bc_updates=3900, dynamics_max_epochs=3000, dynamics_patience=128, dynamics_lr=1.25e-4,
               dynamics_batch_size=1024, eval_episodes=10, eval_steps=100, eval_gamma=0.97),
    "2d": dict(num_updates=570, horizon=25, gamma=0.99, hidden_dim=256, start_rows=3, behaviour_hidden=(40, 40),
               bc_updates=3800, dynamics_max_epochs=300, dynamics_patience=0, dynamics_lr=0.01,
               dynamics_batch_size=512, eval_episodes=50, eval_steps=0, eval_gamma=0.99),
}  # fmt: skip
IB_HISTORY, IB_PAST, IB_FUTURE = 30, 30, 50  # frames per observation; teacher-forced and free steps per window
IB_STEERING = (1.0, 10.0, 20.0 * math.sin(math.radians(15)) / 0.9)  # v += a0, g += 10 a1, h += 5.75 a2


def environment_kind(data) -> str:
    return "ib" if "industrial_benchmark" in data.env_id else "2d"


def resolve(args: Args, kind: str, data) -> Args:
    """Fill every setting left at None with the paper's for this kind of environment."""
    paper = PAPER[kind]
    if kind == "2d" and "lion2d" not in data.env_id and args.eval_gamma is None:
        args.eval_gamma = 1.0  # tasks outside the paper: the usual undiscounted episode return
    for key, value in paper.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    lion2d = "lion2d" in data.env_id
    if args.return_normalizer is None:
        args.return_normalizer = "last_observation_column" if lion2d else "rewards"
    return args


def mlp(sizes, out_act=None) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers, *([out_act] if out_act else []))


class Policy(nn.Module):
    """π(s, λ) (or β(s) without λ): z-scored state, λ as (λ - 0.5) / sqrt(1/12), ReLU layers, tanh output."""

    def __init__(self, obs_mean, obs_std, act_dim: int, hidden: tuple, use_lambda: bool):
        super().__init__()
        self.register_buffer("obs_mean", obs_mean)
        self.register_buffer("obs_std", obs_std)
        self.use_lambda = use_lambda
        self.net = mlp([len(obs_mean) + int(use_lambda), *hidden, act_dim], nn.Tanh())

    def forward(self, obs: torch.Tensor, lam: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = (obs - self.obs_mean) / self.obs_std
        if self.use_lambda:
            x = torch.cat([x, (lam.view(-1, 1).expand(len(x), 1) - 0.5) / math.sqrt(1 / 12)], -1)
        return self.net(x)


class MLPModels(nn.Module):
    """LION's MLP ensemble: (z-scored s, a) -> normalised (s', r) with mean and std heads (the std head on detached
    features), predictions clipped to the data's range."""

    def __init__(self, obs_dim: int, act_dim: int, members: int, stats: dict):
        super().__init__()
        self.body = nn.Sequential(
            EnsembleLinear(obs_dim + act_dim, 32, members), nn.ReLU(), EnsembleLinear(32, 24, members), nn.ReLU()
        )
        self.mean_head = EnsembleLinear(24, obs_dim + 1, members)
        self.std_head = EnsembleLinear(24, obs_dim + 1, members)
        for key, value in stats.items():
            self.register_buffer(key, value)

    def forward(self, obs, actions):
        h = self.body(torch.cat([(obs - self.obs_mean) / self.obs_std, actions], -1))
        return self.mean_head(h), self.std_head(h.detach()).exp()

    def step(self, obs, actions, carry):
        """Every member's (next state [M, B, D], reward [M, B]); `carry` is unused (recurrent models need it)."""
        mean, _ = self(obs, actions)
        out = torch.maximum(torch.minimum(mean * self.target_std + self.target_mean, self.target_high), self.target_low)
        return out[..., :-1], out[..., -1], carry

    def loss(self, batch):
        obs, actions, targets = batch
        mean, std = self(obs, actions)
        target = (targets - self.target_mean) / self.target_std
        mse = ((mean - target) ** 2).mean((1, 2))
        nll = (((mean.detach() - target) / std) ** 2 / 2 + std.log()).mean((1, 2))
        return mse + nll, mse  # per member


class RecurrentModels(nn.Module):
    """LION's IB models: for each member an Elman RNN (hidden 30) for fatigue and one for consumption, batched as
    2M cells (fatigue cells first). A cell reads the z-scored (p, v, g, h) after the action plus, for fatigue, its
    own previous z-scored value (0 for consumption); heads: mean and std (on the detached hidden state)."""

    def __init__(self, members: int, stats: dict, hidden: int = 30):
        super().__init__()
        self.members, cells = members, 2 * members
        self.input = EnsembleLinear(5, hidden, cells)
        self.recurrent = EnsembleLinear(hidden, hidden, cells)
        self.mean_head = EnsembleLinear(hidden, 1, cells)
        self.std_head = EnsembleLinear(hidden, 1, cells)
        self.hidden = hidden
        for key, value in stats.items():  # frame_mean/std [6], fc_low/high [2]
            self.register_buffer(key, value)

    def cell(self, pvgh_z, fatigue_z, h):
        """One step of all cells: pvgh_z [B, 4] or [M, B, 4]; fatigue_z [M, B]; h [2M, B, H]."""
        pvgh = pvgh_z.expand(self.members, *pvgh_z.shape[-2:]).repeat(2, 1, 1)
        selfin = torch.cat([fatigue_z, torch.zeros_like(fatigue_z)]).unsqueeze(-1)
        h = torch.tanh(self.input(torch.cat([pvgh, selfin], -1)) + self.recurrent(h))
        return self.mean_head(h).squeeze(-1), self.std_head(h.detach()).exp().squeeze(-1), h

    def normalise(self, frame):
        return (frame - self.frame_mean) / self.frame_std

    def start(self, obs):
        """Warm the hidden states up over the history's frames, oldest to newest, teacher-forced."""
        frames = obs.view(len(obs), IB_HISTORY, 6).flip(1)  # oldest first
        z = self.normalise(frames)
        h = torch.zeros(2 * self.members, len(obs), self.hidden, device=obs.device)
        for i in range(1, IB_HISTORY):
            _, _, h = self.cell(z[:, i, :4], z[:, i - 1, 4].expand(self.members, -1), h)
        return h

    def step(self, obs, actions, h):
        """(next histories [M, B, 180], rewards [M, B], hidden states) for every member."""
        newest = obs[:, :6]
        steering = torch.tensor(IB_STEERING, device=obs.device)
        pvgh = torch.cat([newest[:, :1], (newest[:, 1:4] + steering * actions.clamp(-1, 1)).clamp(0, 100)], -1)
        z_prev = self.normalise(newest)[:, 4].expand(self.members, -1)
        mean, _, h = self.cell(self.normalise(torch.cat([pvgh, newest[:, 4:]], -1))[:, :4], z_prev, h)
        fc = torch.stack([mean[: self.members], mean[self.members :]], -1) * self.frame_std[4:] + self.frame_mean[4:]
        fc = torch.maximum(torch.minimum(fc, self.fc_high), self.fc_low)  # [M, B, 2]
        frame = torch.cat([pvgh.expand(self.members, -1, -1), fc], -1)
        history = torch.cat([frame, obs[:, :-6].expand(self.members, -1, -1)], -1)
        return history, -(3 * fc[..., 0] + fc[..., 1]), h

    def loss(self, batch):
        """MSE + NLL on the 50 free-running steps of windows [(M,) B, 80, 6] (30 teacher-forced steps first)."""
        z = self.normalise(batch[0])
        h = torch.zeros(2 * self.members, z.shape[-3], self.hidden, device=z.device)
        fatigue = z[..., 0, 4].expand(self.members, -1)
        mse = nll = 0.0
        for t in range(1, IB_PAST + IB_FUTURE):
            mean, std, h = self.cell(z[..., t, :4], fatigue, h)
            if t >= IB_PAST:
                target = torch.cat([z[..., t, 4].expand(self.members, -1), z[..., t, 5].expand(self.members, -1)])
                mse = mse + ((mean - target) ** 2).mean(-1)
                nll = nll + (((mean.detach() - target) / std) ** 2 / 2 + std.log()).mean(-1)
            fatigue = z[..., t, 4].expand(self.members, -1) if t < IB_PAST else mean[: self.members]
        mse, nll = mse / IB_FUTURE, nll / IB_FUTURE
        per_member = lambda x: x[: self.members] + x[self.members :]  # noqa: E731
        return per_member(mse + nll), per_member(mse)


def trajectory_position(data) -> torch.Tensor:
    """Each row's step index within its trajectory (a row starts one where the previous row's next observation
    is not this row's observation, or the previous row was terminal)."""
    n = len(data.rewards)
    rows = torch.arange(n, device=data.rewards.device)
    start = torch.ones(n, dtype=torch.bool, device=rows.device)
    start[1:] = (data.next_observations[:-1] != data.observations[1:]).any(-1) | (data.terminals[:-1] > 0)
    return rows - torch.cummax(torch.where(start, rows, 0), 0).values


def model_data(data, kind: str, stride: int = 1) -> tuple[dict, tuple, tuple]:
    """The models' statistics and their training and validation sets: the last 10% of the trajectories
    validate (the authors' sequential 90/10 split). IB: windows of 80 consecutive frames [n, 80, 6];
    otherwise (obs, action, [next obs, reward]) rows."""
    position = trajectory_position(data)
    starts = torch.nonzero(position == 0).squeeze(1).tolist() + [len(position)]
    split = starts[int(0.9 * (len(starts) - 1))] if len(starts) > 2 else int(0.9 * len(position))
    if kind == "ib":
        frames = data.observations[:, :6]
        stats = dict(
            frame_mean=frames.mean(0),
            frame_std=torch.where(frames.std(0) > 0, frames.std(0), torch.ones_like(frames[0])),
            fc_low=data.next_observations[:, 4:6].min(0).values,
            fc_high=data.next_observations[:, 4:6].max(0).values,
        )
        windows = [[], []]
        for a, b in zip(starts[:-1], starts[1:]):
            trajectory = torch.cat([frames[a:b], data.next_observations[b - 1 : b, :6]])
            if len(trajectory) >= IB_PAST + IB_FUTURE:
                windows[a >= split].append(trajectory.unfold(0, IB_PAST + IB_FUTURE, stride).transpose(1, 2))
        if not windows[0] or not windows[1]:
            sys.exit(f"error: {data.name} has too few trajectories of {IB_PAST + IB_FUTURE}+ steps for the IB models")
        return stats, (torch.cat(windows[0]),), (torch.cat(windows[1]),)
    targets = torch.cat([data.next_observations, data.rewards[:, None]], -1)
    std = lambda x: torch.where(x.std(0) > 0, x.std(0), torch.ones_like(x[0]))  # noqa: E731
    stats = dict(
        obs_mean=data.observations[:split].mean(0),
        obs_std=std(data.observations[:split]),
        target_mean=targets[:split].mean(0),
        target_std=std(targets[:split]),
        target_low=targets.min(0).values,
        target_high=targets.max(0).values,
    )
    rows = (data.observations, data.actions, targets)
    return stats, tuple(x[:split] for x in rows), tuple(x[split:] for x in rows)


def train_models(models: nn.Module, train: tuple, val: tuple, settings: dict) -> dict:
    """Adam with weight decay 1e-3, each member on its own shuffled minibatches; the MLP's learning rate decays by
    0.99 per epoch, the RNN's by 0.9 after 8 epochs without progress; every member keeps its best validation
    epoch (loss for the MLP, MSE for the RNN); training stops after `patience` epochs without progress (0: never)."""
    recurrent = isinstance(models, RecurrentModels)
    opt = torch.optim.Adam(models.parameters(), lr=settings["lr"], weight_decay=1e-3)
    schedule = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=8, factor=0.9)
        if recurrent
        else torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda _: 0.99)
    )
    members, n = settings["members"], len(train[0])
    rows_of = torch.arange(members).repeat(2 if recurrent else 1)  # parameter row -> member
    best = {k: v.detach().clone() for k, v in models.state_dict().items()}
    best_val = torch.full((members,), float("inf"))
    log, stale = {"val": []}, 0
    for _ in tqdm(range(settings["max_epochs"]), desc="transition models", mininterval=2):
        order = torch.argsort(torch.rand(members, n, device=train[0].device), 1)
        for i in range(0, n, settings["batch_size"]):
            idx = order[:, i : i + settings["batch_size"]]
            loss, _ = models.loss(tuple(x[idx] for x in train))
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            parts = [models.loss(tuple(x[i : i + 4096] for x in val)) for i in range(0, len(val[0]), 4096)]
            sizes = torch.tensor([min(4096, len(val[0]) - i) for i in range(0, len(val[0]), 4096)], dtype=torch.float)
            val_loss = sum(p[1 if recurrent else 0].cpu() * s for p, s in zip(parts, sizes)) / sizes.sum()
        schedule.step(val_loss.mean()) if recurrent else schedule.step()
        better = val_loss < best_val
        best_val = torch.where(better, val_loss, best_val)
        for key, value in models.named_parameters():  # every parameter has one row per cell
            rows = better[rows_of].to(value.device)
            best[key][rows] = value[rows].detach()
        log["val"].append(val_loss.tolist())
        stale = 0 if better.any() else stale + 1
        if settings["patience"] and stale >= settings["patience"]:
            break
    models.load_state_dict(best)
    log.update(epochs=len(log["val"]), best_val=best_val.tolist())
    return log


def load_or_train_models(data, kind: str, settings: dict, seed: int, cache_dir: str, device) -> nn.Module:
    """Train once, reuse: models saved with a fingerprint of the data, settings and seed are loaded when it
    matches; an unreadable file is moved aside (.corrupt) and the models trained anew."""
    stats, train, val = model_data(data, kind, settings["window_stride"])
    members = settings["members"]
    models = (
        RecurrentModels(members, stats)
        if kind == "ib"
        else MLPModels(data.observations.shape[1], data.actions.shape[1], members, stats)
    ).to(device)
    digest = hashlib.sha1()
    for tensor in (data.observations, data.actions, data.rewards, data.next_observations):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    fingerprint = {"dataset": data.name, "data_sha1": digest.hexdigest(), "seed": seed, "kind": kind, **settings}
    key = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', data.name).strip('-')}__seed{seed}__{key}.pt")
    check_writable(cache_dir, "the model cache folder")
    os.makedirs(cache_dir, exist_ok=True)
    with open(path + ".lock", "w") as lock:  # two runs that need the same models train them once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):
            try:
                saved = torch.load(path, map_location=device, weights_only=False)
                if saved["fingerprint"] == fingerprint:
                    models.load_state_dict(saved["model"])
                    print(f"dynamics: reusing {path} (validation {np.round(saved['log']['best_val'], 4).tolist()})")
                    return models
            except Exception as e:
                os.replace(path, path + ".corrupt")
                print(f"dynamics: {path} is unreadable ({type(e).__name__}); moved it to {path}.corrupt, training anew")
        start = time.time()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            log = train_models(models, train, val, settings)
        log["train_time_s"] = time.time() - start
        state = {"fingerprint": fingerprint, "model": models.state_dict(), "log": log}
        write_atomically(path, lambda tmp: torch.save(state, tmp), "trained transition models")
        print(f"dynamics: trained {log['epochs']} epochs in {log['train_time_s']:.0f} s, saved to {path}")
    return models


def imagine(policy, behaviour, models, obs, lam, horizon: int, gamma: float, return_scale: float):
    """R and P of every imagined trajectory: all members predict, the lowest reward's member is followed."""
    carry = models.start(obs) if isinstance(models, RecurrentModels) else None
    rows = torch.arange(len(obs), device=obs.device)
    ret = proximity = 0.0
    for t in range(horizon):
        action = policy(obs, lam)
        proximity = proximity + gamma**t * ((behaviour(obs) - action) ** 2).mean(-1)
        next_obs, reward, carry = models.step(obs, action, carry)
        reward, member = reward.min(0)
        obs = next_obs[member, rows]
        ret = ret + gamma**t * reward
    return -ret / return_scale, proximity / horizon


def return_scale(data, kind: str, horizon: int, gamma: float, source: str) -> float:
    """|mean H-step discounted return| over all windows of the data, in the models' reward units."""
    if kind == "ib":
        rewards = -(3 * data.next_observations[:, 4] + data.next_observations[:, 5])
    else:
        rewards = data.observations[:, -1] if source == "last_observation_column" else data.rewards
    weights = gamma ** torch.arange(horizon, dtype=torch.float64, device=rewards.device)
    windows = rewards.double().unfold(0, min(horizon, len(rewards)), 1) @ weights[: min(horizon, len(rewards))]
    return max(abs(float(windows.mean())), 1e-6)


def behaviour_return(data, steps: int, gamma: float) -> float:
    """The data's own return under the evaluation's protocol: the first `steps` steps (0: all) of every trajectory,
    discounted by `gamma` (the dashed line of the paper's plots)."""
    position = trajectory_position(data).cpu().numpy()
    rewards = data.rewards.cpu().numpy().astype(np.float64)
    starts = np.append(np.flatnonzero(position == 0), len(rewards))
    returns = [
        (rewards[a:b][: steps or None] * gamma ** np.arange(len(rewards[a:b][: steps or None]))).sum()
        for a, b in zip(starts[:-1], starts[1:])
    ]
    return float(np.mean(returns))


def main():
    args = parse_args(Args, {**LIMITS, **{k: "[1, inf)" for k in ("num_updates", "horizon", "hidden_dim", "start_rows",
                                                                  "bc_updates", "eval_episodes", "dynamics_batch_size",
                                                                  "dynamics_max_epochs", "eval_every")}})  # fmt: skip
    if args.return_normalizer not in (None, *RETURN_NORMALIZERS):
        sys.exit(f"error: --return-normalizer {args.return_normalizer!r} is not one of {', '.join(RETURN_NORMALIZERS)}")
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, device)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    kind = environment_kind(data)
    args = resolve(args, kind, data)
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    settings = {k[9:]: v for k, v in asdict(args).items() if k.startswith("dynamics_") and k != "dynamics_cache_dir"}
    models = load_or_train_models(
        data, kind, settings, args.seed, args.dynamics_cache_dir or os.path.join(args.runs_dir, "dynamics"), device
    ).requires_grad_(False)
    obs_std = data.observations.std(0)
    obs_stats = (data.observations.mean(0), torch.where(obs_std > 0, obs_std, torch.ones_like(obs_std)))
    policy = Policy(*obs_stats, act_dim, (args.hidden_dim,) * 2, use_lambda=True).to(device)
    behaviour = Policy(*obs_stats, act_dim, args.behaviour_hidden, use_lambda=False).to(device)
    policy_opt = torch.optim.Adam(policy.parameters(), lr=args.lr)
    behaviour_opt = torch.optim.Adam(behaviour.parameters(), lr=args.lr)
    probe = data.make_env()
    low, high = (
        torch.as_tensor(x, dtype=torch.float32, device=device)
        for x in (probe.action_space.low, probe.action_space.high)
    )
    probe.close()
    to_unit = lambda a: (2 * (a - low) / (high - low) - 1).clamp(-1, 1)  # noqa: E731  data actions -> tanh's box
    to_env = lambda a: low + (a + 1) * (high - low) / 2  # noqa: E731
    starts = torch.nonzero(trajectory_position(data) < args.start_rows).squeeze(1)
    scale = return_scale(data, kind, args.horizon, args.gamma, args.return_normalizer)
    beta = torch.distributions.Beta(torch.tensor(args.lambda_beta, device=device), torch.tensor(args.lambda_beta))
    env_policy = lambda o, lam: to_env(policy(o, lam))  # noqa: E731
    env_behaviour = lambda o: to_env(behaviour(o))  # noqa: E731

    def clone_behaviour(step: int):
        """β by MSE on the data's consecutive minibatches of 512 rows (the authors' unshuffled order)."""
        per_epoch = max(1, min(200, len(data.rewards) // 512))
        i = step % per_epoch
        obs, actions = data.observations[512 * i : 512 * (i + 1)], to_unit(data.actions[512 * i : 512 * (i + 1)])
        loss = ((behaviour(obs) - actions) ** 2).mean()
        behaviour_opt.zero_grad(set_to_none=True)
        loss.backward()
        behaviour_opt.step()
        return loss.detach()

    def update():
        obs = data.observations[starts[torch.randint(0, len(starts), (args.batch_size,), device=device)]]
        lam = beta.sample((args.batch_size,))
        ret, proximity = imagine(policy, behaviour, models, obs, lam, args.horizon, args.gamma, scale)
        idx = torch.randint(0, len(data.rewards), (args.batch_size,), device=device)
        data_term = (policy(data.observations[idx], torch.zeros(1, device=device)) - to_unit(data.actions[idx])) ** 2
        loss = (lam * ret + (1 - lam) * proximity).mean() + args.eta * data_term.mean()
        policy_opt.zero_grad(set_to_none=True)
        loss.backward()
        policy_opt.step()
        return {
            "losses/loss": loss.detach(),
            "losses/return_term": ret.detach().mean(),
            "losses/proximity_term": proximity.detach().mean(),
            "losses/data_term": data_term.detach().mean(),
        }

    if args.compile:
        update = torch.compile(update)

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {"policy": policy, "behaviour": behaviour, "policy_opt": policy_opt, "behaviour_opt": behaviour_opt}
    step, history, clock_state, sweep = 0, [], None, None
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state, sweep = extra["history"], extra.get("clock"), extra.get("sweep")
    writer = make_writer(args, run_dir, step)
    if step == 0:
        for i in tqdm(range(args.bc_updates), desc="behaviour model", mininterval=2):
            bc_loss = clone_behaviour(i)
            if (i + 1) % 100 == 0:
                writer.add_scalar("losses/bc_loss", float(bc_loss), i + 1)
    behaviour.requires_grad_(False)

    data_return = behaviour_return(data, args.eval_steps, args.eval_gamma)

    def evaluate_and_record(step: int):
        sweep = lambda_sweep(
            data.make_env,
            env_policy,
            env_behaviour,
            args.eval_episodes,
            args.eval_steps,
            args.eval_gamma,
            args.seed,
            device,
        )
        returns = np.array(sweep["returns"][-1])  # λ = 1
        score = record_evaluation(run_dir, writer, history, step, returns, data, args.seed, clock)
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
        best = int(np.argmax(sweep["return_mean"]))
        results.update(
            behaviour_protocol_return=data_return,
            lambda_sweep=sweep,
            best_lambda=LAMBDAS[best].item(),
            best_lambda_return=sweep["return_mean"][best],
            lambda0_return=sweep["return_mean"][0],
            lambda1_return=sweep["return_mean"][-1],
            evaluation=dict(episodes=args.eval_episodes, steps=args.eval_steps, gamma=args.eval_gamma),
        )
        write_results(run_dir, results)
        plot_sweep(os.path.join(run_dir, "lambda_sweep.png"), sweep, f"{SCRIPT_NAME} on {data.name}", data_return)
        if obs_dim == 2:
            plot_policy_maps(os.path.join(run_dir, "policy_maps.png"), env_policy, device)
        return sweep, score

    bar = tqdm(range(step + 1, args.num_updates + 1), desc=SCRIPT_NAME, mininterval=2)
    clock = TrainClock(clock_state)
    for step in bar:
        logs = update()
        clock.tick()
        if step % args.log_every == 0:
            log_scalars(writer, logs, step)
        if (args.eval_every and step % args.eval_every == 0) or step == args.num_updates:
            with clock.paused():
                sweep, score = evaluate_and_record(step)
                bar.set_postfix(score=score)
        if step % args.checkpoint_every == 0 or step == args.num_updates:
            with clock.paused():
                save_checkpoint(
                    checkpoint_path,
                    step,
                    trained | {"models": models},
                    {"history": history, "clock": clock.state_dict(), "sweep": sweep, "kind": kind},
                )
    writer.close()
    with open(os.path.join(run_dir, "results.json")) as f:
        r = json.load(f)
    print(
        f"{SCRIPT_NAME} on {data.name}: return at λ = 0 {r['lambda0_return']:.2f}, at λ = 1 {r['lambda1_return']:.2f}, "
        f"best {r['best_lambda_return']:.2f} at λ = {r['best_lambda']:.2f} (the data's own "
        f"{r['behaviour_protocol_return']:.2f}); run directory {run_dir}"
    )


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


# ---- shared: lambda_sweep ----
# Evaluation of a policy π(s, λ) that a user steers (LION, λ-TD3+BC): return and distance to the behaviour
# model for every λ of the paper's grid, and the paper's plots.
LAMBDAS = np.round(np.arange(0, 1.0001, 0.05), 2)  # the evaluation's λ grid


@torch.no_grad()
def lambda_sweep(make_env, policy, behaviour, episodes: int, steps: int, gamma: float, seed: int, device) -> dict:
    """Return and distance ‖π(s, λ) - β(s)‖ per λ of LAMBDAS, `episodes` real episodes each (the same starts for
    every λ), `steps` steps (0: the whole episode), discounted by `gamma`; policy(obs, λ) and behaviour(obs) take
    and give batches of tensors on `device`."""
    n = len(LAMBDAS) * episodes
    envs = [make_env() for _ in range(n)]
    obs = np.stack([env.reset(seed=seed + i % episodes)[0] for i, env in enumerate(envs)])
    lam = torch.tensor(np.repeat(LAMBDAS, episodes), dtype=torch.float32, device=device)
    returns, distance, count = np.zeros(n), np.zeros(n), np.zeros(n)
    running, t = np.ones(n, dtype=bool), 0
    while running.any() and (steps == 0 or t < steps):
        o = torch.as_tensor(obs, dtype=torch.float32, device=device)
        action = policy(o, lam)
        gap = (action - behaviour(o)).norm(dim=-1).cpu().numpy()
        action = action.cpu().numpy()
        for i in np.flatnonzero(running):
            obs[i], reward, terminated, truncated, _ = envs[i].step(action[i])
            returns[i] += gamma**t * reward
            distance[i], count[i] = distance[i] + gap[i], count[i] + 1
            running[i] = not (terminated or truncated)
        t += 1
    for env in envs:
        env.close()
    returns, distance = returns.reshape(-1, episodes), (distance / np.maximum(count, 1)).reshape(-1, episodes)
    return dict(
        lambdas=LAMBDAS.tolist(),
        returns=returns.tolist(),
        return_mean=returns.mean(1).tolist(),
        return_std=returns.std(1).tolist(),
        distance_mean=distance.mean(1).tolist(),
        distance_std=distance.std(1).tolist(),
    )


def plot_sweep(path: str, sweep: dict, title: str, behaviour_return: Optional[float] = None) -> None:
    """The paper's two panels: return against λ above, distance to the behaviour model below (± std bands)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lam = np.array(sweep["lambdas"])
    fig, axes = plt.subplots(2, 1, figsize=(5, 5), sharex=True)
    for ax, key, label in ((axes[0], "return", "return"), (axes[1], "distance", "dist. to behaviour model")):
        mean, std = np.array(sweep[key + "_mean"]), np.array(sweep[key + "_std"])
        ax.plot(lam, mean, color="tab:blue")
        ax.fill_between(lam, mean - std, mean + std, color="tab:blue", alpha=0.25)
        ax.set_ylabel(label)
    if behaviour_return is not None:
        axes[0].axhline(behaviour_return, color="gray", ls="--", label="data (same protocol)")
        axes[0].legend()
    axes[0].set_title(title)
    axes[1].set_xlabel("λ (0: behaviour, 1: model return)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def plot_policy_maps(path: str, policy, device, lambdas=LAMBDAS, size: float = 10.0) -> None:
    """2D tasks: the action's direction at every point of [0, size]² for each λ (colour: its angle; arrows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.arange(0, size + 1e-9, 0.5)
    xy = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    cols = 7
    fig, axes = plt.subplots(math.ceil(len(lambdas) / cols), cols, figsize=(2.2 * cols, 2.2 * len(lambdas) / cols))
    obs = torch.as_tensor(xy, dtype=torch.float32, device=device)
    for ax, lam in zip(np.ravel(axes), lambdas):
        a = policy(obs, torch.full((len(xy),), float(lam), device=obs.device)).cpu().numpy()
        angle = np.mod(np.arctan2(a[:, 1], a[:, 0]), 2 * np.pi).reshape(len(grid), len(grid))
        ax.imshow(angle, origin="lower", extent=(0, size, 0, size), cmap="jet", vmin=0, vmax=2 * np.pi)
        ax.quiver(xy[:, 0], xy[:, 1], a[:, 0], a[:, 1], scale=30, width=0.004)
        ax.set_title(f"λ = {lam:.2f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- end shared: lambda_sweep ----


if __name__ == "__main__":
    main()
