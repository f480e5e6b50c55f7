"""The 2D navigation task of LION (Swazinna, Udluft, Runkler, "User-Interactive Offline Reinforcement
Learning", ICLR 2023): a point starts uniformly in [0, 10]², moves by the clipped action (s' = s + clip(a, -1, 1),
no walls), and earns a Gaussian bump around (3, 6) with σ = 1.5 and peak 1, measured at the new position.
An episode is 25 steps. The behaviour policy of its dataset walks to the nearer of (2.5, 2.5) and (7.5, 7.5),
which the reward does not favour.
"""

import gymnasium as gym
import numpy as np

GOAL = np.array([3.0, 6.0])
SIGMA = 1.5
SIZE = 10.0
BEHAVIOUR_GOALS = np.array([[2.5, 2.5], [7.5, 7.5]])


def reward(position: np.ndarray) -> np.ndarray:
    """Gaussian bump with peak 1 at GOAL, for positions [..., 2]."""
    return np.exp(-((position - GOAL) ** 2).sum(-1) / (2 * SIGMA**2))


def nearer_goal_action(position: np.ndarray) -> np.ndarray:
    """The dataset's behaviour: head for the nearer of the two behaviour goals (ties go to the first), with the
    step (g - s) / max(ceil|g - s|), so that it lands on the goal and stays there."""
    position = np.atleast_2d(position)
    dist = np.linalg.norm(position[:, None] - BEHAVIOUR_GOALS[None], axis=-1)
    goal = BEHAVIOUR_GOALS[(dist[:, 1] < dist[:, 0]).astype(int)]
    delta = goal - position
    steps = np.ceil(np.abs(delta)).max(-1, keepdims=True)
    return delta / np.where(steps == 0, 1.0, steps)


class Lion2D(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, horizon: int = 25):
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = np.zeros(2)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(0.0, SIZE, 2)
        self.t = 0
        return self.position.copy(), {}

    def step(self, action):
        self.position = self.position + np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.t += 1
        return self.position.copy(), float(reward(self.position)), False, self.t >= self.horizon, {}


gym.register("Lion2D-v0", entry_point=Lion2D)
