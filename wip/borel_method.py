"""Work in progress, not a script: the parts of BOReL's method (issue 17) built so far, to move above the banner
of `algorithms/borel.py` once that script exists (a script in algorithms/ must pass the whole generic suite:
smoke, resume and bad-input runs, so it comes in one piece). Tested by tests/test_borel_method.py.

BOReL (Dorfman, Shenfeld, Tamar, NeurIPS 2021), following the authors' code (Rondorf/BOReL cf0816f):
- VAE: a GRU encoder over embeddings of (a_t, s_{t+1}, r_{t+1}) gives a Gaussian belief q_t = N(μ_t, σ_t²) after
  every step of a trial, q_0 from the zero hidden state; a reward decoder r̂(z, s') (per family: MSE on the point
  robot, a 25-head Bernoulli over the cells on the gridworld); the ELBO decodes every reward of the trial from
  every step's sample and pulls each belief towards the previous one (KL to q_{t-1}, q_{-1} = N(0, I)).
- Reward relabelling: a segment of some trials of task i is replaced by the same segment of another task's trial,
  and its rewards are recomputed with task i's reward function, so that behaviour alone cannot tell the task.
- State relabelling: the hyper-state s⁺_t = [s_t, μ_t, log σ²_t].
- The data: a file of datasets/borel_generate.py cut into [tasks, trials, steps] (`trials_by_task`), refusing with
  one line a file that cannot be cut so.

Measured once (not a test; a throwaway loop, one thread on the shared 2-core CPU): the gridworld VAE (GRU 64,
state and reward embeddings 32 / 8, no action input, the 25-cell decoder, Adam 3e-4, batches of 8 tasks x 8
trials) on the shipped borel-gridworld with reward relabelling redrawn every 50 steps; on each task's last 20
(own, unrelabelled) trials, how often the decoder's most likely goal cell from μ_t is the goal: chance (0.05) up to
2,000 steps, then at 4,000 / 6,000 / 8,000 steps 0.24 / 0.70 / 0.88 after the first episode (t = 15) and 0.23 /
0.69 / 0.78 at the trial's end; 9 min for 8,000 steps. Without relabelling, 0.21 at t = 15 after 2,000 steps
(0.10 with it at that point).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

GRID_SIZE = 5
TRIAL_KEYS = ("observations", "actions", "rewards", "next_observations")


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

    def forward(self, actions, next_obs, rewards, hidden=None):
        """Inputs [T, B, ...]; beliefs after 0..T steps: μ, log σ² [T + 1, B, latent] (from the zero state, the prior
        first), and the last hidden state. With `hidden` (a running trial) the first row is that state's belief."""
        if hidden is None:
            hidden = torch.zeros(1, rewards.shape[1], self.hidden_dim, device=rewards.device)
        out, last = self.gru(self.embed(actions, next_obs, rewards), hidden)
        h = torch.cat([hidden, out], 0)
        return self.mu(h), self.logvar(h), last


