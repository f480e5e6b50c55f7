"""BOReL's gridworld (Dorfman, Shenfeld, Tamar, "Offline Meta Reinforcement Learning - Identifiability Challenges
and Effective Data Collection Strategies", NeurIPS 2021; the authors' `GridNavi-v2`), one Gymnasium episode per
meta-RL *trial*.

A 5x5 grid, the observation is the cell (x, y) as floats plus the done flag (3 values). Five actions: 0 stay,
1 up (y + 1), 2 right (x + 1), 3 down (y - 1), 4 left (x - 1); a move into a wall stays put. The reward is +1 when
the cell after the step is the goal, else -0.1. A task is the goal: any of the 21 cells outside the 2x2 corner
{0, 1}², drawn uniformly.

Trial structure (the authors' BAMDP wrapper): one trial is `episodes_per_trial` (4) MDP episodes of
`episode_length` (15) steps in the same task, 60 steps in all. The done flag in the observation is 1 on the last step
of every MDP episode and 0 elsewhere. After the step that ends an MDP episode (other than the last), the position is
reset to a start cell, and that start observation (flag 0) is in `info["start_state"]`: the next step moves on from
it. The authors' collection and evaluation loops ignore `start_state` and act on the last observation of the
previous episode (a "teleport" transition); which one a loop uses is the loop's choice, the environment is the same.
The Gymnasium episode is the trial: `truncated` is True after its last step, `terminated` is never True (the
goal is not absorbing: staying there keeps paying +1). `info["goal_reached"]` says whether the new cell is the goal
(the authors store it as the transition's terminal).

Start cell: (0, 0) (the authors' evaluation), or with `random_start=True` a uniformly random cell other than the
goal (the authors' data collection, `modify_init_state_dist`). The task: fixed by `task=(gx, gy)` (one per-task
data-collection run), set per trial by `reset(options={"task": (gx, gy)})`, else drawn anew at every reset.
"""

import gymnasium as gym
import numpy as np

SIZE = 5
GOALS = np.array([(x, y) for x in range(SIZE) for y in range(SIZE) if not (x <= 1 and y <= 1)], dtype=np.float64)
MOVES = np.array([(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)], dtype=np.float64)  # stay, up, right, down, left
GOAL_REWARD, STEP_REWARD = 1.0, -0.1


def sample_tasks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n goals [n, 2], uniformly from the 21 (with replacement, as independent draws are)."""
    return GOALS[rng.integers(0, len(GOALS), n)]


def reward(next_cell: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """+1 where the cell after the step is the goal, else -0.1; cells and goals [..., 2] broadcast."""
    return np.where((np.asarray(next_cell)[..., :2] == goal).all(-1), GOAL_REWARD, STEP_REWARD)


def move(cell: np.ndarray, action: int) -> np.ndarray:
    return np.clip(cell + MOVES[int(action)], 0, SIZE - 1)


class GridNavi(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, episode_length: int = 15, episodes_per_trial: int = 4, random_start: bool = False, task=None):
        self.episode_length, self.episodes_per_trial = episode_length, episodes_per_trial
        self.trial_length = episode_length * episodes_per_trial
        self.random_start = random_start
        self.fixed_task = None if task is None else np.asarray(task, dtype=np.float64)
        self.observation_space = gym.spaces.Box(0.0, float(SIZE - 1), (3,), np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.task = GOALS[-1].copy() if self.fixed_task is None else self.fixed_task.copy()
        self.cell = np.zeros(2)
        self.t = 0

    def _start_cell(self) -> np.ndarray:
        if not self.random_start:
            return np.zeros(2)
        cells = [c for c in np.ndindex(SIZE, SIZE) if not (np.array(c) == self.task).all()]
        return np.array(cells[self.np_random.integers(len(cells))], dtype=np.float64)

    def _obs(self, flag: float) -> np.ndarray:
        return np.array([self.cell[0], self.cell[1], flag], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and options.get("task") is not None:
            self.task = np.asarray(options["task"], dtype=np.float64)
        elif self.fixed_task is not None:
            self.task = self.fixed_task.copy()
        else:
            self.task = sample_tasks(self.np_random, 1)[0]
        self.cell, self.t = self._start_cell(), 0
        return self._obs(0.0), {"task": self.task.copy()}

    def step(self, action):
        self.cell = move(self.cell, action)
        self.t += 1
        r = float(reward(self.cell, self.task))
        info = {"task": self.task.copy(), "goal_reached": bool(r == GOAL_REWARD)}
        episode_end = self.t % self.episode_length == 0
        obs = self._obs(1.0 if episode_end else 0.0)
        truncated = self.t >= self.trial_length
        if episode_end and not truncated:
            self.cell = self._start_cell()
            info["start_state"] = self._obs(0.0)
        return obs, r, False, truncated, info


gym.register("BorelGridNavi-v0", entry_point=GridNavi)
