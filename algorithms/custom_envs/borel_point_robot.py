"""BOReL's point robot with the sparse semicircle reward (Dorfman, Shenfeld, Tamar, NeurIPS 2021; the authors'
`PointRobotSparse-v0`), one Gymnasium episode per meta-RL *trial*.

The observation is the position (x, y), unbounded, plus the done flag (3 values). The action is in [-1, 1]² and
moves the robot by 0.1 times it, clipped (the authors' wrapper maps the policy's [-1, 1] linearly onto the
displacement box [-0.1, 0.1]², and their data stores the policy's values, as this environment's datasets do). The
reward is 1 when the position after the step is within 0.2 of the goal, else 0, with no control cost. A task is
the goal (cos θ, sin θ) with θ ~ U[0, π]: a point on the unit upper semicircle.

Trial structure (the authors' BAMDP wrapper): `episodes_per_trial` (2) MDP episodes of `episode_length` (60)
steps in the same task, 120 steps in all; the done flag is 1 on the last step of every MDP episode. After the step
that ends an MDP episode (other than the last) the robot is put back at a start position, given as
`info["start_state"]` (flag 0); the authors' loops ignore it (a "teleport" transition), a loop here chooses. The
Gymnasium episode is the trial: `truncated` after its last step, never `terminated`; `info["goal_reached"]`
(distance <= 0.2 after the step) is what the authors store as the terminal.

Start: the origin (the classic semicircle setting and this project's evaluation), or with `random_start=True`
uniform in [-1.5, 1.5] x [-0.5, 1.5] (the authors' data collection, and, through a default they did not override,
also their evaluation). The task: fixed by `task=(gx, gy)`, set per trial by `reset(options={"task": ...})`, else
drawn anew at every reset.
"""

import gymnasium as gym
import numpy as np

GOAL_RADIUS = 0.2
MAX_STEP = 0.1
START_LOW, START_HIGH = np.array([-1.5, -0.5]), np.array([1.5, 1.5])


def sample_tasks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n goals [n, 2] on the unit upper semicircle, angle uniform in [0, π]."""
    angle = rng.uniform(0.0, np.pi, n)
    return np.stack([np.cos(angle), np.sin(angle)], -1)


def reward(next_position: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """1 where the position after the step is within GOAL_RADIUS of the goal, else 0; [..., 2] broadcast."""
    return (np.linalg.norm(np.asarray(next_position)[..., :2] - goal, axis=-1) <= GOAL_RADIUS).astype(np.float64)


class PointRobotSparse(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, episode_length: int = 60, episodes_per_trial: int = 2, random_start: bool = False, task=None):
        self.episode_length, self.episodes_per_trial = episode_length, episodes_per_trial
        self.trial_length = episode_length * episodes_per_trial
        self.random_start = random_start
        self.fixed_task = None if task is None else np.asarray(task, dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.task = np.array([0.0, 1.0]) if self.fixed_task is None else self.fixed_task.copy()
        self.position = np.zeros(2)
        self.t = 0

    def _start_position(self) -> np.ndarray:
        return self.np_random.uniform(START_LOW, START_HIGH) if self.random_start else np.zeros(2)

    def _obs(self, flag: float) -> np.ndarray:
        return np.array([self.position[0], self.position[1], flag], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and options.get("task") is not None:
            self.task = np.asarray(options["task"], dtype=np.float64)
        elif self.fixed_task is not None:
            self.task = self.fixed_task.copy()
        else:
            self.task = sample_tasks(self.np_random, 1)[0]
        self.position, self.t = self._start_position(), 0
        return self._obs(0.0), {"task": self.task.copy()}

    def step(self, action):
        self.position = self.position + MAX_STEP * np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.t += 1
        r = float(reward(self.position, self.task))
        info = {"task": self.task.copy(), "goal_reached": bool(r > 0)}
        episode_end = self.t % self.episode_length == 0
        obs = self._obs(1.0 if episode_end else 0.0)
        truncated = self.t >= self.trial_length
        if episode_end and not truncated:
            self.position = self._start_position()
            info["start_state"] = self._obs(0.0)
        return obs, r, False, truncated, info


gym.register("BorelPointRobotSparse-v0", entry_point=PointRobotSparse)