class RewardDecoder(nn.Module):
    """r̂(z, s'): an MLP on [z, embed(s')] giving a reward (`kind="mse"`), or on z alone giving one Bernoulli logit
    per grid cell, read at the cell of s' (`kind="cells"`, the gridworld)."""

    def __init__(self, obs_dim, latent_dim=5, hidden_dim=32, state_embed=32, kind="mse"):
        super().__init__()
        self.kind = kind
        self.state_embed = nn.Linear(obs_dim, state_embed) if kind == "mse" else None
        inp = latent_dim + (state_embed if kind == "mse" else 0)
        out = 1 if kind == "mse" else GRID_SIZE * GRID_SIZE
        self.net = nn.Sequential(nn.Linear(inp, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU())
        self.net.append(nn.Linear(hidden_dim, out))

    def forward(self, z, next_obs):
        """z [..., latent] and s' [..., obs] broadcast; a reward (mse) or the cell's goal logit (cells) [...]."""
        if self.kind == "mse":
            s = F.relu(self.state_embed(next_obs))
            shape = torch.broadcast_shapes(z.shape[:-1], s.shape[:-1])
            return self.net(torch.cat([z.expand(*shape, -1), s.expand(*shape, -1)], -1))[..., 0]
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


def elbo_loss(encoder, decoder, actions, next_obs, rewards, kl_weight=0.05, reward_weight=1.0):
    """The negative ELBO of a batch of whole trials [T, B, ...]: one reparameterised z_t per belief decodes all T
    rewards; the mean over trials of reward_weight Σ_t reward term + kl_weight Σ_t KL(q_t || q_{t-1})."""
    mu, logvar, _ = encoder(actions, next_obs, rewards)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    decoded = decoder(z.unsqueeze(1), next_obs.unsqueeze(0))  # [T + 1, T, B]
    rew = reward_nll(decoded, rewards, decoder.kind).sum(0)
    kl = kl_to_previous(mu, logvar).sum(0)
    return (reward_weight * rew + kl_weight * kl).mean(), rew.mean(), kl.mean()


def grid_reward(next_obs, goal):
    """The gridworld's reward in torch: +1 on the goal cell, else -0.1."""
    return torch.where((next_obs[..., :2] == goal).all(-1), 1.0, -0.1)


def point_robot_reward(next_obs, goal):
    """The sparse point robot's reward in torch: 1 within 0.2 of the goal, else 0."""
    return ((next_obs[..., :2] - goal).norm(dim=-1) <= 0.2).float()


def relabel_rewards(trials, goals, segments, reward_fn, generator=None):
    """Reward relabelling (the authors' mix_task_rollouts with fraction 1). trials: observations, actions,
    next_observations [K tasks, N trials, T, ...]; goals [K, d]. For every task i, N trials are drawn with replacement
    (about 63 % distinct, as the authors draw them); in each, every segment [a, b) of steps is replaced by the same
    segment of a random trial of a random other task (drawn per segment), and the rewards of the whole trial are
    those of task i's reward function. Returns new tensors; the input is not changed."""
    k, n = goals.shape[0], trials["observations"].shape[1]
    device = goals.device
    out = {key: trials[key].clone() for key in ("observations", "actions", "next_observations")}
    rows = torch.arange(k, device=device)[:, None].expand(k, n)
    chosen = torch.randint(0, n, (k, n), generator=generator, device=device)
    for a, b in segments:
        other = (rows + torch.randint(1, k, (k, n), generator=generator, device=device)) % k  # uniform over j ≠ i
        source = torch.randint(0, n, (k, n), generator=generator, device=device)
        for key in out:
            out[key][rows, chosen, a:b] = trials[key][other, source, a:b]
    out["rewards"] = reward_fn(out["next_observations"], goals[:, None, None])
    return out


def hyper_states(obs, next_obs, mu, logvar):
    """State relabelling: s⁺_t = [s_t, μ_t, log σ²_t] and s⁺_{t+1} = [s_{t+1}, μ_{t+1}, log σ²_{t+1}] for the steps of
    whole trials: obs, next_obs [T, B, S]; beliefs [T + 1, B, L] (belief t has seen the first t steps)."""
    return torch.cat([obs, mu[:-1], logvar[:-1]], -1), torch.cat([next_obs, mu[1:], logvar[1:]], -1)


class MetaDatasetError(Exception):
    """A meta-RL dataset that cannot be cut into tasks and trials; one line saying what is wrong and what to do."""


def trials_by_task(arrays: dict, attrs: dict, source: str) -> dict:
    """Cut a BOReL dataset (datasets/borel_generate.py's layout, already through the shared dataset checks) into
    whole trials per task: observations, actions, rewards, next_observations [K tasks, N trials, T, ...], and the
    goals [K, d]. Rows must be grouped by task, every task holding the same number of whole trials."""
    for key in ("task_index", "task_params"):
        if key not in arrays:
            raise MetaDatasetError(
                f"{source} has no '{key}' array; a meta-RL dataset needs the task of every step (task_index, "
                "task_params): make it with datasets/borel_generate.py"
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
    out["rewards"] = out["rewards"][..., 0]
    out["goals"] = torch.as_tensor(params[:, 0])
    return out
