"""EDAC: ensemble-diversified actor-critic, for offline RL.

An, Moon, Kim and Song, "Uncertainty-Based Offline Reinforcement Learning with Diversified
Q-Ensemble", NeurIPS 2021, https://arxiv.org/abs/2110.01548

SAC-N (soft actor-critic whose Bellman target and actor use the minimum over N Q-functions)
needs hundreds of Q-functions on some datasets, because the members' gradients with respect
to the action tend to align: then the ensemble disagrees little along the directions the
policy moves in, and the minimum penalises out-of-distribution actions too little. EDAC adds
to the critics' loss η times the ensemble similarity (Section 4)

    ES(s, a) = 1/(N-1) Σ_{i≠j} <∇_a Q_i(s, a), ∇_a Q_j(s, a)> / (|∇_a Q_i| |∇_a Q_j|)

on the dataset's (s, a), which spreads those gradients apart, so that a tenth of the
members suffices. The per-member action gradients come from one autograd pass over the
batched ensemble, and their cosine similarities from one batched Gram matrix.

Variant: ES over all N members, as the authors' code has computed it since commit c21d8aa
(snu-mllab/EDAC, 2022-01-03) and as CORL does (corl-team/CORL, algorithms/offline/edac.py),
whose scores benchmarks/published_scores.yaml quotes. The paper's own numbers came from the code
at its release (commit 7f62728, 2021-10-15), which summed over k = min(N, |A|) members drawn at
random each update and divided by k - 1: --diversity-members k reproduces that (k = |A|: 3 on
Hopper, 6 on HalfCheetah and Walker2d, all below the paper's N).

`--online-steps N` fine-tunes online after the offline updates (SAC-N's rule, online_replay's docstring); `--from-run
RUN_DIR` starts that phase from a saved offline run.

Example:
    python algorithms/edac.py --dataset shipped/hopper-medium-replay --num-updates 50000

Logged (tensorboard, in the run directory):
    losses/critic_loss          squared TD error of the N critics, summed over members, plus η ES
    values/q_mean               mean Q(s, a) of the N critics on the minibatch's (s, a)
    losses/actor_loss           the actor's loss E[α log π(a|s) - min_j Q_j(s, a)], a ~ π(s)
    charts/alpha                SAC's temperature α (after this step's update)
    charts/entropy              the policy's entropy estimate -E[log π(a|s)]
    values/q_std_policy         std of Q(s, a) over the N critics at the policy's actions, averaged over the batch
    losses/ensemble_similarity  the ensemble similarity ES(s, a) on the data (before the weight η; 0 when η = 0)
    eval/return                 mean return of the evaluation episodes
    eval/normalized_score       their mean D4RL normalised score
    charts/updates_per_second   updates per second of training time (evaluation excluded)
"""

import contextlib
import copy
import ctypes
import json
import os
import pickle
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
    dataset: str = "halfcheetah-medium-v2"
    """D4RL name, Minari id, .hdf5 path or shipped/<name> (see the dataset block)"""
    seed: int = 0
    """seed of python, numpy, torch and the evaluation environments"""
    num_updates: int = 3_000_000
    """gradient updates of actor, critics and temperature (3000 epochs of 1000 in the paper)"""
    batch_size: int = 256
    """minibatch size"""
    num_critics: int = 10
    """N, the number of Q-functions (the paper's table: 10, and 50 on hopper)"""
    eta: float = 1.0
    """η, weight of the ensemble similarity in the critics' loss (Section 4; 1 or 5 per dataset, 0 is SAC-N)"""
    diversity_members: int = 0
    """k: 0 takes ES over all N members (the authors' code since c21d8aa, CORL); k >= 2 over k members drawn anew
    each update without replacement, divided by k - 1 (the code at the paper's release, 7f62728, with k =
    min(N, |A|))"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor"""
    critic_lr: float = 3e-4
    """Adam learning rate of the N critics"""
    alpha_lr: float = 3e-4
    """Adam learning rate of log α"""
    hidden_dim: int = 256
    """width of the three hidden layers of actor and critics"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """target smoothing coefficient τ"""
    normalize_observations: bool = False
    """standardise observations with the dataset's statistics (the paper does not)"""
    eval_every: int = 5_000
    """updates between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation (vectorised environment, deterministic policy)"""
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
    """torch.compile the update step (the critics' loss, which needs a double backward, stays eager)"""
    runs_dir: str = "runs"
    """parent folder of the run directory"""
    track: bool = False
    """also log to Weights & Biases (needs wandb)"""
    config: Optional[str] = None
    """YAML file whose keys override these defaults (the command line still wins)"""
    online_steps: int = 0
    """environment steps of online fine-tuning after the offline updates, one update each (0: offline only)"""
    from_run: Optional[str] = None
    """run directory of an offline run of this script: its final agent starts the online phase (no offline updates)"""


