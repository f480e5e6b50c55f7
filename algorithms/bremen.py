"""BREMEN: behaviour-regularised model-ensemble, offline and deployment-efficient.

Matsushima, Furuta, Matsuo, Nachum, Gu. "Deployment-Efficient Reinforcement Learning via
Model-Based Offline Optimization", ICLR 2021, https://arxiv.org/abs/2006.03647
(reference code: matsuolab/BREMEN, commit e879275).

An ensemble of 5 deterministic dynamics models (2x1024 ReLU, normalised state change, L2 weight
decay 1/N, held-out early stopping) is fitted to the data; a Gaussian policy is cloned from the
data; TRPO then improves that clone on imagined rollouts, one ensemble member drawn per imagined
step, rewards and terminations from the task's known functions of (s, a, s'). Staying near the
behaviour comes from TRPO itself: every step moves the policy by at most `target_kl` (mean KL) from
where it was, and the first policy is the clone; `--kl-penalty` α adds the authors' optional
explicit value penalty r - α KL(π ‖ π̂_β). `--mode offline` fits once and optimises;
`--mode deployment` learns from scratch in K = num_updates / deploy_every deployments: collect
`deployment_steps` real steps with the current policy's noisy actions (uniformly random ones the
first time), add them to the model data (cumulative), re-fit the ensemble (warm start), clone the
latest deployment's data afresh, restart TRPO from that clone.

Choices and sources (reference code paths in matsuolab/BREMEN):
- TRPO as algos/trpo.py: surrogate E[π/π_old Â], Fisher-vector products of the mean KL, 10 conjugate
  gradient iterations with damping 0.1, the step scaled so that ½ sᵀ(F + δI)s = target_kl, 10 halvings
  of backtracking that accept an improvement above 0.1 of the linear expectation; here the line search
  also rejects a step whose mean KL exceeds 1.5 target_kl (the TRPO paper's check; `--max-kl-ratio None`
  for theirs, which has none: without it the first step from the clone measured KL 3.8 for δ 0.05);
  GAE(γ 0.99, λ 0.95), no bootstrap past a path's end, advantages standardised; the linear feature
  baseline [o, o², t, t², t³, 1] refit by ridge after each step (model/baselines.py),
  `--value-fn mlp` their 2x200 tanh network instead. Action noise in imagination and deployment is
  N(0, 0.1²) around the mean (their README's --gaussian 0.1 --const_sampling); evaluation uses the mean.
- Imagined rollouts start from dataset states (`--start-states dataset`, their --use_s_t): an offline
  user has no simulator to reset; `--start-states reset` draws the simulator's initial states as their
  default does. Horizon 250 (1000 for Hopper, Walker2d) x 200 paths = 50,000 steps per TRPO iteration.
- BC (model/policies.py): 2x200 ReLU, tanh mean, state-dependent log σ in [-5, 0], loss E‖a - (μ + σε)‖²,
  Adam 5e-4, batch 256, 300k steps, observations standardised with variance floor 1e-2.
- Ensemble: one batched computation of the 5 members, each trained on its own shuffling (no bootstrap),
  held out: 15 % (a random split; `--dynamics-holdout-last` the authors' last 15 % of the data order),
  checked every 5 epochs, stop after 20 epochs without improvement, each member restored to its best
  check (the authors keep the last weights). Cached by data, settings and seed like the other
  model-based scripts' ensembles (offline mode); deployment mode keeps it in the checkpoint.
- Known rewards: Gymnasium's forward velocity is a finite difference of x, which the observation lacks;
  it is written as the mean of the pre- and post-step velocity in the observation (within 2 % of the
  real episode returns, tests/test_bremen.py); Pendulum's is exact.

Example:
    python algorithms/bremen.py --dataset shipped/pendulum-medium-replay --num-updates 200
    python algorithms/bremen.py --mode deployment --env-id Pendulum-v1 \
        --config benchmarks/configs/bremen/variants/pendulum_cpu_deployment.yaml

Logged (tensorboard, in the run directory):
    losses/surrogate_gain      surrogate improvement of the accepted TRPO step
    losses/value_loss          squared error of the baseline on the λ-returns it is refit to
    charts/kl_step             mean KL(π_old ‖ π) of the accepted step (≤ about target_kl)
    charts/kl_to_bc            mean KL(π ‖ π̂_β) to the cloned start on imagined states
    charts/line_search_fraction step fraction accepted by the line search (0: rejected)
    charts/entropy             mean entropy of the policy on imagined states
    rollout/return             mean undiscounted return of the imagined paths
    rollout/done_rate          fraction of imagined paths that terminated
    deploy/return              mean episode return of a deployment's real data
    eval/return, eval/normalized_score, charts/updates_per_second (TRPO iterations per second)
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
import torch.nn.functional as F
import tyro
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    dataset: str = "halfcheetah-medium-v2"
    """D4RL name, Minari id, .hdf5 path or shipped/<name> (offline data; in deployment mode only its task)"""
    mode: str = "offline"
    """"offline" (fit once, clone, optimise) or "deployment" (learn from scratch in deployments)"""
    env_id: Optional[str] = None
    """deployment mode: the Gymnasium task to deploy in (None: the dataset's, whose reference returns then
    normalise the scores)"""
    seed: int = 0
    """seed of python, numpy, torch, the environments and the dynamics ensemble"""
    num_updates: int = 6250
    """TRPO iterations (authors' offline runs: 250 outer iterations of 25)"""
    # the deterministic dynamics ensemble
    dynamics_members: int = 5
    """members of the ensemble"""
    dynamics_hidden_dim: int = 1024
    """width of each member's two hidden layers"""
    dynamics_batch_size: int = 1000
    """minibatch size of dynamics training"""
    dynamics_lr: float = 1e-3
    """Adam learning rate of dynamics training"""
    dynamics_weight_decay: Optional[float] = None
    """L2 coefficient of the hidden layers' ½‖W‖² (None: 1 / training transitions, the authors')"""
    dynamics_holdout_ratio: float = 0.15
    """fraction of the data held out for early stopping"""
    dynamics_holdout_last: bool = False
    """hold out the last transitions in data order (the authors') instead of a random subset"""
    dynamics_patience: int = 20
    """stop after this many epochs without a better held-out error (checked every 5 epochs)"""
    dynamics_max_epochs: int = 200
    """cap on training epochs per fit"""
    dynamics_path: Optional[str] = None
    """offline mode: a saved ensemble to use; it must have been trained on this dataset with these settings"""
    dynamics_cache_dir: Optional[str] = None
    """offline mode: where trained ensembles are saved and looked up (None: <runs_dir>/dynamics)"""
    # behaviour cloning and the policy
    hidden_dim: int = 200
    """width of the two hidden layers of the policy (and of the clone it starts from)"""
    bc_steps: int = 300_000
    """Adam steps of behaviour cloning"""
    bc_lr: float = 5e-4
    """Adam learning rate of behaviour cloning"""
    batch_size: int = 256
    """minibatch size of behaviour cloning"""
    log_std_min: float = -5.0
    """lower bound of the policy's log σ (the upper is 0): the authors' -5 lets cloning shrink σ to 0.007, and a
    KL step then moves the mean by about σ √(2δ); a higher floor makes each step larger"""
    # TRPO in imagination
    horizon: int = 250
    """steps of each imagined path (the authors' max_path_length: 250, Hopper and Walker2d 1000)"""
    rollout_batch_size: int = 200
    """imagined paths per TRPO iteration (x horizon = the authors' 50,000 steps)"""
    start_states: str = "dataset"
    """where imagined paths start: "dataset" (random data states) or "reset" (the simulator's initial states)"""
    action_noise: float = 0.1
    """std of the Gaussian noise added to the mean action in imagination and deployment"""
    noise_times_std: bool = False
    """scale that noise by the policy's own σ (the authors without --const_sampling)"""
    gamma: float = 0.99
    """discount γ"""
    gae_lambda: float = 0.95
    """λ of GAE (Ant 0.97 in the authors' commands)"""
    target_kl: float = 0.01
    """δ: the KL size of each TRPO step (authors' CLI default; their commands: 0.1 HalfCheetah, 0.05 others)"""
    cg_iters: int = 10
    """conjugate gradient iterations"""
    cg_damping: float = 0.1
    """damping added to the Fisher-vector product"""
    fvp_every: int = 1
    """Fisher-vector products on every n-th imagined state (1: all, the authors'; 5: OpenAI baselines' TRPO)"""
    line_search_steps: int = 10
    """backtracking halvings tried before a step is rejected"""
    accept_ratio: float = 0.1
    """the least actual / expected surrogate improvement the line search accepts"""
    max_kl_ratio: Optional[float] = 1.5
    """the line search also rejects a step whose mean KL exceeds this times target_kl (the TRPO paper, OpenAI
    baselines); None: no KL check, as the authors' code"""
    kl_penalty: float = 0.0
    """α: explicit KL value penalty, r - α KL(π ‖ π̂_β) (authors' default 0)"""
    value_fn: str = "linear"
    """baseline: "linear" (features [o, o², t, t², t³, 1], ridge fit; the authors') or "mlp" (2x200 tanh)"""
    value_lr: float = 3e-4
    """Adam learning rate of the mlp baseline"""
    value_steps: int = 20
    """full-batch Adam steps of the mlp baseline per fit"""
    # deployment mode
    deploy_every: int = 2000
    """TRPO iterations per deployment (authors: 80 outer iterations of 25; K = num_updates / deploy_every)"""
    deployment_steps: int = 200_000
    """real environment steps collected per deployment"""
    bc_on_all: bool = False
    """clone all deployments' data (the authors' --all_bc) instead of the latest deployment's"""
    eval_every: int = 25
    """TRPO iterations between evaluations (and at the end of every deployment)"""
    eval_episodes: int = 10
    """episodes per evaluation (vectorised environment, the policy's mean action)"""
    checkpoint_every: int = 250
    """TRPO iterations between checkpoints that --resume continues from"""
    log_every: int = 5
    """TRPO iterations between logs"""
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


LIMITS = {
    "target_kl": "(0, inf)",
    "kl_penalty": "[0, inf)",
    "action_noise": "[0, inf)",
    "cg_damping": "[0, inf)",
    "gae_lambda": "[0, 1]",
    "accept_ratio": "[0, 1]",
    "dynamics_holdout_ratio": "(0, 1)",
    "dynamics_weight_decay": "[0, inf)",
    "log_std_min": "(-inf, 0)",
    "max_kl_ratio": "(0, inf)",
}
CHOICES = {"mode": ("offline", "deployment"), "value_fn": ("linear", "mlp"), "start_states": ("dataset", "reset")}


class GaussianPolicy(nn.Module):
    """π(a|s) = N(μ(s), σ(s)²): 2 hidden ReLU layers, tanh mean scaled to the action box, log σ = m - m/2
    (tanh(o) + 1) in [m, 0], m = -5 (the authors' policy, for the clone and TRPO alike)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, action_low, action_high, log_std_min=-5.0):
        super().__init__()
        self.log_std_min = log_std_min
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * act_dim),
        )
        with torch.no_grad():  # a small output layer, as the authors' normc(0.01), so σ starts mid-range
            self.net[-1].weight.mul_(0.01)
            self.net[-1].bias.zero_()
        low, high = (torch.as_tensor(x, dtype=torch.float32) for x in (action_low, action_high))
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(self.normalize(obs)).chunk(2, -1)
        return torch.tanh(mean) * self.action_scale + self.action_bias, self.log_std_min * (1 - torch.tanh(log_std)) / 2


def fit_bc(policy: GaussianPolicy, obs: torch.Tensor, actions: torch.Tensor, steps: int, lr: float, batch: int):
    """Behaviour cloning from a fresh start: E‖a - (μ(s) + σ(s)ε)‖² (a reparameterised sample, so σ shrinks too)."""
    for layer in policy.net:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    with torch.no_grad():
        policy.net[-1].weight.mul_(0.01)
        policy.net[-1].bias.zero_()
        policy.obs_mean.copy_(obs.mean(0))
        policy.obs_std.copy_(obs.var(0).clamp(min=1e-2).sqrt())  # the authors' variance floor
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="behaviour cloning", mininterval=2):
        idx = torch.randint(0, len(obs), (batch,), device=obs.device)
        mean, log_std = policy(obs[idx])
        loss = ((actions[idx] - (mean + log_std.exp() * torch.randn_like(mean))) ** 2).sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.no_grad()
def imagine(model, policy, start_obs, horizon, reward_fn, done_fn, noise, noise_times_std, low, high) -> dict:
    """Imagined paths of the noisy policy: one ensemble member drawn per step for the whole batch (the
    authors' vectorised sampler); a path's steps after it terminates are masked out (`valid`)."""
    obs, alive, steps = start_obs, torch.ones(len(start_obs), dtype=torch.bool, device=start_obs.device), []
    for _ in range(horizon):
        mean, log_std = policy(obs)
        actions = mean + noise * torch.randn_like(mean) * (log_std.exp() if noise_times_std else 1.0)
        clipped = torch.maximum(torch.minimum(actions, high), low)
        next_obs = model.step(obs, clipped)
        steps.append((obs, actions, reward_fn(obs, clipped, next_obs), alive))
        alive = alive & ~done_fn(next_obs)
        obs = next_obs
    obs, actions, rewards, valid = (torch.stack(x) for x in zip(*steps))  # [horizon, paths, ...]
    return {"obs": obs, "actions": actions, "rewards": rewards * valid, "valid": valid}


def trpo_iteration(policy, bc_policy, baseline, model, start_obs, reward_fn, done_fn, args, low, high) -> dict:
    """One batch of imagined paths, GAE with the baseline, one TRPO step, the baseline refit."""
    paths = imagine(
        model, policy, start_obs, args.horizon, reward_fn, done_fn, args.action_noise, args.noise_times_std, low, high
    )
    valid = paths["valid"]
    with torch.no_grad():
        old_mean, old_log_std = policy(paths["obs"])
        kl_bc = gaussian_kl(old_mean, old_log_std, *bc_policy(paths["obs"]))
        t = torch.arange(args.horizon, device=valid.device, dtype=torch.float32)[:, None, None].expand(*valid.shape, 1)
        features = baseline.features(policy.normalize(paths["obs"]), t)
        advantages, returns = gae(
            paths["rewards"] - args.kl_penalty * kl_bc * valid, baseline(features), valid, args.gamma, args.gae_lambda
        )
        adv = advantages[valid]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    obs, actions, old_mean, old_log_std = (x[valid] for x in (paths["obs"], paths["actions"], old_mean, old_log_std))
    old_log_prob = gaussian_log_prob(actions, old_mean, old_log_std)

    def surrogate() -> torch.Tensor:  # the loss: -E[π(a|s) / π_old(a|s) Â]
        return -(torch.exp(gaussian_log_prob(actions, *policy(obs)) - old_log_prob) * adv).mean()

    step, g = trpo_direction(
        policy, obs, surrogate, old_mean, old_log_std, args.target_kl, args.cg_iters, args.cg_damping, args.fvp_every
    )
    with torch.no_grad():
        loss_before = surrogate()

    def kl() -> torch.Tensor:
        return gaussian_kl(old_mean, old_log_std, *policy(obs)).mean()

    max_kl = args.max_kl_ratio * args.target_kl if args.max_kl_ratio is not None else None
    frac = line_search(policy, surrogate, step, g, loss_before, args.line_search_steps, args.accept_ratio, kl, max_kl)
    with torch.no_grad():
        mean, log_std = policy(obs)
        loss_after = surrogate()
    value_loss = baseline.fit(features[valid], returns[valid])  # refit after the step (the authors' order)
    return {
        "losses/surrogate_gain": loss_before - loss_after,
        "losses/value_loss": value_loss,
        "charts/kl_step": gaussian_kl(old_mean, old_log_std, mean, log_std).mean(),
        "charts/kl_to_bc": kl_bc[valid].mean(),
        "charts/line_search_fraction": frac,
        "charts/entropy": (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1).mean(),
        "rollout/return": paths["rewards"].sum(0).mean(),
        "rollout/done_rate": 1 - valid[-1].float().mean(),
    }


def collect(make_env, policy, steps: int, noise: float, seed: int, uniform: bool) -> dict:
    """Real transitions of one deployment: the policy's mean plus N(0, noise²) (uniformly random actions for
    the first deployment, as the authors' recursive.py), whole episodes until `steps` are reached."""
    env, parts = make_env(), {k: [] for k in ("observations", "actions", "next_observations", "rewards", "ends")}
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    returns, episode_return, bar = [], 0.0, tqdm(total=steps, desc="deployment", mininterval=2)
    device = policy.obs_mean.device
    while len(parts["rewards"]) < steps or not parts["ends"][-1]:
        if uniform:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                mean = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])[0][0]
            action = np.clip(
                mean.cpu().numpy() + noise * np.random.randn(*mean.shape), env.action_space.low, env.action_space.high
            )
        next_obs, reward, terminated, truncated, _ = env.step(action.astype(np.float32))
        for key, value in zip(parts, (obs, action, next_obs, reward, terminated or truncated)):
            parts[key].append(value)
        episode_return += reward
        obs = next_obs
        if terminated or truncated:
            returns.append(episode_return)
            episode_return, (obs, _) = 0.0, env.reset()
        bar.update(1)
    bar.close()
    env.close()
    return {k: torch.as_tensor(np.array(v), dtype=torch.float32) for k, v in parts.items()} | {
        "episode_returns": np.array(returns)
    }


