"""LION's two environments (algorithms/custom_envs/): the Industrial Benchmark step for step against the reference
package industrial-benchmark-python 2.0, and the 2D task.

The reference comparison has two parts. A committed fixture (tests/fixtures/ib_reference.npz) holds trajectories
the reference package produced, written once by

    pip download industrial-benchmark-python==2.0 --no-deps -d /tmp/ibref && cd /tmp/ibref && unzip -o *.whl
    IB_REFERENCE_DIR=/tmp/ibref python tests/test_lion_envs.py

and is compared on every CI run; with IB_REFERENCE_DIR pointing at the unpacked wheel the test also runs the package
live on new seeds (it is skipped otherwise, and says so: CI does not install the package, which breaks on
numpy >= 1.24 through np.float; the test shims that alias in its own process). Both sides draw from the same
legacy numpy stream: the reference from the global np.random seeded by IDS(inital_seed=...), ours from a
RandomState with that seed behind the Generator method names the environment calls.
"""

import json
import os
import subprocess
import sys
import types

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from conftest import ALGORITHMS, ROOT, load_script

sys.path.insert(0, ALGORITHMS)
from custom_envs import lion2d  # noqa: E402
from custom_envs.industrial_benchmark import IndustrialBenchmarkCore  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "ib_reference.npz")
SETPOINTS = (70, 30, 100)  # LION's setpoint, and two more regimes of the dynamics
STEPS = 300