# Ranges of this method's own settings, checked with the general rules of the config block
# (counts >= 1, learning rates > 0, γ in (0, 1], fractions in [0, 1]) before anything runs.
LIMITS = {"eta": "[0, inf)"}


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy rescaled to the action box; 3x256 trunk initialised as in EDAC's code
    (snu-mllab/EDAC, lifelong_rl/policies/models/tanh_gaussian_policy.py)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, action_low: np.ndarray, action_high: np.ndarray):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(obs_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
        )
        self.mean = nn.Linear(hidden_dim, act_dim)
        self.log_std = nn.Linear(hidden_dim, act_dim)
        for layer in self.trunk[::2]:
            nn.init.constant_(layer.bias, 0.1)
        for head in (self.mean, self.log_std):  # a near-zero mean and unit std at the start
            nn.init.uniform_(head.weight, -1e-3, 1e-3)
            nn.init.uniform_(head.bias, -1e-3, 1e-3)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, deterministic: bool = False):
        """Action and its log-probability (Appendix C of the SAC paper: tanh change of variables)."""
        h = self.trunk(obs)
        mean = self.mean(h)
        if deterministic:
            return torch.tanh(mean) * self.action_scale + self.action_bias, None
        log_std = self.log_std(h).clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        gauss_logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        # log(1 - tanh(u)^2) in a stable form: 2 (log 2 - u - softplus(-2u))
        squash = (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        log_prob = gauss_logp - squash - torch.log(self.action_scale).sum()
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob


class EnsembleCritic(nn.Module):
    """N Q-functions as one batched ensemble: Q(s, a) has shape [N, batch]. 3x256, initialised as in EDAC's code
    (snu-mllab/EDAC, lifelong_rl/models/networks.py)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, members: int):
        super().__init__()
        self.members = members
        self.net = nn.Sequential(
            EnsembleLinear(obs_dim + act_dim, hidden_dim, members),
            nn.ReLU(),
            EnsembleLinear(hidden_dim, hidden_dim, members),
            nn.ReLU(),
            EnsembleLinear(hidden_dim, hidden_dim, members),
            nn.ReLU(),
            EnsembleLinear(hidden_dim, 1, members),
        )
        with torch.no_grad():
            for layer in self.net[::2]:
                layer.bias.fill_(0.1)
            self.net[-1].weight.uniform_(-3e-3, 3e-3)
            self.net[-1].bias.uniform_(-3e-3, 3e-3)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)

    def frozen(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q(s, a) of every member with the weights detached: the actor loss needs dQ/da,
        not the critics' weight gradients (a third less work than `forward` + backward)."""
        x = torch.cat([obs, action], -1)
        x = x.expand(self.net[0].weight.shape[0], *x.shape)
        for layer in self.net:
            x = (
                torch.baddbmm(layer.bias.detach(), x, layer.weight.detach())
                if isinstance(layer, EnsembleLinear)
                else layer(x)
            )
        return x.squeeze(-1)


def soft_target(rewards, terminals, next_q, next_logp, gamma: float, alpha):
    """Section 3: y = r + γ (1 - d) (min_j Q'_j(s', a') - α log π(a'|s')), a' ~ π(s'); next_q is [N, batch]."""
    return rewards + gamma * (1.0 - terminals) * (next_q.min(0).values - alpha * next_logp)


def ensemble_similarity(action_grads: torch.Tensor) -> torch.Tensor:
    """Section 4: 1/(N-1) Σ_{i≠j} cos(∇_a Q_i, ∇_a Q_j), averaged over the batch; action_grads is [N, batch, act_dim].

    The sum runs over ordered pairs (each pair counts twice), as in the paper and its code (snu-mllab/EDAC,
    lifelong_rl/trainers/q_learning/sac.py).
    """
    members = action_grads.shape[0]
    unit = action_grads / (action_grads.norm(dim=-1, keepdim=True) + 1e-10)
    unit = unit.transpose(0, 1)  # [batch, N, act_dim]
    gram = torch.bmm(unit, unit.transpose(1, 2))  # [batch, N, N] cosine similarities
    off_diagonal = gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)
    return off_diagonal.mean() / (members - 1)