def deploy(k, step, policy, bc_policy, model, real, make_env, args, device) -> tuple[dict, dict]:
    """Deployment k: collect real steps, add them to the model data, re-fit the ensemble (warm start, Adam
    afresh, statistics of all data), clone the latest deployment's data (all with --bc-on-all) afresh and
    restart the policy from that clone. Returns the data and the deployment's record."""
    part = collect(make_env, policy, args.deployment_steps, args.action_noise, args.seed + 1000 * k, uniform=k == 0)
    returns = part.pop("episode_returns")
    part = {key: value.to(device) for key, value in part.items()}
    part["holdout"] = holdout_mask(len(part["rewards"]), args.dynamics_holdout_ratio, args.dynamics_holdout_last)
    part["deployment"] = torch.full_like(part["rewards"], k)
    real = part if real is None else {key: torch.cat([real[key], part[key]]) for key in real}
    log = fit_dynamics(model, real["observations"], real["actions"], real["next_observations"], real["holdout"], args)
    latest = real if args.bc_on_all else part
    fit_bc(bc_policy, latest["observations"], latest["actions"], args.bc_steps, args.bc_lr, args.batch_size)
    policy.load_state_dict(bc_policy.state_dict())
    record = {"deployment": k, "step": step, "real_steps": len(real["rewards"]), "data_return": float(returns.mean())}
    return real, record | {"dynamics_epochs": log["epochs"], "holdout_mse": log["holdout_mse"]}


