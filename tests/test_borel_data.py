"""BOReL's per-task data (datasets/borel_generate.py) and the shipped gridworld and point-robot files: the D4RL
layout plus the task of every step, read by the dataset layer every script shares, with whole trials in task order."""

import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, SHIPPED, load_script
from custom_envs import borel_gridworld, borel_point_robot

GRIDWORLD = os.path.join(SHIPPED, "borel-gridworld.hdf5")
POINT_ROBOT = os.path.join(SHIPPED, "borel-point-robot.hdf5")
MODULES = {"gridworld": borel_gridworld, "point_robot": borel_point_robot}


def read(path: str) -> tuple[dict, dict]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in f.keys()}, dict(f.attrs)


def check_layout(arrays: dict, attrs: dict) -> None:
    """Whole trials in task order; rewards are the step's task's reward of the next observation; the flag marks the
    ends of the inner episodes; the task parameters are those of the task index."""
    module = MODULES[attrs["family"]]
    length = attrs["episode_length"] * attrs["episodes_per_trial"]
    tasks, trials = attrs["num_tasks"], attrs["trials_per_task"]
    assert len(arrays["rewards"]) == tasks * trials * length
    np.testing.assert_array_equal(arrays["task_index"], np.repeat(np.arange(tasks), trials * length))
    per_task = arrays["task_params"].reshape(tasks, trials * length, -1)
    assert (per_task == per_task[:, :1]).all()
    np.testing.assert_allclose(arrays["rewards"], module.reward(arrays["next_observations"], arrays["task_params"]))
    step = np.arange(len(arrays["rewards"])) % length
    np.testing.assert_array_equal(arrays["timeouts"], step == length - 1)
    np.testing.assert_array_equal(arrays["next_observations"][:, 2], (step + 1) % attrs["episode_length"] == 0)
    inner_start = (step % attrs["episode_length"] == 0) & (step > 0)
    np.testing.assert_array_equal(arrays["observations"][:, 2], inner_start & bool(attrs["teleport"]))
    assert not arrays["terminals"].any()
    np.testing.assert_array_equal(arrays["goal_reached"], arrays["rewards"] == 1.0)  # both families pay 1 at the goal


def test_shipped_gridworld_layout():
    arrays, attrs = read(GRIDWORLD)
    assert attrs["num_tasks"] == 21 and attrs["env_id"] == "custom_envs.borel_gridworld:BorelGridNavi-v0"
    check_layout(arrays, attrs)
    assert os.path.getsize(GRIDWORLD) < 500_000


def test_shipped_point_robot_layout_and_behaviour():
    """The shipped point robot (16 goals, 100 trials each: 20 random, then 80 of the learning SAC agent): the layout,
    and each task's agent learns its goal (its last 10 trials earn over 70 % of the oracle's per-trial return, where
    the 20 random ones earn about nothing)."""
    arrays, attrs = read(POINT_ROBOT)
    assert attrs["num_tasks"] == 16 and attrs["trials_per_task"] == 100 and attrs["family"] == "point_robot"
    check_layout(arrays, attrs)
    assert os.path.getsize(POINT_ROBOT) < 5_000_000
    returns = arrays["rewards"].reshape(16, 100, -1).sum(-1)
    assert returns[:, :20].mean() < 10 and returns[:, -10:].mean() > 0.7 * attrs["ref_max_score"]
    goals = arrays["task_params"][:: 100 * 120]
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0, rtol=1e-6)
    assert (goals[:, 1] >= 0).all() and len(np.unique(goals[:, 0])) == 16


def test_shipped_gridworld_behaviour_learns_its_task():
    """Each task's agent ends near the oracle: later trials earn far more than the random first ones."""
    arrays, attrs = read(GRIDWORLD)
    returns = arrays["rewards"].reshape(attrs["num_tasks"], attrs["trials_per_task"], -1).sum(-1)
    assert returns[:, :10].mean() < attrs["ref_min_score"] + 5
    assert returns[:, -10:].mean() > 0.8 * attrs["ref_max_score"]


def test_the_dataset_layer_reads_it_and_names_a_bad_file():
    """Every script's shared loader reads the file (its environment from env_id, one action index per step) and
    refuses a broken one with one line."""
    loader = load_script("td3_bc")
    data = loader.load_dataset(GRIDWORLD, torch.device("cpu"))
    assert data.actions.shape[1] == 1 and data.observations.shape[1] == 3
    env = data.make_env()
    assert env.observation_space.shape == (3,) and env.action_space.n == 5


@pytest.mark.parametrize("damage, message", [("nan", "NaN or inf"), ("short", "rows but 'observations' has")])
def test_a_damaged_file_gives_one_line(tmp_path, damage, message):
    path = tmp_path / "bad.hdf5"
    shutil.copy(GRIDWORLD, path)
    with h5py.File(path, "a") as f:
        params = f["task_params"][()]
        del f["task_params"]
        if damage == "nan":
            params[5, 0] = np.nan
        f["task_params"] = params if damage == "nan" else params[:-1]
    loader = load_script("td3_bc")
    with pytest.raises(loader.DatasetError, match=message) as error:
        loader.load_dataset(str(path), torch.device("cpu"))
    assert "task_params" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("family, teleport", [("gridworld", True), ("point_robot", False)])
def test_collection_end_to_end(tmp_path, family, teleport):
    """A tiny collection per family: the layout holds, and at an inner episode's end the next step starts from the
    start state (or, with --teleport, from the last observation, as the authors' loops do)."""
    out = tmp_path / "data.hdf5"
    command = [sys.executable, "datasets/borel_generate.py", "--family", family, "--num-tasks", "2", "--iterations"]
    command += ["2", "--init-trials", "2", "--trials-per-iteration", "1", "--updates-per-iteration", "5"]
    command += ["--ref-trials", "3", "--out", str(out)] + (["--teleport"] if teleport else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    arrays, attrs = read(out)
    assert attrs["trials_per_task"] == 4 and bool(attrs["teleport"]) == teleport
    check_layout(arrays, attrs)
    inner_end = (arrays["next_observations"][:-1, 2] == 1) & ~arrays["timeouts"][:-1]
    continues = (arrays["observations"][1:, :2] == arrays["next_observations"][:-1, :2]).all(1)
    assert continues[~arrays["timeouts"][:-1] & ~inner_end].all()  # inside an episode the state carries on
    if teleport:
        assert continues[inner_end].all()
    else:
        assert not continues[inner_end].all()  # a random start (the collection's) almost never repeats the last state