@torch.compiler.disable  # ES differentiates ∇_a Q again, which torch.compile cannot: under --compile this stays eager
def critic_loss_fn(critic, critic_target, actor, batch, gamma: float, alpha, eta: float, diversity_members: int = 0):
    """Squared TD error of every member against the shared target, summed over members (SAC-N),
    plus η ES(s, a) on the same forward pass (Section 4), over all members or `diversity_members` random ones."""
    obs, actions, rewards, next_obs, terminals = batch
    with torch.no_grad():
        next_actions, next_logp = actor(next_obs)
        target_q = soft_target(rewards, terminals, critic_target(next_obs, next_actions), next_logp, gamma, alpha)
    if eta == 0:
        q = critic(obs, actions)
        return ((q - target_q) ** 2).mean(1).sum(), q.detach(), torch.zeros((), device=q.device)
    # one copy of the actions per member, so that one backward pass gives every member's ∇_a Q_i
    actions = actions.expand(critic.members, *actions.shape).clone().requires_grad_(True)
    q = critic(obs.expand(critic.members, *obs.shape), actions)
    (action_grads,) = torch.autograd.grad(
        q.sum(), actions, create_graph=True
    )  # kept in the graph: ES trains the critics
    if 0 < diversity_members < critic.members:  # the release code's subset (snu-mllab/EDAC 7f62728, sac.py)
        action_grads = action_grads[torch.randperm(critic.members, device=q.device)[:diversity_members]]
    similarity = ensemble_similarity(action_grads)
    return ((q - target_q) ** 2).mean(1).sum() + eta * similarity, q.detach(), similarity.detach()


def actor_loss_fn(actor, critic, obs, alpha):
    """Section 3: minimise α log π(a|s) - min_j Q_j(s, a), a ~ π(s) (reparameterised)."""
    pi, logp = actor(obs)
    q = critic.frozen(obs, pi)
    return (alpha * logp - q.min(0).values).mean(), logp.detach(), q.detach()


def alpha_loss_fn(log_alpha, logp, target_entropy: float):
    """Temperature (SAC, Eq. 18): raise α when the entropy -log π is below the target, lower it above."""
    return -(log_alpha * (logp + target_entropy)).mean()


def online_replay(data, capacity: int) -> "ReplayBuffer":
    """EDAC online (--online-steps): the paper fine-tunes nothing, so the rule is SAC-N's and AWAC's: the whole dataset
    stays in the replay, every online transition joins it, batches are drawn uniformly from both, and the update is
    the offline one, unchanged (N critics, their minimum, the diversity term with the same η)."""
    replay = ReplayBuffer(
        len(data.rewards) + capacity, data.observations.shape[1], data.actions.shape[1], data.rewards.device
    )
    replay.add(*dataset_rows(data))
    return replay