def initial_states(make_env, count: int, seed: int) -> torch.Tensor:
    """The simulator's initial states (`--start-states reset`, the authors' default start of imagined paths)."""
    env = make_env()
    states = np.array([env.reset(seed=seed + i)[0] for i in range(count)])
    env.close()
    return torch.as_tensor(states, dtype=torch.float32)


def deployment_data(name: str, real: dict, record: dict, make_env, ref: tuple) -> "OfflineData":
    """The real data so far as an OfflineData, its behaviour return the latest deployment's."""
    return OfflineData(
        name=name,
        observations=real["observations"],
        actions=real["actions"],
        rewards=real["rewards"],
        next_observations=real["next_observations"],
        terminals=torch.zeros_like(real["rewards"]),
        episode_returns=np.array([record["data_return"]]),
        make_env=make_env,
        ref_min_score=ref[0],
        ref_max_score=ref[1],
    )


def main():
    args = parse_args(Args, LIMITS, CHOICES)
    deployment = args.mode == "deployment"
    if args.env_id is not None and not deployment:
        sys.exit("error: --env-id is for --mode deployment; offline mode takes its task from --dataset")
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    data = None
    if not deployment or args.env_id is None:
        try:
            data = load_dataset(args.dataset, device)
        except DatasetError as e:
            sys.exit(f"error: {e}")
    make_env = data.make_env if args.env_id is None else (lambda: gym.make(args.env_id))
    try:
        reward_fn, done_fn, probe = known_task(make_env)
    except ValueError as e:
        sys.exit(f"error: {e}")
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    low, high = (
        torch.as_tensor(x, dtype=torch.float32, device=device)
        for x in (probe.action_space.low, probe.action_space.high)
    )
    ref = (data.ref_min_score, data.ref_max_score) if data is not None else (None, None)
    name = args.env_id or data.name

    model = DeterministicEnsemble(obs_dim, act_dim, args.dynamics_members, args.dynamics_hidden_dim)
    model.set_bounds(probe.observation_space.low, probe.observation_space.high)
    model = model.to(device)
    if not deployment:
        cache_dir = args.dynamics_cache_dir or os.path.join(args.runs_dir, "dynamics")
        load_or_fit_dynamics(model, data, args, cache_dir, device)
    policy, bc_policy = (
        GaussianPolicy(obs_dim, act_dim, args.hidden_dim, low, high, args.log_std_min).to(device) for _ in range(2)
    )
    baseline = ValueBaseline(args.value_fn, obs_dim, args.value_lr, args.value_steps).to(device)
    reset_states = initial_states(make_env, 1000, args.seed).to(device) if args.start_states == "reset" else None
    probe.close()

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        return policy(torch.as_tensor(obs, dtype=torch.float32, device=device))[0].cpu().numpy()

    def score(returns) -> Optional[float]:
        return None if ref[0] is None else float(normalized_score(np.mean(returns), *ref))

    run_dir = make_run_dir(args, name)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {"policy": policy, "bc_policy": bc_policy, "baseline": baseline, "value_optimizer": baseline.optimizer}
    trained |= {"model": model} if deployment else {}
    step, history, extra = 0, [], {"clock": None, "deployments": [], "real": None, "bc_return": None}
    if args.resume:
        step, saved = load_checkpoint(checkpoint_path, trained)
        history, extra = saved["history"], saved
        if deployment:
            extra["real"] = {k: v.to(device) for k, v in extra["real"].items()}
            data = deployment_data(name, extra["real"], extra["deployments"][-1], make_env, ref)
    elif not deployment:  # clone the data, start TRPO from the clone, and measure the clone
        fit_bc(bc_policy, data.observations, data.actions, args.bc_steps, args.bc_lr, args.batch_size)
        policy.load_state_dict(bc_policy.state_dict())
        extra["bc_return"] = float(evaluate(make_env, act, args.eval_episodes, seed=args.seed).mean())
        print(f"behaviour cloning: return {extra['bc_return']:.1f} (data {data.episode_returns.mean():.1f})")
    writer = make_writer(args, run_dir, step)

    def checkpoint(at: int) -> None:
        save_checkpoint(checkpoint_path, at, trained, extra | {"history": history, "clock": clock.state_dict()})

    def summary() -> dict:
        bc_score = None if extra["bc_return"] is None else score(extra["bc_return"])
        bc = {"bc_return": extra["bc_return"], "bc_normalized_score": bc_score}
        return {"mode": args.mode, **bc, "deployments": extra["deployments"]}

    bar = tqdm(range(step + 1, args.num_updates + 1), desc=SCRIPT_NAME, mininterval=2)
    clock = TrainClock(extra["clock"])
    for step in bar:
        k = (step - 1) // args.deploy_every
        if deployment and len(extra["deployments"]) <= k:
            with clock.paused():
                extra["real"], record = deploy(
                    k, step - 1, policy, bc_policy, model, extra["real"], make_env, args, device
                )
                record["bc_return"] = float(evaluate(make_env, act, args.eval_episodes, seed=args.seed + step).mean())
                extra["deployments"].append(record)
                data = deployment_data(name, extra["real"], record, make_env, ref)
                writer.add_scalar("deploy/return", record["data_return"], step - 1)
                print(f"deployment {k}: data return {record['data_return']:.1f}, clone {record['bc_return']:.1f}")
                checkpoint(step - 1)
        starts = data.observations if reset_states is None else reset_states
        starts = starts[torch.randint(0, len(starts), (args.rollout_batch_size,), device=device)]
        logs = trpo_iteration(policy, bc_policy, baseline, model, starts, reward_fn, done_fn, args, low, high)
        clock.tick()

        if step % args.log_every == 0:
            log_scalars(writer, logs, step)
        if step % args.eval_every == 0 or step == args.num_updates or (deployment and step % args.deploy_every == 0):
            with clock.paused():
                returns = evaluate(make_env, act, args.eval_episodes, seed=args.seed + step)
                shown = record_evaluation(run_dir, writer, history, step, returns, data, args.seed, clock)
                history[-1] |= {"kl_to_bc": float(logs["charts/kl_to_bc"]), "deployments": len(extra["deployments"])}
                with open(os.path.join(run_dir, "results.json")) as f:
                    write_results(run_dir, json.load(f) | {"evaluations": history} | summary())
                bar.set_postfix(score=shown, kl_to_bc=f"{history[-1]['kl_to_bc']:.3f}")
        if step % args.checkpoint_every == 0 or step == args.num_updates:
            with clock.paused():
                checkpoint(step)

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