class LegacyDraws:
    """A RandomState behind the Generator method names that IndustrialBenchmarkCore calls."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed)

    def integers(self, low, high):
        return self.state.randint(low, high)

    def __getattr__(self, name):
        return getattr(self.state, name)


def actions_for(seed: int) -> np.ndarray:
    """Actions that visit the whole box: uniform, with runs of ±1 that drive v, g, h to their bounds."""
    rs = np.random.RandomState(10_000 + seed)
    actions = rs.uniform(-1, 1, (STEPS, 3))
    actions[50:120] = 1.0
    actions[180:240] = -1.0
    return actions


def ours(setpoint: float, seed: int, actions: np.ndarray) -> np.ndarray:
    """Frames [p, v, g, h, f, c, cost] after construction and after every action."""
    core = IndustrialBenchmarkCore(setpoint, LegacyDraws(seed))
    rows = [np.append(core.frame(), core.cost)]
    for a in actions:
        core.step(a)
        rows.append(np.append(core.frame(), core.cost))
    return np.array(rows)


def import_reference(package_dir: str):
    """The reference package from an unpacked wheel, with the np.float alias it needs and a stand-in for gym."""
    np.float = float  # removed in numpy 1.24; the reference calls it in IDS.updateFatigue
    fake_gym = types.ModuleType("gym")
    fake_gym.Env = object
    fake_gym.spaces = types.SimpleNamespace(Box=lambda *a, **k: None, Discrete=lambda *a, **k: None)
    sys.modules.setdefault("gym", fake_gym)
    sys.path.insert(0, package_dir)
    from industrial_benchmark_python.IBGym import IBGym
    from industrial_benchmark_python.IDS import IDS

    return IDS, IBGym


def reference(IDS, setpoint: float, seed: int, actions: np.ndarray) -> np.ndarray:
    ids = IDS(p=setpoint, inital_seed=seed)
    rows = [ids.visibleState()[:7]]
    for a in actions:
        ids.step(a)
        rows.append(ids.visibleState()[:7])
    return np.array(rows)


def test_ib_matches_reference_fixture():
    fixture = np.load(FIXTURE)
    for i, setpoint in enumerate(fixture["setpoints"]):
        seed = int(fixture["seeds"][i])
        np.testing.assert_allclose(ours(setpoint, seed, actions_for(seed)), fixture["frames"][i], rtol=1e-9, atol=1e-9)


def test_ib_matches_reference_package_live():
    package_dir = os.environ.get("IB_REFERENCE_DIR")
    if not package_dir:
        pytest.skip("IB_REFERENCE_DIR is not set: the live comparison with industrial-benchmark-python needs the wheel")
    IDS, IBGym = import_reference(package_dir)
    for seed, setpoint in ((7, 70), (8, 10), (9, 55)):
        np.testing.assert_allclose(
            ours(setpoint, seed, actions_for(seed)),
            reference(IDS, setpoint, seed, actions_for(seed)),
            rtol=1e-9,
            atol=1e-9,
        )
    # the 180-value history of IBGym's include_past observation, newest first, first frame repeated at reset
    ref_env = IBGym(70, "classic", "continuous", "include_past", init_seed=3)
    env = gym.make("custom_envs.industrial_benchmark:IndustrialBenchmark-v0")
    env.reset(seed=0)
    draws = LegacyDraws(3)
    env.unwrapped.core = IndustrialBenchmarkCore(70, draws)
    draws.randint(0, 100000)  # IBGym.reset draws the next episode's seed from the same stream
    env.unwrapped.frames = np.tile(env.unwrapped.core.frame(), (30, 1))
    np.testing.assert_allclose(env.unwrapped.frames.ravel(), np.hstack(ref_env.observation))
    for a in actions_for(3)[:40]:
        obs, reward, *_ = env.step(a)
        ref_obs, ref_reward, *_ = ref_env.step(a)
        np.testing.assert_allclose(obs, ref_obs, rtol=1e-9)
        np.testing.assert_allclose(reward, ref_reward, rtol=1e-9)


def test_ib_gymnasium_api():
    """Seeded resets repeat; the global numpy state is left alone; the history shifts by one frame per step."""
    env = gym.make("custom_envs.industrial_benchmark:IndustrialBenchmark-v0", episode_length=5, reward_scale=0.01)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first, _ = env.reset(seed=4)
    assert first.shape == (180,) and np.all(first.reshape(30, 6) == first[:6])
    obs, reward, terminated, truncated, _ = env.step(np.array([1.0, -1.0, 0.5]))
    frames, prev = obs.reshape(30, 6), first.reshape(30, 6)
    assert np.array_equal(frames[1:], prev[:-1]) and frames[0, 1] == prev[0, 1] + 1 and frames[0, 2] == prev[0, 2] - 10
    assert reward == pytest.approx(-(3 * frames[0, 4] + frames[0, 5]) / 100)
    for _ in range(4):
        *_, truncated, _ = env.step(np.zeros(3))
    assert truncated and not terminated
    assert np.array_equal(np.random.get_state()[1], before)
    again, _ = env.reset(seed=4)
    assert np.array_equal(again, first)


def test_lion2d():
    env = gym.make("custom_envs.lion2d:Lion2D-v0")
    obs, _ = env.reset(seed=1)
    assert np.all((0 <= obs) & (obs <= 10))
    nxt, reward, terminated, truncated, _ = env.step(np.array([3.0, -0.25]))
    np.testing.assert_allclose(nxt, obs + [1.0, -0.25])
    assert reward == pytest.approx(np.exp(-((nxt - [3, 6]) ** 2).sum() / (2 * 1.5**2)))
    for _ in range(24):
        *_, truncated, _ = env.step(np.zeros(2))
    assert truncated and not terminated
    assert lion2d.reward(np.array([3.0, 6.0])) == 1.0
    # behaviour: toward the nearer goal, landing on it, and staying
    np.testing.assert_allclose(lion2d.nearer_goal_action(np.array([0.0, 1.0])), [[2.5 / 3, 1.5 / 3]])
    np.testing.assert_allclose(lion2d.nearer_goal_action(np.array([9.0, 7.9])), [[-1.5 / 2, -0.4 / 2]])
    np.testing.assert_allclose(lion2d.nearer_goal_action(np.array([7.5, 7.5])), [[0.0, 0.0]])


if __name__ == "__main__":  # write the fixture from the reference package (see the module docstring)
    IDS, _ = import_reference(os.environ["IB_REFERENCE_DIR"])
    seeds = np.arange(len(SETPOINTS))
    frames = np.stack([reference(IDS, p, int(s), actions_for(int(s))) for p, s in zip(SETPOINTS, seeds)])
    np.savez_compressed(FIXTURE, setpoints=np.array(SETPOINTS, dtype=float), seeds=seeds, frames=frames)
    print(f"wrote {FIXTURE}: {frames.shape}")


def generate(tmp_path, name, *extra):
    out = tmp_path / f"{name}.hdf5"
    argv = [sys.executable, os.path.join(ROOT, "datasets", "lion_generate.py"), "--dataset", name, "--out", str(out)]
    result = subprocess.run([*argv, *extra], capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    with h5py.File(out) as f:
        return {k: f[k][()] for k in f}, dict(f.attrs), out


def test_generated_ib_dataset(tmp_path):
    """ε = 0: every action is the behaviour rule's; the histories shift by one frame per step; rewards are
    -(3 f + c) / 100 of the next frame; the loader of the scripts reads it and makes its environment."""
    arrays, attrs, path = generate(tmp_path, "ib-bad-0.0", "--trajectories", "2", "--ref-episodes", "1")
    obs, actions = arrays["observations"].reshape(-1, 30, 6), arrays["actions"]
    assert obs.shape == (2000, 30, 6) and arrays["timeouts"].sum() == 2 and arrays["timeouts"][999]
    np.testing.assert_allclose(actions, np.clip(100 - obs[:, 0, 1:4], -1, 1))
    inside = ~arrays["timeouts"][:-1]
    np.testing.assert_array_equal(obs[1:][inside, 1:], obs[:-1][inside, :-1])
    np.testing.assert_allclose(
        arrays["rewards"][:-1][inside], -(3 * obs[1:][inside, 0, 4] + obs[1:][inside, 0, 5]) / 100, rtol=1e-5
    )
    assert "raw-unit" in attrs["reconstructed"] and json.loads(attrs["env_kwargs"])["setpoint"] == 70
    assert attrs["ref_min_score"] < attrs["ref_max_score"]
    lion = load_script("lion")
    data = lion.load_dataset(str(path), torch.device("cpu"))
    assert data.observations.shape == (1998, 180)  # each trajectory's last step has no next observation in the file


def test_generated_2d_dataset(tmp_path):
    arrays, attrs, _ = generate(tmp_path, "lion2d", "--trajectories", "40", "--ref-episodes", "2")
    behaviour = lion2d.nearer_goal_action(arrays["observations"])
    follows = np.all(np.isclose(arrays["actions"], behaviour), -1)
    assert arrays["observations"].shape == (1000, 2) and 0.8 < follows.mean() < 0.97  # ε = 0.1 random actions
    np.testing.assert_allclose(
        arrays["next_observations"], arrays["observations"] + np.clip(arrays["actions"], -1, 1), rtol=1e-5
    )
    np.testing.assert_allclose(arrays["rewards"], lion2d.reward(arrays["next_observations"]), rtol=1e-5)
    assert attrs["env_id"] == "custom_envs.lion2d:Lion2D-v0"