def main():
    args = parse_args(Args, LIMITS)
    if args.num_critics < 2:
        sys.exit(
            f"error: --num-critics {args.num_critics}: the ensemble needs at least 2 Q-functions (2 is SAC's clipped "
            "double Q)"
        )
    if args.diversity_members == 1 or args.diversity_members > args.num_critics:
        sys.exit(
            f"error: --diversity-members {args.diversity_members}: ES needs at least 2 of the {args.num_critics} "
            "members (or 0 for all of them)"
        )
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, device)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    obs_mean, obs_std = standardize_observations(data, args.normalize_observations)
    probe = data.make_env()
    actor = Actor(obs_dim, act_dim, args.hidden_dim, probe.action_space.low, probe.action_space.high).to(device)
    probe.close()
    critic = EnsembleCritic(obs_dim, act_dim, args.hidden_dim, args.num_critics).to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    log_alpha = torch.zeros((), device=device, requires_grad=True)  # α = 1 at the start
    target_entropy = -float(act_dim)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=args.actor_lr, fused=True)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr, fused=True)
    alpha_opt = torch.optim.Adam([log_alpha], lr=args.alpha_lr, fused=True)

    def update(batch):
        # actor and temperature first, then the critics, the order of the paper's code (snu-mllab/EDAC,
        # lifelong_rl/trainers/q_learning/sac.py); one policy sample serves both losses, whose gradients are
        # disjoint, so one backward pass does
        actor_loss, logp, q_pi = actor_loss_fn(actor, critic, batch[0], log_alpha.exp().detach())
        alpha_loss = alpha_loss_fn(log_alpha, logp, target_entropy)
        actor_opt.zero_grad(set_to_none=True)
        alpha_opt.zero_grad(set_to_none=True)
        (actor_loss + alpha_loss).backward()
        actor_opt.step()
        alpha_opt.step()

        alpha = log_alpha.exp().detach()
        critic_loss, q, similarity = critic_loss_fn(
            critic, critic_target, actor, batch, args.gamma, alpha, args.eta, args.diversity_members
        )
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()
        with torch.no_grad():  # Polyak averaging of the target critics
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.lerp_(p, args.tau)
        return {
            "losses/critic_loss": critic_loss.detach(),
            "values/q_mean": q.mean(),
            "losses/actor_loss": actor_loss.detach(),
            "charts/alpha": alpha,
            "charts/entropy": -logp.mean(),
            "values/q_std_policy": q_pi.std(0).mean(),
            "losses/ensemble_similarity": similarity,
        }

    if args.compile:
        update = torch.compile(update)

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs = (torch.as_tensor(obs, dtype=torch.float32, device=device) - obs_mean) / obs_std
        return actor(obs, deterministic=deterministic)[0].cpu().numpy()

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {
        "actor": actor,
        "critic": critic,
        "critic_target": critic_target,
        "actor_opt": actor_opt,
        "critic_opt": critic_opt,
        "alpha_opt": alpha_opt,
    }
    step, history, clock_state, extra = 0, [], None, {}
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state = extra["history"], extra.get("clock")
    elif args.from_run:  # the online phase starts where that offline run ended
        step, extra = load_offline_run(args.from_run, args.dataset, trained)
        history, args.num_updates = extra["history"], step
    if extra:
        with torch.no_grad():
            log_alpha.copy_(extra["log_alpha"])
    writer = make_writer(args, run_dir, step)

    total = args.num_updates + args.online_steps
    replay = collector = None  # the online phase's replay and environment, made at the switch
    if extra.get("collector"):
        replay, collector = online_replay(data, args.online_steps), OnlineCollector(data.make_env, args.seed)
        replay.load_state_dict(extra["replay"])
        collector.load_state_dict(extra["collector"])
    bar = tqdm(range(step + 1, total + 1), desc=SCRIPT_NAME, mininterval=2)
    clock = TrainClock(clock_state)
    for step in bar:
        if step > args.num_updates:  # online: one environment step with the stochastic policy, one update
            if collector is None:
                replay, collector = online_replay(data, args.online_steps), OnlineCollector(data.make_env, args.seed)
            transition = collector.step(lambda o: act(o, deterministic=False), step)
            replay.add(*as_rows(transition, device, obs_mean, obs_std))
            batch = replay.sample(args.batch_size)
        else:
            batch = data.sample(args.batch_size)
        logs = update(batch)
        clock.tick()

        if step % args.log_every == 0:
            log_scalars(writer, logs, step)
        if step % args.eval_every == 0 or step in (args.num_updates, total):
            with clock.paused():
                returns = evaluate(data.make_env, act, args.eval_episodes, seed=args.seed + step)
                bar.set_postfix(
                    score=record_evaluation(run_dir, writer, history, step, returns, data, args.seed, clock)
                )
                if collector is not None:
                    record_online(run_dir, writer, history, collector, data, args.num_updates)
        if step % args.checkpoint_every == 0 or step in (args.num_updates, total):
            with clock.paused():
                save_checkpoint(
                    checkpoint_path,
                    step,
                    trained,
                    {
                        "history": history,
                        "clock": clock.state_dict(),
                        "log_alpha": log_alpha.detach().cpu(),
                        "obs_mean": obs_mean.cpu(),
                        "obs_std": obs_std.cpu(),
                        "replay": replay.state_dict() if replay is not None else None,
                        "collector": collector.state_dict() if collector is not None else None,
                    },
                )

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