# ---- shared: deterministic_dynamics ----
class DeterministicEnsemble(nn.Module):
    """Ensemble of deterministic MLPs (ME-TRPO / BREMEN): each predicts the normalised state change
    ((s' - s) - μ_Δ) / σ_Δ from the normalised (s, a); all members are one batched computation, and an
    imagined step draws one member for the whole batch (the authors' vectorised sampler)."""

    def __init__(self, obs_dim: int, act_dim: int, members: int = 5, hidden_dim: int = 1024, hidden_layers: int = 2):
        super().__init__()
        self.members = members
        sizes = [obs_dim + act_dim] + [hidden_dim] * hidden_layers + [obs_dim]
        self.layers = nn.ModuleList(EnsembleLinear(i, o, members) for i, o in zip(sizes[:-1], sizes[1:]))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("delta_mean", torch.zeros(obs_dim))
        self.register_buffer("delta_std", torch.ones(obs_dim))
        self.register_buffer("obs_low", torch.full((obs_dim,), -1e5))  # imagined states stay finite
        self.register_buffer("obs_high", torch.full((obs_dim,), 1e5))

    def set_bounds(self, low: np.ndarray, high: np.ndarray) -> None:
        """Clip imagined states to the observation space where it is bounded, else to ±1e5 (the authors')."""
        self.obs_low.copy_(torch.as_tensor(np.maximum(low, -1e5), dtype=torch.float32))
        self.obs_high.copy_(torch.as_tensor(np.minimum(high, 1e5), dtype=torch.float32))

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, member: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised Δs of every member [members, batch, obs_dim], or of one (a 0-d index) [batch, obs_dim]."""
        x = (torch.cat([obs, actions], -1) - self.input_mean) / self.input_std
        for i, layer in enumerate(self.layers):
            x = layer(x) if member is None else torch.addmm(layer.bias[member], x, layer.weight[member])
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    @torch.no_grad()
    def step(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """s' from one uniformly drawn member (drawn on the device: no host sync)."""
        member = torch.randint(0, self.members, (), device=obs.device)
        next_obs = obs + self(obs, actions, member) * self.delta_std + self.delta_mean
        return torch.maximum(torch.minimum(next_obs, self.obs_high), self.obs_low)


