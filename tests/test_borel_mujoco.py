"""BOReL's MuJoCo families (issue 17): Half-Cheetah-Vel and the sparse Ant-Semicircle. The environments' rewards by
hand, the observation and trial structure, task sampling, relabelling that recomputes a task's rewards exactly, the
(s', s, a) reward decoder, and a tiny collection + borel.py run per family."""

import glob
import json
import os
import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import ALGORITHMS, ROOT, load_script
from custom_envs import borel_ant_semicircle as ant
from custom_envs import borel_cheetah_vel as cheetah

borel = load_script("borel")
CHEETAH_ID = "custom_envs.borel_cheetah_vel:BorelHalfCheetahVel-v0"
ANT_ID = "custom_envs.borel_ant_semicircle:BorelAntSemiCircleSparse-v0"


def test_cheetah_observation_and_reward_by_hand():
    """obs = qpos[1:], qvel, the torso's COM, the flag; r = -|v_x - v_goal| - 0.05 |a|² with v_x from the torso's x
    before and after the step (5 frames of 0.01 s), and info's x_velocity is that v_x."""
    env = gym.make(CHEETAH_ID, task=(2.0,)).unwrapped
    env.reset(seed=0)
    sim = env.sim
    action = np.array([0.5, -1.0, 0.2, 0.9, -0.3, 1.0])
    for _ in range(3):
        x_before = float(sim.data.qpos[0])
        obs, r, _, _, info = env.step(action)
        v = (float(sim.data.qpos[0]) - x_before) / 0.05
        assert sim.dt == pytest.approx(0.05) and info["x_velocity"] == pytest.approx(v)
        assert r == pytest.approx(-abs(v - 2.0) - 0.05 * (action**2).sum())
    np.testing.assert_allclose(obs[:8], sim.data.qpos[1:], rtol=1e-6)
    np.testing.assert_allclose(obs[8:17], sim.data.qvel, rtol=1e-6)
    np.testing.assert_allclose(obs[17:20], sim.data.body("torso").xpos, rtol=1e-6)
    assert obs.shape == (21,) and obs[20] == 0 and env.action_space.shape == (6,)
    assert "goal_reached" not in info  # no goal state: no success rate


def test_ant_observation_and_rewards_by_hand():
    """obs = qpos (torso x, y first), qvel, the flag; sparse r = 1[|xy - g| <= 0.2] - 0.1 |a|², dense -|xy - g|₁ -
    0.1 |a|²; a goal at the start pays the sparse 1; the model is the authors' (gear 150, control range [-1, 1])."""
    env = gym.make(ANT_ID, task=(0.1, 0.05)).unwrapped
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs[:2], [0, 0])  # the evaluation start: the origin
    np.testing.assert_array_equal(env.sim.model.actuator_gear[:, 0], 150)
    np.testing.assert_array_equal(env.sim.model.actuator_ctrlrange, [[-1, 1]] * 8)
    action = np.linspace(-1, 1, 8)
    obs, r, terminated, _, info = env.step(action)
    xy, cost = env.sim.data.qpos[:2], 0.1 * (action**2).sum()
    np.testing.assert_allclose(obs[:15], env.sim.data.qpos, rtol=1e-6)
    np.testing.assert_allclose(obs[15:29], env.sim.data.qvel, rtol=1e-6)
    assert obs.shape == (30,) and not terminated
    near = np.linalg.norm(xy - [0.1, 0.05]) <= 0.2
    assert near and info["goal_reached"] and r == pytest.approx(1.0 - cost)
    assert info["dense_reward"] == pytest.approx(-np.abs(xy - [0.1, 0.05]).sum() - cost)
    env.reset(seed=0, options={"task": (-1.0, 0.0)})
    obs, r, _, _, info = env.step(action)
    assert not info["goal_reached"] and r == pytest.approx(-cost)
    far = np.array([[0.0, 0.0], [0.9, 0.1], [1.0, 0.25]])
    np.testing.assert_allclose(ant.sparse_reward(far, np.zeros(8), np.array([1.0, 0.0])), [0.0, 1.0, 0.0])