# ---- shared: replay_buffer ----
class ReplayBuffer:
    """A ring buffer of transitions kept as tensors on the device (model rollouts, online data)."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.data = {
            "observations": torch.zeros(capacity, obs_dim, device=device),
            "actions": torch.zeros(capacity, act_dim, device=device),
            "rewards": torch.zeros(capacity, device=device),
            "next_observations": torch.zeros(capacity, obs_dim, device=device),
            "terminals": torch.zeros(capacity, device=device),
        }

    def add(self, observations, actions, rewards, next_observations, terminals) -> None:
        """Append a batch; the oldest transitions are overwritten when full."""
        n = min(len(rewards), self.capacity)
        idx = (self.pos + torch.arange(n, device=rewards.device)) % self.capacity
        for key, value in zip(self.data, (observations, actions, rewards, next_observations, terminals)):
            self.data[key][idx] = value[-n:].to(self.data[key].dtype)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        idx = torch.randint(0, self.size, (batch_size,), device=self.data["rewards"].device)
        return tuple(v[idx] for v in self.data.values())

    def state_dict(self) -> dict:
        rows = {k: v[: self.size].cpu() for k, v in self.data.items()}
        return {"size": self.size, "pos": self.pos, "capacity": self.capacity, **rows}

    def load_state_dict(self, state: dict) -> None:
        """Also into a buffer of another capacity (a resume that lengthens the run): the newest rows are kept, oldest
        first, and the next row goes after them."""
        self.size, self.pos = state["size"], state["pos"]
        resized = state.get("capacity", self.capacity) != self.capacity
        for key, value in self.data.items():
            rows = state[key].roll(-self.pos, 0)[-self.capacity :] if resized else state[key]
            value[: len(rows)] = rows.to(value.device)
        if resized:
            self.size = min(self.size, self.capacity)
            self.pos = self.size % self.capacity


# ---- end shared: replay_buffer ----


# ---- shared: online ----
# Online fine-tuning after the offline phase (--online-steps): the environment the agent now acts in, its
# training episodes (the train regret beside the deterministic evaluations), and the start from a saved
# offline run (--from-run). Which replay the agent learns from, and with which rule, is the method's own.
class OnlineCollector:
    """One environment stepped with the agent's exploration policy, one transition per call.

    One environment, not a vector of them: every paper's fine-tuning makes one update per environment step,
    and an update costs far more than a step of these environments, so more environments per update would
    only change the update-to-data ratio. The environment's whole state goes into the checkpoint, so a
    resumed online phase continues the episode it was in and ends with the numbers of an uninterrupted run.
    """

    def __init__(self, make_env: Callable[[], gym.Env], seed: int):
        self.env = make_env()
        self.obs, _ = self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        self.episode_return, self.episodes = 0.0, []  # finished training episodes: (step, return)
        self.logged = 0  # how many of them tensorboard has

    def step(self, policy: Callable[[np.ndarray], np.ndarray], step: int) -> tuple[np.ndarray, ...]:
        """Act once with `policy` (a batch of one raw observation -> a batch of one action); returns the
        transition as arrays of one row (obs, action, reward, next_obs, terminal), raw as the environment gives it."""
        obs = self.obs
        action = policy(obs[None])[0]
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        self.episode_return += float(reward)
        if terminated or truncated:  # a time-limit cut is no terminal: its target still bootstraps
            self.episodes.append((step, self.episode_return))
            self.obs, _ = self.env.reset()
            self.episode_return = 0.0
        else:
            self.obs = next_obs
        return obs[None], action[None], np.array([reward]), next_obs[None], np.array([float(terminated)])

    def state_dict(self) -> dict:
        env, steps = self.env, {}
        while isinstance(env, gym.Wrapper):  # TimeLimit's step count, kept by wrapper type
            if hasattr(env, "_elapsed_steps"):
                steps[type(env).__name__] = env._elapsed_steps
            env = env.env
        raw, physics = self.env.unwrapped, None
        if hasattr(raw, "set_state") and hasattr(raw, "model"):  # a MuJoCo environment pickles as its constructor
            import mujoco

            physics = np.empty(mujoco.mj_stateSize(raw.model, mujoco.mjtState.mjSTATE_INTEGRATION))
            mujoco.mj_getState(raw.model, raw.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        return {
            "env": pickle.dumps(self.env),
            "mujoco": physics,  # time, qpos, qvel, warm start: all that the next step depends on
            "elapsed": steps,
            "rng": raw.np_random.bit_generator.state,
            "obs": self.obs,
            "episode_return": self.episode_return,
            "episodes": self.episodes,
            "logged": self.logged,
        }

    def load_state_dict(self, state: dict) -> None:
        self.env.close()
        self.env = pickle.loads(state["env"])
        if state["mujoco"] is not None:
            import mujoco

            self.env.reset()
            raw = self.env.unwrapped
            mujoco.mj_setState(raw.model, raw.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(raw.model, raw.data)
        env = self.env
        while isinstance(env, gym.Wrapper):
            if type(env).__name__ in state["elapsed"]:
                env._elapsed_steps = state["elapsed"][type(env).__name__]
            env = env.env
        self.env.unwrapped.np_random.bit_generator.state = state["rng"]
        self.obs, self.episode_return, self.episodes = state["obs"], state["episode_return"], state["episodes"]
        self.logged = state["logged"]


def dataset_rows(data: OfflineData, keep: int = 0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """The dataset's transitions (obs, action, reward, next_obs, terminal) to put into an online replay: all of them
    (keep 0), or `keep` drawn uniformly without replacement (seeded)."""
    rows = (data.observations, data.actions, data.rewards, data.next_observations, data.terminals)
    if keep <= 0 or keep >= len(data.rewards):
        return rows
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data.rewards), generator=generator)[:keep].to(data.rewards.device)
    return tuple(r[idx] for r in rows)


def as_rows(
    transition: tuple[np.ndarray, ...], device: torch.device, obs_mean, obs_std, reward_affine=(1.0, 0.0)
) -> tuple[torch.Tensor, ...]:
    """An environment transition as float tensors on the device, observations standardised as the data's and the
    reward scaled as the data's (reward_affine: (scale, shift), see online_reward_affine)."""
    obs, action, reward, next_obs, terminal = (
        torch.as_tensor(x, dtype=torch.float32, device=device) for x in transition
    )
    reward = reward * reward_affine[0] + reward_affine[1]
    return (obs - obs_mean) / obs_std, action, reward, (next_obs - obs_mean) / obs_std, terminal


