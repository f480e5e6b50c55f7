"""datasets/generate.py: D4RL-layout datasets from a (tiny, real) SAC run of algorithms/sac.py."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT, load_script

ENV_ID = "Pendulum-v1"  # 200-step episodes, cut by time limits only
EPISODE = 200
NUM_STEPS = 300
# Long enough that the final policy clearly beats the random one (about -700 against -1200
# at 3000 steps), so that ref_min_score < ref_max_score holds; about 10 s on one thread.
SAC_STEPS, SAC_EVAL_EVERY = 3000, 1000
LEVELS = ("random", "medium", "expert", "medium-replay", "medium-expert", "pure", "eps1")
GENERATE = os.path.join(ROOT, "datasets", "generate.py")


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("sac_runs")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "algorithms", "sac.py"),
        "--env-id",
        ENV_ID,
        "--total-timesteps",
        str(SAC_STEPS),
        "--learning-starts",
        "200",
        "--eval-every",
        str(SAC_EVAL_EVERY),
        "--eval-episodes",
        "2",
        "--hidden-dim",
        "64",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--runs-dir",
        str(runs),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"^run directory: (.+)$", result.stdout, re.M)
    assert match, result.stdout[-2000:]
    return match.group(1).strip()


def generate_args(sac_run, level, out, seed=0):
    return [
        sys.executable,
        GENERATE,
        "--sac-run",
        sac_run,
        "--level",
        level,
        "--num-steps",
        str(NUM_STEPS),
        "--ref-episodes",
        "2",
        "--seed",
        str(seed),
        "--out",
        out,
    ]


@pytest.fixture(scope="module")
def generated(sac_run, tmp_path_factory):
    """name -> (path, json summary) for every level, plus medium again (same seed) and with seed 1.

    The generators run side by side (each is about a second of CPU)."""
    out = tmp_path_factory.mktemp("generated")
    jobs = {level: generate_args(sac_run, level, str(out / f"{level}.hdf5")) for level in LEVELS}
    jobs["medium-again"] = generate_args(sac_run, "medium", str(out / "medium-again.hdf5"))
    jobs["medium-seed1"] = generate_args(sac_run, "medium", str(out / "medium-seed1.hdf5"), seed=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {
        name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for name, cmd in jobs.items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {stderr[-3000:]}"
        summary = json.loads(stdout.strip().splitlines()[-1])
        results[name] = (str(out / f"{name}.hdf5"), summary)
    assert not glob.glob(str(out / "*.tmp"))  # written atomically
    return results


def read(path):
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f.keys()}
        attrs = dict(f.attrs)
    return arrays, attrs


def checkpoint_info(sac_run):
    return [
        torch.load(p, map_location="cpu", weights_only=False)
        for p in sorted(glob.glob(os.path.join(sac_run, "checkpoints", "actor_*.pt")))
    ]


# ---------------------------------------------------------------------------- the SAC run it starts from
def test_sac_run_layout(sac_run):
    ckpts = checkpoint_info(sac_run)
    assert [c["step"] for c in ckpts] == list(range(SAC_EVAL_EVERY, SAC_STEPS + 1, SAC_EVAL_EVERY))
    for c in ckpts:
        assert {"actor", "step", "eval_return", "env_id", "hidden_dim"} <= set(c)
        assert c["env_id"] == ENV_ID and c["hidden_dim"] == 64 and np.isfinite(c["eval_return"])
    buffer = np.load(os.path.join(sac_run, "replay_buffer.npz"))
    assert set(buffer.files) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
    assert len(buffer["rewards"]) == SAC_STEPS


# ---------------------------------------------------------------------------- every level
@pytest.mark.parametrize("level", LEVELS)
def test_layout_dtypes_attributes(generated, sac_run, level):
    path, summary = generated[level]
    arrays, attrs = read(path)
    assert set(arrays) == {"observations", "actions", "rewards", "next_observations", "terminals", "timeouts"}
    n = len(arrays["rewards"])
    assert summary["transitions"] == n
    for key in ("observations", "actions", "rewards", "next_observations"):
        assert arrays[key].dtype == np.float32, key
        assert np.isfinite(arrays[key]).all(), key
    assert arrays["terminals"].dtype == bool and arrays["timeouts"].dtype == bool
    assert arrays["observations"].shape == arrays["next_observations"].shape == (n, 3)
    assert arrays["actions"].shape == (n, 1) and arrays["rewards"].shape == (n,)
    assert np.abs(arrays["actions"]).max() <= 2.0  # inside Pendulum's action box
    assert attrs["env_id"] == ENV_ID and json.loads(attrs["env_kwargs"]) == {}
    assert attrs["level"] == level and int(attrs["seed"]) == 0
    assert attrs["command"].startswith("python ") and "generate.py" in attrs["command"]
    assert f"--level {level}" in attrs["command"] and "--seed 0" in attrs["command"]
    assert attrs["source_run"] == os.path.basename(sac_run)
    assert np.isfinite(attrs["ref_min_score"]) and np.isfinite(attrs["ref_max_score"])
    assert attrs["ref_min_score"] < attrs["ref_max_score"], (attrs["ref_min_score"], attrs["ref_max_score"])


@pytest.mark.parametrize("level", LEVELS)
def test_episodes_end_at_boundaries(generated, level):
    arrays, _ = read(generated[level][0])
    ends = arrays["terminals"] | arrays["timeouts"]
    assert ends[-1], "the file must end at an episode boundary"
    assert not arrays["terminals"].any()  # Pendulum never terminates
    # Pendulum's episodes are exactly 200 steps long, so the ends fall every 200 steps
    assert np.array_equal(np.flatnonzero(ends), np.arange(EPISODE - 1, len(ends), EPISODE))
    # within an episode the next observation is the following row's observation
    inside = np.flatnonzero(~ends[:-1])
    np.testing.assert_array_equal(arrays["next_observations"][inside], arrays["observations"][inside + 1])


def test_sizes(generated):
    sizes = {level: len(read(generated[level][0])[0]["rewards"]) for level in LEVELS}
    for level in ("random", "medium", "expert"):
        # at least --num-steps, then only the rest of the last episode
        assert NUM_STEPS <= sizes[level] < NUM_STEPS + EPISODE, (level, sizes[level])
    assert sizes["medium-expert"] == sizes["medium"] + sizes["expert"]
    assert 2 * NUM_STEPS <= sizes["medium-expert"] < 2 * (NUM_STEPS + EPISODE)  # about twice
    # the 2 : 4 : 4 mix: each of its three parts finishes its last episode
    assert NUM_STEPS <= sizes["eps1"] <= NUM_STEPS + 3 * EPISODE


def test_medium_expert_is_medium_then_expert(generated):
    medium, _ = read(generated["medium"][0])
    mixed, attrs = read(generated["medium-expert"][0])
    n = len(medium["rewards"])
    for key, value in medium.items():
        np.testing.assert_array_equal(mixed[key][:n], value, err_msg=key)
    assert attrs["medium_step"] <= attrs["expert_step"]


def test_policy_choice(generated, sac_run):
    ckpts = {c["step"]: c["eval_return"] for c in checkpoint_info(sac_run)}
    _, attrs = read(generated["medium"][0])
    assert attrs["expert_step"] == SAC_STEPS  # the final policy
    assert attrs["expert_eval_return"] == pytest.approx(ckpts[SAC_STEPS])
    assert attrs["medium_step"] in ckpts
    assert attrs["medium_eval_return"] == pytest.approx(ckpts[attrs["medium_step"]])
    for level in LEVELS:  # every level of one run names the same policies
        _, other = read(generated[level][0])
        assert (other["medium_step"], other["expert_step"]) == (attrs["medium_step"], attrs["expert_step"])


def test_medium_replay_is_buffer_prefix(generated, sac_run):
    arrays, attrs = read(generated["medium-replay"][0])
    buffer = dict(np.load(os.path.join(sac_run, "replay_buffer.npz")))
    n = len(arrays["rewards"])
    medium_step = int(attrs["medium_step"])
    # the buffer's first medium_step transitions, to the end of that episode
    assert medium_step <= n < medium_step + EPISODE
    for key in ("observations", "actions", "rewards", "next_observations"):
        np.testing.assert_array_equal(arrays[key], buffer[key][:n], err_msg=key)
    np.testing.assert_array_equal(arrays["terminals"], buffer["terminals"][:n] > 0)
    np.testing.assert_array_equal(arrays["timeouts"], buffer["timeouts"][:n] > 0)


def test_noise_level_mix(generated):
    """eps1: a random walk part, then policy samples, then the noisy samples (2 : 4 : 4, whole episodes)."""
    arrays, _ = read(generated["eps1"][0])
    assert len(arrays["rewards"]) == 3 * EPISODE  # 60, 120 and 120 steps, each finished to 200
    random_part = arrays["actions"][:EPISODE, 0]
    assert random_part.std() > 0.8  # uniform on [-2, 2]: std 1.15
    assert random_part.min() < -1.5 and random_part.max() > 1.5


def medium_actor(sac_run, attrs):
    """The medium checkpoint's actor and the generator's policy maker."""
    generate = load_script(GENERATE)
    ckpt = next(c for c in checkpoint_info(sac_run) if c["step"] == int(attrs["medium_step"]))
    return generate, ckpt


def test_pure_is_policy_samples(generated, sac_run):
    """BRAC's pure: every action a sample of the stochastic policy, none its mean action, none random."""
    arrays, attrs = read(generated["pure"][0])
    generate, ckpt = medium_actor(sac_run, attrs)
    env = generate.make_env(ENV_ID)
    mean = generate.make_policy(ckpt, env, "mean", 0.0, np.random.default_rng(0))
    means = np.stack([mean(o) for o in arrays["observations"]])
    gap = np.abs(arrays["actions"] - means)[:, 0]
    assert (gap > 1e-6).all()  # sampled, not the mean action
    assert np.median(gap) < 1.0  # but near it: not uniform on [-2, 2] (a random action's median gap is about 1)


