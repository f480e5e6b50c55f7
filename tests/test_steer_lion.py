"""tools/steer_lion.py, headless: moving the λ slider redraws the policy's own episode at that λ, fast."""

import glob
import os
import subprocess
import sys

import gymnasium as gym
import matplotlib
import numpy as np
import pytest
import torch
from conftest import ALGORITHMS, ROOT, load_script

matplotlib.use("Agg")
steer = load_script(os.path.join(ROOT, "tools", "steer_lion.py"))
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def tiny_run(script: str, dataset: str, tmp_path, *extra) -> str:
    argv = [os.path.join(ALGORITHMS, script + ".py"), "--dataset", dataset, "--num-updates", "20"]
    argv += ["--eval-episodes", "1", "--hidden-dim", "32", "--batch-size", "32", "--threads", "1"]
    argv += ["--device", "cpu", "--runs-dir", str(tmp_path), *extra]
    result = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = glob.glob(str(tmp_path / f"{script}__*"))
    return run_dir


@pytest.fixture(scope="module")
def lion_2d_run(tmp_path_factory):
    extra = ("--dynamics-max-epochs", "2", "--bc-updates", "50", "--horizon", "5")
    return tiny_run("lion", "shipped/lion2d", tmp_path_factory.mktemp("steer"), *extra)


def independent_episode(run_dir: str, lam: float, seed: int = 0) -> np.ndarray:
    """The positions of π(s, λ) in a fresh Lion2D episode, from the checkpoint without the tool."""
    lion = load_script("lion")
    state = torch.load(os.path.join(run_dir, "checkpoint.pt"), map_location="cpu", weights_only=False)
    policy = lion.Policy(torch.zeros(2), torch.ones(2), 2, (32, 32), use_lambda=True)
    policy.load_state_dict(state["objects"]["policy"])
    sys.path.insert(0, ALGORITHMS)
    env = gym.make("custom_envs.lion2d:Lion2D-v0")
    obs, _ = env.reset(seed=seed)
    positions, done = [obs], False
    while not done:
        with torch.no_grad():
            action = policy(torch.as_tensor(obs, dtype=torch.float32)[None], torch.tensor([lam]))[0].numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        positions.append(obs)
        done = terminated or truncated
    return np.array(positions)


def test_slider_redraws_the_policy_at_lambda(lion_2d_run):
    window = steer.SteeringWindow(steer.Steering(lion_2d_run), lam=0.0)
    for lam in (0.7, 0.2, 1.0):
        window.slider.set_val(lam)  # what a user's drag does: on_changed -> set_lambda
        x, y = window.line.get_data()
        expected = independent_episode(lion_2d_run, lam)
        np.testing.assert_allclose(np.stack([x, y], -1), expected, rtol=1e-5, atol=1e-5)
        assert f"λ = {lam:.2f}" in window.axes[0].get_title()
        assert window.last_seconds < 1.0
    # the policy map is the policy's at that λ
    with torch.no_grad():
        lion_actions = window.steering.policy(torch.tensor([[1.0, 1.0]]), torch.tensor([1.0]))[0].numpy()
    n = int(np.sqrt(len(window.grid)))
    angle = np.asarray(window.image.get_array()).reshape(n, n)[2, 2]  # grid point (1, 1)
    assert angle == pytest.approx(np.mod(np.arctan2(lion_actions[1], lion_actions[0]), 2 * np.pi), abs=1e-5)


def test_industrial_benchmark_traces(tmp_path):
    """A λ-TD3+BC run on IB: the reward and state traces are the episode's at the slider's λ, 100 steps."""
    run_dir = tiny_run("lambda_td3_bc", "shipped/ib-bad-0.2", tmp_path)
    window = steer.SteeringWindow(steer.Steering(run_dir), lam=0.0)
    window.slider.set_val(0.6)
    episode = window.steering.episode(0.6)
    t, rewards = window.line.get_data()
    assert len(t) == 100 and np.allclose(rewards, episode["rewards"])
    assert np.allclose(window.traces[0].get_data()[1], episode["observations"][1:, 1])  # velocity
    assert window.last_seconds < 1.0


def test_save_from_the_command_line(lion_2d_run, tmp_path):
    out = tmp_path / "steer.png"
    tool = os.path.join(ROOT, "tools", "steer_lion.py")
    result = subprocess.run(
        [sys.executable, tool, lion_2d_run, "--lam", "0.5", "--save", str(out)], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0 and out.stat().st_size > 10_000, result.stderr[-2000:]
    bad = subprocess.run([sys.executable, tool, str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and len(bad.stderr.splitlines()) == 1