def test_task_sampling_and_collection_starts():
    rng = np.random.default_rng(0)
    velocities = cheetah.sample_tasks(rng, 10_000)
    assert velocities.shape == (10_000, 1) and velocities.min() >= 0 and velocities.max() <= 3
    assert velocities.min() < 0.01 and velocities.max() > 2.99  # U[0, 3] (the authors' code), not [0, 2]
    goals = ant.sample_tasks(rng, 10_000)
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 1.0)
    assert goals[:, 1].min() >= 0 and goals[:, 0].min() < -0.99 and goals[:, 0].max() > 0.99
    env = gym.make(ANT_ID, random_start=True).unwrapped
    starts = np.array([env.reset(seed=s)[0][:2] for s in range(300)])
    assert (starts >= [-1.5, -0.5]).all() and (starts <= [1.5, 1.5]).all()
    radius = np.linalg.norm(starts, axis=1)
    assert ((radius < 0.8) | (radius > 1.2)).all() and starts.std(0).min() > 0.3  # never on the goals' band


@pytest.mark.parametrize("env_id, obs_dim", [(CHEETAH_ID, 21), (ANT_ID, 30)])
def test_trial_structure(env_id, obs_dim):
    """Two MDP episodes of 200 steps: the flag is 1 on their last steps only, the first one's end gives the start
    state (flag 0) the next step moves on from, the trial is truncated after step 400 and never terminated."""
    env = gym.make(env_id).unwrapped
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    for t in range(1, 401):
        obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        assert obs.shape == (obs_dim,) and obs[-1] == (t % 200 == 0) and truncated == (t == 400) and not terminated
        assert ("start_state" in info) == (t == 200)
        if t == 200:
            assert info["start_state"][-1] == 0 and not np.allclose(info["start_state"][:-1], obs[:-1])
            np.testing.assert_allclose(info["start_state"], env._obs(0.0))
            if env_id == ANT_ID:  # the evaluation start again: the origin
                np.testing.assert_array_equal(info["start_state"][:2], [0, 0])


def trials_of(env_id, goals, n, seed=0):
    """n random-action trials per goal, as borel.trials_by_task gives them [K, N, T, ...]."""
    env, rng = gym.make(env_id).unwrapped, np.random.default_rng(seed)
    steps = {k: [] for k in ("observations", "actions", "rewards", "next_observations", "x_velocity")}
    for goal in goals:
        for _ in range(n):
            obs, _ = env.reset(seed=int(rng.integers(1000)), options={"task": goal})
            for _ in range(400):
                action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
                next_obs, r, _, _, info = env.step(action)
                for key, value in zip(steps, (obs, action, r, next_obs, info.get("x_velocity", 0.0))):
                    steps[key].append(value)
                obs = info.get("start_state", next_obs)
    k = len(goals)
    out = {key: torch.as_tensor(np.array(v, dtype=np.float32)).view(k, n, 400, -1) for key, v in steps.items()}
    for key in ("rewards", "x_velocity"):
        out[key] = out[key][..., 0]
    return out


@pytest.mark.parametrize("family", ["cheetah_vel", "ant_semicircle"])
def test_relabelling_recomputes_this_tasks_rewards_exactly(family):
    """The family's torch reward gives back the environment's rewards of a task's own trials; after relabelling,
    every step (own or another task's) carries this task's reward of its (s', a, v_x), which the environment's reward
    function gives for this task's goal."""
    module, env_id = (cheetah, CHEETAH_ID) if family == "cheetah_vel" else (ant, ANT_ID)
    goals = module.sample_tasks(np.random.default_rng(1), 3)
    trials = trials_of(env_id, goals, 2)
    goals_t = torch.as_tensor(goals, dtype=torch.float32)
    reward_fn = borel.FAMILIES[family]["reward"]
    own = reward_fn(trials["next_observations"], goals_t[:, None, None], trials)
    torch.testing.assert_close(own, trials["rewards"], atol=2e-5, rtol=1e-5)
    out = borel.relabel_rewards(trials, goals_t, [(0, 200)], reward_fn, torch.Generator().manual_seed(0))
    assert not torch.equal(out["observations"], trials["observations"])
    torch.testing.assert_close(out["x_velocity"][:, :, 200:], trials["x_velocity"][:, :, 200:])
    a, s2, g = out["actions"].numpy(), out["next_observations"].numpy(), goals[:, None, None]
    by_env = cheetah.reward(out["x_velocity"].numpy(), a, g) if family == "cheetah_vel" else ant.sparse_reward(s2, a, g)
    np.testing.assert_allclose(out["rewards"].numpy(), by_env, atol=2e-5, rtol=1e-5)