def test_noisy_policies(sac_run):
    """eps replaces a sample by a uniform action with probability ε; gaussian adds N(0, σ²) to a sample and clips
    1e-3 inside the bounds; both start from the policy's samples, the same draws as 'sample' under one torch seed."""
    generate = load_script(GENERATE)
    env = generate.make_env(ENV_ID)
    ckpt = checkpoint_info(sac_run)[-1]
    obs = np.stack([env.observation_space.sample() for _ in range(400)])
    low, high = env.action_space.low, env.action_space.high

    def actions(mode, noise, seed=0):
        torch.manual_seed(seed)
        policy = generate.make_policy(ckpt, env, mode, noise, np.random.default_rng(seed))
        return np.stack([policy(o) for o in obs])[:, 0]

    samples = actions("sample", 0.0)
    np.testing.assert_array_equal(actions("eps", 0.0), samples)  # ε = 0: the samples themselves
    replaced = actions("eps", 0.3) != samples
    assert 0.2 < replaced.mean() < 0.4  # about ε of them replaced (400 draws)
    all_random = actions("eps", 1.0)
    assert all_random.std() > 0.9 and low[0] <= all_random.min() and all_random.max() <= high[0]
    noisy = actions("gaussian", 3.0)
    assert noisy.min() >= low[0] + 1e-3 - 1e-6 and noisy.max() <= high[0] - 1e-3 + 1e-6
    assert (noisy == np.float32(high[0] - 1e-3)).any()  # σ = 3 pushes some to the clip
    inside = (np.abs(noisy) < high[0] - 0.1) & (np.abs(samples) < high[0] - 0.1)
    assert 0.1 < np.abs(noisy - samples)[inside].std() / 3.0 < 3.0  # noise of about σ on the sample


