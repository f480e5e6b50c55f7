"""Collect BOReL's offline meta-RL data (Dorfman, Shenfeld, Tamar, NeurIPS 2021) as the authors do: one standard
RL agent per task, trained online from scratch, whose *whole replay buffer* is that task's data; all tasks of a
family go into one file.

  gridworld     BorelGridNavi-v0, one task per goal (all 21); DQN, Q [16, 16], Adam 3e-4, γ 0.99, soft target
                τ 0.005, ε-greedy from 1 to 0 linearly over the first half of the iterations (the authors' 50 of
                100); 10 uniformly random trials, then per iteration 5 trials and 200 updates of batch 256
  point_robot   BorelPointRobotSparse-v0, 80 goals drawn on the semicircle; SAC, actor and twin Q [32, 32],
                Adam 3e-4, γ 0.9, α 0.01 fixed, τ 0.005; 50 uniformly random trials, then per iteration 2
                trials and 500 updates of batch 256, 300 iterations
  cheetah_vel   BorelHalfCheetahVel-v0, 100 target velocities ~ U[0, 3]; SAC, actor and twin Q [128, 128], Adam
                3e-4, γ 0.99, α 0.2 fixed, τ 0.005; 50 uniformly random trials, then per iteration 2 trials and
                2000 updates of batch 256, 1000 iterations
  ant_semicircle  BorelAntSemiCircleSparse-v0, 80 goals on the semicircle; the same SAC and budget as
                cheetah_vel, trained on the dense reward (the authors' dense environment); the file's rewards are
                the sparse ones

A trial is the family's whole BAMDP episode (gridworld 4 x 15 steps, point robot 2 x 60, MuJoCo 2 x 200). Data
collection starts each MDP episode at a random position (the authors' `modify_init_state_dist`; Half-Cheetah-Vel
at Gymnasium's noisy start, as theirs); the file's `env_kwargs` name the evaluation environment, which starts at
the origin. The agents bootstrap through a reached goal as through a terminal state, as the authors' collection
does (their stored terminal is the goal-reached flag; the MuJoCo agents never stop bootstrapping: the authors
collect them in dense environments, whose terminals are all 0).

Choices, where the authors' code has a quirk:
- Teleport transitions: after an inner episode ends, the next step here starts from the new start state
  (`info["start_state"]`). `--teleport` keeps the authors' behaviour: the agent acts on, and the data records,
  the last observation of the previous episode while the environment moves on from the reset position.
- Goal as terminal: the file's `terminals` are all 0 (the trial never ends early and the goal keeps paying), and
  the goal-reached flag is stored beside them as `goal_reached` for a learner that wants the authors' mask.

The file is the D4RL layout (observations, actions, rewards, next_observations, terminals, timeouts; `timeouts`
is 1 on the last step of every trial) plus, per step, `task_index` (0 .. tasks - 1) and `task_params` (the goal,
or the target velocity), in task order, each task's trials in the order they were collected, and what relabelling
needs to recompute another task's reward exactly: Half-Cheetah-Vel's `x_velocity` (the step's forward velocity,
which the observation does not give: the reward is -|x_velocity - v_goal| - 0.05 |a|²; the authors instead
re-simulate from s_{t+1}, a step off), the ant's `dense_rewards` beside the sparse `rewards` (both functions of
s' and a). Gridworld actions are the action indices (float32, one per step; a learner one-hot encodes them).
Attributes: env_id, env_kwargs, family, num_tasks, trials_per_task, episode_length, episodes_per_trial, teleport,
seed, the command, and reference returns per trial from the evaluation start: uniformly random actions (0, over
`--ref-trials` drawn tasks) and, as 100, an oracle that knows the goal and walks straight to it (gridworld, point
robot; over `--ref-trials` drawn tasks) or, where no such oracle exists (MuJoCo), each task's collecting agent:
one trial of its final deterministic policy on its own task, the mean over the tasks.

    python datasets/borel_generate.py --family gridworld --out data/borel/gridworld.hdf5          # the paper's
    python datasets/borel_generate.py --family gridworld --iterations 16 --trials-per-iteration 2 \\
        --out datasets/shipped/borel-gridworld.hdf5                                                 # shipped
    python datasets/borel_generate.py --family cheetah_vel --num-tasks 8 --init-trials 10 --iterations 15 \
        --trials-per-iteration 2 --updates-per-iteration 600 --out data/borel/cheetah-vel-8.hdf5        # reduced
"""

