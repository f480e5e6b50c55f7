"""RAMBO: robust adversarial model-based offline reinforcement learning.

Rigter, Lacerda, Hawes. "RAMBO-RL: Robust Adversarial Model-Based Offline Reinforcement Learning",
NeurIPS 2022, https://arxiv.org/abs/2204.12581

Offline RL as a two-player game against the model. A probabilistic dynamics ensemble is fitted to the
dataset once; SAC learns on minibatches of real transitions (half) and short model rollouts (h steps)
started from dataset states, with no reward penalty. The pessimism is in the model instead: after every
epoch of SAC updates, the model is trained adversarially for as many steps, on rollouts of the current
policy, with the supervised Gaussian NLL on real transitions plus λ E[A(s, a, s') log P̂(s', r | s, a)],
where A = r + γ V(s') - Q(s, a) is the policy's advantage of the sampled transition, normalised over the
batch. Minimising the second term is a policy-gradient step for the model (the paper's Eq. 6) that lowers
the likelihood of transitions better than the policy expects and raises that of worse ones: the model
drifts toward low-value next states where the data does not pin it down, while the NLL keeps it
accurate on the data. The policy, trained in the model, so values states the data does not cover
pessimistically. The policy is first behaviour-cloned on the data.

The variant is the authors' code (marc-rigter/rambo, rambo/algorithms/rambo.py at be635eb,
_init_adversarial_model_update and _train_adversary; examples/config/rambo/): real ratio 0.5, 2000
epochs of 1000 SAC updates, after each 1000 adversary steps (lr 3e-4) on rollouts of 256 dataset states
for h steps with the stochastic policy (the rollout continues from the sampled next states, restarted
every h steps), the advantage from the current critics (minimum of the two) and the deterministic
action at s', the terminal function applied, no entropy term; log P̂ is the log-density of the sampled
(s', r) under the uniform mixture of the elites, as rollouts draw from it; the supervised loss on 256
real transitions per member; λ = 0 turns the adversary off entirely (their config walker2d-medium);
50,000 rollouts of length h every 1000 updates, the last 5 batches kept; SAC with actor lr 1e-4,
critic lr 3e-4, α tuned toward -|A| with lr 1e-4 (the actor's, softlearning) and not capped, a constant
actor learning rate, 2x256 networks. Per-dataset h and λ are theirs (benchmarks/configs/rambo/).

The reduction of the adversarial term (the peer bug). Their TensorFlow loss is a [batch] vector, λ A_b
log P̂_b plus the scalar NLL broadcast to it, and tf.train.Optimizer.minimize differentiates its sum:
B (∇NLL + λ mean_b ∇(A_b log P̂_b)). Adam is invariant to the constant factor B, so what the authors ran,
and tuned λ = 3e-4 on, is the batch MEAN of the adversarial term beside the scalar NLL, which this script
computes (adversarial_loss). OfflineRL-Kit's first port summed the term over the batch beside a scalar NLL
(its PR #1, after marc-rigter/rambo issue #1 read the vector as a sum), an adversary B = 256 times
stronger than the authors'; its users reported the critic loss exploding (6e11 after 700 epochs,
OfflineRL-Kit issue #3) until commit d78ebb8 (2023-03-16) took the mean. The same port also mixed the
elites per dimension instead of per joint density (fixed in b6052b8) and underflowed exp(log p) in float32
(5def8a8, float64 as the authors); the log-sum-exp here is exact in float32.

Departures, named: (1) the BC pretraining loss is OfflineRL-Kit's squared error of a reparameterised
action (offlinerlkit/policy/model_based/rambo.py, pretrain; 50 epochs, lr 1e-4, batch 256 as both), which
data at the action bounds cannot break; the authors' negative log-likelihood, which skips every batch
holding an action at a bound, is --bc-loss nll (actions clipped just inside the box instead). (2) The
model's supervised loss is the shared ensemble's (its log-variance bound term weighted 0.01 as MOPO's;
theirs 0.001), its weight decay in Adam as the block's training. (3) Next states sampled by the adversary
are kept in the data's range (plus a margin) and rewards in the data's, as the rollouts' are; the
log-density is that of the unclipped sample. (4) No observation normalisation for the policy (the
authors standardise observations; mopo.py and the shared SAC block do not). The dynamics ensemble and its
cache are the shared block's: the cached file is never written by this script; the ensemble adapted by the
adversary lives in the run and its checkpoint (with its optimiser), so --resume continues exactly.

Divergence is never silent, as in mopo.py: at every log step the mean Q on the real and on the model part
of the minibatch is checked against the values a policy can reach (SAC.check_values), and the run stops
with one line when it leaves them.

`--online-steps N` fine-tunes online after the offline phase (Lu et al. 2022's model-based rule, online_replay's
docstring); `--from-run RUN_DIR` starts it from a saved offline run.

Example:
    python algorithms/rambo.py --dataset shipped/pendulum-medium-replay --num-updates 10000 \\
        --rollout-batch-size 5000 --dynamics-max-epochs 50 --bc-updates 1000
    python algorithms/rambo.py --config benchmarks/configs/rambo/hopper-medium-v2.yaml

Logged (tensorboard, in the run directory):
    losses/bc_loss              the BC pretraining loss (at its last step, logged at update 0)
    losses/critic_loss          squared TD error of the critics against the soft target, summed over them
    losses/actor_loss           SAC's actor loss E[α log π(a|s) - min_i Q_i(s, a)], a ~ π(s)
    adversary/supervised_loss   the model's Gaussian NLL on real transitions (the last adversary step)
    adversary/adv_loss          mean_b A_b log P̂(s'_b, r_b | s_b, a_b), before λ
    adversary/log_prob          mean log P̂ of the sampled transitions under the mixture of the elites
    adversary/advantage         mean advantage r + γ V(s') - Q(s, a) before normalisation
    values/q_mean               mean Q(s, a) of the critics on the minibatch (real and model transitions)
    values/q_real, q_model      mean Q on the minibatch's real and model parts (the divergence check)
    values/q_reachable_low/high the range of Q-values a policy can reach (SAC.q_range)
    charts/alpha                SAC's temperature α
    charts/entropy              the policy's entropy estimate -E[log π(a|s)]
    rollout/reward              mean model reward of the last batch of model rollouts
    rollout/terminal_rate       the fraction of their transitions that terminate
    eval/return                 mean return of the evaluation episodes
    eval/normalized_score       their mean D4RL normalised score
    charts/updates_per_second   SAC updates per second of training (rollouts and adversary steps included;
    dynamics/refit_holdout_mse  online (--online-steps): the ensemble's mean holdout MSE after each refit
    online/train_episode_return online: the return of each training episode (the stochastic policy)
                                dynamics fit, BC and evaluation not)
"""

