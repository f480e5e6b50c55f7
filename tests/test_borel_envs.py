"""BOReL's environments (algorithms/custom_envs/borel_*.py): rewards, task sampling and the trial structure
(episodes of a trial, the done flag in the observation, the start state after an inner episode's end)."""

import gymnasium as gym
import numpy as np
import pytest
from custom_envs import borel_gridworld as grid
from custom_envs import borel_point_robot as point

GRID_ID = "custom_envs.borel_gridworld:BorelGridNavi-v0"
POINT_ID = "custom_envs.borel_point_robot:BorelPointRobotSparse-v0"


def test_gridworld_goals_and_task_sampling():
    """21 goals, none in the 2x2 start corner, each drawn about equally often."""
    assert len(grid.GOALS) == 21 and len({tuple(g) for g in grid.GOALS}) == 21
    assert not ((grid.GOALS <= 1).all(1)).any()
    counts = np.unique(grid.sample_tasks(np.random.default_rng(0), 21_000), axis=0, return_counts=True)[1]
    assert len(counts) == 21 and counts.min() > 850 and counts.max() < 1150  # 1000 ± 5 standard deviations


def test_gridworld_moves_and_reward():
    env = gym.make(GRID_ID, task=(4, 4)).unwrapped
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0, 0])
    expected = {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (0, 0), 4: (0, 0)}  # down and left hit the walls
    for action, cell in expected.items():
        env.reset(seed=0)
        obs, r, terminated, truncated, info = env.step(action)
        np.testing.assert_array_equal(obs[:2], cell)
        assert r == pytest.approx(-0.1) and not info["goal_reached"] and not terminated and not truncated
    env.reset(seed=0, options={"task": (1, 0)})
    obs, r, _, _, info = env.step(2)
    assert r == 1.0 and info["goal_reached"]
    obs, r, _, _, _ = env.step(0)  # staying on the goal keeps paying: the goal is not absorbing
    assert r == 1.0
    cells = np.array([[1, 0], [2, 3], [1, 0]])
    np.testing.assert_allclose(grid.reward(cells, np.array([1, 0])), [1.0, -0.1, 1.0])


@pytest.mark.parametrize("env_id, length, episodes", [(GRID_ID, 15, 4), (POINT_ID, 60, 2)])
def test_trial_structure(env_id, length, episodes):
    """A trial is `episodes` MDP episodes of `length` steps: the flag is 1 exactly on their last steps, the trial is
    truncated after the last one only, and each inner episode end gives the start state, from which the next step
    moves on."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    flags, truncations = [], []
    for t in range(1, length * episodes + 1):
        action = rng.integers(5) if env_id == GRID_ID else rng.uniform(-1, 1, 2)
        obs, _, terminated, truncated, info = env.step(action)
        flags.append(obs[2])
        truncations.append(truncated)
        assert not terminated
        inner_end = t % length == 0 and t < length * episodes
        assert ("start_state" in info) == inner_end
        if inner_end:
            np.testing.assert_array_equal(info["start_state"], [0, 0, 0])  # the evaluation start
            state = env.cell if env_id == GRID_ID else env.position
            np.testing.assert_array_equal(state, [0, 0])
    ends = np.arange(1, length * episodes + 1) % length == 0
    np.testing.assert_array_equal(np.array(flags) == 1, ends)
    assert truncations == [False] * (length * episodes - 1) + [True]


@pytest.mark.parametrize("env_id", [GRID_ID, POINT_ID])
def test_task_fixed_set_or_resampled(env_id):
    """A fixed task stays, reset options set one for a trial, and otherwise every reset draws a new one."""
    fixed = (3, 2) if env_id == GRID_ID else (0.0, 1.0)
    env = gym.make(env_id, task=fixed).unwrapped
    assert all((env.reset(seed=s)[1]["task"] == fixed).all() for s in range(5))
    given = (4, 0) if env_id == GRID_ID else (-1.0, 0.0)
    np.testing.assert_array_equal(env.reset(options={"task": given})[1]["task"], given)
    env = gym.make(env_id).unwrapped
    tasks = {tuple(env.reset(seed=s)[1]["task"]) for s in range(20)}
    assert len(tasks) > 5
    assert tuple(env.reset(seed=3)[1]["task"]) == tuple(env.reset(seed=3)[1]["task"])


def test_random_starts():
    """Collection starts: the grid's never on the goal (and everywhere else), the point robot's in its box."""
    env = gym.make(GRID_ID, task=(2, 2), random_start=True).unwrapped
    starts = {tuple(env.reset(seed=s)[0][:2]) for s in range(400)}
    assert len(starts) == 24 and (2, 2) not in starts
    env = gym.make(POINT_ID, random_start=True).unwrapped
    starts = np.array([env.reset(seed=s)[0][:2] for s in range(400)])
    assert (starts >= point.START_LOW).all() and (starts <= point.START_HIGH).all()
    assert starts.std(0).min() > 0.4


def test_point_robot_tasks_and_reward():
    goals = point.sample_tasks(np.random.default_rng(0), 10_000)
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    angles = np.arctan2(goals[:, 1], goals[:, 0])
    assert angles.min() >= 0 and angles.max() <= np.pi
    assert np.histogram(angles, bins=4, range=(0, np.pi))[0].min() > 2300  # uniform: 2500 ± 4 sd
    goal = np.array([0.0, 1.0])
    positions = np.array([[0.0, 0.81], [0.0, 0.79], [0.19, 1.0], [0.15, 1.15]])
    np.testing.assert_array_equal(point.reward(positions, goal), [1, 0, 1, 0])


def test_point_robot_moves():
    """The action in [-1, 1]² moves the robot by 0.1 times it, clipped; the reward is the new position's."""
    env = gym.make(POINT_ID, task=(0.0, 1.0)).unwrapped
    env.reset(seed=0)
    obs, r, _, _, _ = env.step(np.array([0.5, 3.0]))
    np.testing.assert_allclose(obs[:2], [0.05, 0.1], atol=1e-7)
    for _ in range(7):
        obs, r, _, _, info = env.step(np.array([-0.5, 1.0]))
    np.testing.assert_allclose(obs[:2], [-0.3, 0.8], atol=1e-6)
    assert r == 0.0
    obs, r, _, _, info = env.step(np.array([3.0, 1.0]))
    np.testing.assert_allclose(obs[:2], [-0.2, 0.9], atol=1e-6)  # 0.224 from the goal: just outside
    assert r == 0.0 and not info["goal_reached"]
    obs, r, _, _, info = env.step(np.array([1.0, 1.0]))
    assert r == 1.0 and info["goal_reached"]