import json
import os
import shlex
import sys
import time
from dataclasses import dataclass

import gymnasium as gym
import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "algorithms"))
from custom_envs import borel_ant_semicircle, borel_cheetah_vel, borel_gridworld, borel_point_robot  # noqa: E402

# per family: environment module and id, tasks, the agent, and the authors' collection budget
FAMILIES = {
    "gridworld": dict(
        module=borel_gridworld,
        env_id="custom_envs.borel_gridworld:BorelGridNavi-v0",
        num_tasks=21,
        agent="dqn",
        hidden=16,
        gamma=0.99,
        iterations=100,
        init_trials=10,
        trials_per_iteration=5,
        updates_per_iteration=200,
    ),
    "point_robot": dict(
        module=borel_point_robot,
        env_id="custom_envs.borel_point_robot:BorelPointRobotSparse-v0",
        num_tasks=80,
        agent="sac",
        hidden=32,
        gamma=0.9,
        alpha=0.01,
        iterations=300,
        init_trials=50,
        trials_per_iteration=2,
        updates_per_iteration=500,
    ),
    "cheetah_vel": dict(
        module=borel_cheetah_vel,
        env_id="custom_envs.borel_cheetah_vel:BorelHalfCheetahVel-v0",
        num_tasks=100,
        agent="sac",
        hidden=128,
        gamma=0.99,
        alpha=0.2,
        iterations=1000,
        init_trials=50,
        trials_per_iteration=2,
        updates_per_iteration=2000,
        collect_kwargs={},  # the authors' cheetah starts where evaluation does
        step_info=("x_velocity",),
    ),
    "ant_semicircle": dict(
        module=borel_ant_semicircle,
        env_id="custom_envs.borel_ant_semicircle:BorelAntSemiCircleSparse-v0",
        num_tasks=80,
        agent="sac",
        hidden=128,
        gamma=0.99,
        alpha=0.2,
        iterations=1000,
        init_trials=50,
        trials_per_iteration=2,
        updates_per_iteration=2000,
        train_reward="dense_rewards",  # the collecting SAC learns the dense reward, the file's rewards are sparse
        step_info=("goal_reached", "dense_reward"),
    ),
}


@dataclass
class Args:
    family: str = "gridworld"
    """task family: gridworld, point_robot, cheetah_vel or ant_semicircle"""
    out: str = ""
    """output .hdf5 file"""
    num_tasks: int = 0
    """tasks (0: the family's: gridworld 21 goals, point robot 80, cheetah-vel 100, ant 80)"""
    iterations: int = 0
    """collection iterations per task after the random trials (0: the authors', 100 / 300 / 1000 / 1000)"""
    init_trials: int = -1
    """uniformly random trials per task first (-1: the authors', 10 / 50 / 50 / 50)"""
    trials_per_iteration: int = 0
    """trials collected per iteration (0: the authors', 5 / 2 / 2 / 2)"""
    updates_per_iteration: int = 0
    """agent updates per iteration (0: the authors', 200 / 500 / 2000 / 2000)"""
    batch_size: int = 256
    """agent minibatch"""
    lr: float = 3e-4
    """Adam learning rate of every network"""
    tau: float = 0.005
    """soft target update rate"""
    alpha: float = -1.0
    """SAC's fixed entropy coefficient (-1: the authors', point robot 0.01, MuJoCo 0.2)"""
    teleport: bool = False
    """the authors' teleport transitions at inner episode boundaries (see the module docstring)"""
    seed: int = 0
    """seed of the tasks, the agents and the environments"""
    ref_trials: int = 100
    """trials of each reference policy"""
    threads: int = 1
    """torch CPU threads"""


def mlp(inp: int, out: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out)
    )