import contextlib
import copy
import ctypes
import fcntl
import hashlib
import json
import math
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
    dataset: str = "hopper-medium-v2"
    """D4RL name, Minari id, .hdf5 path or shipped/<name> (see the dataset block)"""
    seed: int = 0
    """seed of python, numpy, torch and the evaluation environments (and of the dynamics ensemble)"""
    num_updates: int = 2_000_000
    """SAC updates (the authors: 2000 epochs of 1000)"""
    # the dynamics ensemble (shared with mopo.py, mobile.py, combo.py, morel.py and mbpo.py through the cache)
    dynamics_members: int = 7
    """members of the probabilistic ensemble"""
    dynamics_elites: int = 5
    """members with the lowest holdout error used in rollouts"""
    dynamics_hidden_dim: int = 200
    """width of each member's hidden layers"""
    dynamics_hidden_layers: int = 4
    """hidden layers of each member"""
    dynamics_batch_size: int = 256
    """minibatch size of dynamics training (per member)"""
    dynamics_lr: float = 1e-3
    """Adam learning rate of dynamics training"""
    dynamics_holdout_size: int = 1000
    """holdout transitions for early stopping and elite choice (at most 20 % of the data)"""
    dynamics_patience: int = 5
    """stop after this many epochs in which no member improved by more than 1 % (the authors' RAMBO: 10; 5 keeps
    the ensemble every model-based script shares)"""
    dynamics_max_epochs: int = 0
    """cap on training epochs (0: no cap)"""
    dynamics_cosine_epochs: int = 0
    """> 0: anneal the ensemble's learning rate on a cosine to 2 % over this many epochs, then stop (early stopping
    still applies); 0: constant, the authors'"""
    dynamics_bf16: bool = False
    """train the ensemble with bfloat16 matrix products (autocast; holdout error and rollouts stay float32)"""
    dynamics_path: Optional[str] = None
    """a saved ensemble to use; it must have been trained on this dataset with these settings (never written)"""
    dynamics_cache_dir: Optional[str] = None
    """where trained ensembles are saved and looked up, one file per dataset, seed and settings
    (None: <runs_dir>/dynamics)"""
    # model rollouts
    rollout_length: int = 5
    """h: steps of each model rollout (and of each adversary rollout)"""
    rollout_batch_size: int = 50_000
    """rollouts started from dataset states each time"""
    rollout_every: int = 1000
    """updates between rollout batches (an epoch: the adversary trains after each)"""
    model_retain: int = 5
    """rollout batches kept in the model buffer"""
    real_ratio: float = 0.5
    """fraction of each minibatch from the dataset, the rest from the model buffer"""
    # the adversary
    adv_weight: float = 3e-4
    """λ: weight of the adversarial term beside the model's NLL (0: no adversarial training at all, as the
    authors' code; per dataset in the configs)"""
    adversary_steps: int = 1000
    """adversary updates of the model after every epoch of rollout_every SAC updates"""
    adversary_batch_size: int = 256
    """states of each adversary rollout, and real transitions per member in its supervised loss"""
    adversary_lr: float = 3e-4
    """Adam learning rate of the adversarial model updates"""
    # behaviour cloning before RL
    bc_epochs: int = 50
    """passes over the data of BC pretraining of the policy (the authors' and OfflineRL-Kit's 50)"""
    bc_updates: Optional[int] = None
    """BC steps instead of bc_epochs passes (None: bc_epochs passes; 0: no BC); the CPU configs scale it"""
    bc_lr: float = 1e-4
    """Adam learning rate of BC pretraining"""
    bc_loss: str = "mse"
    """"mse": squared error of a reparameterised action (OfflineRL-Kit) or "nll": -log π(a|s) (the authors)"""
    # SAC
    batch_size: int = 256
    """SAC minibatch size (real and model transitions together)"""
    hidden_dim: int = 256
    """width of the two hidden layers of actor and critics"""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor (and of BC)"""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics"""
    alpha_lr: float = 1e-4
    """Adam learning rate of log α (the authors: the actor's)"""
    gamma: float = 0.99
    """discount γ"""
    tau: float = 0.005
    """target smoothing coefficient τ"""
    target_entropy: Optional[float] = None
    """entropy target of α tuning (None: -|A|)"""
    alpha_max: Optional[float] = None
    """cap on α (None: no cap, the authors')"""
    cosine_actor_lr: bool = False
    """decay the actor's learning rate to 0 on a cosine over num_updates (off: the authors' constant rate)"""
    critic_members: int = 2
    """Q-functions of the critic; the target takes the minimum over all of them (2: SAC's clipped double Q)"""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of the critics"""
    stop_on_divergence: bool = True
    """stop the run, saying why, when the critic's mean Q leaves the range any policy can reach (SAC.check_values)"""
    eval_every: int = 10_000
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
    """torch.compile the SAC update"""
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
    online_keep: int = 0
    """dataset transitions kept in the online real buffer, drawn at random (0: all; Lu et al. keep 50,000)"""
    online_model_every: int = 1000
    """online steps between refits of the dynamics ensemble on the real buffer (Lu et al.: 1000)"""
    online_model_batches: int = 1000
    """most gradient batches of one refit (Lu et al.: 1000; holdout early stopping may end it sooner)"""


# Ranges of this method's own settings, checked with the general rules of the config block
# (counts >= 1, learning rates > 0, γ in (0, 1], fractions in [0, 1]) before anything runs.
LIMITS = {"adv_weight": "[0, inf)", "bc_epochs": "[0, inf)"}
CHOICES = {"bc_loss": ("mse", "nll")}


def bc_loss(actor: "TanhGaussianActor", obs: torch.Tensor, actions: torch.Tensor, kind: str) -> torch.Tensor:
    """BC pretraining: "mse", the squared error of a reparameterised action a ~ π(s) (OfflineRL-Kit), or "nll",
    -log π(a|s) of the data's action under the tanh-squashed Gaussian (the authors; the action is clipped just
    inside the box, where the authors skip the batch)."""
    if kind == "mse":
        return ((actor(obs)[0] - actions) ** 2).mean()
    mean, log_std = actor.head(actor.trunk(obs)).chunk(2, dim=-1)
    log_std = log_std.clamp(actor.LOG_STD_MIN, actor.LOG_STD_MAX)
    y = ((actions - actor.action_bias) / actor.action_scale).clamp(-1 + 1e-4, 1 - 1e-4)
    u = torch.atanh(y)
    gauss = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -(gauss - torch.log1p(-(y**2)).sum(-1) - torch.log(actor.action_scale).sum()).mean()


