"""BRED: offline-to-online fine-tuning with balanced replay and a pessimistic Q-ensemble.

Lee, Seo, Lee, Abbeel and Shin, "Offline-to-Online Reinforcement Learning via Balanced Replay and Pessimistic
Q-Ensemble", CoRL 2021, https://arxiv.org/abs/2107.00591

An agent trained offline and then fine-tuned online first drops: its Q-values meet states and actions the data
never had, and over-estimate them (bootstrap error), while the online samples are too few among the offline ones
to correct it quickly. BRED answers with two parts. A pessimistic Q-ensemble: N agents pretrained offline with CQL
(different seeds), fine-tuned online with plain SAC losses; their policy is one Gaussian whose mean and variance
match the mixture of the N actors', and the actor maximises the mean over members of each member's twin minimum.
Balanced replay: one prioritized buffer holds the dataset and every online transition; a density-ratio network
w(s, a) ≈ d_online(s, a) / d_offline(s, a), trained with the Jensen-Shannon f-divergence's variational loss, sets
the priority of each sampled transition to w^(1/T), normalised by its mean over offline samples, so offline
samples close to what the agent now does are replayed, and far ones are not.

As the authors' code (shlee94/Off2OnRL, commit 6f298fa: rlkit/examples/ours.py, rlkit/rlkit/torch/sac/ours.py,
batch_rl_algorithm.py, prioritized_replay_buffer.py): 2x256 networks, twin Q per member, batch 256, learning
rates 3e-4, α = 1 at the switch with target entropy -|A|, the target networks copied from the pretrained critics,
epochs of 1000 environment steps followed by 1000 updates (10 times as many after the first), T = 5, priorities
clamped to [0.001, 1000], dataset samples entering at priority 1 and online ones at the running maximum, which
starts at M f / ((1 - f) 1000) (M the dataset's size, f = 0.5), so the first 1000 online samples carry about a
fraction f of the sampling mass; 250 epochs. The authors load N CQL runs made elsewhere; here the N CQL agents are
pretrained in this script, as one batched ensemble whose members draw their own minibatches (CQL(H) as the CQL
authors' launcher: α 5, 10 actions per proposal, policy lr 1e-4, no entropy in the target; without its 40,000
behaviour-cloning updates). The sum tree is on the device; its sampling is stratified, as theirs.

Example:
    python algorithms/bred.py --dataset shipped/pendulum-medium --num-updates 20000 --online-steps 10000

Logged (tensorboard, in the run directory):
    losses/td_loss              squared TD error of the 2N Q-functions, summed over them
    losses/cql_penalty          offline: the CQL(H) term α (log Σ_a exp Q(s, a) - Q(s, a_data)), averaged
    losses/actor_loss           offline: the N actors' SAC losses, summed; online: the ensemble policy's loss
    losses/ratio_loss           online: the density-ratio network's f-divergence loss
    values/q_mean               mean Q(s, a) of the 2N Q-functions on the batch's own actions
    values/q_policy             mean Q(s, a) on the policy's actions (offline: each member's k samples; online: the
                                members' twin minimum at the ensemble policy's sample, the actor's objective)
    charts/entropy              online: the ensemble policy's entropy estimate -E[log π(a|s)]
    values/ratio_online         online: mean w(s, a) on online samples (above 1 once it tells them apart)
    values/online_fraction      online: the fraction of online transitions in the sampled RL batch
    charts/alpha                the mean temperature α (offline one per member; online one)
    eval/return                 mean return of the evaluation episodes (tanh of the moment-matched mean)
    eval/normalized_score       their mean D4RL normalised score
    online/train_episode_return the return of each training episode online
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
    """seed of python, numpy, torch and the environments"""
    num_updates: int = 1_000_000
    """offline CQL updates of the ensemble (every member's pretraining run in the paper: 1M)"""
    online_steps: int = 250_000
    """online environment steps (250 epochs of 1000); 0 ends after the offline phase"""
    batch_size: int = 256
    """minibatch size of every loss (the density-ratio network's offline and online batches too)"""
    ensemble_size: int = 5
    """N, the CQL agents of the pessimistic ensemble"""
    hidden_dim: int = 256
    """width of the two hidden layers of actors, Q-functions and the density-ratio network"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """target smoothing coefficient τ"""
    offline_actor_lr: float = 1e-4
    """offline: Adam learning rate of the actors and their log α (the CQL authors' policy lr)"""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q-functions (offline and online)"""
    cql_alpha: float = 5.0
    """offline: α of the CQL(H) penalty (min_q_weight in the CQL authors' code)"""
    num_sampled_actions: int = 10
    """offline: actions drawn per state from each of uniform, π(·|s) and π(·|s') for log Σ_a exp Q"""
    online_init_alpha: float = 1.0
    """online: α at the switch (the authors' 1.0); 0 starts from the offline members' mean α"""
    online_actor_lr: float = 3e-4
    """online: Adam learning rate of the ensemble policy and of log α (policy_lr of the authors' code)"""
    ratio_lr: float = 3e-4
    """online: Adam learning rate of the density-ratio network"""
    priority_temperature: float = 5.0
    """T: a sampled transition's priority is w^(1/T) over the mean of w^(1/T) on the offline batch"""
    balanced_replay: bool = True
    """off: every transition at priority 1, drawn uniformly (plain replay, the paper's ablation)"""
    init_online_fraction: float = 0.5
    """f: the first 1000 online samples carry about this fraction of the sampling mass (the README's demo: 0.75)"""
    online_buffer_size: int = 250_000
    """the newest online transitions the density-ratio network learns from (FIFO)"""
    epoch_steps: int = 1000
    """online: environment steps per epoch, each epoch followed by as many updates"""
    first_epoch_multiplier: int = 10
    """online: the first epoch's updates are this many times its steps"""
    eval_every: int = 5_000
    """offline updates, then online environment steps, between evaluations"""
    eval_episodes: int = 10
    """episodes per evaluation (vectorised environment, deterministic policy)"""
    checkpoint_every: int = 50_000
    """offline updates, then online environment steps, between checkpoints that --resume continues from"""
    log_every: int = 1_000
    """offline updates, then online environment steps, between loss logs"""
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
    from_run: Optional[str] = None
    """run directory of an offline run of this script (--online-steps 0): its ensemble starts the online phase"""


LIMITS = {"cql_alpha": "[0, inf)", "priority_temperature": "(0, inf)", "init_online_fraction": "(0, 1)"}
LIMITS |= {"online_steps": "[0, inf)", "online_init_alpha": "[0, inf)"}  # 0: offline only; the offline α
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # rlkit's TanhGaussianPolicy, the authors' actors


def two_layers(in_dim: int, hidden_dim: int, out_dim: int, linear) -> nn.Sequential:
    """The authors' networks: two hidden ReLU layers of `linear` (nn.Linear, or EnsembleLinear for members)."""
    return nn.Sequential(
        linear(in_dim, hidden_dim), nn.ReLU(), linear(hidden_dim, hidden_dim), nn.ReLU(), linear(hidden_dim, out_dim)
    )


class EnsembleActor(nn.Module):
    """N tanh-Gaussian actors as one batched ensemble: the pre-tanh mean and log σ of each, [N, batch, act_dim]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, members: int, box: gym.spaces.Box):
        super().__init__()
        self.net = two_layers(obs_dim, hidden_dim, 2 * act_dim, lambda a, b: EnsembleLinear(a, b, members))
        low, high = torch.as_tensor(box.low, dtype=torch.float32), torch.as_tensor(box.high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def squash(self, u: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a = tanh(u) scale + bias and log π(a|s) for u drawn from N(mean, std) (SAC's Appendix C)."""
        gauss = (-0.5 * ((u - mean) / std) ** 2 - std.log() - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob = gauss - (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1) - self.action_scale.log().sum()
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob

    def sample(self, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.squash(mean + std * torch.randn_like(mean), mean, std)


def moment_matched(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble policy: one Gaussian with the mixture's mean and variance over the N members (dim 0),
    μ = mean_i μ_i, σ² = mean_i (μ_i² + σ_i²) - μ², σ clamped to [e^-20, e^2] (the authors'
    ParallelTanhGaussianPolicy)."""
    mu = mean.mean(0)
    var = (mean**2 + (2 * log_std).exp()).mean(0) - mu**2
    return mu, var.clamp_min(0).sqrt().clamp(np.exp(LOG_STD_MIN), np.exp(LOG_STD_MAX))


class EnsembleCritic(nn.Module):
    """N twin Q-functions as 2N batched members: obs [N, batch, d] (member i's own batch) -> Q [N, 2, batch]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, members: int):
        super().__init__()
        self.net = two_layers(obs_dim + act_dim, hidden_dim, 1, lambda a, b: EnsembleLinear(a, b, 2 * members))

    def forward(self, obs: torch.Tensor, action: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """frozen: the weights detached, for the actor's loss (dQ/da only)."""
        x = torch.cat([obs, action], -1).repeat_interleave(2, 0)
        for layer in self.net:
            detach = (lambda t: t.detach()) if frozen else (lambda t: t)
            linear = isinstance(layer, EnsembleLinear)
            x = torch.baddbmm(detach(layer.bias), x, detach(layer.weight)) if linear else layer(x)
        return x.view(obs.shape[0], 2, *obs.shape[1:-1])


class DensityRatio(nn.Module):
    """w(s, a) ≥ 0, the online-to-offline density ratio: 2x256, ReLU output, last bias 1 (w = 1 at the start)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(*two_layers(obs_dim + act_dim, hidden_dim, 1, nn.Linear), nn.ReLU())
        nn.init.constant_(self.net[4].bias, 1.0)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)


def ratio_loss(w_offline: torch.Tensor, w_online: torch.Tensor) -> torch.Tensor:
    """The Jensen-Shannon f-divergence's variational loss whose minimiser is w = d_online / d_offline:
    E_offline[-log(2 / (w + 1))] - E_online[log(2 w / (w + 1))] (1e-10 inside the logs, as the authors')."""
    offline = -torch.log(2.0 / (w_offline + 1) + 1e-10)
    online = torch.log(2 * w_online / (w_online + 1) + 1e-10)
    return offline.mean() - online.mean()


def priorities(w_batch: torch.Tensor, w_offline: torch.Tensor, temperature: float) -> torch.Tensor:
    """Balanced replay: p = clamp(w^(1/T) / mean_offline(w^(1/T)), 0.001, 1000) for the sampled RL batch."""
    return (w_batch ** (1 / temperature) / ((w_offline ** (1 / temperature)).mean() + 1e-10)).clamp(0.001, 1000)


def cql_penalty(q_data, q_sampled, log_density):
    """CQL(H), Eq. 4, importance-sampled as the CQL authors' code: log Σ_j exp(Q(s, a_j) - log μ(a_j|s)) - Q(s, a)
    averaged over the batch; q_data [N, 2, B], q_sampled [N, 2, B, K], log_density [N, 1, B, K] -> [N, 2]."""
    return torch.logsumexp(q_sampled - log_density, -1).mean(-1) - q_data.mean(-1)


def main():
    args = parse_args(Args, LIMITS)
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, device)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    obs_dim, act_dim, n = data.observations.shape[1], data.actions.shape[1], args.ensemble_size
    actor = EnsembleActor(obs_dim, act_dim, args.hidden_dim, n, data.make_env().action_space).to(device)
    critic = EnsembleCritic(obs_dim, act_dim, args.hidden_dim, n).to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    ratio = DensityRatio(obs_dim, act_dim, args.hidden_dim).to(device)
    # log α: offline one per CQL agent, online one for the ensemble policy, α = 1 at the start and at the switch
    alphas = nn.ParameterDict({"offline": torch.zeros(n, device=device), "online": torch.zeros((), device=device)})
    log_alpha, online_log_alpha = alphas["offline"], alphas["online"]
    actor_opt = torch.optim.Adam([*actor.parameters(), log_alpha], lr=args.offline_actor_lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    online_actor_opt = torch.optim.Adam([*actor.parameters(), online_log_alpha], lr=args.online_actor_lr)
    online_critic_opt = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    ratio_opt = torch.optim.Adam(ratio.parameters(), lr=args.ratio_lr)
    k = args.num_sampled_actions

    def polyak():  # Polyak averaging of the target critics
        with torch.no_grad():
            for p, tp in zip(critic.parameters(), critic_target.parameters()):
                tp.lerp_(p, args.tau)

    def offline_update():
        # every member its own minibatch: [N, B, ...]
        batch = data.sample(n * args.batch_size)
        obs, actions, rewards, next_obs, terminals = (x.view(n, args.batch_size, *x.shape[1:]) for x in batch)
        alpha = log_alpha.exp().detach()[:, None]
        mean, log_std = actor(obs)
        pi, logp = actor.sample(mean, log_std.exp())
        actor_loss = (alpha * logp - critic(obs, pi, frozen=True).min(1).values).mean(-1).sum()
        alpha_loss = -(log_alpha[:, None] * (logp.detach() - act_dim)).mean(-1).sum()
        with torch.no_grad():  # 1 next action for the target, k for the penalty, k at s, k uniform
            next_mean, next_log_std = (x.unsqueeze(2).expand(-1, -1, k + 1, -1) for x in actor(next_obs))
            next_pi, next_logp = actor.sample(next_mean, next_log_std.exp())
            next_q = critic_target(next_obs, next_pi[:, :, 0]).min(1).values  # no entropy term (CQL's D4RL runs)
            target_q = (rewards + args.gamma * (1 - terminals) * next_q)[:, None]
            pi_mean, pi_log_std = (x.detach().unsqueeze(2).expand(-1, -1, k, -1) for x in (mean, log_std))
            pi_k, pi_logp = actor.sample(pi_mean, pi_log_std.exp())
            uniform = actor.action_bias + actor.action_scale * (2 * torch.rand_like(pi_k) - 1)
            sampled = torch.cat([uniform, pi_k, next_pi[:, :, 1:]], 2)
            uniform_logp = (-torch.log(2 * actor.action_scale).sum()).expand(n, args.batch_size, k)
            log_density = torch.cat([uniform_logp, pi_logp, next_logp[:, :, 1:]], 2)[:, None]
        all_actions = torch.cat([actions.unsqueeze(2), sampled], 2)  # [N, B, 1 + 3k, A]
        many_obs = obs.unsqueeze(2).expand(-1, -1, 1 + 3 * k, -1)
        q = critic(many_obs.reshape(n, -1, obs_dim), all_actions.reshape(n, -1, act_dim)).view(n, 2, -1, 1 + 3 * k)
        td_loss = ((q[..., 0] - target_q) ** 2).mean(-1)  # [N, 2]
        penalty = args.cql_alpha * cql_penalty(q[..., 0], q[..., 1:], log_density)
        actor_opt.zero_grad(set_to_none=True)
        critic_opt.zero_grad(set_to_none=True)
        (actor_loss + alpha_loss + (td_loss + penalty).sum()).backward()
        actor_opt.step()
        critic_opt.step()
        polyak()
        return {
            "losses/td_loss": td_loss.sum().detach(),
            "losses/cql_penalty": penalty.mean().detach(),
            "losses/actor_loss": actor_loss.detach(),
            "charts/alpha": alpha.mean(),
            "values/q_mean": q[..., 0].mean().detach(),
            "values/q_policy": q[..., 1 + k : 1 + 2 * k].mean().detach(),
        }

    def online_update(replay, online):
        # BRED's online rule: plain SAC losses for the ensemble on a batch drawn by priority, then the priorities
        idx, (obs, actions, rewards, next_obs, terminals) = replay.sample(args.batch_size)
        offline_obs, offline_actions = data.sample(args.batch_size)[:2]
        online_obs, online_actions = online.sample(args.batch_size)[:2]
        w_offline, w_online = ratio(offline_obs, offline_actions), ratio(online_obs, online_actions)
        if args.balanced_replay:
            replay.update(idx, priorities(ratio(obs, actions), w_offline, args.priority_temperature).detach())
        alpha = online_log_alpha.exp().detach()
        pi, logp = actor.sample(*moment_matched(*actor(obs)))
        q_pi = critic(obs.expand(n, *obs.shape), pi.expand(n, *pi.shape), frozen=True).min(1).values.mean(0)
        actor_loss = (alpha * logp - q_pi).mean()
        alpha_loss = -(online_log_alpha * (logp.detach() - act_dim)).mean()
        with torch.no_grad():
            next_pi, next_logp = actor.sample(*moment_matched(*actor(next_obs)))
            next_q = critic_target(next_obs.expand(n, *next_obs.shape), next_pi.expand(n, *next_pi.shape))
            target_q = rewards + args.gamma * (1 - terminals) * (next_q.min(1).values - alpha * next_logp)
        q = critic(obs.expand(n, *obs.shape), actions.expand(n, *actions.shape))
        td_loss = ((q - target_q[:, None]) ** 2).mean(-1).sum()
        loss_w = ratio_loss(w_offline, w_online)
        for opt in (online_actor_opt, online_critic_opt, ratio_opt):
            opt.zero_grad(set_to_none=True)
        (actor_loss + alpha_loss + td_loss + loss_w).backward()
        for opt in (online_actor_opt, online_critic_opt, ratio_opt):
            opt.step()
        polyak()
        return {
            "losses/td_loss": td_loss.detach(),
            "losses/actor_loss": actor_loss.detach(),
            "losses/ratio_loss": loss_w.detach(),
            "values/ratio_online": w_online.mean().detach(),
            "values/online_fraction": (idx >= len(data.rewards)).float().mean(),
            "charts/alpha": alpha,
            "values/q_mean": q.mean().detach(),
            "values/q_policy": q_pi.mean().detach(),
            "charts/entropy": -logp.mean().detach(),
        }

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        mean, std = moment_matched(*actor(torch.as_tensor(obs, dtype=torch.float32, device=device)))
        action = actor.squash(mean, mean, std)[0] if deterministic else actor.sample(mean, std)[0]  # tanh(μ), or a ~ π
        return action.cpu().numpy()

    def start_online():
        # the switch: one buffer by priority (the dataset at 1, online samples at a running maximum starting at
        # M f / ((1 - f) 1000)), the online FIFO of the density-ratio network, the environment
        m, f = len(data.rewards), args.init_online_fraction
        replay = PrioritizedReplay(m + args.online_steps, obs_dim, act_dim, device)
        replay.add(*dataset_rows(data), priority=1.0)
        replay.max_priority.fill_(m * f / ((1 - f) * 1000) if args.balanced_replay else 1.0)
        online = ReplayBuffer(args.online_buffer_size, obs_dim, act_dim, device)
        return replay, online, OnlineCollector(data.make_env, args.seed)

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {"actor": actor, "critic": critic, "critic_target": critic_target, "ratio": ratio, "alphas": alphas}
    trained |= {"actor_opt": actor_opt, "critic_opt": critic_opt, "ratio_opt": ratio_opt}
    trained |= {"online_actor_opt": online_actor_opt, "online_critic_opt": online_critic_opt}
    step, history, clock_state, extra = 0, [], None, {}
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state = extra["history"], extra.get("clock")
    elif args.from_run:  # the online phase starts where that offline run ended
        step, extra = load_offline_run(args.from_run, args.dataset, trained)
        history, args.num_updates = extra["history"], step
    writer = make_writer(args, run_dir, step)

    total = args.num_updates + args.online_steps
    replay = online = collector = None  # made at the switch
    if extra.get("collector"):
        replay, online, collector = start_online()
        for part, name in ((replay, "replay"), (online, "online"), (collector, "collector")):
            part.load_state_dict(extra[name])
    bar = tqdm(range(step + 1, total + 1), desc=SCRIPT_NAME, mininterval=2)
    clock, logs = TrainClock(clock_state), {}
    for step in bar:
        if step <= args.num_updates:
            logs = offline_update()
            clock.tick()
        else:  # online: an epoch of environment steps with the ensemble policy, then the epoch's updates
            if collector is None:
                replay, online, collector = start_online()
                critic_target.load_state_dict(critic.state_dict())  # the authors' targets: copies of the critics
                start = np.log(args.online_init_alpha) if args.online_init_alpha else log_alpha.exp().mean().log()
                online_log_alpha.data.fill_(start)
            rows = as_rows(collector.step(lambda o: act(o, deterministic=False), step), device, 0.0, 1.0)
            replay.add(*rows)
            online.add(*rows)
            epoch, into = divmod(step - args.num_updates, args.epoch_steps)  # updates only where an epoch ends
            for _ in range(0 if into else args.epoch_steps * (args.first_epoch_multiplier if epoch == 1 else 1)):
                logs = online_update(replay, online)
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
                parts = {"replay": replay, "online": online, "collector": collector}  # None before the switch
                extra = {k: v.state_dict() if v is not None else None for k, v in parts.items()}
                save_checkpoint(
                    checkpoint_path, step, trained, extra | {"history": history, "clock": clock.state_dict()}
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


# ---- shared: prioritized_replay ----
class PrioritizedReplay:
    """Transitions sampled in proportion to their priorities, all on the device: a sum tree (root at 1, leaf i at
    `leaves` + i) whose sampling descends every level for the whole batch at once, stratified (one draw in each of
    `batch` equal slices of the total). New transitions enter at the running maximum priority, or a given one."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.depth = max(1, (capacity - 1).bit_length())
        self.leaves = 1 << self.depth
        self.tree = torch.zeros(2 * self.leaves, dtype=torch.float64, device=device)  # float64: sums of millions
        self.max_priority = torch.ones((), dtype=torch.float64, device=device)
        self.data = {
            "observations": torch.zeros(capacity, obs_dim, device=device),
            "actions": torch.zeros(capacity, act_dim, device=device),
            "rewards": torch.zeros(capacity, device=device),
            "next_observations": torch.zeros(capacity, obs_dim, device=device),
            "terminals": torch.zeros(capacity, device=device),
        }

    def add(self, observations, actions, rewards, next_observations, terminals, priority=None) -> None:
        """Append a batch (the oldest rows are overwritten when full) at `priority`, or the running maximum."""
        n = min(len(rewards), self.capacity)
        idx = (self.pos + torch.arange(n, device=rewards.device)) % self.capacity
        for key, value in zip(self.data, (observations, actions, rewards, next_observations, terminals)):
            self.data[key][idx] = value[-n:].to(self.data[key].dtype)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
        self.update(
            idx,
            self.max_priority.expand(n) if priority is None else torch.full_like(idx, priority, dtype=torch.float64),
        )

    def update(self, idx: torch.Tensor, priorities: torch.Tensor) -> None:
        """Set the priorities of rows `idx` and every sum above them, level by level; the running maximum follows."""
        node = idx + self.leaves
        self.tree[node] = priorities.to(torch.float64)
        for _ in range(self.depth):
            node = node // 2
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]
        self.max_priority = torch.maximum(self.max_priority, priorities.max().to(torch.float64))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Row indices drawn with probability priority / total, and their transitions."""
        device = self.tree.device
        u = torch.arange(batch_size, device=device) + torch.rand(batch_size, device=device, dtype=torch.float64)
        u = u * (self.tree[1] / batch_size)
        node = torch.ones(batch_size, dtype=torch.long, device=device)
        for _ in range(self.depth):
            left = self.tree[2 * node]
            right = u > left
            u = torch.where(right, u - left, u)
            node = 2 * node + right.long()
        idx = (node - self.leaves).clamp(max=self.size - 1)  # a rounding step past the last row stays in
        return idx, tuple(v[idx] for v in self.data.values())

    def probabilities(self) -> torch.Tensor:
        """Each row's sampling probability (for tests and diagnostics)."""
        leaves = self.tree[self.leaves : self.leaves + self.size]
        return leaves / leaves.sum()

    def state_dict(self) -> dict:
        rows = {k: v[: self.size].cpu() for k, v in self.data.items()}
        priorities = self.tree[self.leaves : self.leaves + self.size].cpu()
        state = {"size": self.size, "pos": self.pos, "capacity": self.capacity, "max": self.max_priority.cpu()}
        return {**state, "priorities": priorities, **rows}

    def load_state_dict(self, state: dict) -> None:
        """Also into a buffer of another capacity (a resume that lengthens the run): the newest rows are kept, oldest
        first, with their priorities, and the next row goes after them."""
        self.size, self.pos = state["size"], state["pos"]
        resized = state.get("capacity", self.capacity) != self.capacity
        keep = (lambda rows: rows.roll(-self.pos, 0)[-self.capacity :]) if resized else (lambda rows: rows)
        for key, value in self.data.items():
            rows = keep(state[key])
            value[: len(rows)] = rows.to(value.device)
        if resized:
            self.size = min(self.size, self.capacity)
            self.pos = self.size % self.capacity
        self.tree.zero_()
        priorities = keep(state["priorities"]).to(self.tree.device)
        self.update(torch.arange(self.size, device=self.tree.device), priorities)
        self.max_priority = state["max"].to(self.tree.device)


# ---- end shared: prioritized_replay ----


if __name__ == "__main__":
    main()