class DQN:
    """ε-greedy DQN with a soft-updated target, bootstrapping through non-goal steps (max target, MSE)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, args: Args, gamma: float):
        self.q = mlp(obs_dim, n_actions, hidden)
        self.q_target = mlp(obs_dim, n_actions, hidden)
        self.q_target.load_state_dict(self.q.state_dict())
        self.opt = torch.optim.Adam(self.q.parameters(), lr=args.lr)
        self.n_actions, self.gamma, self.tau = n_actions, gamma, args.tau
        self.epsilon = 1.0

    def act(self, obs: np.ndarray, rng: np.random.Generator, random: bool):
        if random or rng.random() < self.epsilon:
            return int(rng.integers(self.n_actions))
        with torch.no_grad():
            return int(self.q(torch.as_tensor(obs)).argmax())

    def update(self, obs, action, reward, next_obs, goal):
        with torch.no_grad():
            target = reward + self.gamma * (1 - goal) * self.q_target(next_obs).max(-1).values
        q = self.q(obs).gather(1, action.long().view(-1, 1)).squeeze(1)
        loss = F.mse_loss(q, target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        soft_update(self.q_target, self.q, self.tau)


class SAC:
    """SAC with a fixed α, twin Q and a tanh-Gaussian actor (log-std in [-20, 2]); critics first, then targets,
    then the actor, as the authors' order."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, args: Args, gamma: float, alpha: float):
        self.actor = mlp(obs_dim, 2 * act_dim, hidden)
        self.q = nn.ModuleList([mlp(obs_dim + act_dim, 1, hidden) for _ in range(2)])
        self.q_target = nn.ModuleList([mlp(obs_dim + act_dim, 1, hidden) for _ in range(2)])
        self.q_target.load_state_dict(self.q.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.lr)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=args.lr)
        self.act_dim, self.gamma, self.tau, self.alpha = act_dim, gamma, args.tau, alpha

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.actor(obs).chunk(2, -1)
        std = log_std.clamp(-20, 2).exp()
        u = mean + std * torch.randn_like(mean)
        log_prob = torch.distributions.Normal(mean, std).log_prob(u) - torch.log(1 - torch.tanh(u) ** 2 + 1e-6)
        return torch.tanh(u), log_prob.sum(-1)

    def act(self, obs: np.ndarray, rng: np.random.Generator, random: bool, deterministic: bool = False):
        if random:
            return rng.uniform(-1, 1, self.act_dim).astype(np.float32)
        with torch.no_grad():
            if deterministic:
                return torch.tanh(self.actor(torch.as_tensor(obs)).chunk(2, -1)[0]).numpy()
            return self.policy(torch.as_tensor(obs))[0].numpy()

    def q_min(self, qs, obs, action):
        x = torch.cat([obs, action], -1)
        return torch.min(qs[0](x), qs[1](x)).squeeze(-1)

    def update(self, obs, action, reward, next_obs, goal):
        with torch.no_grad():
            next_action, next_log_prob = self.policy(next_obs)
            next_v = self.q_min(self.q_target, next_obs, next_action) - self.alpha * next_log_prob
            target = reward + self.gamma * (1 - goal) * next_v
        x = torch.cat([obs, action], -1)
        q_loss = sum(F.mse_loss(q(x).squeeze(-1), target) for q in self.q)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        soft_update(self.q_target, self.q, self.tau)
        new_action, log_prob = self.policy(obs)
        actor_loss = (self.alpha * log_prob - self.q_min(self.q, obs, new_action)).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        for t, s in zip(target.parameters(), source.parameters()):
            t.lerp_(s, tau)


def run_trial(env: gym.Env, act, task, seed: int, teleport: bool, step_info=("goal_reached",)) -> dict:
    """One whole trial; `act(obs)` picks the action. Columns of the trial's steps, with the `step_info` entries of
    the environment's info (stored under their plural name where they are rewards: dense_reward -> dense_rewards)."""
    names = [k + "s" if k.endswith("reward") else k for k in step_info]
    columns = {k: [] for k in ("observations", "actions", "rewards", "next_observations", *names)}
    obs, _ = env.reset(seed=seed, options={"task": task})
    truncated = False
    while not truncated:
        action = act(obs)
        next_obs, reward, _, truncated, info = env.step(action)
        for key, value in zip(columns, (obs, action, reward, next_obs, *(info[k] for k in step_info))):
            columns[key].append(value)
        obs = next_obs if teleport or "start_state" not in info else info["start_state"]
    return {k: np.array(v) for k, v in columns.items()}