def mixture_log_prob(
    mean: torch.Tensor, logvar: torch.Tensor, sample: torch.Tensor, elite_idx: torch.Tensor
) -> torch.Tensor:
    """log P̂(s', r | s, a) of each sampled [Δobs, reward] row under the uniform mixture of the elites' Gaussians,
    from which rollouts draw: log (1/K) Σ_k N(sample; μ_k, σ_k²), a log-sum-exp over the elites of each member's
    joint (summed over dims) log-density. mean, logvar [members, batch, dims], sample [batch, dims]; returns
    [batch], differentiable in mean and logvar. (A shift by s is a translation: the density of s' is that of Δs.)"""
    mean, logvar = mean[elite_idx], logvar[elite_idx]
    member = -0.5 * (((sample - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
    return torch.logsumexp(member, 0) - math.log(len(elite_idx))


def normalised_advantage(advantage: torch.Tensor) -> torch.Tensor:
    """The authors' batch normalisation of the advantage: zero mean, unit (population) standard deviation."""
    return (advantage - advantage.mean()) / (advantage.std(correction=0) + 1e-6)


def adversarial_loss(log_prob: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 6 as a loss to minimise: mean_b A_b log P̂_b (the MEAN over the batch, see the docstring).
    Its gradient step lowers the likelihood of transitions with A > 0 and raises that of those with A < 0."""
    return (advantage.detach() * log_prob).mean()


def adversary_step(
    model: "EnsembleDynamics",
    optimizer: torch.optim.Optimizer,
    agent: "SAC",
    obs: torch.Tensor,
    real: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    done_fn: Callable,
    adv_weight: float,
    gamma: float,
) -> tuple[torch.Tensor, dict]:
    """One adversarial update of the model (all members in one batched pass) at the rollout states `obs`, with
    the supervised NLL on `real` = (obs, actions, targets), each [members, batch, ·]. Returns the next states
    (a sample from a random elite, as in rollouts) and the step's statistics as detached tensors."""
    with torch.no_grad():
        actions, _ = agent.actor(obs)
    mean, logvar = model(obs, actions)
    with torch.no_grad():
        rows = torch.arange(obs.shape[0], device=obs.device)
        pick = model.elite_idx[torch.randint(0, model.num_elites, (obs.shape[0],), device=obs.device)]
        sample = mean[pick, rows] + torch.exp(0.5 * logvar[pick, rows]) * torch.randn_like(mean[0])
        next_obs = torch.maximum(torch.minimum(obs + sample[:, :-1], model.obs_high), model.obs_low)
        reward = sample[:, -1].clamp(model.reward_range[0], model.reward_range[1])
        next_actions, _ = agent.actor(next_obs, deterministic=True)
        value = reward + gamma * (1.0 - done_fn(next_obs).float()) * agent.critic(next_obs, next_actions).min(0).values
        advantage = value - agent.critic(obs, actions).min(0).values
    log_prob = mixture_log_prob(mean, logvar, sample, model.elite_idx)
    supervised = model.loss(*real)
    adv = adversarial_loss(log_prob, normalised_advantage(advantage))
    optimizer.zero_grad(set_to_none=True)
    (supervised + adv_weight * adv).backward()
    optimizer.step()
    return next_obs, {
        "adversary/supervised_loss": supervised.detach(),
        "adversary/adv_loss": adv.detach(),
        "adversary/log_prob": log_prob.detach().mean(),
        "adversary/advantage": advantage.mean(),
    }


@torch.no_grad()
def rollout(
    model: "EnsembleDynamics", actor: "TanhGaussianActor", start_obs: torch.Tensor, horizon: int, done_fn: Callable
) -> tuple[tuple[torch.Tensor, ...], dict]:
    """h-step rollouts of the current policy in the (adversarially trained) model, rewards as it predicts them
    (no penalty); a rollout stops where it terminates."""
    obs, steps = start_obs, []
    for _ in range(horizon):
        actions, _ = actor(obs)
        next_obs, reward, _, _ = model.step(obs, actions)  # sampled from a random elite
        done = done_fn(next_obs)
        steps.append((obs, actions, reward, next_obs, done.float()))
        obs = next_obs[~done]
        if len(obs) == 0:
            break
    batch = tuple(torch.cat(x) for x in zip(*steps))
    return batch, {"rollout/reward": batch[2].mean(), "rollout/terminal_rate": batch[4].mean()}


def online_replay(data, args: Args) -> "ReplayBuffer":
    """RAMBO online (--online-steps), Lu et al. 2022's model-based fine-tuning: the real buffer is the dataset (all
    of it, or --online-keep transitions drawn at random) plus every online transition; one environment step with the
    stochastic policy and one update per step, the offline update unchanged: the real half of each batch from the
    real buffer, the rest from rollouts started from real-buffer states. The game goes on: after every epoch of
    updates the adversary's turn, its supervised NLL now on the real buffer and its rollouts from real-buffer states,
    so the model stays pessimistic where even the grown data say little; besides, every --online-model-every steps
    the ensemble is refitted on the real buffer (refit_dynamics; the model, adversarially trained and refitted, is in
    the checkpoint as offline). No BC pretraining at the switch or with --from-run."""
    rows = dataset_rows(data, args.online_keep, args.seed)
    replay = ReplayBuffer(len(rows[2]) + args.online_steps, rows[0].shape[1], rows[1].shape[1], rows[2].device)
    replay.add(*rows)
    return replay


def main():
    args = parse_args(Args, LIMITS, CHOICES)
    real_batch = int(args.batch_size * args.real_ratio)
    if not 0 < real_batch < args.batch_size:
        sys.exit(
            f"error: --real-ratio {args.real_ratio} leaves {real_batch} real and {args.batch_size - real_batch} model "
            "transitions in a minibatch; the divergence check needs both: choose a ratio strictly between 0 and 1"
        )
    if args.bc_updates is not None and args.bc_updates < 0:
        sys.exit(f"error: --bc-updates {args.bc_updates} is out of range: it must be >= 0 (0: no BC), or None")
    set_seed(args.seed)
    device = pick_device(args.device, args.threads)
    try:
        data = load_dataset(args.dataset, device)
    except DatasetError as e:
        sys.exit(f"error: {e}")
    obs_dim, act_dim = data.observations.shape[1], data.actions.shape[1]
    # the ensemble as loaded (or trained and cached): the adversary adapts this in-memory copy, never the file
    model = load_or_train_dynamics(
        data,
        dynamics_settings(args),
        args.seed,
        args.dynamics_cache_dir or os.path.join(args.runs_dir, "dynamics"),
        args.dynamics_path,
        device,
    )
    model_opt = torch.optim.Adam(model.optimizer_groups(), lr=args.adversary_lr, fused=True)
    done_fn, done_source = termination_fn(data)
    print(f"termination: {done_source}")
    observed = data.next_observed if data.next_observed is not None else torch.ones_like(data.rewards, dtype=torch.bool)
    real_obs, real_act = data.observations[observed], data.actions[observed]  # the model's supervised data
    real_targets = torch.cat([data.next_observations[observed] - real_obs, data.rewards[observed, None]], -1)

    probe = data.make_env()
    agent = SAC(
        obs_dim,
        act_dim,
        probe.action_space.low,
        probe.action_space.high,
        args.hidden_dim,
        args.actor_lr,
        args.critic_lr,
        args.alpha_lr,
        args.gamma,
        args.tau,
        args.target_entropy,
        alpha_max=args.alpha_max,
        critic_members=args.critic_members,
        critic_layer_norm=args.critic_layer_norm,
        cosine_actor_steps=args.num_updates if args.cosine_actor_lr else 0,
    ).to(device)
    probe.close()
    model_buffer = ReplayBuffer(
        args.rollout_batch_size * args.rollout_length * args.model_retain, obs_dim, act_dim, device
    )
    update = torch.compile(agent.update) if args.compile else agent.update

    @torch.no_grad()
    def act(obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return agent.actor(obs, deterministic=deterministic)[0].cpu().numpy()

    run_dir = make_run_dir(args, args.dataset)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
    trained = {
        "agent": agent,
        **agent.optimizers(),
        "model_buffer": model_buffer,
        "model": model,
        "model_opt": model_opt,
    }
    step, history, clock_state, extra = 0, [], None, {}
    if args.resume:
        step, extra = load_checkpoint(checkpoint_path, trained)
        history, clock_state = extra["history"], extra.get("clock")
    elif args.from_run:  # the online phase starts where that offline run ended
        step, extra = load_offline_run(args.from_run, args.dataset, trained)
        history, args.num_updates = extra["history"], step
    writer = make_writer(args, run_dir, step)

    total, real, collector = args.num_updates + args.online_steps, data, None  # real: the dataset, then online_replay's
    if extra.get("collector"):
        real, collector = online_replay(data, args), OnlineCollector(data.make_env, args.seed)
        real.load_state_dict(extra["replay"])
        collector.load_state_dict(extra["collector"])

    def real_rows() -> tuple[torch.Tensor, ...]:  # the dataset offline, the real buffer online
        return tuple(v[: real.size] for v in real.data.values()) if collector else dataset_rows(data)

    if (
        not args.resume and not args.from_run
    ):  # behaviour cloning of the policy before RL (its own Adam, dropped afterwards)
        bc_steps = args.bc_updates if args.bc_updates is not None else args.bc_epochs * max(len(data.rewards) // 256, 1)
        bc_opt = torch.optim.Adam(agent.actor.parameters(), lr=args.bc_lr)
        for _ in tqdm(range(bc_steps), desc="bc", mininterval=2):
            obs, actions = data.sample(256)[:2]
            loss = bc_loss(agent.actor, obs, actions, args.bc_loss)
            bc_opt.zero_grad(set_to_none=True)
            loss.backward()
            bc_opt.step()
        if bc_steps:
            log_scalars(writer, {"losses/bc_loss": loss.detach()}, 0)

    bar = tqdm(range(step + 1, total + 1), desc=SCRIPT_NAME, mininterval=2)
    clock, rollout_stats, adversary_stats = TrainClock(clock_state), {}, {}
    for step in bar:
        if step > args.num_updates:  # online: one environment step with the stochastic policy, one update
            if collector is None:
                real, collector = online_replay(data, args), OnlineCollector(data.make_env, args.seed)
                agent.actor_opt.param_groups[0]["lr"] = args.actor_lr  # base value online: a finished cosine leaves 0
            real.add(*as_rows(collector.step(lambda o: act(o, deterministic=False), step), device, 0.0, 1.0))
            if (step - args.num_updates) % args.online_model_every == 0:
                with clock.paused():
                    fit = refit_dynamics(model, real_rows(), dynamics_settings(args), args.online_model_batches)
                log_scalars(writer, {"dynamics/refit_holdout_mse": fit["holdout_mse"].mean()}, step)
        if (step - 1) % args.rollout_every == 0:
            if step > 1 and args.adv_weight > 0:  # the adversary's turn after each epoch of SAC updates
                if collector is not None:  # online: its supervised NLL on the real buffer
                    real_obs, real_act, real_rewards, real_next, _ = real_rows()
                    real_targets = torch.cat([real_next - real_obs, real_rewards[:, None]], -1)
                starts = real_rows()[0]
                for i in range(args.adversary_steps):
                    if i % args.rollout_length == 0:  # rollouts of h steps from real states
                        obs = starts[torch.randint(0, len(starts), (args.adversary_batch_size,), device=device)]
                    idx = torch.randint(0, len(real_obs), (model.members, args.adversary_batch_size), device=device)
                    obs, adversary_stats = adversary_step(
                        model,
                        model_opt,
                        agent,
                        obs,
                        (real_obs[idx], real_act[idx], real_targets[idx]),
                        done_fn,
                        args.adv_weight,
                        args.gamma,
                    )
            start = real_rows()[0][torch.randint(0, len(real_rows()[0]), (args.rollout_batch_size,), device=device)]
            batch, rollout_stats = rollout(model, agent.actor, start, args.rollout_length, done_fn)
            model_buffer.add(*batch)
        real_part, imagined = real.sample(real_batch), model_buffer.sample(args.batch_size - real_batch)
        logs = update(*(torch.cat([r, m]) for r, m in zip(real_part, imagined)))
        if collector is None:
            agent.actor_schedule.step()
        clock.tick()

        if step % args.log_every == 0:
            real_rewards = real_rows()[2]
            reward_low = torch.minimum(real_rewards.min(), model_buffer.data["rewards"][: model_buffer.size].min())
            values, problem = agent.check_values(
                {"real": real_part[:2], "model": imagined[:2]},
                reward_low.item(),
                real_rewards.max().item(),
                # for a policy as random as this one (mopo's rule), from the second epoch on; in the first, the
                # range of every policy's values: the critic starts at 0, above what a BC policy's entropy allows
                logs["charts/entropy"].item() if step > args.rollout_every else None,
            )
            log_scalars(writer, logs | rollout_stats | adversary_stats | values, step)
            if problem and args.stop_on_divergence:
                stop_run(run_dir, writer, problem)
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
                online = {"replay": real, "collector": collector} if collector else {}
                extra = {"history": history, "clock": clock.state_dict()}
                save_checkpoint(checkpoint_path, step, trained, extra | {k: v.state_dict() for k, v in online.items()})

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


# ---- shared: dynamics_ensemble ----
class EnsembleDynamics(nn.Module):
    """Probabilistic ensemble of Gaussian models of [Δobservation, reward] given (obs, action).

    MBPO/MOPO lineage: `members` MLPs (4×200 SiLU) evaluated as one batched computation,
    inputs standardised with the training split's statistics, log-variance soft-bounded by
    learned `max_logvar` / `min_logvar`, per-layer weight decay. After training, `elite_idx`
    names the members with the lowest holdout error; rollouts draw one elite per transition.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        members: int = 7,
        elites: int = 5,
        hidden_dim: int = 200,
        hidden_layers: int = 4,
        weight_decays: Optional[tuple] = None,
    ):
        super().__init__()
        if weight_decays is None:  # MBPO's per-layer decays for 4 hidden layers, the same range spread otherwise
            weight_decays = (
                (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4)
                if hidden_layers == 4
                else tuple(np.linspace(2.5e-5, 1e-4, hidden_layers + 1))
            )
        if len(weight_decays) != hidden_layers + 1:
            raise ValueError("one weight decay per layer (hidden layers + output layer)")
        self.obs_dim, self.members, self.num_elites = obs_dim, members, elites
        sizes = [obs_dim + act_dim] + [hidden_dim] * hidden_layers + [2 * (obs_dim + 1)]
        self.layers = nn.ModuleList(EnsembleLinear(i, o, members) for i, o in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:  # truncated normal, std 1 / (2 sqrt(fan_in)), zero bias
            nn.init.trunc_normal_(layer.weight, std=1 / (2 * np.sqrt(layer.weight.shape[1])))
            nn.init.zeros_(layer.bias)
        self.weight_decays = weight_decays
        self.max_logvar = nn.Parameter(torch.full((obs_dim + 1,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((obs_dim + 1,), -10.0))
        self.register_buffer("input_mean", torch.zeros(obs_dim + act_dim))
        self.register_buffer("input_std", torch.ones(obs_dim + act_dim))
        self.register_buffer("elite_idx", torch.arange(elites))
        # bounds that keep imagined values finite: observed range plus a margin, observed rewards
        self.register_buffer("obs_low", torch.full((obs_dim,), -float("inf")))
        self.register_buffer("obs_high", torch.full((obs_dim,), float("inf")))
        self.register_buffer("reward_range", torch.tensor([-float("inf"), float("inf")]))

    def forward(
        self, obs: torch.Tensor, actions: torch.Tensor, members: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of [Δobs, reward], each [members, batch, obs_dim + 1].

        `members` (indices) evaluates only those members, e.g. the elites in rollouts.
        """
        x = (torch.cat([obs, actions], -1) - self.input_mean) / self.input_std
        for i, layer in enumerate(self.layers):
            weight, bias = (
                (layer.weight, layer.bias) if members is None else (layer.weight[members], layer.bias[members])
            )
            x = torch.baddbmm(bias, x.expand(weight.shape[0], *x.shape[-2:]) if x.dim() == 2 else x, weight)
            if i < len(self.layers) - 1:
                x = F.silu(x)
        mean, logvar = x.chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Gaussian NLL per member (mean over batch and dims), summed, plus the log-variance bound term.

        The per-layer weight decay ½·wd·‖W‖² is not here: the optimiser adds its gradient wd·W
        (Adam's weight_decay, see optimizer_groups), the same update without a pass over the weights.
        """
        mean, logvar = self(obs, actions)
        nll = (((mean - targets) ** 2) * torch.exp(-logvar) + logvar).mean((1, 2)).sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    def optimizer_groups(self) -> list[dict]:
        """Adam parameter groups: each layer's weights with its own decay, everything else without."""
        groups = [{"params": [layer.weight], "weight_decay": wd} for wd, layer in zip(self.weight_decays, self.layers)]
        decayed = {id(layer.weight) for layer in self.layers}
        return groups + [{"params": [p for p in self.parameters() if id(p) not in decayed], "weight_decay": 0.0}]

    @torch.no_grad()
    def step(
        self, obs: torch.Tensor, actions: torch.Tensor, all_members: bool = False, chunk: int = 8192
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One imagined transition per row, sampled from a random elite, and the members' predictions.

        Returns next_obs, reward, and the means and stds of [Δobs, reward], each [members, batch,
        obs_dim + 1], of the elites (or of every member with `all_members`), from which each method
        computes its own uncertainty. Large batches go through in chunks, so activations stay in
        cache (the same numbers).
        """
        if len(obs) > chunk:
            parts = [
                self.step(obs[i : i + chunk], actions[i : i + chunk], all_members, chunk)
                for i in range(0, len(obs), chunk)
            ]
            return tuple(torch.cat(p, dim=0 if k < 2 else 1) for k, p in enumerate(zip(*parts)))
        mean, logvar = self(obs, actions, members=None if all_members else self.elite_idx)
        std = torch.exp(0.5 * logvar)
        pick = torch.randint(0, self.num_elites, (obs.shape[0],), device=obs.device)
        pick = self.elite_idx[pick] if all_members else pick
        rows = torch.arange(obs.shape[0], device=obs.device)
        sample = mean[pick, rows] + std[pick, rows] * torch.randn_like(mean[0])
        next_obs = torch.maximum(torch.minimum(obs + sample[:, :-1], self.obs_high), self.obs_low)
        reward = sample[:, -1].clamp(self.reward_range[0], self.reward_range[1])
        return next_obs, reward, mean, std


def train_dynamics(
    model: EnsembleDynamics,
    data: OfflineData,
    batch_size: int = 256,
    lr: float = 1e-3,
    holdout_size: int = 1000,
    patience: int = 5,
    max_epochs: int = 0,
    obs_margin: float = 0.1,
    bf16: bool = False,
    cosine_epochs: int = 0,
) -> dict:
    """Fit the ensemble: bootstrap per member, holdout early stopping per member, elites.

    A member's snapshot is kept when its holdout MSE improves by more than 1 %; training stops
    when no member improved for `patience` epochs (or after `max_epochs` > 0). Every member
    is restored to its best snapshot and the `elites` with the lowest holdout MSE are chosen.
    `bf16` runs the training passes' matrix products in bfloat16 (autocast; weights, Adam and
    the holdout error stay float32), which pays where the hardware has bf16 units.
    `cosine_epochs` > 0 anneals the learning rate from `lr` to 2 % of it on a cosine over that many
    epochs and ends training there (early stopping still applies); 0 keeps `lr` constant (the authors').
    """
    observed = data.next_observed if data.next_observed is not None else torch.ones_like(data.rewards, dtype=torch.bool)
    inputs_obs, inputs_act = data.observations[observed], data.actions[observed]  # no stand-in next observations
    targets = torch.cat([data.next_observations[observed] - inputs_obs, data.rewards[observed, None]], -1)
    n, device, E = len(targets), targets.device, model.members
    perm = torch.randperm(n, device=device)
    n_hold = min(holdout_size, n // 5)
    hold, train = perm[:n_hold], perm[n_hold:]
    train_inputs = torch.cat([inputs_obs[train], inputs_act[train]], -1)
    model.input_mean.copy_(train_inputs.mean(0))
    std = train_inputs.std(0)
    model.input_std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))
    span = data.observations.amax(0) - data.observations.amin(0)
    model.obs_low.copy_(data.observations.amin(0) - obs_margin * span)
    model.obs_high.copy_(data.observations.amax(0) + obs_margin * span)
    model.reward_range.copy_(torch.stack([data.rewards.min(), data.rewards.max()]))
    bootstrap = train[torch.randint(0, len(train), (E, len(train)), device=device)]  # one resample per member
    optimizer = torch.optim.Adam(model.optimizer_groups(), lr=lr, fused=True)
    member_params = [p for layer in model.layers for p in (layer.weight, layer.bias)]

    def holdout_mse() -> torch.Tensor:
        with torch.no_grad():
            mean, _ = model(inputs_obs[hold], inputs_act[hold])
            return ((mean - targets[hold]) ** 2).mean((1, 2))

    best = holdout_mse()
    snapshot = [p.detach().clone() for p in member_params]
    epoch, stale, history, seconds, start_time = 0, 0, [], [], time.time()
    bar = tqdm(desc="dynamics", unit="epoch", mininterval=2)
    while True:
        epoch += 1
        if cosine_epochs:
            for group in optimizer.param_groups:
                group["lr"] = lr * float(0.02 + 0.49 * (1 + np.cos(np.pi * (epoch - 1) / cosine_epochs)))
        order = bootstrap.gather(1, torch.argsort(torch.rand(E, len(train), device=device), dim=1))
        for start in range(0, len(train), batch_size):
            idx = order[:, start : start + batch_size]  # [E, B]: each member its own minibatch
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(inputs_obs[idx], inputs_act[idx], targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        mse = holdout_mse()
        improved = (best - mse) / best > 0.01
        if improved.any():
            best = torch.where(improved, mse, best)
            for p, s in zip(member_params, snapshot):
                s[improved] = p.detach()[improved]
            stale = 0
        else:
            stale += 1
        history.append(mse.tolist())
        seconds.append(time.time() - start_time)
        bar.update(1)
        bar.set_postfix(holdout_mse=f"{mse.mean().item():.4f}")
        if stale >= patience or (max_epochs and epoch >= max_epochs) or (cosine_epochs and epoch >= cosine_epochs):
            break
    bar.close()
    with torch.no_grad():
        for p, s in zip(member_params, snapshot):
            p.copy_(s)
        model.elite_idx.copy_(torch.argsort(best)[: model.num_elites])
    # history: each member's holdout MSE after every epoch; seconds: the time at the end of every epoch
    return {
        "epochs": epoch,
        "holdout_mse": best.tolist(),
        "elites": model.elite_idx.tolist(),
        "history": history,
        "seconds": seconds,
    }


def refit_dynamics(
    model: EnsembleDynamics,
    rows: tuple[torch.Tensor, ...],
    settings: dict,
    max_batches: int = 1000,
    check_every: int = 100,
    obs_margin: float = 0.1,
) -> dict:
    """Online fine-tuning: refit the ensemble on the real buffer `rows` (obs, actions, rewards, next_obs, terminals:
    the dataset's kept transitions and every online one), as Lu et al. 2022 do every 1000 environment steps
    (Mr-Pepe/offline-model-based-rl, benchmark/evaluation/finetuning.py: at most 1000 batches, patience 5).

    Warm-started from the current weights; each member draws its own minibatches (with replacement) from the
    training split, at most `max_batches` of them; every `check_every` batches the holdout MSE is measured, a member's
    snapshot kept when it improves by more than 1 %, and the refit stops after `patience` checks with no improvement.
    Every member ends at its best snapshot (never worse on the holdout than before the refit), and the elites are
    chosen anew. The input standardisation stays the offline fit's (the warm-started weights were learned in its
    units); the bounds on imagined observations and rewards widen to the buffer's range. A fresh Adam each time, and
    the caller's RNG (a resumed run refits as an uninterrupted one). Nothing is written: the cached ensemble file of
    the offline phase stays as it was, and the refitted one lives in the run's checkpoint. `settings`: those of
    dynamics_settings (batch_size, lr, holdout_size, patience are used).
    """
    batch_size, lr, holdout_size, patience = (settings[k] for k in ("batch_size", "lr", "holdout_size", "patience"))
    obs, actions, rewards, next_obs, terminals = rows
    stand_in = (terminals > 0) & (next_obs == obs).all(-1)  # the dataset block's stand-in for an unknown s' (not fit)
    obs, actions, rewards, next_obs = (x[~stand_in] for x in (obs, actions, rewards, next_obs))
    targets = torch.cat([next_obs - obs, rewards[:, None]], -1)
    n, device, E = len(targets), targets.device, model.members
    perm = torch.randperm(n, device=device)
    n_hold = min(holdout_size, n // 5)
    hold, train = perm[:n_hold], perm[n_hold:]
    span = obs.amax(0) - obs.amin(0)
    with torch.no_grad():
        model.obs_low.copy_(torch.minimum(model.obs_low, obs.amin(0) - obs_margin * span))
        model.obs_high.copy_(torch.maximum(model.obs_high, obs.amax(0) + obs_margin * span))
        model.reward_range.copy_(
            torch.stack([model.reward_range[0].minimum(rewards.min()), model.reward_range[1].maximum(rewards.max())])
        )
    optimizer = torch.optim.Adam(model.optimizer_groups(), lr=lr, fused=True)
    member_params = [p for layer in model.layers for p in (layer.weight, layer.bias)]

    def holdout_mse() -> torch.Tensor:
        with torch.no_grad():
            mean, _ = model(obs[hold], actions[hold])
            return ((mean - targets[hold]) ** 2).mean((1, 2))

    best = before = holdout_mse()
    snapshot = [p.detach().clone() for p in member_params]
    batches, stale = 0, 0
    while batches < max_batches and stale < patience:
        for _ in range(min(check_every, max_batches - batches)):
            idx = train[torch.randint(0, len(train), (E, batch_size), device=device)]  # [E, B]: each member its own
            loss = model.loss(obs[idx], actions[idx], targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batches += 1
        mse = holdout_mse()
        improved = (best - mse) / best > 0.01
        stale = 0 if improved.any() else stale + 1
        best = torch.where(improved, mse, best)
        with torch.no_grad():
            for p, s in zip(member_params, snapshot):
                s[improved] = p.detach()[improved]
    with torch.no_grad():
        for p, s in zip(member_params, snapshot):
            p.copy_(s)
        model.elite_idx.copy_(torch.argsort(best)[: model.num_elites])
    return {"batches": batches, "holdout_before": before, "holdout_mse": best, "elites": model.elite_idx.clone()}


def dynamics_settings(args) -> dict:
    """The settings a trained ensemble depends on (with the data and the seed, its cache key): the
    Args fields named dynamics_*, less the two that say where it is stored. Options added after
    the first ensembles were cached (bf16, cosine_epochs) are left out while off, so those files
    keep matching the runs that would train them the same way."""
    if args.dynamics_elites > args.dynamics_members:
        sys.exit(f"error: --dynamics-elites {args.dynamics_elites} exceeds --dynamics-members {args.dynamics_members}")
    return {
        k[len("dynamics_") :]: v
        for k, v in asdict(args).items()
        if k.startswith("dynamics_")
        and k not in ("dynamics_path", "dynamics_cache_dir")
        and (v or k not in ("dynamics_bf16", "dynamics_cosine_epochs"))
    }


def dynamics_fingerprint(data: OfflineData, settings: dict, seed: int) -> dict:
    """What a trained ensemble depends on: the exact data, the model settings and the seed."""
    digest = hashlib.sha1()
    for tensor in (data.observations, data.actions, data.rewards, data.next_observations, data.terminals):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return {
        "dataset": data.name,
        "transitions": len(data.rewards),
        "data_sha1": digest.hexdigest(),
        "seed": seed,
        **settings,
    }


def load_or_train_dynamics(
    data: OfflineData, settings: dict, seed: int, cache_dir: str, path: Optional[str], device: torch.device
) -> EnsembleDynamics:
    """Train once, reuse: an ensemble saved with its fingerprint is loaded when it matches.

    `path` (explicit) must exist and match; otherwise the cache file named by the fingerprint
    in `cache_dir` is used when present and trained and written when absent.
    """
    fingerprint = dynamics_fingerprint(data, settings, seed)
    key = hashlib.sha1(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", data.name).strip("-")
    if path is not None and not os.path.isfile(path):
        sys.exit(
            f"error: dynamics file {path!r} does not exist; drop --dynamics-path to train (and cache) a new ensemble"
        )
    path = path or os.path.join(cache_dir, f"{safe}__seed{seed}__{key}.pt")
    model_args = {k: settings[k] for k in ("members", "elites", "hidden_dim", "hidden_layers")}
    model = EnsembleDynamics(data.observations.shape[1], data.actions.shape[1], **model_args).to(device)
    if len(data.rewards) < 10:
        sys.exit(f"error: {data.name} has {len(data.rewards)} transitions; the dynamics ensemble needs at least 10")
    check_writable(os.path.dirname(os.path.abspath(path)), "the dynamics cache folder")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:  # two runs that need the same ensemble train it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _load_or_train(model, data, settings, fingerprint, seed, path, device)


def _load_or_train(
    model: EnsembleDynamics,
    data: OfflineData,
    settings: dict,
    fingerprint: dict,
    seed: int,
    path: str,
    device: torch.device,
) -> EnsembleDynamics:
    """The body of load_or_train_dynamics, run while holding the cache file's lock."""
    saved = None
    if os.path.isfile(path):
        try:
            saved = torch.load(path, map_location=device, weights_only=False)
            saved["fingerprint"], saved["model"], saved["log"]
        except Exception as e:  # truncated or corrupt: keep it for a look, train a new one
            os.replace(path, path + ".corrupt")
            print(f"dynamics: {path} is unreadable ({type(e).__name__}); moved it to {path}.corrupt, training anew")
            saved = None
    if saved is not None:
        if saved["fingerprint"] != fingerprint:
            diff = sorted(
                k
                for k in set(fingerprint) | set(saved["fingerprint"])
                if fingerprint.get(k) != saved["fingerprint"].get(k)
            )
            sys.exit(
                f"error: dynamics file {path} was trained with other {', '.join(diff)} than this run; "
                "delete it, or drop --dynamics-path, or run with the settings it was made with"
            )
        model.load_state_dict(saved["model"])
        print(
            f"dynamics: reusing {path} (holdout MSE of elites "
            f"{np.mean([saved['log']['holdout_mse'][i] for i in saved['log']['elites']]):.4f})"
        )
        return model
    start = time.time()
    # a private random stream: training gives the same model, and leaves the caller's RNG where
    # a cache hit would, so a run's numbers do not depend on whether the cache had the model
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        log = train_dynamics(
            model,
            data,
            batch_size=settings["batch_size"],
            lr=settings["lr"],
            holdout_size=settings["holdout_size"],
            patience=settings["patience"],
            max_epochs=settings["max_epochs"],
            bf16=settings.get("bf16", False),
            cosine_epochs=settings.get("cosine_epochs", 0),
        )
    log["train_time_s"] = time.time() - start
    state = {"fingerprint": fingerprint, "model": model.state_dict(), "log": log}
    write_atomically(path, lambda tmp: torch.save(state, tmp), "trained dynamics ensemble")
    print(f"dynamics: trained {log['epochs']} epochs in {log['train_time_s']:.0f} s, saved to {path}")
    return model


# ---- end shared: dynamics_ensemble ----


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


# ---- shared: sac_agent ----
class TanhGaussianActor(nn.Module):
    """Tanh-squashed Gaussian policy, rescaled to the action box (SAC, Appendix C)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        hidden_layers: int = 2,
    ):
        super().__init__()
        dims = [obs_dim] + [hidden_dim] * hidden_layers
        self.trunk = nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(hidden_dim, 2 * act_dim)
        low, high = torch.as_tensor(action_low, dtype=torch.float32), torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """An action and its log-probability (None for the deterministic mean action)."""
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        if deterministic:
            return torch.tanh(mean) * self.action_scale + self.action_bias, None
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        noise = torch.randn_like(mean)
        u = mean + log_std.exp() * noise
        gauss_logp = (-0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        # change of variables through tanh: log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))
        squash = (2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        log_prob = gauss_logp - squash - torch.log(self.action_scale).sum()
        return torch.tanh(u) * self.action_scale + self.action_bias, log_prob


class QEnsemble(nn.Module):
    """`members` Q-functions as one batched network: Q(s, a) has shape [members, batch]."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden_dim: int,
        members: int = 2,
        layer_norm: bool = False,
        hidden_layers: int = 2,
    ):
        super().__init__()
        norm = (lambda: nn.LayerNorm(hidden_dim, elementwise_affine=False)) if layer_norm else nn.Identity
        dims = [obs_dim + act_dim] + [hidden_dim] * hidden_layers
        hidden = [m for a, b in zip(dims[:-1], dims[1:]) for m in (EnsembleLinear(a, b, members), norm(), nn.ReLU())]
        self.net = nn.Sequential(*hidden, EnsembleLinear(hidden_dim, 1, members))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)

    def frozen(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q with the weights detached: the actor loss needs dQ/da, not the critic's weight gradients
        (the same numbers as forward; unlike toggling requires_grad, it compiles)."""
        x = torch.cat([obs, action], -1)
        for layer in self.net:
            if isinstance(layer, EnsembleLinear):
                weight, bias = layer.weight.detach(), layer.bias.detach()
                x = torch.baddbmm(bias, x.expand(weight.shape[0], *x.shape) if x.dim() == 2 else x, weight)
            else:
                x = layer(x)
        return x.squeeze(-1)


class SAC(nn.Module):
    """Soft actor-critic learner (Haarnoja et al., 2018) with clipped double Q and auto-tuned α.

    `update` takes one minibatch (obs, actions, rewards, next_obs, terminals) and returns
    its statistics as detached tensors named by their tensorboard keys (no device synchronisation).
    Actor and critics have `hidden_layers` hidden layers of `hidden_dim` units (SAC's 2 by default).
    Options: the critics' number (`critic_members`, the target takes the minimum over all) and
    LayerNorm after each hidden layer (`critic_layer_norm`, which bounds how far Q can extrapolate,
    Ball et al., ICML 2023), α capped at `alpha_max` (OfflineRL-Kit caps it at 1), and the actor's
    learning rate decayed to 0 on a cosine over `cosine_actor_steps` updates (OfflineRL-Kit; step
    `actor_schedule` once per update), a target without the entropy term (`deterministic_backup`,
    the soft values then being plain returns) and a lower bound on the target (`target_min`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        hidden_dim: int = 256,
        actor_lr: float = 3e-4,
        critic_lr: float = 3e-4,
        alpha_lr: float = 3e-4,
        gamma: float = 0.99,
        tau: float = 0.005,
        target_entropy: Optional[float] = None,
        autotune: bool = True,
        alpha: float = 0.2,
        alpha_max: Optional[float] = None,
        critic_members: int = 2,
        critic_layer_norm: bool = False,
        hidden_layers: int = 2,
        cosine_actor_steps: int = 0,
        deterministic_backup: bool = False,
        target_min: Optional[float] = None,
    ):
        super().__init__()
        self.actor = TanhGaussianActor(obs_dim, act_dim, hidden_dim, action_low, action_high, hidden_layers)
        self.critic = QEnsemble(obs_dim, act_dim, hidden_dim, critic_members, critic_layer_norm, hidden_layers)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(0.0 if autotune else float(np.log(alpha))), requires_grad=autotune)
        self.gamma, self.tau, self.autotune = gamma, tau, autotune
        self.deterministic_backup, self.target_min = deterministic_backup, target_min
        self.alpha_max = float("inf") if alpha_max is None else alpha_max
        self.target_entropy = -float(act_dim) if target_entropy is None else target_entropy
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=alpha_lr, fused=True)
        steps = max(cosine_actor_steps, 1)
        cosine = lambda t: 0.5 * (1 + np.cos(np.pi * min(t, steps) / steps)) if cosine_actor_steps else 1.0
        self.actor_schedule = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, cosine)

    def optimizers(self) -> dict:
        """What a checkpoint holds besides the networks."""
        return {
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "alpha_opt": self.alpha_opt,
            "actor_schedule": self.actor_schedule,
        }

    def update(self, obs, actions, rewards, next_obs, terminals) -> dict:
        alpha = self.log_alpha.exp().detach().clamp(max=self.alpha_max)
        with torch.no_grad():  # soft Bellman target from the minimum of the two target critics
            next_actions, next_logp = self.actor(next_obs)
            next_q = self.critic_target(next_obs, next_actions).min(0).values
            if not self.deterministic_backup:
                next_q = next_q - alpha * next_logp
            target_q = rewards + self.gamma * (1.0 - terminals) * next_q
            if self.target_min is not None:
                target_q = target_q.clamp(min=self.target_min)
        q = self.critic(obs, actions)
        critic_loss = ((q - target_q) ** 2).mean(1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        pi_actions, logp = self.actor(obs)  # policy improvement: min α log π - min Q
        actor_loss = (alpha * logp - self.critic.frozen(obs, pi_actions).min(0).values).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        if self.autotune:
            self.alpha_opt.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_opt.step()
        with torch.no_grad():
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
                tp.lerp_(p, self.tau)
        return {
            "losses/critic_loss": critic_loss.detach(),
            "losses/actor_loss": actor_loss.detach(),
            "charts/alpha": alpha,
            "charts/entropy": -logp.detach().mean(),
            "values/q_mean": q.detach().mean(),
        }

    @torch.no_grad()
    def q_range(
        self, reward_low: float, reward_high: float, entropy: Optional[float] = None, can_end: bool = False
    ) -> tuple[float, float]:
        """The soft Q-values a policy can have when every reward lies in [reward_low, reward_high].

        Q = E Σ γ^t (r_t + γ α H(π(·|s_t+1))). With `entropy` (the current policy's mean entropy on the
        minibatch) H is taken to be that, which bounds the values of policies as random as this one;
        without it, H is anything from the narrowest Gaussian's Σ (log σ_min + ½ log 2πe + log scale)
        up to the log-volume of the action box (the uniform policy), which bounds every policy's values.
        With `deterministic_backup` the target has no entropy term, and Q is the plain return (α taken as 0).
        `can_end`: episodes may end (terminals), so a value can also be a single step's reward, which lies
        outside the endless sums when their per-step terms have the other sign.
        """
        alpha = 0.0 if self.deterministic_backup else min(self.log_alpha.exp().item(), self.alpha_max)
        scale = self.actor.action_scale
        h_max = torch.log(2 * scale).sum().item() if entropy is None else entropy
        h_min = (self.actor.LOG_STD_MIN + 0.5 * np.log(2 * np.pi * np.e) + torch.log(scale)).sum().item()
        h_min = min(h_min, h_max) if entropy is None else entropy
        g = self.gamma
        low, high = (reward_low + g * alpha * h_min) / (1 - g), (reward_high + g * alpha * h_max) / (1 - g)
        return (min(low, reward_low), max(high, reward_high)) if can_end else (low, high)

    @torch.no_grad()
    def check_values(
        self,
        batches: dict,
        reward_low: float,
        reward_high: float,
        entropy: Optional[float] = None,
        can_end: bool = False,
    ) -> tuple[dict, Optional[str]]:
        """Mean Q on each named (obs, actions) batch, as values/q_<name>, and the divergence rule: the
        critic has diverged when such a mean is not finite, or lies above q_range (for the policy's
        current `entropy`, when given) by more than one reward range (reward_high - reward_low), or
        below it by more than the range's own width. Returns the logs and the problem, or None. It
        synchronises the device: call it at logging intervals only."""
        low, high = self.q_range(reward_low, reward_high, entropy, can_end)
        slack = reward_high - reward_low
        logs, problem = {"values/q_reachable_low": low, "values/q_reachable_high": high}, None
        for name, (obs, actions) in batches.items():
            q = self.critic(obs, actions).mean().item()
            logs[f"values/q_{name}"] = q
            # above the range by a reward range, or below it by the whole range (a critic that is still
            # settling may undershoot large negative targets such as the value of HALT), or not finite
            if problem is None and not (low - (high - low) <= q <= high + slack):
                problem = (
                    f"the critic diverged: mean Q on {name} data is {q:.4g}, outside [{low:.4g}, {high:.4g}] "
                    f"(+ {slack:.3g} above, - {high - low:.4g} below), the values a policy can reach with rewards "
                    f"in [{reward_low:.3g}, "
                    f"{reward_high:.3g}]" + ("" if entropy is None else f" and the policy's entropy {entropy:.3g}")
                )
        return logs, problem


# ---- end shared: sac_agent ----


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
