"""UWAC: uncertainty weighted actor-critic.

Wu, Zhai, Srivastava, Susskind, Zhang, Salakhutdinov and Goh, "Uncertainty Weighted Actor-Critic for Offline
Reinforcement Learning", ICML 2021, https://arxiv.org/abs/2105.08140

BEAR (algorithms/bear.py: a VAE of the behaviour policy, a tanh-Gaussian actor under an MMD support
constraint with a Lagrange multiplier α, the soft clipped double-Q target over 10 actions of π(s')) with
Q-networks that know how unsure they are. Dropout stays on in every pass of the Q-networks, so the mean
and variance of Q over many stochastic passes (Monte Carlo dropout) estimate Q and its epistemic
uncertainty. Backups from out-of-distribution (s', a'), where the variance is high, are down-weighted
by w = clamp(exp(-β Var), 0, 1) in the critic's TD loss, and so are the actor's value terms at uncertain
actions. The weights need no extra model.

Variant: the authors' code (apple/ml-uwac at 003911f: examples/UWAC_hdf5_d4rl.py with UWAC_Dropout,
rlkit/torch/sac/uwac_dropout.py, FlattenDropout_Mlp in rlkit/torch/networks.py) at its launcher's
defaults. 2 Q-networks of 2x256 with dropout p = 0.1 after each hidden layer in every pass (training,
targets, acting: their F.dropout keeps training=True) and spectral norm on all three layers (--SN, on;
--no-spectral-norm); mean and unbiased variance over 100 passes, one batched computation (on CPU one per
block of (s, a) pairs whose activations, about 4 MB, stay in cache: half the time of one block at 256 wide).
The TD loss's Q_k(s, a) is one stochastic pass (their qf.sample); the target is r + γ (1 - d) max_j
[0.75 min_k Q̄'_k + 0.25 max_k Q̄'_k](s', a_j) with Q̄' the targets' mean over passes, a_j ~ π(s'), j ≤ 10,
and its variance Var(s') = max_j Σ_k Var'_k(s', a_j): the largest summed variance over the 10 actions, as
their code, not the variance at the action the max picks. Critic loss mean[((Q_k - y) w)²]: w inside
the square as their code, so the squared error is weighted by w² (the paper's objective, in its form
β / Var, weights it by w once); --no-exp-weight takes w = clamp(β / Var, 0, 1); q_penalty adds
q_penalty · relu(Q_k) · Var (0 in the launcher). Actor: BEAR's α (MMD - ε) - w_π min_k Q̄_k(s, a_1) at the
first MMD sample, w_π = clamp(exp(-β Σ_k Var_k(s, a_1)), 0, 1) (--var-pi, the launcher's default; the
trainer's own default is off). Their launcher's BEAR part: gaussian kernel with σ = 20 (σ, not σ², divides,
as bear.py), 4 MMD samples, ε = 0.07, 40,000 warm-up updates on the MMD alone, log α from 0 (lr 1e-3,
clamped to [-5, 10]); VAE 750-750, latent 2|A|, KL weight 0.5, lr 3e-4; actor lr 1e-4, Q lr 3e-4, τ 0.005,
batch 256; acting takes the best of 100 actions of π(s) by the first Q-network's mean over the passes.
1M updates by default, as bear.py; their launcher runs 3000 epochs of 1000 (3M).
Deviations: one power-iteration step of the spectral norm per update for the Q-networks (theirs: one per
training pass) and one for the targets, none when acting (eval mode, as theirs); layers start like nn.Linear,
not rlkit's fan-in init with biases 0.1; one backward pass for all losses, as bear.py (theirs steps the VAE
before its MMD samples); no --use_exp_penalty; dropout masks from 16-bit random integers (p to 1/65536).

Example:
    python algorithms/uwac.py --dataset shipped/hopper-medium-replay --num-updates 50000 --warmup-updates 10000

Logged (tensorboard, in the run directory):
    losses/vae_loss             the VAE's reconstruction error plus 0.5 x its KL term
    losses/critic_loss          weighted squared TD error (plus the Q penalty), summed over the ensemble
    losses/actor_loss           α (MMD - ε) - w_π min_k Q̄_k(s, a), a ~ π(s) (the first term alone in the warm-up)
    losses/mmd                  mean MMD between the actor's and the VAE's actions at the minibatch's states
    charts/alpha                the Lagrange multiplier α (before this step's update)
    values/q_mean               mean Q(s, a) of the ensemble on the minibatch's (s, a) (one dropout pass)
    values/target_variance      mean Var(s') of the targets
    values/critic_weight        mean w of the TD loss
    eval/return                 mean return of the evaluation episodes
    eval/normalized_score       their mean D4RL normalised score
    charts/updates_per_second   updates per second of training time (evaluation excluded)
"""