def collect_task(family: dict, task: np.ndarray, args: Args, budget: dict, seed: int) -> tuple[list[dict], float]:
    """Train one agent online on one task; its whole replay buffer, trial by trial, and the return of one trial of
    its final deterministic policy from the evaluation start (the MuJoCo families' 100 reference; NaN elsewhere)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    env = gym.make(family["env_id"], **family.get("collect_kwargs", {"random_start": True}))
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    obs_dim = env.observation_space.shape[0]
    if discrete:
        agent = DQN(obs_dim, env.action_space.n, family["hidden"], args, family["gamma"])
    else:
        alpha = args.alpha if args.alpha >= 0 else family["alpha"]
        agent = SAC(obs_dim, env.action_space.shape[0], family["hidden"], args, family["gamma"], alpha)
    step_info = family.get("step_info", ("goal_reached",))
    # the agent's minibatch: the reward it learns, and its bootstrap mask (the goal flag where the family has one)
    columns = ("observations", "actions", family.get("train_reward", "rewards"), "next_observations")
    mask = "goal_reached" if "goal_reached" in step_info and "train_reward" not in family else None
    trials = []
    buffer = None
    decay = max(1, budget["iterations"] // 2)  # ε from 1 to 0 over the first half (the authors' 50 of 100)
    for iteration in range(-1, budget["iterations"]):
        random = iteration < 0
        if discrete:
            agent.epsilon = max(0.0, 1.0 - iteration / decay)
        for _ in range(budget["init_trials"] if random else budget["trials_per_iteration"]):
            act = lambda o, random=random: agent.act(o, rng, random)  # noqa: E731
            trials.append(run_trial(env, act, task, int(rng.integers(2**31)), args.teleport, step_info))
        if random:
            continue
        buffer = [torch.as_tensor(np.concatenate([t[k] for t in trials]), dtype=torch.float32) for k in columns]
        n = len(buffer[0])
        buffer.append(torch.zeros(n) if mask is None else torch.as_tensor(np.concatenate([t[mask] for t in trials])))
        buffer[-1] = buffer[-1].float()
        for _ in range(budget["updates_per_iteration"]):
            idx = torch.randint(0, n, (args.batch_size,))
            agent.update(*(b[idx] for b in buffer))
    final = float("nan")
    if family["module"] in (borel_cheetah_vel, borel_ant_semicircle):
        act = lambda o: agent.act(o, rng, False, deterministic=True)  # noqa: E731
        final = run_trial(gym.make(family["env_id"]), act, task, int(rng.integers(2**31)), False, step_info)
        final = float(final["rewards"].sum())
    return trials, final


def reference_return(family: dict, policy: str, trials: int, seed: int) -> float:
    """Mean trial return from the evaluation start, over drawn tasks: uniformly random actions, or an oracle that
    walks straight to the goal (and stays)."""
    rng = np.random.default_rng(seed)
    env = gym.make(family["env_id"])
    total = 0.0
    for task in family["module"].sample_tasks(rng, trials):
        if policy == "random":
            act = lambda o: env.action_space.sample()  # noqa: E731
            env.action_space.seed(int(rng.integers(2**31)))
        elif family["agent"] == "dqn":
            act = lambda o, task=task: oracle_grid_action(o, task)  # noqa: E731
        else:
            act = lambda o, task=task: np.clip((task - o[:2]) / borel_point_robot.MAX_STEP, -1, 1)  # noqa: E731
        step_info = family.get("step_info", ("goal_reached",))
        total += run_trial(env, act, task, int(rng.integers(2**31)), False, step_info)["rewards"].sum()
    return total / trials


def oracle_grid_action(obs: np.ndarray, goal: np.ndarray) -> int:
    dx, dy = goal - obs[:2]
    return 2 if dx > 0 else 4 if dx < 0 else 1 if dy > 0 else 3 if dy < 0 else 0


def write(out: str, data: dict, attrs: dict) -> None:
    """gzip with byte shuffling; written to .tmp, then renamed, so a failed write leaves nothing."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                chunks = (min(len(value), 16384),) + value.shape[1:]
                f.create_dataset(key, data=value, compression="gzip", compression_opts=9, shuffle=True, chunks=chunks)
            f.attrs.update(attrs)
        os.replace(tmp, out)
    except OSError as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        sys.exit(f"error: could not write {out} ({e}); free space or pass another --out")