# ---------------------------------------------------------------------------- reproducibility
def test_same_seed_same_arrays(generated):
    first, attrs = read(generated["medium"][0])
    again, attrs_again = read(generated["medium-again"][0])
    assert set(first) == set(again)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    for key in ("ref_min_score", "ref_max_score", "medium_step", "expert_step"):
        assert attrs[key] == attrs_again[key], key


def test_different_seed_different_arrays(generated):
    first, _ = read(generated["medium"][0])
    other, attrs = read(generated["medium-seed1"][0])
    assert int(attrs["seed"]) == 1 and "--seed 1" in attrs["command"]
    n = min(len(first["rewards"]), len(other["rewards"]))
    for key in ("observations", "actions", "rewards"):
        assert not np.array_equal(first[key][:n], other[key][:n]), key


def test_reference_returns_same_for_every_level(generated):
    refs = {
        level: (read(generated[level][0])[1]["ref_min_score"], read(generated[level][0])[1]["ref_max_score"])
        for level in LEVELS
    }
    assert len(set(refs.values())) == 1, refs


# ---------------------------------------------------------------------------- use by the algorithms
def test_generated_file_loads_in_bc(generated):
    bc = load_script("bc")
    path, summary = generated["medium"]
    arrays, attrs = read(path)
    data = bc.load_dataset(path, torch.device("cpu"))
    assert len(data.rewards) == len(arrays["rewards"])  # next_observations present: every step kept
    np.testing.assert_array_equal(data.observations.numpy(), arrays["observations"])
    np.testing.assert_array_equal(data.next_observations.numpy(), arrays["next_observations"])
    assert data.terminals.sum() == 0
    assert (data.ref_min_score, data.ref_max_score) == (float(attrs["ref_min_score"]), float(attrs["ref_max_score"]))
    assert len(data.episode_returns) == summary["episodes"]
    assert data.episode_returns.mean() == pytest.approx(summary["mean_return"], abs=0.1)
    env = data.make_env()
    assert env.spec.id == ENV_ID
    env.close()