def holdout_mask(n: int, ratio: float, last: bool) -> torch.Tensor:
    """True for the held-out transitions: a random `ratio` of them, or the last ones in data order."""
    mask = torch.zeros(n, dtype=torch.bool)
    held = max(1, int(round(ratio * n)))
    mask[torch.arange(n - held, n) if last else torch.randperm(n)[:held]] = True
    return mask


def fit_dynamics(model: DeterministicEnsemble, obs, actions, next_obs, holdout: torch.Tensor, args) -> dict:
    """MSE on normalised Δs plus λ Σ ½‖W‖² of the hidden layers (λ = args.dynamics_weight_decay, None: 1 / N,
    the authors'), Adam afresh on every fit (the weights are kept: a re-fit warm-starts); statistics of the
    training part; every member its own shuffling; held-out MSE checked every 5 epochs, stop when no member
    improved for args.dynamics_patience epochs, each member restored to its best check."""
    device, holdout = obs.device, holdout.to(obs.device)
    inputs, deltas = torch.cat([obs, actions], -1), next_obs - obs
    train, held = (~holdout).nonzero().squeeze(1), holdout.nonzero().squeeze(1)
    with torch.no_grad():
        model.input_mean.copy_(inputs[train].mean(0))
        model.input_std.copy_(inputs[train].std(0) + 1e-10)
        model.delta_mean.copy_(deltas[train].mean(0))
        model.delta_std.copy_(deltas[train].std(0) + 1e-10)
    targets = (deltas - model.delta_mean) / model.delta_std
    decay = args.dynamics_weight_decay if args.dynamics_weight_decay is not None else 1.0 / len(train)
    hidden = [layer.weight for layer in model.layers[:-1]]
    rest = [p for p in model.parameters() if all(p is not w for w in hidden)]
    optimizer = torch.optim.Adam([{"params": hidden, "weight_decay": decay}, {"params": rest, "weight_decay": 0.0}])
    params = list(model.parameters())

    def holdout_mse() -> torch.Tensor:
        with torch.no_grad():
            return ((model(obs[held], actions[held]) - targets[held]) ** 2).mean((1, 2))

    best, snapshot = holdout_mse(), [p.detach().clone() for p in params]
    since_best = torch.zeros(model.members, device=device)
    bar, epoch = tqdm(desc="dynamics", unit="epoch", mininterval=2), 0
    while epoch < args.dynamics_max_epochs:
        epoch += 1
        order = torch.argsort(torch.rand(model.members, len(train), device=device), dim=1)
        for start in range(0, len(train), args.dynamics_batch_size):
            idx = train[order[:, start : start + args.dynamics_batch_size]]  # [members, batch]
            loss = ((model(obs[idx], actions[idx]) - targets[idx]) ** 2).mean((1, 2)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        bar.update(1)
        if epoch % 5 == 0:
            mse = holdout_mse()
            better = mse < best
            best, since_best = torch.where(better, mse, best), torch.where(better, 0.0, since_best + 5)
            for p, s in zip(params, snapshot):
                if p.dim() == 3 and p.shape[0] == model.members:
                    s[better] = p.detach()[better]
            bar.set_postfix(holdout_mse=f"{best.mean().item():.4f}")
            if (since_best >= args.dynamics_patience).all():
                break
    bar.close()
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)
    return {"epochs": epoch, "holdout_mse": holdout_mse().tolist()}