def main():
    args = tyro.cli(Args)
    if args.family not in FAMILIES:
        sys.exit(f"error: unknown family {args.family!r}; use one of {', '.join(FAMILIES)}")
    if not args.out:
        sys.exit("error: pass --out FILE.hdf5")
    if min(args.num_tasks, args.iterations, args.trials_per_iteration, args.updates_per_iteration) < 0:
        sys.exit("error: --num-tasks, --iterations, --trials-per-iteration and --updates-per-iteration must be >= 0")
    torch.set_num_threads(args.threads)
    family = FAMILIES[args.family]
    mujoco = family["module"] in (borel_cheetah_vel, borel_ant_semicircle)
    budget = {
        k: getattr(args, k) if getattr(args, k) > (-1 if k == "init_trials" else 0) else family[k]
        for k in ("iterations", "init_trials", "trials_per_iteration", "updates_per_iteration")
    }
    if args.family == "gridworld":
        tasks = borel_gridworld.GOALS[: args.num_tasks or family["num_tasks"]]
    else:
        tasks = family["module"].sample_tasks(np.random.default_rng(args.seed), args.num_tasks or family["num_tasks"])
    start = time.time()
    columns, trials_per_task, finals = {}, None, []
    for i, task in enumerate(tqdm(tasks, desc=f"{args.family}: one agent per task")):
        trials, final = collect_task(family, task, args, budget, seed=args.seed * 100_003 + i)
        finals.append(final)
        trials_per_task = len(trials)
        for trial in trials:
            steps = len(trial["rewards"])
            trial["timeouts"] = np.arange(steps) == steps - 1
            trial["task_index"] = np.full(steps, i)
            trial["task_params"] = np.repeat(task[None], steps, 0)
            for key, value in trial.items():
                columns.setdefault(key, []).append(value)
    data = {k: np.concatenate(v) for k, v in columns.items()}
    data["terminals"] = np.zeros(len(data["rewards"]), dtype=bool)
    dtypes = {"task_index": np.int32}  # everything else float32, gridworld actions too (the index as a number)
    dtypes |= {"terminals": bool, "timeouts": bool, "goal_reached": bool}
    data = {k: v.astype(dtypes.get(k, np.float32)) for k, v in data.items()}
    env = gym.make(family["env_id"]).unwrapped
    collected = time.time() - start
    if mujoco:  # no walk-to-goal oracle: each task's own collecting agent, its final deterministic trial, is the 100
        ref_max = float(np.mean(finals))
        ref_source = (
            f"mean trial return from the evaluation start: uniformly random actions over {args.ref_trials} drawn "
            f"tasks (min); each task's collecting agent, its final deterministic policy, one trial on its own task "
            f"(max, over the {len(tasks)} tasks)"
        )
    else:
        ref_max = reference_return(family, "oracle", args.ref_trials, args.seed + 2)
        ref_source = (
            f"mean trial return from the evaluation start over {args.ref_trials} drawn tasks: uniformly random "
            "actions (min) and an oracle walking straight to the known goal (max)"
        )
    attrs = {
        "env_id": family["env_id"],
        "env_kwargs": json.dumps({}),
        "family": args.family,
        "num_tasks": len(tasks),
        "trials_per_task": trials_per_task,
        "episode_length": env.episode_length,
        "episodes_per_trial": env.episodes_per_trial,
        "teleport": args.teleport,
        "seed": args.seed,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "behaviour": f"one {family['agent'].upper()} agent per task trained online, its whole replay buffer",
        "budget": json.dumps(budget),
        "ref_min_score": reference_return(family, "random", args.ref_trials, args.seed + 1),
        "ref_max_score": ref_max,
        "ref_source": ref_source,
    }
    write(args.out, data, attrs)
    trial_returns = data["rewards"].reshape(len(tasks), trials_per_task, -1).sum(-1)
    print(
        f"{args.family}: {len(tasks)} tasks x {trials_per_task} trials = {len(data['rewards'])} steps in "
        f"{collected:.0f} s ({collected / len(tasks):.0f} s per task); trial return: first trials "
        f"{trial_returns[:, :5].mean():.2f}, last {trial_returns[:, -5:].mean():.2f} (reference random "
        f"{attrs['ref_min_score']:.2f}, {'agents' if mujoco else 'oracle'} {attrs['ref_max_score']:.2f}) -> "
        f"{args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)"
    )
    per_trial = lambda x: x.reshape(len(tasks), trials_per_task, -1)  # noqa: E731
    if "x_velocity" in data:
        error = np.abs(per_trial(data["x_velocity"]) - per_trial(data["task_params"][:, 0])).mean(-1)
        print(
            f"velocity error |v_x - v_goal|, mean over steps: first trials {error[:, :5].mean():.2f}, last 5 trials "
            f"{error[:, -5:].mean():.2f}"
        )
    if "goal_reached" in data:
        reached = per_trial(data["goal_reached"]).reshape(len(tasks), trials_per_task, env.episodes_per_trial, -1)
        reached = reached.any(-1)
        print(
            f"inner episodes that reach the goal: first trials {reached[:, :5].mean():.2f}, last 5 trials "
            f"{reached[:, -5:].mean():.2f}"
        )


if __name__ == "__main__":
    main()