import contextlib
import copy
import ctypes
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
    dataset: str = "hopper-medium-v2"
    """D4RL name, Minari id, .hdf5 path or shipped/<name> (see the dataset block)"""
    seed: int = 0
    """seed of python, numpy, torch and the evaluation environments"""
    num_updates: int = 1_000_000
    """gradient updates of the VAE, the Q-networks, the actor and α (the authors' launcher: 3000 epochs of 1000)"""
    batch_size: int = 256
    """minibatch size"""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-networks"""
    hidden_dim: int = 256
    """width of the two hidden layers of the actor and the Q-networks"""
    vae_hidden_dim: int = 750
    """width of the two hidden layers of the VAE's encoder and decoder"""
    num_critics: int = 2
    """K: Q-networks in the ensemble (evaluated as one batched computation)"""
    dropout: float = 0.1
    """p of the dropout after each hidden layer of the Q-networks, on in every pass (also targets and acting)"""
    dropout_samples: int = 100
    """stochastic passes whose mean and (unbiased, so at least 2) variance are Q̄ and Var, computed as one batch"""
    spectral_norm: bool = True
    """divide each Q-network layer's weight by its largest singular value (the authors' --SN)"""
    beta: float = 0.5
    """β of the weight clamp(exp(-β Var), 0, 1)"""
    exp_weight: bool = True
    """w = clamp(exp(-β Var), 0, 1); off: clamp(β / Var, 0, 1) (the authors' --use_exp_weight)"""
    var_pi: bool = True
    """weight the actor's value term by clamp(exp(-β Σ_k Var_k(s, a)), 0, 1) too (the authors' --var_Pi)"""
    q_penalty: float = 0.0
    """coefficient of the critic's extra term relu(Q) · Var(s') (the authors' --q_penalty)"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """target smoothing coefficient τ of the target Q-networks"""
    kernel: str = "gaussian"
    """MMD kernel: "laplacian" or "gaussian" (the authors' code, both with σ, not σ², in the denominator)"""
    mmd_sigma: float = 20.0
    """σ of the MMD kernel"""
    mmd_samples: int = 4
    """actions drawn per state from the actor and from the VAE for the MMD"""
    mmd_threshold: float = 0.07
    """ε: the MMD the constraint allows (target_mmd_thresh in the authors' code)"""
    warmup_updates: int = 40_000
    """first updates in which the actor minimises the MMD term alone, without Q"""
    lmbda: float = 0.75
    """λ of the soft clipped double-Q target: λ min_k + (1 - λ) max_k over the ensemble"""
    num_target_actions: int = 10
    """actions drawn from π(s') for the target, of which the best is taken"""
    num_eval_actions: int = 100
    """actions drawn from π(s) when acting, of which the one the first Q-network's mean rates highest is taken"""
    normalize_observations: bool = False
    """standardise observations with the dataset's mean and std (the authors' code does not)"""
    eval_every: int = 5_000
    """updates between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation (vectorised environment)"""
    checkpoint_every: int = 50_000
    """updates between checkpoints that --resume continues from"""
    log_every: int = 1_000
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


# Ranges of this method's own settings, checked with the config block's general rules before anything runs.
LIMITS = {"mmd_sigma": "(0, inf)", "mmd_threshold": "[0, inf)", "warmup_updates": "[0, inf)", "lmbda": "[0, 1]"}
LIMITS |= {"dropout": "[0, 1)", "dropout_samples": "[2, inf)", "beta": "(0, inf)", "q_penalty": "[0, inf)"}
KERNELS = ("laplacian", "gaussian")
# fixed in the authors' code too: the VAE's lr and KL weight, log α's lr and clamp
VAE_LR, KL_WEIGHT, ALPHA_LR, LOG_ALPHA_MIN, LOG_ALPHA_MAX = 3e-4, 0.5, 1e-3, -5.0, 10.0


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    hidden = (nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
    return nn.Sequential(*hidden, nn.Linear(hidden_dim, out_dim))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy rescaled to the action box; log σ depends on the state, clipped to [-5, 2]."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.net = mlp(obs_dim, hidden_dim, 2 * act_dim)  # mean and log σ of the Gaussian before the tanh
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`num` reparameterised actions per state, [batch, num, act_dim], and their values before the tanh."""
        mean, log_std = self.net(obs).unsqueeze(1).chunk(2, -1)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        raw = mean + log_std.exp() * torch.randn(mean.shape[0], num, mean.shape[2], device=mean.device)
        return torch.tanh(raw) * self.action_scale + self.action_bias, raw


class VAE(nn.Module):
    """BCQ's conditional VAE of the behaviour policy: encoder q(z | s, a), decoder a = D(s, z), latent 2|A|."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.latent_dim = 2 * act_dim
        self.encoder = mlp(obs_dim + act_dim, hidden_dim, 2 * self.latent_dim)  # mean and log σ of q(z | s, a)
        self.decoder = mlp(obs_dim + self.latent_dim, hidden_dim, act_dim)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reconstruction of `actions` through a sampled z, and the mean and σ of q(z | s, a)."""
        mean, log_std = self.encoder(torch.cat([obs, actions], -1)).chunk(2, -1)
        std = log_std.clamp(-4.0, 15.0).exp()  # the clamp of BCQ's and the authors' VAE
        raw = self.decoder(torch.cat([obs, mean + std * torch.randn_like(std)], -1))
        return torch.tanh(raw) * self.action_scale + self.action_bias, mean, std

    def sample(self, obs: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`num` actions per state [B, num, act_dim] from z ~ N(0, 1) clipped to ±0.5 (BCQ), and their raw decoding."""
        z = torch.randn(obs.shape[0], num, self.latent_dim, device=obs.device).clamp(-0.5, 0.5)
        raw = self.decoder(torch.cat([obs.unsqueeze(1).expand(-1, num, -1), z], -1))
        return torch.tanh(raw) * self.action_scale + self.action_bias, raw


class DropoutCritic(nn.Module):
    """K Q-networks of 2 hidden layers as one batched computation, dropout after each hidden layer in every pass."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, members: int, p: float, passes: int, spectral: bool):
        super().__init__()
        sizes = (obs_dim + act_dim, hidden, hidden, 1)
        self.layers = nn.ModuleList(EnsembleLinear(i, o, members) for i, o in zip(sizes[:-1], sizes[1:]))
        self.p, self.passes, self.spectral = p, passes, spectral
        for n, out_dim in enumerate(sizes[1:]):  # the power iteration's estimates of the left singular vectors
            self.register_buffer(f"u{n}", F.normalize(torch.randn(members, 1, out_dim), dim=-1))

    def weights(self, power_iteration: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (weight [K, in, out], bias) for the passes of one update; spectral norm divides W by σ = v W u
        as torch's spectral_norm per member, u, v from one power-iteration step (none if off) and held fixed."""
        out = []
        for n, layer in enumerate(self.layers):
            w, u = layer.weight, getattr(self, f"u{n}")
            if self.spectral:
                v = F.normalize(u @ w.detach().transpose(1, 2), dim=-1)  # [K, 1, in]
                if power_iteration:
                    u.copy_(F.normalize(v @ w.detach(), dim=-1))
                w = w / (v @ w * u.clone()).sum(-1, keepdim=True)  # σ: [K, 1, 1]
            out.append((w, layer.bias))
        return out

    def forward(self, obs: torch.Tensor, action: torch.Tensor, weights: list, passes: int = 1) -> torch.Tensor:
        """`passes` stochastic passes of each member at each (s, a), [K, batch * passes]; layer 1 once per row."""
        (w0, b0), (w1, b1), (w2, b2) = weights
        x = torch.relu(torch.baddbmm(b0, torch.cat([obs, action], -1).expand(w0.shape[0], -1, -1), w0)).unsqueeze(2)
        x = torch.where(self.dropped(x.shape[:2] + (passes, x.shape[-1]), x.device), 0.0, x).flatten(1, 2)
        x = torch.baddbmm(b1, x, w1 / (1.0 - self.p)).relu_()  # inverted dropout's 1 / (1 - p) on the weights
        x = torch.where(self.dropped(x.shape, x.device), 0.0, x)  # the authors' F.dropout: on in training and eval
        return torch.baddbmm(b2, x, w2 / (1.0 - self.p)).squeeze(-1)

    def dropped(self, shape: tuple, device: torch.device) -> torch.Tensor:
        """True with probability p (to 1/65536): 16-bit lanes of random int64s, 2.5x faster than F.dropout on CPU."""
        bits = torch.empty((math.prod(shape) + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
        return bits.view(torch.int16)[: math.prod(shape)].view(shape) < round(self.p * 65536) - 32768

    def mc(self, obs: torch.Tensor, actions: torch.Tensor, weights: list) -> tuple[torch.Tensor, ...]:
        """Mean and unbiased variance over the passes: obs [B, d], actions [B, N, d_a] -> [K, B, N]."""
        batch, n = actions.shape[:2]  # on CPU in blocks of (s, a) whose activations, 4 MB, stay in cache (2x faster)
        rows = max(1, 2**20 // (self.passes * weights[1][1].numel())) if obs.device.type == "cpu" else batch * n
        pairs = zip(obs.repeat_interleave(n, 0).split(rows), actions.flatten(0, 1).split(rows))
        q = torch.cat([self(o, a, weights, self.passes) for o, a in pairs], 1).unflatten(1, (batch, n, -1))
        return q.mean(-1), q.var(-1)


def uncertainty_weight(variance: torch.Tensor, beta: float, exp_weight: bool) -> torch.Tensor:
    """w = clamp(exp(-β Var), 0, 1), or clamp(β / Var, 0, 1) (the authors' _get_weight)."""
    return (torch.exp(-beta * variance) if exp_weight else beta / variance).clamp(0.0, 1.0)


def critic_loss_fn(q, target_q, w, target_var, q_penalty: float) -> torch.Tensor:
    """Σ_k mean[((Q_k - y) w)² + q_penalty relu(Q_k) Var]: w inside the square as the authors', so w² on the error."""
    return (((q - target_q) * w) ** 2 + q_penalty * torch.relu(q) * target_var).mean(-1).sum()


def actor_value(critic, weights, obs, action, beta: float, exp_weight: bool, var_pi: bool) -> torch.Tensor:
    """w_π min_k Q̄_k(s, a) [B], the Q-networks' weights detached (dQ/da only) and w_π held fixed (1 if not var_pi)."""
    q, var = critic.mc(obs, action.unsqueeze(1), [(wk.detach(), bk.detach()) for wk, bk in weights])
    w_pi = uncertainty_weight(var.sum(0).detach(), beta, exp_weight) if var_pi else 1.0  # no_grad, as the authors
    return (w_pi * q.min(0).values)[:, 0]


def vae_loss_fn(vae: VAE, obs: torch.Tensor, actions: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Reconstruction error plus kl_weight x KL(q(z | s, a) || N(0, 1)), both averaged over elements (BCQ's)."""
    recon, mean, std = vae(obs, actions)
    kl = -0.5 * (1 + torch.log(std**2) - mean**2 - std**2).mean()
    return ((recon - actions) ** 2).mean() + kl_weight * kl


def mmd(x: torch.Tensor, y: torch.Tensor, sigma: float, kernel: str) -> torch.Tensor:
    """Sampled MMD of the action sets x [B, n, d], y [B, m, d] of each state -> [B], as the authors: sqrt(mean k(x, x')
    + mean k(y, y') - 2 mean k(x, y) + 1e-6) over all pairs, k = exp(-Σ_d |Δ_d| / 2σ) or exp(-Σ_d Δ_d² / 2σ)."""

    def k(a, b):
        diff = a.unsqueeze(2) - b.unsqueeze(1)  # [B, n, m, d]
        dist = diff.abs().sum(-1) if kernel == "laplacian" else diff.square().sum(-1)
        return torch.exp(-dist / (2.0 * sigma)).mean((1, 2))

    return (k(x, x) + k(y, y) - 2.0 * k(x, y) + 1e-6).sqrt()


def lagrange_losses(mmd_value: torch.Tensor, log_alpha: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, ...]:
    """The actor's constraint term α (MMD - ε) with α = exp(log α) held fixed, and α's own loss -α (MMD - ε) with
    the MMD held fixed: gradient descent on it raises log α while the MMD exceeds ε and lowers it below."""
    alpha = log_alpha.exp()
    return alpha.detach() * (mmd_value - epsilon), -(alpha * (mmd_value.detach() - epsilon)).mean()


def uncertain_target(next_q, next_var, rewards, terminals, gamma: float, lmbda: float) -> tuple[torch.Tensor, ...]:
    """r + γ (1 - d) max_j [λ min_k + (1 - λ) max_k] Q̄'_k(s', a_j), Var(s') = max_j Σ_k Var'_k(s', a_j): -> two [B]."""
    mixed = lmbda * next_q.min(0).values + (1.0 - lmbda) * next_q.max(0).values
    return rewards + gamma * (1.0 - terminals) * mixed.max(-1).values, next_var.sum(0).max(-1).values


def best_of(actions: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The candidate that q rates highest at each state: actions [B, N, act_dim], q [B, N] -> [B, act_dim]."""
    idx = q.argmax(-1)[:, None, None].expand(-1, 1, actions.shape[-1])
    return actions.gather(1, idx).squeeze(1)


def main():
    args = parse_args(Args, LIMITS, {"kernel": KERNELS})
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, device)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    obs_mean, obs_std = standardize_observations(data, args.normalize_observations)
    with data.make_env() as probe:
        low, high = probe.action_space.low, probe.action_space.high
    actor = Actor(obs_dim, act_dim, args.hidden_dim, low, high).to(device)
    vae = VAE(obs_dim, act_dim, args.vae_hidden_dim, low, high).to(device)
    critic = DropoutCritic(
        obs_dim, act_dim, args.hidden_dim, args.num_critics, args.dropout, args.dropout_samples, args.spectral_norm
    ).to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)
    vae_opt = torch.optim.Adam(vae.parameters(), lr=VAE_LR, fused=True)
    log_alpha = torch.zeros((), device=device, requires_grad=True)  # α = 1 at the start (the authors' code)
    alpha_opt = torch.optim.Adam([log_alpha], lr=ALPHA_LR, fused=True)

    def update(batch, warm_up: bool):
        obs, actions, rewards, next_obs, terminals = batch
        alpha = log_alpha.detach().exp()  # logged: the value before this step's update
        vae_loss = vae_loss_fn(vae, obs, actions, KL_WEIGHT)
        with torch.no_grad():
            next_actions, _ = actor(next_obs, args.num_target_actions)
            next_q, next_var = critic_target.mc(next_obs, next_actions, critic_target.weights(True))
            target_q, target_var = uncertain_target(next_q, next_var, rewards, terminals, args.gamma, args.lmbda)
            w = uncertainty_weight(target_var, args.beta, args.exp_weight)  # of each TD error
            _, vae_raw = vae.sample(obs, args.mmd_samples)
        weights = critic.weights(True)
        q = critic(obs, actions, weights)  # one stochastic pass (their qf.sample); w inside the square, as theirs
        critic_loss = critic_loss_fn(q, target_q, w, target_var, args.q_penalty)
        pi, pi_raw = actor(obs, args.mmd_samples)
        mmd_value = mmd(pi_raw, vae_raw, args.mmd_sigma, args.kernel)  # [B], before the tanh as the authors
        constraint, alpha_loss = lagrange_losses(mmd_value, log_alpha, args.mmd_threshold)
        # in the warm-up the actor first moves onto the data's support, whatever Q says
        value = 0.0 if warm_up else actor_value(critic, weights, obs, pi[:, 0], args.beta, args.exp_weight, args.var_pi)
        actor_loss = (constraint - value).mean()

        # the four losses share no parameters: one backward pass, then every optimiser steps
        for opt in (vae_opt, critic_opt, actor_opt, alpha_opt):
            opt.zero_grad(set_to_none=True)
        (vae_loss + critic_loss + actor_loss + alpha_loss).backward()
        for opt in (vae_opt, critic_opt, actor_opt, alpha_opt):
            opt.step()
        with torch.no_grad():
            log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
            for p, tp in zip(critic.parameters(), critic_target.parameters()):  # Polyak averaging
                tp.lerp_(p, args.tau)
        return {
            "losses/vae_loss": vae_loss.detach(),
            "losses/critic_loss": critic_loss.detach(),
            "losses/actor_loss": actor_loss.detach(),
            "losses/mmd": mmd_value.detach().mean(),
            "charts/alpha": alpha,
            "values/q_mean": q.detach().mean(),
            "values/target_variance": target_var.mean(),
            "values/critic_weight": w.mean(),
        }

    if args.compile:
        update = torch.compile(update)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        obs = (torch.as_tensor(obs, dtype=torch.float32, device=device) - obs_mean) / obs_std
        candidates, _ = actor(obs, args.num_eval_actions)
        first = [(wk[:1], bk[:1]) for wk, bk in critic.weights(False)]  # the first Q-network, as the authors
        return best_of(candidates, critic.mc(obs, candidates, first)[0][0]).cpu().numpy()

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {"actor": actor, "vae": vae, "critic": critic, "critic_target": critic_target}
    trained |= {"actor_opt": actor_opt, "vae_opt": vae_opt, "critic_opt": critic_opt, "alpha_opt": alpha_opt}
    step, history, clock_state = 0, [], None
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state = extra["history"], extra.get("clock")
        log_alpha.data.copy_(extra["log_alpha"])
    writer = make_writer(args, run_dir, step)

    bar = tqdm(range(step + 1, args.num_updates + 1), desc=SCRIPT_NAME, mininterval=2)
    clock = TrainClock(clock_state)
    for step in bar:
        logs = update(data.sample(args.batch_size), warm_up=step <= args.warmup_updates)
        clock.tick()

        if step % args.log_every == 0:
            log_scalars(writer, logs, step)
        if step % args.eval_every == 0 or step == args.num_updates:
            with clock.paused():
                returns = evaluate(data.make_env, act, args.eval_episodes, seed=args.seed + step)
                score = record_evaluation(run_dir, writer, history, step, returns, data, args.seed, clock)
                bar.set_postfix(score=score)
        if step % args.checkpoint_every == 0 or step == args.num_updates:
            with clock.paused():
                extra = {"history": history, "clock": clock.state_dict(), "log_alpha": log_alpha.detach().cpu()}
                extra |= {"obs_mean": obs_mean.cpu(), "obs_std": obs_std.cpu()}
                save_checkpoint(checkpoint_path, step, trained, extra)

    writer.close()
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


# ---- shared: normalization ----
def observation_stats(data: OfflineData, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the dataset's observations (eps keeps constant features finite)."""
    return data.observations.mean(0), data.observations.std(0) + eps


def normalize_observations(data: OfflineData, mean: torch.Tensor, std: torch.Tensor) -> None:
    data.observations = (data.observations - mean) / std
    data.next_observations = (data.next_observations - mean) / std


def standardize_observations(data: OfflineData, enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise the data's observations in place when `enabled`; returns the mean and std that evaluation applies
    to the environment's observations (0 and 1 when not enabled)."""
    dim, device = data.observations.shape[1], data.observations.device
    stats = observation_stats(data) if enabled else (torch.zeros(dim, device=device), torch.ones(dim, device=device))
    normalize_observations(data, *stats)
    return stats


def reward_scaling_rule(data: OfflineData) -> str:
    """The reward scaling "auto" stands for: the dataset file's own (attribute reward_scaling) when it names one, else
    the rule of the official IQL code (ikostrikov/implicit_q_learning, train_offline.py, commit 09d7002), which CORL's
    modify_reward repeats, by the task the dataset's name or environment id names: return_range on the locomotion
    tasks halfcheetah, hopper and walker2d, minus_one on AntMaze, none on anything else."""
    if data.reward_scaling is not None:
        return data.reward_scaling
    task = f"{data.name} {data.env_id}".lower()
    if "antmaze" in task:
        return "minus_one"
    return "return_range" if any(t in task for t in ("halfcheetah", "hopper", "walker2d")) else "none"


def scale_rewards(data: OfflineData, rule: str) -> str:
    """Apply a rule of REWARD_SCALINGS, or "auto" (reward_scaling_rule), in place, and return the rule applied.
    return_range: r * 1000 / (max - min episode return of the data), so that a temperature means the same on every
    dataset (the episodes are the loader's: one cut short by the end of the data is left out); minus_one: r - 1.
    Raises DatasetError where return_range is undefined."""
    rule = reward_scaling_rule(data) if rule == "auto" else rule
    if rule == "return_range":
        returns = data.episode_returns
        spread = float(np.max(returns) - np.min(returns)) if len(returns) else 0.0
        if not spread > 0:
            raise DatasetError(
                f"{data.name}'s {len(returns)} episode(s) all have the same return, so the reward scale 1000 / (max - "
                "min episode return) is undefined; choose another reward scaling (e.g. --reward-scaling none)"
            )
        data.rewards = data.rewards * (1000.0 / spread)
    elif rule == "minus_one":
        data.rewards = data.rewards - 1.0
    return rule


# ---- end shared: normalization ----


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