def test_sas_decoder_is_the_mlp_on_z_and_the_three_embeddings():
    torch.manual_seed(0)
    decoder = borel.RewardDecoder(obs_dim=4, kind="mse_sas", act_dim=2, action_embed=3, state_embed=5)
    z, s2, s, a = torch.randn(7, 5), torch.randn(7, 4), torch.randn(7, 4), torch.randn(7, 2)
    relu = torch.relu
    inp = [z, relu(decoder.state_embed(s2)), relu(decoder.prev_state_embed(s)), relu(decoder.action_embed(a))]
    torch.testing.assert_close(decoder(z, s2, s, a), decoder.net(torch.cat(inp, -1))[:, 0])
    # the broadcast of every belief against every step, as the ELBO decodes a trial
    table = decoder(z[:3, None], s2[None], s[None], a[None])
    torch.testing.assert_close(table[1, 4], decoder(z[1], s2[4], s[4], a[4]))


def test_a_cheetah_file_without_x_velocity_gives_one_line():
    arrays = {"task_index": np.zeros(400), "task_params": np.zeros((400, 1))}
    with pytest.raises(borel.MetaDatasetError, match="no 'x_velocity' array") as error:
        borel.trials_by_task(arrays, {"episode_length": 200, "episodes_per_trial": 2}, "c.hdf5", ("x_velocity",))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("family", ["cheetah_vel", "ant_semicircle"])
def test_collection_and_borel_end_to_end(tmp_path, family):
    """Two tasks of a tiny collection (the file stores what relabelling needs, the references from the evaluation
    start), then borel.py two updates on it: the evaluation has both inner episodes' returns, and the success rate
    where the family has a goal (the ant), none for Half-Cheetah-Vel (which refuses --eval-random-start)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    out = tmp_path / "data.hdf5"
    command = [sys.executable, "datasets/borel_generate.py", "--family", family, "--num-tasks", "2", "--iterations"]
    command += ["1", "--init-trials", "1", "--trials-per-iteration", "1", "--updates-per-iteration", "2"]
    command += ["--ref-trials", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(out) as f:
        arrays, attrs = {k: f[k][()] for k in f}, dict(f.attrs)
    assert attrs["family"] == family and attrs["trials_per_task"] == 2 and len(arrays["rewards"]) == 2 * 2 * 400
    extra = {"cheetah_vel": "x_velocity", "ant_semicircle": "dense_rewards"}[family]
    assert extra in arrays and np.isfinite([attrs["ref_min_score"], attrs["ref_max_score"]]).all()
    goals = arrays["task_params"][::800]
    if family == "cheetah_vel":  # the stored rewards are the ones the stored velocities give
        by_velocity = cheetah.reward(arrays["x_velocity"], arrays["actions"], np.repeat(goals, 800, 0))
        np.testing.assert_allclose(arrays["rewards"], by_velocity, atol=1e-5)
    else:
        steps = (arrays["next_observations"], arrays["actions"], np.repeat(goals, 800, 0))
        np.testing.assert_allclose(arrays["rewards"], ant.sparse_reward(*steps), atol=1e-5)
        np.testing.assert_allclose(arrays["dense_rewards"], ant.dense_reward(*steps), atol=1e-5)
    argv = [sys.executable, os.path.join(ALGORITHMS, "borel.py"), "--dataset", str(out), "--runs-dir", str(tmp_path)]
    argv += ["--vae-epochs", "1", "--elbo-terms", "4", "--vae-tasks-per-batch", "2", "--encoder-hidden-dim", "16"]
    argv += ["--action-embed-dim", "4", "--num-updates", "2", "--eval-every", "2", "--updates-per-iteration", "2"]
    argv += ["--meta-batch", "2", "--batch-size", "8", "--hidden-dim", "16", "--eval-episodes", "2", "--device", "cpu"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder,) = glob.glob(str(tmp_path / "borel__*"))
    evaluations = json.load(open(os.path.join(folder, "results.json")))["evaluations"]
    assert len(evaluations) == 1
    for evaluation in evaluations:
        assert len(evaluation["episode_returns"]) == 2
        assert sum(evaluation["episode_returns"]) == pytest.approx(evaluation["return"])
        assert (evaluation["success_rate"] is None) == (family == "cheetah_vel")
    if family == "cheetah_vel":  # its data start where evaluation does: a random evaluation start is refused
        done = subprocess.run(argv + ["--eval-random-start"], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode != 0 and "has no random start" in done.stderr and "Traceback" not in done.stderr
