"""BOReL's Ant-Semicircle with the sparse reward (Dorfman, Shenfeld, Tamar, NeurIPS 2021; the authors'
`AntSemiCircleSparse-v0`), one Gymnasium episode per meta-RL *trial*, on Gymnasium's Ant (v5) model (the authors'
ant.xml has the same bodies, joints, gear 150 and control range [-1, 1]; theirs only adds two display sites).

The observation is qpos (15, the torso's x, y first) + qvel (14) + the done flag: 30 values. The action is 8-D in
[-1, 1] (clipped), frame_skip 5 (dt 0.05 s). No termination (the ant may flip; the trial goes on). A task is the
goal (cos θ, sin θ), θ ~ U[0, π]: a point on the unit upper semicircle. Two rewards, with xy the torso's position
after the step (qpos[:2], the observation's first two values):
  sparse  1[|xy - g|₂ <= 0.2] - 0.1 |a|²   the step's reward: what the data store, BOReL learns and evaluation sums
  dense   -|xy - g|₁ - 0.1 |a|²            `info["dense_reward"]`: what the collecting SAC trains on, as the authors'
Both are functions of (s', a), so relabelling recomputes them exactly from the data (`sparse_reward`, `dense_reward`).

Trial structure (the authors' BAMDP wrapper): `episodes_per_trial` (2) MDP episodes of `episode_length` (200) steps
in the same task; the done flag is 1 on the last step of every MDP episode. After the step that ends an MDP episode
(other than the last) the ant is put back at a start and the new start observation (flag 0) is
`info["start_state"]`. The Gymnasium episode is the trial: `truncated` after its last step, never `terminated`;
`info["goal_reached"]` is |xy - g| <= 0.2 after the step.

Start (the authors' `reset_model`: no joint noise, zero velocity): the torso at the origin (their evaluation), or
with `random_start=True` uniform in [-1.5, 1.5] x [-0.5, 1.5], redrawn while 0.8 <= |xy| <= 1.2 so that it never
starts on the band of the goals (their data collection). The task: fixed by `task=(gx, gy)`, set per trial by
`reset(options={"task": ...})`, else drawn anew at every reset.
"""

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

GOAL_RADIUS = 0.2
CTRL_COST = 0.1
START_LOW, START_HIGH = np.array([-1.5, -0.5]), np.array([1.5, 1.5])
BAND = (0.8, 1.2)


def sample_tasks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n goals [n, 2] on the unit upper semicircle, angle uniform in [0, π]."""
    angle = rng.uniform(0.0, np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], -1)


def sparse_reward(next_obs: np.ndarray, action: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """1[|xy' - g|₂ <= 0.2] - 0.1 |a|²; next_obs [..., >= 2] (xy first), action [..., 8], goal [..., 2] broadcast."""
    reached = np.linalg.norm(np.asarray(next_obs)[..., :2] - goal, axis=-1) <= GOAL_RADIUS
    return reached - CTRL_COST * np.square(action).sum(-1)


def dense_reward(next_obs: np.ndarray, action: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """-|xy' - g|₁ - 0.1 |a|², broadcast as sparse_reward."""
    return -np.abs(np.asarray(next_obs)[..., :2] - goal).sum(-1) - CTRL_COST * np.square(action).sum(-1)


class AntSemiCircleSparse(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, episode_length: int = 200, episodes_per_trial: int = 2, random_start: bool = False, task=None):
        self.episode_length, self.episodes_per_trial = episode_length, episodes_per_trial
        self.trial_length = episode_length * episodes_per_trial
        self.random_start = random_start
        self.fixed_task = None if task is None else np.asarray(task, dtype=np.float64)
        self.sim = AntEnv(frame_skip=5, reset_noise_scale=0.0)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (30,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (8,), np.float32)
        self.task = np.array([0.0, 1.0]) if self.fixed_task is None else self.fixed_task.copy()
        self.t = 0

    def _start(self) -> None:
        xy = np.zeros(2)
        while self.random_start:
            xy = self.np_random.uniform(START_LOW, START_HIGH)
            if not BAND[0] <= np.linalg.norm(xy) <= BAND[1]:
                break
        qpos = self.sim.init_qpos.copy()
        qpos[:2] = xy
        self.sim.set_state(qpos, self.sim.init_qvel.copy())

    def _obs(self, flag: float) -> np.ndarray:
        return np.concatenate([self.sim.data.qpos, self.sim.data.qvel, [flag]]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and options.get("task") is not None:
            self.task = np.asarray(options["task"], dtype=np.float64)
        elif self.fixed_task is not None:
            self.task = self.fixed_task.copy()
        else:
            self.task = sample_tasks(self.np_random, 1)[0]
        self._start()
        self.t = 0
        return self._obs(0.0), {"task": self.task.copy()}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.sim.do_simulation(action, self.sim.frame_skip)
        self.t += 1
        xy = self.sim.data.qpos[:2]
        r = float(sparse_reward(xy, action, self.task))
        info = {"task": self.task.copy(), "goal_reached": bool(np.linalg.norm(xy - self.task) <= GOAL_RADIUS)}
        info["dense_reward"] = float(dense_reward(xy, action, self.task))
        episode_end = self.t % self.episode_length == 0
        obs = self._obs(1.0 if episode_end else 0.0)
        truncated = self.t >= self.trial_length
        if episode_end and not truncated:
            self._start()
            info["start_state"] = self._obs(0.0)
        return obs, r, False, truncated, info

    def close(self):
        self.sim.close()


gym.register("BorelAntSemiCircleSparse-v0", entry_point=AntSemiCircleSparse)
