"""BOReL's Half-Cheetah-Vel (Dorfman, Shenfeld, Tamar, NeurIPS 2021; the authors' `HalfCheetahVel-v0`, after Finn
et al.'s MAML task), one Gymnasium episode per meta-RL *trial*, on Gymnasium's HalfCheetah (v5) model.

The observation is qpos[1:] (8) + qvel (9) + the torso's centre of mass xyz (3) + the done flag: 21 values (the
authors' `_get_obs` plus their BAMDP wrapper's flag). The action is 6-D in [-1, 1] (the model's control range,
clipped), frame_skip 5 (dt 0.05 s). The reward is -|v_x - v_goal| - 0.05 |a|², with v_x = (x_after - x_before) / dt
the torso's forward velocity over the step. A task is the target velocity v_goal ~ U[0, 3] (the authors' code; their
docstring says [0, 2]), given as a 1-vector.

The reward cannot be recomputed from the observations (x is not in them); `info["x_velocity"]` holds the step's v_x,
which datasets/borel_generate.py stores per step so that a relabelled reward -|v_x - v_i| - 0.05 |a|² is exact
(`reward`). The authors instead re-simulate the step from s_{t+1} (their quirk: off by one step).

Trial structure (the authors' BAMDP wrapper): `episodes_per_trial` (2) MDP episodes of `episode_length` (200)
steps in the same task; the done flag is 1 on the last step of every MDP episode. After the step that ends an MDP
episode (other than the last) the cheetah is reset and the new start observation (flag 0) is `info["start_state"]`.
The Gymnasium episode is the trial: `truncated` after its last step, never `terminated`. Start: Gymnasium's
HalfCheetah reset noise (qpos + U[-0.1, 0.1], qvel + 0.1 N(0, 1)), for collection and evaluation alike, as the
authors' (no random start here). No goal state: `info` has no `goal_reached`. The task: fixed by `task=(v,)`, set
per trial by `reset(options={"task": ...})`, else drawn anew at every reset.
"""

import gymnasium as gym
import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

VELOCITY_LOW, VELOCITY_HIGH = 0.0, 3.0
CTRL_COST = 0.05


def sample_tasks(rng: np.random.Generator, n: int) -> np.ndarray:
    """n target velocities [n, 1], uniform in [0, 3]."""
    return rng.uniform(VELOCITY_LOW, VELOCITY_HIGH, (n, 1))


def reward(x_velocity: np.ndarray, action: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """-|v_x - v_goal| - 0.05 |a|²; x_velocity [...], action [..., 6], goal [..., 1] broadcast."""
    return -np.abs(x_velocity - np.asarray(goal)[..., 0]) - CTRL_COST * np.square(action).sum(-1)


class HalfCheetahVel(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, episode_length: int = 200, episodes_per_trial: int = 2, task=None):
        self.episode_length, self.episodes_per_trial = episode_length, episodes_per_trial
        self.trial_length = episode_length * episodes_per_trial
        self.fixed_task = None if task is None else np.asarray(task, dtype=np.float64).reshape(1)
        self.sim = HalfCheetahEnv(frame_skip=5, reset_noise_scale=0.1)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (21,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
        self.task = np.array([1.5]) if self.fixed_task is None else self.fixed_task.copy()
        self.t = 0

    def _obs(self, flag: float) -> np.ndarray:
        data = self.sim.data
        return np.concatenate([data.qpos[1:], data.qvel, self.sim.get_body_com("torso"), [flag]]).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options is not None and options.get("task") is not None:
            self.task = np.asarray(options["task"], dtype=np.float64).reshape(1)
        elif self.fixed_task is not None:
            self.task = self.fixed_task.copy()
        else:
            self.task = sample_tasks(self.np_random, 1)[0]
        self.sim.reset(seed=int(self.np_random.integers(2**31)))
        self.t = 0
        return self._obs(0.0), {"task": self.task.copy()}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        x_before = self.sim.data.qpos[0]
        self.sim.do_simulation(action, self.sim.frame_skip)
        x_velocity = (self.sim.data.qpos[0] - x_before) / self.sim.dt
        self.t += 1
        r = float(reward(x_velocity, action, self.task))
        info = {"task": self.task.copy(), "x_velocity": float(x_velocity)}
        episode_end = self.t % self.episode_length == 0
        obs = self._obs(1.0 if episode_end else 0.0)
        truncated = self.t >= self.trial_length
        if episode_end and not truncated:
            self.sim.reset()
            info["start_state"] = self._obs(0.0)
        return obs, r, False, truncated, info

    def close(self):
        self.sim.close()


gym.register("BorelHalfCheetahVel-v0", entry_point=HalfCheetahVel)