def test_level_without_sac_run_is_an_error(tmp_path):
    result = subprocess.run(
        [sys.executable, GENERATE, "--level", "medium", "--out", str(tmp_path / "x.hdf5")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error:") and "--sac-run" in result.stderr
    assert not (tmp_path / "x.hdf5").exists()


# ------------------------------------------------------------------------- bad input: one error line, nothing written
def run_generate(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, GENERATE, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )


def assert_one_error_line(result, out, *words):
    """Exit code != 0, exactly one stderr line `error: ...` naming `words`, and no output or .tmp file."""
    assert result.returncode != 0, result.stdout[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not os.path.isfile(out) and not os.path.exists(str(out) + ".tmp")
    assert not glob.glob(os.path.join(os.path.dirname(str(out)), "**", "*.tmp"), recursive=True)
    return lines[0]


def copy_run(sac_run, tmp_path):
    """A copy of the tiny SAC run whose files a test may break."""
    run = str(tmp_path / "sac_run")
    shutil.copytree(sac_run, run)
    return run


def truncate(path):
    with open(path, "rb") as f:
        head = f.read()[: os.path.getsize(path) // 2]
    with open(path, "wb") as f:
        f.write(head)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_ref_episodes_not_positive_is_an_error(sac_run, tmp_path, value):
    out = tmp_path / "x.hdf5"
    args = generate_args(sac_run, "random", str(out))[2:]
    args[args.index("--ref-episodes") + 1] = value
    line = assert_one_error_line(run_generate(args), out, "--ref-episodes", value)
    assert "at least 1" in line


@pytest.mark.parametrize("value", ["0", "-5"])
def test_num_steps_not_positive_is_an_error(sac_run, tmp_path, value):
    out = tmp_path / "x.hdf5"
    args = generate_args(sac_run, "random", str(out))[2:]
    args[args.index("--num-steps") + 1] = value
    line = assert_one_error_line(run_generate(args), out, "--num-steps", value)
    assert "at least 1" in line


@pytest.mark.parametrize(
    "env_id, problem",
    [("NoSuchEnv-v0", "doesn't exist"), ("no_such_module_xyz:NoSuchEnv-v0", "No module named 'no_such_module_xyz'")],
)
def test_bad_env_id_is_an_error(sac_run, tmp_path, env_id, problem):
    out = tmp_path / "x.hdf5"
    result = run_generate([*generate_args(sac_run, "random", str(out))[2:], "--env-id", env_id])
    assert_one_error_line(result, out, env_id, problem, "--env-id")


def test_discrete_action_env_is_an_error(tmp_path):
    out = tmp_path / "x.hdf5"
    result = run_generate(["--level", "random", "--env-id", "CartPole-v1", "--num-steps", "300", "--out", str(out)])
    assert_one_error_line(result, out, "CartPole-v1", "Discrete", "continuous Box action space")


def test_corrupt_checkpoint_is_an_error(sac_run, tmp_path):
    run = copy_run(sac_run, tmp_path)
    broken = sorted(glob.glob(os.path.join(run, "checkpoints", "actor_*.pt")))[1]
    truncate(broken)
    out = tmp_path / "x.hdf5"
    line = assert_one_error_line(run_generate(generate_args(run, "medium", str(out))[2:]), out, broken)
    assert "not a readable" in line


def test_corrupt_replay_buffer_is_an_error(sac_run, tmp_path):
    run = copy_run(sac_run, tmp_path)
    broken = os.path.join(run, "replay_buffer.npz")
    truncate(broken)
    out = tmp_path / "x.hdf5"
    line = assert_one_error_line(run_generate(generate_args(run, "medium-replay", str(out))[2:]), out, broken)
    assert "not a readable" in line


def test_checkpoint_of_another_env_is_an_error(sac_run, tmp_path):
    """A Pendulum run (3-dim observations, 1-dim actions) with MountainCarContinuous (2 and 1)."""
    out = tmp_path / "x.hdf5"
    result = run_generate([*generate_args(sac_run, "medium", str(out))[2:], "--env-id", "MountainCarContinuous-v0"])
    assert_one_error_line(result, out, "MountainCarContinuous-v0", ENV_ID, "3-dim observations", "2-dim")


def test_out_is_a_directory_is_an_error(sac_run, tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    assert_one_error_line(run_generate(generate_args(sac_run, "random", str(out))[2:]), out, str(out), "directory")
    assert os.listdir(out) == []


def test_out_folder_cannot_be_made_is_an_error(sac_run, tmp_path):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "sub" / "x.hdf5"
    result = run_generate(generate_args(sac_run, "random", str(out))[2:])
    assert_one_error_line(result, out, str(tmp_path / "a_file"), "not a directory")


def test_failed_final_write_removes_tmp(sac_run, tmp_path, monkeypatch):
    """The write fails after collection (a full disk, say): the .tmp file goes, the error names the path."""
    generate = load_script(GENERATE)
    out = str(tmp_path / "x.hdf5")

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sys, "argv", generate_args(sac_run, "random", out)[1:])
    monkeypatch.setattr(generate.os, "replace", replace)
    with pytest.raises(SystemExit) as exit_info:
        generate.main()
    message = str(exit_info.value.code)
    assert message.startswith("error:") and "\n" not in message
    assert out in message and "No space left on device" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("rule", ["none", None])
def test_reward_scaling_attribute(tmp_path, rule):
    """--reward-scaling writes the file attribute the scripts' `--reward-scaling auto` follows; without it there is
    none and the scripts decide by the task (a random Hopper file needs no SAC run: D4RL's reference returns)."""
    out = str(tmp_path / "hopper-random.hdf5")
    flag = ["--reward-scaling", rule] if rule else []
    args = ["--level", "random", "--env-id", "Hopper-v4", "--num-steps", "20", "--ref-episodes", "1", "--out", out]
    result = run_generate(args + flag)
    assert result.returncode == 0, result.stderr[-2000:]
    with h5py.File(out, "r") as f:
        assert f.attrs.get("reward_scaling") == rule
    data = load_script("iql").load_dataset(out, torch.device("cpu"))
    assert data.reward_scaling == rule
    assert load_script("iql").reward_scaling_rule(data) == (rule or "return_range")  # Hopper-v4: locomotion