def online_reward_affine(rule: str, data: OfflineData) -> tuple[float, float]:
    """The data's reward scaling (a rule that scale_rewards applied, "auto" resolved) as r * scale + shift, for the
    rewards of the online phase: return_range 1000 / (max - min episode return of the data), minus_one r - 1."""
    if rule == "return_range":
        return 1000.0 / float(np.max(data.episode_returns) - np.min(data.episode_returns)), 0.0
    return (1.0, -1.0) if rule == "minus_one" else (1.0, 0.0)


def record_online(
    run_dir: str,
    writer: SummaryWriter,
    history: list,
    collector: OnlineCollector,
    data: OfflineData,
    offline_steps: int,
) -> None:
    """Add the online phase to results.json after an evaluation that record_evaluation wrote: the phase of every
    evaluation, the training episodes' returns (the train regret: what the agent earned while it learned), and the
    offline start, the online end and the dip (the lowest online evaluation below the offline start)."""
    for step, episode_return in collector.episodes[collector.logged :]:
        writer.add_scalar("online/train_episode_return", episode_return, step)
    collector.logged = len(collector.episodes)
    scored = data.ref_min_score is not None
    score = lambda r: float(normalized_score(r, data.ref_min_score, data.ref_max_score)) if scored else float(r)
    for h in history:
        h["phase"] = "offline" if h["step"] <= offline_steps else "online"
    offline = [h for h in history if h["phase"] == "offline"]
    online = [h for h in history if h["phase"] == "online"]
    key = "normalized_score" if scored else "return"
    start = offline[-1][key] if offline else None
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    episodes = [{"step": s, "return": r, key: score(r)} for s, r in collector.episodes]
    results["evaluations"] = history
    results["online"] = {
        "offline_steps": offline_steps,
        "offline_score": start,
        "online_score": online[-1][key] if online else None,
        "dip": max(0.0, start - min(h[key] for h in online)) if online and start is not None else None,
        "train_episodes": episodes,
        "train_score": float(np.mean([e[key] for e in episodes])) if episodes else None,
    }
    write_results(run_dir, results)