def load_or_fit_dynamics(model: DeterministicEnsemble, data: OfflineData, args, cache_dir: str, device) -> dict:
    """Fit once, reuse: the ensemble is saved under a key of the data, the dynamics_* settings and the seed,
    and loaded when the key matches (args.dynamics_path: that file, which must match)."""
    observed = data.next_observed if data.next_observed is not None else torch.ones_like(data.rewards, dtype=torch.bool)
    obs, actions, next_obs = data.observations[observed], data.actions[observed], data.next_observations[observed]
    settings = {k: v for k, v in sorted(asdict(args).items()) if k.startswith("dynamics_")}
    settings = {k: v for k, v in settings.items() if k not in ("dynamics_path", "dynamics_cache_dir")}
    digest = hashlib.sha1(json.dumps({**settings, "seed": args.seed, "kind": "deterministic"}).encode())
    for tensor in (obs, actions, next_obs):
        digest.update(tensor.cpu().numpy().tobytes())
    key = digest.hexdigest()[:12]
    path = args.dynamics_path or os.path.join(cache_dir, f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', data.name)}__{key}.pt")
    if args.dynamics_path is not None and not os.path.isfile(path):
        sys.exit(f"error: dynamics file {path!r} does not exist; drop --dynamics-path to fit (and cache) one")
    if len(obs) < 10:
        sys.exit(f"error: {data.name} has {len(obs)} transitions; the dynamics ensemble needs at least 10")
    check_writable(os.path.dirname(os.path.abspath(path)), "the dynamics cache folder")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:  # two runs that need the same ensemble fit it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(path):
            try:
                saved = torch.load(path, map_location=device, weights_only=False)
                saved["fingerprint"]["key"], saved["model"], saved["log"]
            except Exception as e:  # truncated or corrupt: keep it for a look, fit a new one
                os.replace(path, path + ".corrupt")
                print(f"dynamics: {path} is unreadable ({type(e).__name__}); moved to {path}.corrupt, fitting anew")
                saved = None
            if saved is not None:
                if saved["fingerprint"]["key"] != key:
                    sys.exit(f"error: dynamics file {path} was fitted to other data or settings; drop --dynamics-path")
                model.load_state_dict(saved["model"])
                print(f"dynamics: reusing {path} (holdout MSE {np.mean(saved['log']['holdout_mse']):.4f})")
                return saved["log"]
        start = time.time()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the same model either way
            torch.manual_seed(args.seed)
            holdout = holdout_mask(len(obs), args.dynamics_holdout_ratio, args.dynamics_holdout_last)
            log = fit_dynamics(model, obs, actions, next_obs, holdout, args)
        log["train_time_s"] = time.time() - start
        state = {"fingerprint": {"key": key, **settings, "seed": args.seed}, "model": model.state_dict(), "log": log}
        write_atomically(path, lambda tmp: torch.save(state, tmp), "fitted dynamics ensemble")
        print(f"dynamics: trained {log['epochs']} epochs in {log['train_time_s']:.0f} s, saved to {path}")
        return log


# ---- end shared: deterministic_dynamics ----


# ---- shared: termination ----
# Known termination functions of the Gymnasium v4 MuJoCo tasks, on next observations
# (index 0 = torso height, 1 = torso angle). Hopper follows Gymnasium's healthy check,
# including |s'[1:]| < 100 that the official MOPO code drops by a misplaced parenthesis.
def hopper_done(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    healthy = (
        torch.isfinite(next_obs).all(-1) & (next_obs[:, 1:].abs() < 100).all(-1) & (height > 0.7) & (angle.abs() < 0.2)
    )
    return ~healthy


def walker2d_done(next_obs: torch.Tensor) -> torch.Tensor:
    height, angle = next_obs[:, 0], next_obs[:, 1]
    return ~((height > 0.8) & (height < 2.0) & (angle > -1.0) & (angle < 1.0))


def halfcheetah_done(next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def ant_done(next_obs: torch.Tensor) -> torch.Tensor:
    height = next_obs[:, 0]
    return ~(torch.isfinite(next_obs).all(-1) & (height >= 0.2) & (height <= 1.0))


TERMINATION_FNS = {"Hopper": hopper_done, "Walker2d": walker2d_done, "HalfCheetah": halfcheetah_done, "Ant": ant_done}


def learned_termination(
    data: OfflineData, steps: int = 2000, batch_size: int = 256
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A classifier of the dataset's terminals on next observations, for tasks without a known rule.

    Plain (unweighted) cross-entropy, so that its output is the probability of termination, and a
    rollout ends where that is above one half. A class-balancing weight would instead move the
    boundary until about half of all states end an episode.
    """
    obs_dim, device = data.next_observations.shape[1], data.rewards.device
    net = nn.Sequential(nn.Linear(obs_dim, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    mean, std = data.next_observations.mean(0), data.next_observations.std(0) + 1e-6
    for _ in range(steps):
        idx = torch.randint(0, len(data.rewards), (batch_size,), device=device)
        logits = net((data.next_observations[idx] - mean) / std).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, data.terminals[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.requires_grad_(False)
    return lambda next_obs: net((next_obs - mean) / std).squeeze(-1) > 0  # P(terminal) > 1/2


def termination_fn(data: OfflineData) -> tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """The known rule for the task, else one learned from the terminals, else never done."""
    env = data.make_env()
    env_id = env.spec.id if env.spec is not None else ""
    env.close()
    family = env_id.split(":")[-1].split("-")[0].split("/")[-1]
    if family in TERMINATION_FNS:
        return TERMINATION_FNS[family], f"known rule for {family}"
    if data.terminals.any():
        return learned_termination(data), "learned from the dataset's terminals"
    return halfcheetah_done, "none (the dataset has no terminals)"


# ---- end shared: termination ----


# ---- shared: trpo ----
# Trust-region policy optimisation of a Gaussian policy (Schulman et al., ICML 2015) on a batch of paths: the
# Gaussian's log-likelihood and KL, GAE, the value baselines, conjugate gradient, the KL-scaled step and the
# backtracking line search.
def gaussian_log_prob(actions: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean0, log_std0, mean1, log_std1) -> torch.Tensor:
    """KL(N(mean0, σ0²) ‖ N(mean1, σ1²)) per state, summed over action dimensions (closed form)."""
    var0, var1 = (2 * log_std0).exp(), (2 * log_std1).exp()
    return (log_std1 - log_std0 + (var0 + (mean0 - mean1) ** 2) / (2 * var1) - 0.5).sum(-1)


class ValueBaseline(nn.Module):
    """V(s, t) on the features [o, o², t/100, (t/100)², (t/100)³, 1] (o: the policy-normalised observation
    clipped to ±10): linear by ridge regression (the authors' default) or a 2x200 tanh network."""

    def __init__(self, kind: str, obs_dim: int, lr: float, steps: int):
        super().__init__()
        self.kind, self.steps, dim = kind, steps, 2 * obs_dim + 4
        self.register_buffer("coef", torch.zeros(dim))
        self.net = nn.Sequential(nn.Linear(dim, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 1))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.99), eps=1e-4)

    @staticmethod
    def features(obs_normalized: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        o, t = obs_normalized.clamp(-10, 10), t / 100
        return torch.cat([o, o**2, t, t**2, t**3, torch.ones_like(t)], -1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.coef if self.kind == "linear" else self.net(features).squeeze(-1)

    def fit(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            gram, eye = features.T @ features, torch.eye(features.shape[1], device=features.device)
            for reg in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1):  # the authors' ridge, ×10 while the solve is not finite
                coef = torch.linalg.solve(gram + reg * eye, features.T @ targets)
                if torch.isfinite(coef).all():
                    break
            self.coef.copy_(coef)
        else:
            for _ in range(self.steps):
                loss = ((self(features) - targets) ** 2).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
        with torch.no_grad():
            return ((self(features) - targets) ** 2).mean()


def gae(rewards: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, gamma: float, lam: float):
    """A_t = Σ_l (γλ)^l δ_{t+l}, δ_t = r_t + γ V(s_{t+1}) - V(s_t), over [horizon, paths]; V = 0 past a
    path's last step (no bootstrap at the horizon either, as the authors). Returns (A, A + V)."""
    advantages, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    next_values = torch.cat([values[1:] * valid[1:], torch.zeros_like(values[:1])])
    for t in reversed(range(len(rewards))):
        cont = valid[t + 1].float() if t + 1 < len(rewards) else torch.zeros_like(running)
        running = rewards[t] + gamma * next_values[t] - values[t] + gamma * lam * cont * running
        advantages[t] = running * valid[t]
    return advantages, advantages + values * valid


def conjugate_gradient(fvp: Callable, b: torch.Tensor, iters: int, tol: float = 1e-10) -> torch.Tensor:
    """Solve A x = b for a symmetric positive definite A given as products A v; no host sync (a converged
    solve stays where it is)."""
    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for _ in range(iters):
        ap = fvp(p)
        alpha = torch.where(rr > tol, rr / (p @ ap), torch.zeros_like(rr))
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        p, rr = r + torch.where(rr > tol, rr_new / rr, torch.zeros_like(rr)) * p, rr_new
    return x


def trpo_direction(policy, obs, surrogate: Callable, old_mean, old_log_std, target_kl, cg_iters, damping, every=1):
    """The full TRPO step s = √(2δ / sᵀ(F+λI)s) · (F+λI)⁻¹(-g), with g the gradient of the surrogate loss and F
    the Hessian of the mean KL(π_old ‖ π) at π_old (Fisher-vector products by a double backward through a
    graph built once, on every `every`-th state); ½ sᵀ(F+λI)s = δ holds for the returned step."""
    params = list(policy.parameters())
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(surrogate(), params)])
    mean, log_std = policy(obs[::every])
    kl = gaussian_kl(old_mean[::every], old_log_std[::every], mean, log_std).mean()
    kl_grad = torch.cat([x.reshape(-1) for x in torch.autograd.grad(kl, params, create_graph=True)])

    def fvp(v: torch.Tensor) -> torch.Tensor:
        product = torch.autograd.grad(kl_grad @ v, params, retain_graph=True)
        return torch.cat([x.reshape(-1) for x in product]) + damping * v

    direction = conjugate_gradient(fvp, -g, cg_iters)
    step = direction * torch.sqrt(2 * target_kl / (direction @ fvp(direction)).clamp(min=1e-12))
    return step, g


@torch.no_grad()
def line_search(
    policy, surrogate: Callable, step, g, loss_before, steps: int, accept_ratio: float, kl=None, max_kl=None
):
    """Backtrack 1, ½, ¼, ...: take the first fraction whose actual surrogate improvement is positive and at
    least `accept_ratio` of the linear expectation -gᵀs·frac, and whose mean KL `kl()` from the old policy is
    at most `max_kl` (None: no KL check, the authors' code); none: the old parameters. One boolean read per
    tried fraction is this loop's only host sync. Returns the accepted fraction (0: rejected)."""
    old = nn.utils.parameters_to_vector(policy.parameters())
    expected = -(g @ step)
    for k in range(steps):
        frac = 0.5**k
        nn.utils.vector_to_parameters(old + frac * step, policy.parameters())
        improvement = loss_before - surrogate()
        accept = (improvement > 0) & (improvement > accept_ratio * expected * frac)
        if bool(accept if max_kl is None else accept & (kl() <= max_kl)):
            return frac
    nn.utils.vector_to_parameters(old, policy.parameters())
    return 0.0


# ---- end shared: trpo ----


# ---- shared: known_rewards ----
# Rewards of Gymnasium's tasks as functions of (s, a, s') on batches, for imagined transitions. The MuJoCo
# forward reward is a finite difference of the torso's x, which the observation leaves out: it is written as
# the mean of the x-velocity in s and s' (within 2 % of the real episode returns; the post-step velocity
# alone is 5 to 10 % off). Ant: 27-d observations, or 111-d with the contact forces (then their cost).
def pendulum_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    theta, u = torch.atan2(obs[:, 1], obs[:, 0]), action[:, 0].clamp(-2.0, 2.0)
    return -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * u**2)


def halfcheetah_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (obs[:, 8] + next_obs[:, 8]) - 0.1 * (action**2).sum(-1)


def hopper_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (obs[:, 5] + next_obs[:, 5]) + 1.0 - 1e-3 * (action**2).sum(-1)


def walker2d_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (obs[:, 8] + next_obs[:, 8]) + 1.0 - 1e-3 * (action**2).sum(-1)


def ant_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    contact_cost = 5e-4 * (next_obs[:, 27:].clamp(-1.0, 1.0) ** 2).sum(-1)
    return 0.5 * (obs[:, 13] + next_obs[:, 13]) + 1.0 - 0.5 * (action**2).sum(-1) - contact_cost


def never_done(next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


REWARD_FNS = {
    "Pendulum": pendulum_reward,
    "HalfCheetah": halfcheetah_reward,
    "Hopper": hopper_reward,
    "Walker2d": walker2d_reward,
    "Ant": ant_reward,
}


def known_task(make_env: Callable[[], gym.Env]) -> tuple[Callable, Callable, gym.Env]:
    """The task's known reward and termination functions, and an environment of it (the caller closes it);
    ValueError for a task without them or an environment that cannot be made."""
    try:
        env = make_env()
    except Exception as e:
        raise ValueError(f"cannot make the environment ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
    env_id = env.spec.id if env.spec is not None else ""
    family = env_id.split(":")[-1].split("-")[0].split("/")[-1]
    if family not in REWARD_FNS:
        env.close()
        raise ValueError(
            f"{env_id or 'this environment'} has no known reward function here; the imagined rollouts need one "
            f"(supported: {', '.join(REWARD_FNS)})"
        )
    return REWARD_FNS[family], TERMINATION_FNS.get(family, never_done), env


# ---- end shared: known_rewards ----


if __name__ == "__main__":
    main()