def load_offline_run(run_dir: str, dataset: str, objects: dict) -> tuple[int, dict]:
    """--from-run: the final checkpoint of an offline run of this script on the same dataset, loaded into
    `objects`; returns its step (where the online phase starts) and its extra state (evaluation history, ...)."""
    config = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config):
        sys.exit(f"error: --from-run: {run_dir!r} has no config.yaml; pass the run directory of an offline run")
    with open(config) as f:
        saved = yaml.safe_load(f) or {}
    if saved.get("dataset") != dataset:
        sys.exit(
            f"error: --from-run: that run learned from {saved.get('dataset')!r}, not {dataset!r}; pass its dataset"
        )
    if saved.get("online_steps"):
        sys.exit("error: --from-run: that run already has an online phase; pass an offline run (or --resume it)")
    try:
        state = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
        for k, v in objects.items():
            # an optimizer keeps its moments but takes this run's learning rates (a state dict carries the old ones)
            rates = [g["lr"] for g in v.param_groups] if isinstance(v, torch.optim.Optimizer) else []
            v.load_state_dict(state["objects"][k])
            for group, lr in zip(v.param_groups if rates else [], rates):
                group["lr"] = lr
    except Exception as e:  # missing, truncated, of another script or of other network sizes
        reason = " ".join(str(e).split())[:200]
        sys.exit(
            f"error: --from-run: cannot load {run_dir}/checkpoint.pt ({reason}); pass an offline run of this script"
        )
    return state["step"], state["extra"]


# ---- end shared: online ----


if __name__ == "__main__":
    main()
